"""A run's event stream: the typed events, and the in-process feed live subscribers follow.

Events of one run are numbered 1, 2, 3... (`seq`), which is the SSE `id:` a client sends back as
`Last-Event-ID` to resume. The order of a run's events:

    run_queued?            the run waits for its conversation (another run of it is in flight)
    run_started            {"nodes": [{"id", "name", "type"}]}
    node_started           {"node_id"}                            ┐ per node, interleaved
    token*                 {"node_id", "text", "attempt"}         │ across nodes that run
    node_finished          {"node": NodeResult}                   ┘ at once
    run_finished           {"run": RunResponse}                   always last

`LiveFeed` keeps the events of a run this process is executing, so a subscriber can replay from
any point and then wait for new ones. It holds no locks and never blocks: it is only touched
from the event loop that runs the run. Persisting events is the store's business, not this one's.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal


EventType = Literal["run_queued", "run_started", "node_started", "token", "node_finished",
                    "run_finished"]


@dataclass(frozen=True)
class RunEvent:
    """One event. Its fields beyond `run_id`, `seq` and `at` are kept as JSON text (`data_json`),
    encoded once where the event is made: the same text goes to the store and to every SSE
    subscriber (node results and whole runs are encoded by pydantic-core, not json.dumps)."""

    run_id: str
    seq: int
    type: EventType
    at: float
    data_json: str  # a JSON object

    @classmethod
    def of(cls, run_id: str, seq: int, type_: EventType, at: float, data: dict[str, Any]) -> "RunEvent":
        return cls(run_id, seq, type_, at, json.dumps(data, ensure_ascii=False, separators=(",", ":")))

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.data_json)

    def as_sse(self) -> str:
        """The event as one Server-Sent Events message."""
        head = f'{{"run_id":{json.dumps(self.run_id)},"seq":{self.seq},"at":{self.at!r}'
        payload = head + "}" if self.data_json == "{}" else f"{head},{self.data_json[1:]}"
        return f"id: {self.seq}\nevent: {self.type}\ndata: {payload}\n\n"


class LiveFeed:
    """The events of one run in flight in this process, in order, for live subscribers."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.events: list[RunEvent] = []
        self.closed = False
        self._wakeup = asyncio.Event()

    def publish(self, event: RunEvent) -> None:
        self.events.append(event)
        if event.type == "run_finished":
            self.closed = True
        self._wakeup.set()
        self._wakeup = asyncio.Event()

    async def follow(self, after_seq: int = 0,
                     keepalive_s: float | None = None) -> AsyncIterator[RunEvent | None]:
        """Every event with `seq > after_seq`, then new ones as they come, until run_finished.
        Yields None after `keepalive_s` without an event (so the caller can send a keep-alive)."""
        index = 0
        while True:
            while index < len(self.events):
                event = self.events[index]
                index += 1
                if event.seq > after_seq:
                    yield event
            if self.closed:
                return
            try:
                await asyncio.wait_for(self._wakeup.wait(), keepalive_s)
            except TimeoutError:
                yield None
