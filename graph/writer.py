"""Group commit: store operations submitted from the event loop, applied on one thread, as many
per transaction as have queued up while the previous transaction ran.

`submit` never blocks and returns a future; a caller that needs the write durable (creating a
run before answering 202, appending a turn before the next run reads it) awaits it, everyone
else fires and forgets (node progress, events). Operations are applied in submission order.
A batch that fails is retried once, then applied one operation at a time so one bad operation
cannot lose the others; a failure is logged and set on that operation's future.

The queue is bounded by what is in flight: each running run has at most a few operations
pending, and the number of runs in flight is bounded by the ingress.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from graph.store import Operation, SqlStore

log = logging.getLogger(__name__)

_MAX_BATCH = 2000
_RETRY_DELAY_S = 0.5


class BatchWriter:
    def __init__(self, store: SqlStore):
        self._store = store
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._pending: list[tuple[Operation, asyncio.Future[Any]]] = []
        self._draining: asyncio.Task[None] | None = None
        self.batches = 0            # counters for tests and benchmarks
        self.operations = 0

    def submit(self, operation: Operation) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        future.add_done_callback(_retrieve)
        self._pending.append((operation, future))
        if self._draining is None:
            self._draining = loop.create_task(self._drain())
        return future

    async def flush(self) -> None:
        """Wait until everything submitted so far is applied."""
        while self._draining is not None:
            await asyncio.shield(self._draining)

    async def close(self) -> None:
        await self.flush()
        self._thread.shutdown(wait=True)

    async def _drain(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending[:_MAX_BATCH], self._pending[_MAX_BATCH:]
                await self._apply(batch)
        finally:
            self._draining = None

    async def _apply(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        operations = [operation for operation, _ in batch]
        started = time.perf_counter()
        for attempt in (1, 2):
            try:
                results = await loop.run_in_executor(self._thread, self._store.apply, operations)
                break
            except Exception:
                if attempt == 1:
                    log.warning("store batch of %d failed; retrying", len(batch), exc_info=True)
                    await asyncio.sleep(_RETRY_DELAY_S)
        else:
            await self._apply_one_by_one(batch)
            return
        self.batches += 1
        self.operations += len(batch)
        for (_, future), result in zip(batch, results):
            if not future.done():
                future.set_result(result)
        log.debug("store batch of %d in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)

    async def _apply_one_by_one(self, batch: list[tuple[Operation, asyncio.Future[Any]]]) -> None:
        loop = asyncio.get_running_loop()
        for operation, future in batch:
            try:
                [result] = await loop.run_in_executor(self._thread, self._store.apply, [operation])
            except Exception as exc:
                log.error("store operation %s failed: %s", type(operation).__name__, exc)
                if not future.done():
                    future.set_exception(exc)
            else:
                if not future.done():
                    future.set_result(result)


def _retrieve(future: asyncio.Future[Any]) -> None:
    """Fire-and-forget writes are logged when they fail; do not also warn 'never retrieved'."""
    if not future.cancelled():
        future.exception()
