"""Runs that are never lost: start, follow, cancel and read runs; conversation memory.

`RunService` is what the HTTP ingress talks to. Every run it starts is stored before anyone is
told its id, executes as a task of this process (`graph.engine.Execution`), and reports its
progress through a `RunRecorder` (events for live subscribers, state for the store). It owns:

- conversations: a run whose LLM nodes read memory takes its conversation's lease first, so runs
  of one conversation that read memory go one at a time, in arrival order, each seeing the turns
  of those before it; a finished run (`succeeded`/`partial`) appends its turn. A run that cannot
  get the conversation within `conversation_wait_s` fails with `conversation_busy`.
- idempotency: the same key with the same body returns the first run; another body is a 422.
- liveness: this process heartbeats as an *owner*; runs whose owner stopped heartbeating (a
  crash) or stopped cleanly are marked `interrupted`, never left `running`.
- cancellation: local runs are cancelled at once; a run owned by another process is flagged in
  the store and that process cancels it on its next poll.

Runs and conversations are scoped by (tenant, user_id): any other scope gets `NotFound`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from graph.engine import Execution, new_run_id
from graph.errors import IdempotencyKeyReused, NotFound, Overloaded, TooManyRuns
from graph.events import RunEvent
from graph.kinds import Turn
from graph.recorder import RunRecorder
from graph.scheduler import RunOptions, as_text
from graph.schema import (ConversationResponse, ConversationTurn, ErrorInfo, NodeResult, RunResponse)
from graph.settings import Settings
from graph.store import (AcquireLease, AppendTurn, Heartbeat, ReapDeadOwners, ReleaseLease,
                         RequestCancel, RetireOwner, SqlStore, StoredRun)
from graph.worker import NodeRunner
from graph.workflow import Workflow
from graph.writer import BatchWriter

log = logging.getLogger(__name__)

_LEASE_POLL_S = 0.1        # how often a queued run retries a conversation held by another process
_EVENT_POLL_S = 0.25       # how often a follower of another process's run reads new events
_CANCEL_POLL_S = 0.5       # how often this process looks for cancel requests of its runs
_TURN_RECORDING = ("succeeded", "partial")


@dataclass
class _LocalRun:
    workflow: Workflow
    tenant: str
    recorder: RunRecorder
    stop_status: str = "cancelled"
    task: asyncio.Task[RunResponse] | None = None


@dataclass
class _Waiters:
    """Runs of this process waiting for a conversation, woken when a local run releases it."""

    events: dict[tuple[str, str, str], asyncio.Event] = field(default_factory=dict)

    def event(self, key: tuple[str, str, str]) -> asyncio.Event:
        return self.events.setdefault(key, asyncio.Event())

    def wake(self, key: tuple[str, str, str]) -> None:
        event = self.events.pop(key, None)
        if event is not None:
            event.set()


class RunService:
    def __init__(self, settings: Settings, runner: NodeRunner, store: SqlStore):
        self._settings = settings
        self._runner = runner
        self._store = store
        self._writer = BatchWriter(store)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._local: dict[str, _LocalRun] = {}
        self._per_user: Counter[tuple[str, str]] = Counter()  # runs in flight per (tenant, user)
        self._waiters = _Waiters()
        self._upkeep: asyncio.Task[None] | None = None

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        found = await asyncio.to_thread(self._store.migrate)
        log.info("store ready (schema version %s before start), owner %s", found, self.owner)
        await self._writer.submit(Heartbeat(self.owner))
        await self._reap()
        self._upkeep = asyncio.get_running_loop().create_task(self._keep_up())

    async def close(self) -> None:
        """Stop cleanly: runs still in flight end `interrupted` and are stored as such."""
        if self._upkeep is not None:
            self._upkeep.cancel()
        local = list(self._local.values())
        for run in local:
            run.stop_status = "interrupted"
            if run.task is not None:
                run.task.cancel()
        await asyncio.gather(*(r.task for r in local if r.task is not None), return_exceptions=True)
        await self._writer.submit(RetireOwner(self.owner))
        await self._writer.close()
        await asyncio.to_thread(self._store.close)

    async def _keep_up(self) -> None:
        last_heartbeat = time.monotonic()
        while True:
            await asyncio.sleep(min(_CANCEL_POLL_S, self._settings.heartbeat_s))
            try:
                if self._local:
                    for run_id in await asyncio.to_thread(self._store.cancel_requests, self.owner):
                        self._cancel_local(run_id)
                if time.monotonic() - last_heartbeat >= self._settings.heartbeat_s:
                    last_heartbeat = time.monotonic()
                    await self._writer.submit(Heartbeat(self.owner))
                    await self._reap()
            except Exception:  # the store may be down for a while; keep trying
                log.exception("run upkeep failed")

    async def _reap(self) -> None:
        interrupted = await self._writer.submit(ReapDeadOwners(3 * self._settings.heartbeat_s, self.owner))
        if interrupted:
            log.warning("marked %d runs of stopped processes interrupted", len(interrupted))

    # ---- starting runs ---------------------------------------------------------------------

    async def start_run(self, workflow: Workflow, tenant: str, *, stream_tokens: bool = False,
                        idempotency_key: str | None = None, request_hash: str | None = None) -> tuple[str, bool]:
        """Store the run and start it. Returns `(run_id, started)`; `started` is False when an
        idempotency key returned an earlier run with the same body."""
        if idempotency_key is not None:
            earlier = await asyncio.to_thread(self._store.find_idempotent, tenant, workflow.user_id,
                                              idempotency_key)
            if earlier is not None:
                return self._replayed(idempotency_key, earlier, request_hash), False
        self._check_capacity(tenant, workflow.user_id)
        run_id = new_run_id()
        recorder = RunRecorder(run_id, workflow, self._writer)
        clash = await recorder.create(tenant, self.owner, idempotency_key, request_hash)
        if clash is not None:  # the same key arrived twice at once
            return self._replayed(idempotency_key, clash, request_hash), False
        run = _LocalRun(workflow, tenant, recorder)
        self._local[run_id] = run
        self._per_user[tenant, workflow.user_id] += 1
        run.task = asyncio.get_running_loop().create_task(self._execute(run, stream_tokens),
                                                          name=f"run {run_id}")
        return run_id, True

    def _replayed(self, key: str | None, earlier: tuple[str, str | None], request_hash: str | None) -> str:
        earlier_run_id, earlier_hash = earlier
        if earlier_hash != request_hash:
            raise IdempotencyKeyReused(
                f'Idempotency-Key "{key}" was used for run {earlier_run_id} with a different body; '
                "send a new key for a new request")
        return earlier_run_id

    def _check_capacity(self, tenant: str, user_id: str) -> None:
        """One user's batch must not starve everyone else; nor may the process run out of memory."""
        if self._per_user[tenant, user_id] >= self._settings.max_runs_per_user:
            raise TooManyRuns(f'user "{user_id}" has {self._settings.max_runs_per_user} runs in flight '
                              "(SESAME_MAX_RUNS_PER_USER); retry when some have finished")
        if len(self._local) >= self._settings.max_runs_in_flight:
            raise Overloaded(f"this Sesame process has {self._settings.max_runs_in_flight} runs in "
                             "flight (SESAME_MAX_RUNS_IN_FLIGHT); retry shortly")

    async def result(self, run_id: str) -> RunResponse:
        """Wait for a run to end (local or not) and answer with it."""
        run = self._local.get(run_id)
        if run is not None and run.task is not None:
            await asyncio.wait({run.task})  # our caller's cancellation is not the run's
            return run.recorder.snapshot() if run.task.cancelled() else run.task.result()
        while True:
            stored = await asyncio.to_thread(self._store.get_run, run_id)
            if stored is None:
                raise NotFound(f"run {run_id} does not exist")
            if stored.response.finished:
                return stored.response
            await asyncio.sleep(_EVENT_POLL_S)

    async def _execute(self, run: _LocalRun, stream_tokens: bool) -> RunResponse:
        workflow, recorder = run.workflow, run.recorder
        key = (run.tenant, workflow.user_id, workflow.conversation_id)
        execution = Execution(workflow, self._runner, recorder.run_id, recorder)
        holds_lease = False
        try:
            history: tuple[Turn, ...] = ()
            if workflow.uses_memory:
                holds_lease = await self._take_conversation(run, key)
                if not holds_lease:
                    response = self._busy(run, execution)
                    recorder.finished(response)
                    return response
                history = await self._history(key)
            recorder.started()
            execution = Execution(workflow, self._runner, recorder.run_id, recorder,
                                  RunOptions(history=history, stream_tokens=stream_tokens))
            deadline_s = min(workflow.deadline_s or self._settings.run_deadline_s, self._settings.run_deadline_s)
            try:
                async with asyncio.timeout(deadline_s):
                    response = await execution.run()
            except TimeoutError:
                response = execution.stopped(None, ErrorInfo(
                    code="deadline_exceeded", retryable=False,
                    message=f"the run's deadline of {deadline_s:g} s passed; the nodes still running "
                            "were cancelled (deadline_s, SESAME_RUN_DEADLINE_S)"))
            except Exception:  # a bug of ours: the run still ends, stored and answered, never a 500
                log.exception("run %s failed inside Sesame", recorder.run_id, extra={"run_id": recorder.run_id})
                response = execution.stopped(None, ErrorInfo(
                    code="internal_error", retryable=False,
                    message="Sesame failed while running this workflow (a bug: the server log has the "
                            "details, under this run id); the nodes still running were cancelled"))
            if response.status in _TURN_RECORDING:
                await self._writer.submit(AppendTurn(*key, recorder.run_id, workflow.user_query,
                                                     as_text(response.output)))
            recorder.finished(response)
            return response
        except asyncio.CancelledError:
            status = run.stop_status
            message = ("the run was cancelled" if status == "cancelled"
                       else "the Sesame process running this run stopped; run it again")
            recorder.finished(execution.stopped(status, ErrorInfo(code=status, message=message,  # type: ignore[arg-type]
                                                                  retryable=status == "interrupted")))
            raise
        finally:
            if holds_lease:
                self._writer.submit(ReleaseLease(recorder.run_id))
                self._waiters.wake(key)
            await recorder.flushed()
            self._local.pop(recorder.run_id, None)
            self._per_user[run.tenant, workflow.user_id] -= 1
            if not self._per_user[run.tenant, workflow.user_id]:
                del self._per_user[run.tenant, workflow.user_id]

    async def _take_conversation(self, run: _LocalRun, key: tuple[str, str, str]) -> bool:
        deadline = time.monotonic() + self._settings.conversation_wait_s
        queued = False
        while True:
            waiting = self._waiters.event(key)
            if await self._writer.submit(AcquireLease(*key, run.recorder.run_id, self.owner)):
                return True
            if not queued:
                run.recorder.queued(None)
                queued = True
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(waiting.wait(), min(_LEASE_POLL_S, remaining))

    def _busy(self, run: _LocalRun, execution: Execution) -> RunResponse:
        wait = self._settings.conversation_wait_s
        error = ErrorInfo(code="conversation_busy", retryable=True,
                          message=f'conversation "{run.workflow.conversation_id}" was busy with another '
                                  f"run for {wait:g} s (SESAME_CONVERSATION_WAIT_S); try again later")
        response = execution.stopped("failed", error)
        nodes = {node_id: NodeResult(id=node_id, name=n.name, type=n.type, status="skipped",
                                     skip_reason="conversation_busy") for node_id, n in response.nodes.items()}
        return response.model_copy(update={"nodes": nodes})

    async def _history(self, key: tuple[str, str, str]) -> tuple[Turn, ...]:
        """The newest turns within both caps (turns and characters), oldest first."""
        stored = await asyncio.to_thread(self._store.recent_turns, *key, self._settings.memory_max_turns)
        kept: list[Turn] = []
        budget = self._settings.memory_max_chars
        for turn in reversed(stored):
            budget -= len(turn.user) + len(turn.assistant)
            if budget < 0:
                break
            kept.append(Turn(user=turn.user, assistant=turn.assistant))
        return tuple(reversed(kept))

    # ---- reading, following, cancelling ----------------------------------------------------

    async def get(self, run_id: str, tenant: str, user_id: str) -> RunResponse:
        run = self._local.get(run_id)
        if run is not None and run.tenant == tenant and run.workflow.user_id == user_id:
            return run.recorder.snapshot()
        return (await self._stored(run_id, tenant, user_id)).response

    async def events(self, run_id: str, tenant: str, user_id: str, after_seq: int = 0,
                     keepalive_s: float = 15.0) -> AsyncIterator[RunEvent | None]:
        """The run's events after `after_seq`, then live ones until `run_finished`. Yields None
        when nothing happened for `keepalive_s` (the caller sends a keep-alive)."""
        run = self._local.get(run_id)
        if run is None or run.tenant != tenant or run.workflow.user_id != user_id:
            await self._stored(run_id, tenant, user_id)  # raises NotFound
        run = self._local.get(run_id)
        if run is not None:
            async for event in run.recorder.feed.follow(after_seq, keepalive_s):
                yield event
            return
        async for event in self._stored_events(run_id, after_seq, keepalive_s):
            yield event

    async def _stored_events(self, run_id: str, after_seq: int,
                             keepalive_s: float) -> AsyncIterator[RunEvent | None]:
        """Events from the store, polled while the run goes on in another process."""
        quiet_since = time.monotonic()
        while True:
            events = await asyncio.to_thread(self._store.events_after, run_id, after_seq)
            for event in events:
                yield event
                after_seq = event.seq
                if event.type == "run_finished":
                    return
            if events:
                quiet_since = time.monotonic()
                continue
            stored = await asyncio.to_thread(self._store.get_run, run_id)
            if stored is None or (stored.response.finished and not
                                  await asyncio.to_thread(self._store.events_after, run_id, after_seq)):
                return
            if time.monotonic() - quiet_since >= keepalive_s:
                quiet_since = time.monotonic()
                yield None
            await asyncio.sleep(_EVENT_POLL_S)

    async def cancel(self, run_id: str, tenant: str, user_id: str, wait_s: float = 10.0) -> RunResponse:
        """Cancel a run that has not ended; answers with its state once it stopped (or after
        `wait_s`, if another process owns it and has not acted yet)."""
        response = await self.get(run_id, tenant, user_id)
        if response.finished:
            return response
        if self._cancel_local(run_id):
            run_task = self._local[run_id].task if run_id in self._local else None
            if run_task is not None:
                await asyncio.wait({run_task}, timeout=wait_s)
            return await self.get(run_id, tenant, user_id)
        await self._writer.submit(RequestCancel(run_id))
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            response = (await self._stored(run_id, tenant, user_id)).response
            if response.finished:
                break
            await asyncio.sleep(_EVENT_POLL_S)
        return response

    def cancel_on_disconnect(self, run_id: str) -> None:
        """The client of a synchronous run went away: the run stops with it."""
        self._cancel_local(run_id)

    def _cancel_local(self, run_id: str) -> bool:
        run = self._local.get(run_id)
        if run is None or run.task is None or run.task.done():
            return False
        run.task.cancel()
        return True

    async def conversation(self, tenant: str, user_id: str, conversation_id: str) -> ConversationResponse:
        stored = await asyncio.to_thread(self._store.recent_turns, tenant, user_id, conversation_id)
        if not stored:
            raise NotFound(f'conversation "{conversation_id}" has no turns for user "{user_id}"')
        return ConversationResponse(user_id=user_id, conversation_id=conversation_id, turns=[
            ConversationTurn(seq=t.seq, run_id=t.run_id, created_at=t.created_at, user_query=t.user,
                             output=t.assistant) for t in stored])

    async def _stored(self, run_id: str, tenant: str, user_id: str) -> StoredRun:
        stored = await asyncio.to_thread(self._store.get_run, run_id)
        if stored is None or stored.tenant != tenant or stored.response.user_id != user_id:
            raise NotFound(f'run {run_id} does not exist for user "{user_id}"')
        return stored
