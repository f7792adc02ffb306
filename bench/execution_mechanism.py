"""Which Ray mechanism should carry I/O-bound nodes? Measured side by side in one run.

N concurrent "nodes", each an I/O wait of LATENCY seconds (what an LLM or tool call is to the
engine), dispatched three ways from one driver:
  - plain tasks with the default 1 CPU each (Ray's default),
  - plain tasks with num_cpus=0 (each in-flight task needs its own worker process),
  - an async actor pool (num_cpus=0, high max_concurrency) — what graph.runtime uses.
Also the cost of one no-op hop for each (serial round trips). Prints a table, writes JSON.

    .venv/bin/python bench/execution_mechanism.py [--n 100] [--latency 0.2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import statistics
import time
from pathlib import Path

import ray


def sleep_task(seconds: float) -> None:
    time.sleep(seconds)


class Pool:
    async def wait(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


def measure(label, submit, n, latency, repeats):
    ray.get([submit(0.0) for _ in range(4)])  # warm up workers
    walls = []
    for _ in range(repeats):
        started = time.perf_counter()
        ray.get([submit(latency) for _ in range(n)])
        walls.append(time.perf_counter() - started)
    hops = []
    for _ in range(50):
        started = time.perf_counter()
        ray.get(submit(0.0))
        hops.append((time.perf_counter() - started) * 1000)
    return {"mechanism": label, "wall_s": statistics.median(walls),
            "ratio_to_latency": statistics.median(walls) / latency, "hop_ms": statistics.median(hops)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=100)
    parser.add_argument("--latency", type=float, default=0.2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="bench/results/execution_mechanism.json")
    args = parser.parse_args()

    ray.init(include_dashboard=False, log_to_driver=False)
    default_task = ray.remote(sleep_task)
    zero_cpu_task = ray.remote(num_cpus=0)(sleep_task)
    actors = [ray.remote(Pool).options(num_cpus=0, max_concurrency=1000).remote() for _ in range(2)]
    turn = iter(range(10**9))
    # The actor pool is measured first: the num_cpus=0 row leaves ~N worker processes behind
    # that keep the two cores busy for a while and would inflate whatever runs after them.
    rows = [
        measure("async actor pool (2)", lambda s: actors[next(turn) % 2].wait.remote(s),
                args.n, args.latency, args.repeats),
        measure("task, 1 CPU (default)", lambda s: default_task.remote(s), args.n, args.latency, args.repeats),
        measure("task, num_cpus=0", lambda s: zero_cpu_task.remote(s), args.n, args.latency, args.repeats),
    ]
    ray.shutdown()

    print(f"\n{args.n} concurrent I/O waits of {args.latency * 1000:.0f} ms, median of {args.repeats}"
          f" ({platform.node()}, {ray.__version__})")
    print(f"{'mechanism':28} {'wall s':>8} {'÷ latency':>10} {'hop ms':>8}")
    for row in rows:
        print(f"{row['mechanism']:28} {row['wall_s']:8.3f} {row['ratio_to_latency']:10.2f} {row['hop_ms']:8.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"n": args.n, "latency_s": args.latency, "rows": rows,
                               "machine": platform.platform(), "ray": ray.__version__}, indent=2))


if __name__ == "__main__":
    main()
