"""The event-loop monitor sees a loop being blocked, and says by what."""

from __future__ import annotations

import asyncio
import time

from graph.loop_monitor import LoopMonitor


def _blocking_step() -> None:
    time.sleep(0.35)  # what a sync SDK call in the event loop would do


def test_a_blocked_loop_is_measured_and_its_stack_sampled():
    async def main() -> dict:
        monitor = LoopMonitor(interval_s=0.01, stall_s=0.1).start()
        await asyncio.sleep(0.1)
        _blocking_step()
        await asyncio.sleep(0.1)
        monitor.stop()
        return monitor.snapshot()

    snapshot = asyncio.run(main())
    assert snapshot["max_lag_ms"] >= 300
    assert snapshot["lag_histogram"]["<500ms"] == 1
    assert snapshot["stalls"] == 1
    assert any("_blocking_step" in frame for frame in snapshot["recent_stalls"][0]["stack"])


def test_a_free_loop_has_no_stalls():
    async def main() -> dict:
        monitor = LoopMonitor(interval_s=0.01, stall_s=0.1).start()
        for _ in range(20):
            await asyncio.sleep(0.01)
        monitor.stop()
        return monitor.snapshot()

    snapshot = asyncio.run(main())
    assert snapshot["samples"] >= 5
    assert snapshot["stalls"] == 0 and snapshot["max_lag_ms"] < 100
