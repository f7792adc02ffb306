"""Is anything blocking this event loop? A cheap, always-on probe for the ingress replica.

Two parts:
- a heartbeat task on the loop sleeps `interval_s` and records how late it woke up (the loop's
  *lag*) in a histogram of monotonic counters, so a reader can difference two snapshots;
- a watchdog thread notices when the heartbeat is `stall_s` overdue and samples the loop
  thread's stack right then: a blocking call (sync I/O, a CPU-heavy step) shows up by name.
  It samples the process's other threads too: one busy in Python starves the loop of the GIL.

Lag also grows when the loop is merely busy (many ready callbacks); the sampled stacks tell the
two apart. `snapshot()` is JSON-ready. It must not import Ray, FastAPI or the engine.
"""

from __future__ import annotations

import asyncio
import collections
import sys
import threading
import time
import traceback
from typing import Any

# Upper bounds of the lag buckets, in ms; a last bucket catches everything above.
BUCKETS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000)
_STACK_FRAMES = 8
_STALLS_KEPT = 5
_OTHER_THREADS = 12


class LoopMonitor:
    def __init__(self, interval_s: float = 0.01, stall_s: float = 0.1):
        self._interval_s = interval_s
        self._stall_s = stall_s
        self._counts = [0] * (len(BUCKETS_MS) + 1)
        self._samples = 0
        self._max_lag_s = 0.0
        self._stall_count = 0
        self._stalls: collections.deque[dict[str, Any]] = collections.deque(maxlen=_STALLS_KEPT)
        self._last_beat = time.monotonic()
        self._loop_thread: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopped = threading.Event()

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> "LoopMonitor":
        """Watch `loop` (default: the running loop, else this thread's loop); thread-safe."""
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = asyncio.get_event_loop_policy().get_event_loop()
        loop.call_soon_threadsafe(self._start_on_loop)
        threading.Thread(target=self._watch, name="loop-monitor", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._task is not None:
            self._task.get_loop().call_soon_threadsafe(self._task.cancel)

    def snapshot(self) -> dict[str, Any]:
        labels = [f"<{b}ms" for b in BUCKETS_MS] + [f">={BUCKETS_MS[-1]}ms"]
        return {"samples": self._samples, "interval_ms": self._interval_s * 1000,
                "max_lag_ms": round(self._max_lag_s * 1000, 3),
                "lag_histogram": dict(zip(labels, self._counts)),
                "stalls": self._stall_count, "stall_ms": self._stall_s * 1000,
                "recent_stalls": list(self._stalls)}

    def _start_on_loop(self) -> None:
        self._loop_thread = threading.get_ident()
        self._last_beat = time.monotonic()
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while not self._stopped.is_set():
            before = time.monotonic()
            await asyncio.sleep(self._interval_s)
            now = time.monotonic()
            self._record(max(0.0, now - before - self._interval_s))
            self._last_beat = now

    def _record(self, lag_s: float) -> None:
        lag_ms = lag_s * 1000
        bucket = next((i for i, bound in enumerate(BUCKETS_MS) if lag_ms < bound), len(BUCKETS_MS))
        self._counts[bucket] += 1
        self._samples += 1
        self._max_lag_s = max(self._max_lag_s, lag_s)

    def _watch(self) -> None:
        """Sample the loop thread's stack once per stall (a heartbeat overdue by `stall_s`)."""
        reported_beat = None
        while not self._stopped.wait(self._stall_s / 2):
            beat = self._last_beat
            overdue = time.monotonic() - beat - self._interval_s
            if overdue < self._stall_s or beat == reported_beat or self._loop_thread is None:
                continue
            reported_beat = beat
            frames = sys._current_frames()
            names = {thread.ident: thread.name for thread in threading.enumerate()}
            others = {names.get(ident, str(ident)): _stack(frame, 2) for ident, frame in frames.items()
                      if ident not in (self._loop_thread, threading.get_ident())}
            self._stall_count += 1
            self._stalls.append({"at": time.time(), "overdue_ms": round(overdue * 1000, 1),
                                 "stack": _stack(frames.get(self._loop_thread), _STACK_FRAMES),
                                 # who else ran Python meanwhile (a busy thread can starve the loop of the GIL)
                                 "other_threads": dict(list(others.items())[:_OTHER_THREADS])})


def _stack(frame: Any, depth: int) -> list[str]:
    if frame is None:
        return []
    return [f"{f.filename}:{f.lineno} {f.name}" for f in traceback.extract_stack(frame)[-depth:]]
