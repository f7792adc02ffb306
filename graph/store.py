"""Where runs, their nodes and events, and conversations are kept: SQLite or PostgreSQL.

One code path for both (SQLAlchemy Core). `SqlStore` is synchronous; its callers run it in
threads (`graph.writer.BatchWriter` for writes, `asyncio.to_thread` for reads), so nothing here
blocks an event loop. Writes are small typed operations (`CreateRun`, `SaveNode`, ...) that the
writer applies many at a time in one transaction; each one is idempotent or conflict-free
(`INSERT ... ON CONFLICT DO NOTHING`), so a batch never fails on a race between processes.

It must not store secrets: it only ever sees `RunResponse`, `NodeResult` and `RunEvent` values,
which carry none (node specs, where `api_key_value` lives, never reach it).
"""

from __future__ import annotations

import functools
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from graph.events import RunEvent
from graph.schema import ErrorInfo, NodeResult, RunResponse
from graph.store_schema import leases, migrate, owners, run_events, run_nodes, runs, turns

ACTIVE = ("queued", "running")
UNFINISHED_NODES = ("pending", "running")


# Progress writes, built once: with bound parameters SQLAlchemy compiles each shape once.
_SAVE_NODE = run_nodes.update().where(run_nodes.c.run_id == sa.bindparam("b_run"),
                                      run_nodes.c.node_id == sa.bindparam("b_node")) \
    .values(result=sa.bindparam("b_result"))
_SAVE_RUN = runs.update().where(runs.c.run_id == sa.bindparam("b_run")).values(
    status=sa.bindparam("b_status"), summary=sa.bindparam("b_summary"),
    updated_at=sa.bindparam("b_updated"), finished_at=sa.bindparam("b_finished"))


def normalize_url(url: str) -> str:
    """`postgres://` and `postgresql://` use the psycopg 3 driver; anything else is as given."""
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def describe_url(url: str) -> str:
    """The URL without its password, for logs and errors."""
    return sa.make_url(normalize_url(url)).render_as_string(hide_password=True)


@dataclass(frozen=True)
class StoredRun:
    tenant: str
    response: RunResponse
    owner: str | None
    cancel_requested: bool
    request_hash: str | None


@dataclass(frozen=True)
class StoredTurn:
    seq: int
    run_id: str
    created_at: float
    user: str
    assistant: str


class SqlStore:
    def __init__(self, url: str):
        self.url = normalize_url(url)
        self.dialect = sa.make_url(self.url).get_backend_name()
        if self.dialect == "sqlite":
            self._writes = _sqlite_engine(self.url, begin="BEGIN IMMEDIATE")
            self._reads = _sqlite_engine(self.url, begin=None)
        else:
            # hide_parameters: an error must not carry queries or outputs into a log line.
            self._writes = sa.create_engine(self.url, pool_size=2, max_overflow=0, pool_pre_ping=True,
                                            hide_parameters=True)
            self._reads = sa.create_engine(self.url, pool_size=8, max_overflow=8, pool_pre_ping=True,
                                           hide_parameters=True)

    def migrate(self) -> int:
        return migrate(self._writes)

    def close(self) -> None:
        self._writes.dispose()
        self._reads.dispose()

    # ---- writes: the writer hands a batch of operations to `apply` -------------------------

    def apply(self, operations: list["Operation"]) -> list[Any]:
        """Apply `operations` in one transaction. Progress writes (`BulkOperation`s: node and
        run state, events) are gathered by kind and written as one statement each at the end
        — or before an operation that reads them — which is where a busy writer's time goes."""
        results: list[Any] = []
        pending: dict[type[BulkOperation], list[BulkOperation]] = {}
        with self._writes.begin() as connection:
            for operation in operations:
                if isinstance(operation, BulkOperation):
                    pending.setdefault(type(operation), []).append(operation)
                    results.append(None)
                    continue
                if operation.reads_progress:
                    _write_all(connection, self.dialect, pending)
                results.append(operation.apply(connection, self.dialect))
            _write_all(connection, self.dialect, pending)
        return results

    # ---- reads -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> StoredRun | None:
        with self._reads.connect() as connection:
            row = connection.execute(sa.select(runs).where(runs.c.run_id == run_id)).first()
            if row is None:
                return None
            nodes = connection.execute(sa.select(run_nodes.c.result).where(run_nodes.c.run_id == run_id)
                                       .order_by(run_nodes.c.position)).scalars().all()
        response = _response(row.summary, nodes)
        return StoredRun(tenant=row.tenant, response=response, owner=row.owner,
                         cancel_requested=bool(row.cancel_requested), request_hash=row.request_hash)

    def find_idempotent(self, tenant: str, user_id: str, key: str) -> tuple[str, str | None] | None:
        with self._reads.connect() as connection:
            row = connection.execute(sa.select(runs.c.run_id, runs.c.request_hash).where(
                runs.c.tenant == tenant, runs.c.user_id == user_id, runs.c.idempotency_key == key)).first()
        return (row.run_id, row.request_hash) if row else None

    def events_after(self, run_id: str, after_seq: int, limit: int = 1000) -> list[RunEvent]:
        with self._reads.connect() as connection:
            rows = connection.execute(sa.select(run_events).where(
                run_events.c.run_id == run_id, run_events.c.seq > after_seq)
                .order_by(run_events.c.seq).limit(limit)).all()
        return [RunEvent(r.run_id, r.seq, r.type, r.at, r.data) for r in rows]

    def recent_turns(self, tenant: str, user_id: str, conversation_id: str,
                     limit: int | None = None) -> list[StoredTurn]:
        """The conversation's turns, oldest first (the newest `limit` of them if given)."""
        query = (sa.select(turns).where(turns.c.tenant == tenant, turns.c.user_id == user_id,
                                        turns.c.conversation_id == conversation_id)
                 .order_by(turns.c.seq.desc()))
        if limit is not None:
            query = query.limit(limit)
        with self._reads.connect() as connection:
            rows = connection.execute(query).all()
        texts = [json.loads(r.data) for r in rows]
        return [StoredTurn(seq=r.seq, run_id=r.run_id, created_at=r.created_at, user=text["user"],
                           assistant=text["assistant"]) for r, text in zip(reversed(rows), reversed(texts))]

    def cancel_requests(self, owner: str) -> list[str]:
        with self._reads.connect() as connection:
            return list(connection.execute(sa.select(runs.c.run_id).where(
                runs.c.owner == owner, runs.c.cancel_requested.is_(True),
                runs.c.status.in_(ACTIVE))).scalars())


def _sqlite_engine(url: str, begin: str | None) -> sa.Engine:
    """SQLite with WAL (readers never wait for the writer), a busy timeout for other processes,
    and explicit transactions: pysqlite's own transaction handling is switched off so `BEGIN
    IMMEDIATE` takes the write lock up front instead of failing later on upgrade."""
    database = sa.make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                              hide_parameters=True)

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    if begin is not None:
        @sa.event.listens_for(engine, "begin")
        def _begin(connection: sa.Connection) -> None:
            connection.exec_driver_sql(begin)

    return engine


@functools.cache
def _insert_ignoring_conflicts(table: sa.Table, dialect: str, returning: bool = False) -> sa.Insert:
    """`INSERT ... ON CONFLICT DO NOTHING` for `table`, built once per dialect; rows are given
    at execution (one dict, or a list for executemany)."""
    insert = (postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)).on_conflict_do_nothing()
    return insert.returning(next(iter(table.primary_key.columns))) if returning else insert


def _inserted(connection: sa.Connection, table: sa.Table, dialect: str, values: dict[str, Any]) -> bool:
    """Insert one row unless it conflicts with a unique key; True if it went in. (RETURNING,
    because psycopg reports no row count for `ON CONFLICT DO NOTHING`.)"""
    return connection.execute(_insert_ignoring_conflicts(table, dialect, True), values).first() is not None


def _response(summary: str, nodes: list[str]) -> RunResponse:
    return RunResponse.model_validate({**json.loads(summary),
                                       "nodes": {(n := json.loads(text))["id"]: n for text in nodes}})


# ---- operations ------------------------------------------------------------------------------

class Operation:
    reads_progress = False  # True: pending progress writes must be applied before this one

    def apply(self, connection: sa.Connection, dialect: str) -> Any:
        raise NotImplementedError


class BulkOperation(Operation):
    """A write with no result that may be applied later in its transaction, together with the
    others of its kind (in submission order, so the last write of a row wins)."""

    @classmethod
    def apply_all(cls, connection: sa.Connection, dialect: str, operations: list[Any]) -> None:
        raise NotImplementedError

    def apply(self, connection: sa.Connection, dialect: str) -> None:
        self.apply_all(connection, dialect, [self])


def _write_all(connection: sa.Connection, dialect: str,
               pending: dict[type[BulkOperation], list[BulkOperation]]) -> None:
    for kind, operations in pending.items():
        kind.apply_all(connection, dialect, operations)
    pending.clear()


@dataclass(frozen=True)
class CreateRun(Operation):
    """Insert a run and its (pending) nodes. Returns None when created, else `(run_id,
    request_hash)` of the run that already holds this idempotency key."""

    response: RunResponse
    tenant: str
    owner: str
    idempotency_key: str | None = None
    request_hash: str | None = None

    def apply(self, connection: sa.Connection, dialect: str) -> tuple[str, str | None] | None:
        now = time.time()
        run = self.response
        inserted = _inserted(connection, runs, dialect, {
            "run_id": run.run_id, "tenant": self.tenant, "user_id": run.user_id,
            "conversation_id": run.conversation_id, "status": run.status, "owner": self.owner,
            "created_at": now, "updated_at": now, "idempotency_key": self.idempotency_key,
            "request_hash": self.request_hash, "summary": _summary(run)})
        if not inserted:
            existing = connection.execute(sa.select(runs.c.run_id, runs.c.request_hash).where(
                runs.c.tenant == self.tenant, runs.c.user_id == run.user_id,
                runs.c.idempotency_key == self.idempotency_key)).first()
            if existing is None:  # not an idempotency clash: the run id itself was taken
                raise RuntimeError(f"run id {run.run_id} already exists")
            return existing.run_id, existing.request_hash
        if run.nodes:
            connection.execute(run_nodes.insert(), [
                {"run_id": run.run_id, "node_id": node_id, "position": position,
                 "result": node.model_dump_json()}
                for position, (node_id, node) in enumerate(run.nodes.items())])
        return None


@dataclass(frozen=True)
class SaveNode(BulkOperation):
    run_id: str
    result: NodeResult

    @classmethod
    def apply_all(cls, connection: sa.Connection, dialect: str, operations: list["SaveNode"]) -> None:
        connection.execute(_SAVE_NODE, [{"b_run": op.run_id, "b_node": op.result.id,
                                         "b_result": op.result.model_dump_json()} for op in operations])


@dataclass(frozen=True)
class SaveRun(BulkOperation):
    """The run's status and summary (its nodes are saved by `SaveNode`); `final` also sets
    its end time."""

    response: RunResponse
    final: bool = False

    @classmethod
    def apply_all(cls, connection: sa.Connection, dialect: str, operations: list["SaveRun"]) -> None:
        now = time.time()
        connection.execute(_SAVE_RUN, [
            {"b_run": op.response.run_id, "b_status": op.response.status, "b_summary": _summary(op.response),
             "b_updated": now, "b_finished": now if op.final else None} for op in operations])


@dataclass(frozen=True)
class AppendEvents(BulkOperation):
    events: tuple[RunEvent, ...]

    @classmethod
    def apply_all(cls, connection: sa.Connection, dialect: str, operations: list["AppendEvents"]) -> None:
        connection.execute(_insert_ignoring_conflicts(run_events, dialect), [
            {"run_id": e.run_id, "seq": e.seq, "type": e.type, "at": e.at, "data": e.data_json}
            for op in operations for e in op.events])


@dataclass(frozen=True)
class AppendTurn(Operation):
    """Append one turn; the next free `seq` is found and claimed atomically, so two runs
    finishing at once (in any processes) both keep their turn."""

    tenant: str
    user_id: str
    conversation_id: str
    run_id: str
    user: str
    assistant: str

    def apply(self, connection: sa.Connection, dialect: str) -> int:
        key = (turns.c.tenant == self.tenant, turns.c.user_id == self.user_id,
               turns.c.conversation_id == self.conversation_id)
        while True:
            seq = (connection.scalar(sa.select(sa.func.max(turns.c.seq)).where(*key)) or 0) + 1
            if _inserted(connection, turns, dialect, {
                    "tenant": self.tenant, "user_id": self.user_id, "conversation_id": self.conversation_id,
                    "seq": seq, "run_id": self.run_id, "created_at": time.time(),
                    "data": json.dumps({"user": self.user, "assistant": self.assistant}, ensure_ascii=False)}):
                return seq


@dataclass(frozen=True)
class AcquireLease(Operation):
    """Take the conversation for a run; True if this run holds it now."""

    tenant: str
    user_id: str
    conversation_id: str
    run_id: str
    owner: str

    def apply(self, connection: sa.Connection, dialect: str) -> bool:
        connection.execute(_insert_ignoring_conflicts(leases, dialect), {
            "tenant": self.tenant, "user_id": self.user_id, "conversation_id": self.conversation_id,
            "run_id": self.run_id, "owner": self.owner, "acquired_at": time.time()})
        holder = connection.scalar(sa.select(leases.c.run_id).where(
            leases.c.tenant == self.tenant, leases.c.user_id == self.user_id,
            leases.c.conversation_id == self.conversation_id))
        return holder == self.run_id


@dataclass(frozen=True)
class ReleaseLease(Operation):
    run_id: str

    def apply(self, connection: sa.Connection, dialect: str) -> None:
        connection.execute(leases.delete().where(leases.c.run_id == self.run_id))


@dataclass(frozen=True)
class RequestCancel(Operation):
    run_id: str

    def apply(self, connection: sa.Connection, dialect: str) -> None:
        connection.execute(runs.update().where(runs.c.run_id == self.run_id, runs.c.status.in_(ACTIVE))
                           .values(cancel_requested=True))


@dataclass(frozen=True)
class Heartbeat(Operation):
    owner: str

    def apply(self, connection: sa.Connection, dialect: str) -> None:
        now = time.time()
        updated = connection.execute(owners.update().where(owners.c.owner_id == self.owner)
                                     .values(heartbeat_at=now))
        if updated.rowcount == 0:
            _inserted(connection, owners, dialect, {"owner_id": self.owner, "started_at": now,
                                                    "heartbeat_at": now})


@dataclass(frozen=True)
class RetireOwner(Operation):
    """An owner that stopped cleanly: its row goes (its runs were finished or interrupted)."""

    owner: str

    def apply(self, connection: sa.Connection, dialect: str) -> None:
        connection.execute(leases.delete().where(leases.c.owner == self.owner))
        connection.execute(owners.delete().where(owners.c.owner_id == self.owner))


@dataclass(frozen=True)
class ReapDeadOwners(Operation):
    """Runs left `queued`/`running` by a process that stopped heartbeating (or that no owner
    claims at all) become `interrupted`, with a final `run_finished` event; their conversation
    leases are freed. Returns the interrupted run ids."""

    reads_progress = True

    stale_after_s: float
    except_owner: str

    def apply(self, connection: sa.Connection, dialect: str) -> list[str]:
        now = time.time()
        alive = sa.select(owners.c.owner_id).where(owners.c.heartbeat_at >= now - self.stale_after_s)
        orphaned = connection.execute(sa.select(runs.c.run_id).where(
            runs.c.status.in_(ACTIVE), runs.c.owner != self.except_owner,
            sa.or_(runs.c.owner.is_(None), runs.c.owner.not_in(alive)))).scalars().all()
        for run_id in orphaned:
            _interrupt(connection, dialect, run_id, now)
        connection.execute(leases.delete().where(leases.c.owner != self.except_owner,
                                                 leases.c.owner.not_in(alive)))
        connection.execute(owners.delete().where(owners.c.heartbeat_at < now - self.stale_after_s))
        return list(orphaned)


def _interrupt(connection: sa.Connection, dialect: str, run_id: str, now: float) -> None:
    row = connection.execute(sa.select(runs.c.summary, runs.c.created_at).where(runs.c.run_id == run_id)).first()
    error = ErrorInfo(code="interrupted", retryable=True,
                      message="the Sesame process running this node stopped before it finished")
    nodes = {}
    for result in connection.execute(sa.select(run_nodes.c.result).where(run_nodes.c.run_id == run_id)
                                     .order_by(run_nodes.c.position)).scalars():
        node = NodeResult.model_validate_json(result)
        if node.status in UNFINISHED_NODES:
            node = node.model_copy(update={"status": "cancelled", "error": error})
            SaveNode(run_id, node).apply(connection, dialect)
        nodes[node.id] = node
    response = RunResponse.model_validate({**json.loads(row.summary), "nodes": nodes}).model_copy(update={
        "status": "interrupted", "duration_ms": round((now - row.created_at) * 1000, 3),
        "error": ErrorInfo(code="interrupted", retryable=True,
                           message="the Sesame process running this run stopped; run it again")})
    last = connection.scalar(sa.select(sa.func.max(run_events.c.seq)).where(run_events.c.run_id == run_id)) or 0
    AppendEvents((RunEvent(run_id, last + 1, "run_finished", now, f'{{"run":{response.model_dump_json()}}}'),)
                 ).apply(connection, dialect)
    connection.execute(runs.update().where(runs.c.run_id == run_id).values(
        status="interrupted", summary=_summary(response), updated_at=now, finished_at=now))


def _summary(run: RunResponse) -> str:
    return run.model_dump_json(exclude={"nodes"})
