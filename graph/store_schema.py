"""The store's tables and their migrations — one definition for SQLite and PostgreSQL.

Free text (queries, outputs, event payloads) is stored only as JSON text, encoded by the writer
(pydantic-core for results and runs): PostgreSQL `text` cannot hold a NUL character, which JSON
escapes, and encoding once beats letting the driver encode a dict. Identifiers (run, user,
conversation ids) are plain strings; validation keeps control characters out of them.

`migrate` brings any database to `SCHEMA_VERSION` and is safe to run from several processes at
once (a transaction-scoped lock serialises them). Add a migration by appending a function to
`MIGRATIONS`; never edit one that has shipped.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

metadata = sa.MetaData()

meta = sa.Table(
    "sesame_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.String(256), nullable=False),
)

runs = sa.Table(
    "runs", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("user_id", sa.String(256), nullable=False),
    sa.Column("conversation_id", sa.String(256), nullable=False),
    sa.Column("status", sa.String(32), nullable=False),
    sa.Column("owner", sa.String(128)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("updated_at", sa.Float, nullable=False),
    sa.Column("finished_at", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("idempotency_key", sa.String(256)),
    sa.Column("request_hash", sa.String(64)),
    sa.Column("summary", sa.Text, nullable=False),  # JSON: the RunResponse without its nodes
    sa.Index("runs_by_idempotency_key", "tenant", "user_id", "idempotency_key", unique=True),
    sa.Index("runs_by_owner", "owner", "status"),
    sa.Index("runs_by_status", "status"),
)

run_nodes = sa.Table(
    "run_nodes", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("node_id", sa.String(256), primary_key=True),
    sa.Column("position", sa.Integer, nullable=False),
    sa.Column("result", sa.Text, nullable=False),  # JSON: a NodeResult
)

run_events = sa.Table(
    "run_events", metadata,
    sa.Column("run_id", sa.String(64), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("type", sa.String(32), nullable=False),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON: the event's fields (graph.events)
)

turns = sa.Table(
    "conversation_turns", metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("conversation_id", sa.String(256), primary_key=True),
    sa.Column("seq", sa.Integer, primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("data", sa.Text, nullable=False),  # JSON: {"user": ..., "assistant": ...}
)

leases = sa.Table(
    "conversation_leases", metadata,
    sa.Column("tenant", sa.String(128), primary_key=True),
    sa.Column("user_id", sa.String(256), primary_key=True),
    sa.Column("conversation_id", sa.String(256), primary_key=True),
    sa.Column("run_id", sa.String(64), nullable=False),
    sa.Column("owner", sa.String(128), nullable=False),
    sa.Column("acquired_at", sa.Float, nullable=False),
)

owners = sa.Table(
    "owners", metadata,
    sa.Column("owner_id", sa.String(128), primary_key=True),
    sa.Column("started_at", sa.Float, nullable=False),
    sa.Column("heartbeat_at", sa.Float, nullable=False),
)


def _v1(connection: sa.Connection) -> None:
    for table in (runs, run_nodes, run_events, turns, leases, owners):
        table.create(connection, checkfirst=True)


MIGRATIONS: list[Callable[[sa.Connection], None]] = [_v1]
SCHEMA_VERSION = len(MIGRATIONS)


def migrate(engine: sa.Engine) -> int:
    """Create or upgrade the schema; returns the version found before migrating."""
    with engine.begin() as connection:
        _lock(connection)
        meta.create(connection, checkfirst=True)
        found = connection.scalar(sa.select(meta.c.value).where(meta.c.key == "schema_version"))
        version = int(found) if found is not None else 0
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"the database has schema version {version}, newer than this Sesame "
                               f"({SCHEMA_VERSION}): upgrade Sesame or point SESAME_DATABASE_URL elsewhere")
        for migration in MIGRATIONS[version:]:
            migration(connection)
        if found is None:
            connection.execute(meta.insert().values(key="schema_version", value=str(SCHEMA_VERSION)))
        elif version != SCHEMA_VERSION:
            connection.execute(meta.update().where(meta.c.key == "schema_version")
                               .values(value=str(SCHEMA_VERSION)))
    return version


def _lock(connection: sa.Connection) -> None:
    """Serialise concurrent migrations: an advisory lock on PostgreSQL; on SQLite the write
    transaction (`BEGIN IMMEDIATE`, see `graph.store`) already excludes other writers."""
    if connection.dialect.name == "postgresql":
        connection.execute(sa.text("SELECT pg_advisory_xact_lock(7268201)"))
