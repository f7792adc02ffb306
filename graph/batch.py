"""Batch runs: many workflows from JSON Lines, run concurrently with a bound, with progress.

`read_items` turns lines into validated workflows or line-numbered problems (a bad line never
stops a batch); `run_batch` runs them through any `execute(item)` coroutine — the engine directly for
`sesame batch` (`sesame_cli.py`), the run service for `POST /batch` — with at most `concurrency`
in flight, reading lazily so a million-line file is never held in memory, and calls `on_result`
with each outcome as it comes. `Progress` is what a progress bar and a summary need.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from graph.errors import InvalidRequest, MalformedJSON
from graph.limits import DEFAULT_LIMITS, Limits
from graph.schema import RunResponse
from graph.validation import parse_body, validate_request
from graph.workflow import Workflow

log = logging.getLogger(__name__)
FAILED_STATUSES = ("failed", "cancelled", "interrupted", "action_required")


@dataclass(frozen=True)
class BatchItem:
    line: int                                   # 1-based line number in the input
    workflow: Workflow | None = None
    problems: list[dict[str, Any]] | None = None  # why the line is not a valid request


@dataclass
class Progress:
    total: int | None = None                    # None while the input is still being read
    started_at: float = field(default_factory=time.monotonic)
    statuses: Counter[str] = field(default_factory=Counter)
    durations_ms: list[float] = field(default_factory=list)
    skipped: int = 0                            # already done in an earlier attempt (resume)

    @property
    def done(self) -> int:
        return sum(self.statuses.values())

    @property
    def failed(self) -> int:
        return sum(self.statuses[s] for s in (*FAILED_STATUSES, "invalid"))

    def rate(self) -> float:
        elapsed = time.monotonic() - self.started_at
        return self.done / elapsed if elapsed > 0 else 0.0

    def eta_s(self) -> float | None:
        rate = self.rate()
        if self.total is None or rate == 0:
            return None
        return max(self.total - self.skipped - self.done, 0) / rate

    def summary(self) -> dict[str, Any]:
        durations = sorted(self.durations_ms)
        return {"done": self.done, "failed": self.failed, "skipped": self.skipped,
                "statuses": dict(self.statuses),
                "wall_s": round(time.monotonic() - self.started_at, 3),
                "workflows_per_s": round(self.rate(), 2),
                "p50_ms": round(statistics.median(durations), 1) if durations else None,
                "p95_ms": round(durations[int(0.95 * (len(durations) - 1))], 1) if durations else None}


def read_items(lines: Iterable[str], known_kinds: Any, skip: set[int] | frozenset[int] = frozenset(),
               limits: Limits = DEFAULT_LIMITS) -> Iterator[BatchItem]:
    """One item per non-blank line not in `skip`, validated the way `POST /` validates
    (`known_kinds` as `validate_request` takes it: the registry's `known()`)."""
    for number, line in enumerate(lines, start=1):
        if number in skip or not line.strip():
            continue
        try:
            body, hygiene = parse_body(line.encode("utf-8", "surrogatepass"), limits)
            yield BatchItem(number, workflow=validate_request(body, known_kinds, hygiene, limits))
        except InvalidRequest as exc:
            yield BatchItem(number, problems=exc.problems)
        except MalformedJSON as exc:
            yield BatchItem(number, problems=[{"node_id": None, "field": "(line)", "message": exc.message}])


def outcome(item: BatchItem, response: RunResponse | None) -> dict[str, Any]:
    """The record of one item: what `sesame batch` writes as one line of its output."""
    if response is None:
        count = len(item.problems or [])
        return {"line": item.line, "status": "invalid", "error": {
            "code": "invalid_request", "message": f"{count} problem{'s' if count != 1 else ''} in line "
                                                  f"{item.line}", "problems": item.problems}}
    return {"line": item.line, "run_id": response.run_id, "status": response.status,
            "run": response.model_dump(mode="json")}


async def run_batch(items: Iterable[BatchItem], execute: Callable[[BatchItem], Awaitable[RunResponse]],
                    concurrency: int, on_result: Callable[[dict[str, Any]], None],
                    progress: Progress) -> Progress:
    """Run every item, at most `concurrency` at once; `on_result` gets each outcome."""
    slots = asyncio.Semaphore(concurrency)
    in_flight: set[asyncio.Task[None]] = set()

    async def one(item: BatchItem) -> None:
        started = time.monotonic()
        try:
            response = await execute(item)
        except Exception as exc:  # one broken run must not stop the batch
            log.exception("batch line %d crashed", item.line)
            progress.statuses["failed"] += 1
            on_result({"line": item.line, "status": "failed", "error": {
                "code": "internal_error", "message": f"the run crashed ({type(exc).__name__}); see the log"}})
            return
        finally:
            slots.release()
        progress.durations_ms.append((time.monotonic() - started) * 1000)
        record(item, response)

    def record(item: BatchItem, response: RunResponse | None) -> None:
        result = outcome(item, response)
        progress.statuses[result["status"]] += 1
        on_result(result)

    try:
        for item in items:
            if item.workflow is None:
                record(item, None)
                continue
            await slots.acquire()
            task = asyncio.ensure_future(one(item))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        if in_flight:
            await asyncio.gather(*in_flight)
    finally:
        for task in in_flight:
            task.cancel()
    return progress
