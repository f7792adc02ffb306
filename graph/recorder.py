"""Turns one run's progress into events and stored state, as it happens.

A `RunRecorder` is the `RunObserver` of a run this process executes. Every change becomes a
numbered `RunEvent`, published at once to the run's `LiveFeed` (live subscribers) and handed to
the `BatchWriter` (the store), together with the node's or run's new state. It also keeps the
run's current `RunResponse`, so this process can answer `GET /runs/{id}` without the store.

Nothing here awaits: the scheduler calls it from its event loop on every node and token.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from graph.events import EventType, LiveFeed, RunEvent
from graph.schema import NodeId, NodeResult, RunResponse
from graph.text import valid_text
from graph.store import AppendEvents, CreateRun, SaveNode, SaveRun
from graph.workflow import Workflow
from graph.writer import BatchWriter


class RunRecorder:
    def __init__(self, run_id: str, workflow: Workflow, writer: BatchWriter):
        self.run_id = run_id
        self.feed = LiveFeed(run_id)
        self._writer = writer
        self._seq = 0
        self._created = time.time()
        self._nodes = {node_id: NodeResult(id=node_id, name=spec.name, type=spec.type, status="pending")
                       for node_id, spec in workflow.nodes.items()}
        self._run = RunResponse(run_id=run_id, status="queued", user_id=workflow.user_id,
                                conversation_id=workflow.conversation_id, nodes={}, duration_ms=0.0)
        self._last_write: asyncio.Future[Any] | None = None

    def create(self, tenant: str, owner: str, idempotency_key: str | None,
               request_hash: str | None) -> asyncio.Future[Any]:
        """Store the run (status `queued`); the future tells whether an idempotency key clashed."""
        return self._write(CreateRun(self.snapshot(), tenant, owner, idempotency_key, request_hash))

    def snapshot(self) -> RunResponse:
        duration = self._run.duration_ms if self._run.finished else round((time.time() - self._created) * 1000, 3)
        return self._run.model_copy(update={"nodes": dict(self._nodes), "duration_ms": duration})

    # ---- the run ---------------------------------------------------------------------------

    def queued(self, behind_run_id: str | None) -> None:
        self._emit("run_queued", {"reason": "conversation_busy", "behind_run_id": behind_run_id})

    def started(self) -> None:
        self._run = self._run.model_copy(update={"status": "running"})
        self._emit("run_started", {"nodes": [{"id": n.id, "name": n.name, "type": n.type}
                                             for n in self._nodes.values()]})
        self._write(SaveRun(self.snapshot()))

    def finished(self, response: RunResponse) -> None:
        """The run's final answer: nodes that changed without an event (preflight, cancel)
        get their `node_finished` first, then `run_finished`; everything is stored."""
        for node_id, node in response.nodes.items():
            if self._nodes.get(node_id) != node:
                self.node_finished(node)
        self._run = response
        self._emit_json("run_finished", f'{{"run":{response.model_dump_json()}}}')
        self._write(SaveRun(response, final=True))

    async def flushed(self) -> None:
        """Wait until everything recorded so far is in the store."""
        if self._last_write is not None:
            await asyncio.wait({self._last_write})

    # ---- the RunObserver protocol ----------------------------------------------------------

    def node_started(self, node_id: NodeId) -> None:
        node = self._nodes[node_id].model_copy(update={"status": "running", "started_at": time.time()})
        self._nodes[node_id] = node
        self._emit("node_started", {"node_id": node_id})
        self._write(SaveNode(self.run_id, node))

    def token(self, node_id: NodeId, text: str, attempt: int) -> None:
        self._emit("token", {"node_id": node_id, "text": valid_text(text), "attempt": attempt})

    def node_finished(self, result: NodeResult) -> None:
        self._nodes[result.id] = result
        self._emit_json("node_finished", f'{{"node":{result.model_dump_json()}}}')
        self._write(SaveNode(self.run_id, result))

    # ---- plumbing --------------------------------------------------------------------------

    def _emit(self, type_: EventType, data: dict[str, Any]) -> None:
        self._emit_json(type_, json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    def _emit_json(self, type_: EventType, data_json: str) -> None:
        self._seq += 1
        event = RunEvent(self.run_id, self._seq, type_, time.time(), data_json)
        self.feed.publish(event)
        self._write(AppendEvents((event,)))

    def _write(self, operation: Any) -> asyncio.Future[Any]:
        self._last_write = self._writer.submit(operation)
        return self._last_write
