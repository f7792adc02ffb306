"""Measuring one engine: every graph (a warm-up run, then timed repeats) and the concurrent load
(several loads in a row, sampling memory and CPU), with the event loop watched throughout.

Runs inside one process per engine (see bench.run): the process that runs the workflows is the
"driver"; a Ray cluster it started is its descendants; the stubs are separate processes whose
CPU is counted apart. Raw figures only: medians and ratios are bench.report's business.
"""

from __future__ import annotations

import asyncio
import gc
import itertools
import os
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from bench.engines import Engine
from bench.graphs import build
from bench.profile import Profiler
from graph.loop_monitor import BUCKETS_MS, LoopMonitor

_SAMPLE_EVERY_S = 0.5
_SETTLE_S = 3.0  # after a load, before reading the memory it settled at


class Processes:
    """CPU and memory of the driver, its descendants (a Ray cluster it started) and the stubs."""

    def __init__(self, stub_pids: dict[str, int]):
        self._driver = psutil.Process()
        self._stubs = {pid: f"stub:{name}" for name, pid in stub_pids.items()
                       if pid != self._driver.pid}
        self._known: dict[int, psutil.Process] = {}

    def _tree(self) -> list[psutil.Process]:
        children = self._driver.children(recursive=True)
        for proc in children:
            self._known.setdefault(proc.pid, proc)  # keep the object: it caches create_time
        return [self._known[p.pid] for p in children]

    def profile_targets(self) -> dict[str, int]:
        """The processes worth profiling: the driver and Sesame's own Ray processes (one each)."""
        targets = {"driver": self._driver.pid}
        for proc in self._tree():
            try:
                group = _group(proc)
            except psutil.Error:
                continue
            if group.startswith(("ray::NodeWorker", "ray::ServeReplica", "ray::ProxyActor")):
                targets.setdefault(group, proc.pid)
        return targets

    def memory(self) -> dict[str, int]:
        """RSS in bytes: the driver, and the sum over its descendants (the Ray cluster)."""
        cluster = 0
        for proc in self._tree():
            try:
                cluster += proc.memory_info().rss
            except psutil.Error:
                pass
        return {"driver": self._driver.memory_info().rss, "cluster": cluster}

    def memory_by_group(self) -> dict[str, int]:
        """RSS in bytes per process group of the driver's tree (to see which one grows)."""
        groups = {"driver": self._driver.memory_info().rss}
        for proc in self._tree():
            try:
                group, rss = _group(proc), proc.memory_info().rss
            except psutil.Error:
                continue
            groups[group] = groups.get(group, 0) + rss
        return groups

    def cpu(self) -> dict[str, float]:
        """CPU seconds (user + system) so far, summed per process group (driver, stub:openai,
        raylet, ray::NodeWorker, ray::ServeReplica:…, …)."""
        groups: dict[str, float] = {}
        procs = [(self._driver, "driver"), *((p, None) for p in self._tree())]
        procs += [(psutil.Process(pid), name) for pid, name in self._stubs.items() if psutil.pid_exists(pid)]
        for proc, name in procs:
            try:
                times = proc.cpu_times()
                group = name or _group(proc)
            except psutil.Error:
                continue
            groups[group] = groups.get(group, 0.0) + times.user + times.system
        return groups


def _group(proc: psutil.Process) -> str:
    command = proc.cmdline() or [proc.name()]
    first = command[0].split(" ")[0]
    if first.startswith("ray::"):
        return first.split(".")[0]
    if Path(first).name.startswith("python"):
        script = next((arg for arg in command[1:] if arg.endswith(".py")), first)
        return Path(script).name
    return Path(first).name


def _delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: round(v - before.get(k, 0.0), 3) for k, v in sorted(after.items(), key=lambda kv: -kv[1])
            if v - before.get(k, 0.0) > 0.0005}


def _cpu_summary(delta: dict[str, float], wall_s: float) -> dict[str, Any]:
    stubs = sum(v for k, v in delta.items() if k.startswith("stub:"))
    engine = sum(v for k, v in delta.items() if not k.startswith("stub:"))
    return {"engine_cpu_s": round(engine, 3), "stub_cpu_s": round(stubs, 3),
            "engine_cores": round(engine / wall_s, 3), "stub_cores": round(stubs / wall_s, 3),
            "by_process": delta}


def lag_window(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any] | None:
    """Event-loop lag between two `LoopMonitor.snapshot()`s: beats per bucket, the bucket holding
    the 99th percentile and the worst one, stalls, and the stacks sampled during stalls."""
    if not before or not after:
        return None
    counts = {k: after["lag_histogram"][k] - before["lag_histogram"].get(k, 0) for k in after["lag_histogram"]}
    beats = sum(counts.values())
    labels = list(counts)
    running, p99, worst = 0, None, None
    for label in labels:
        running += counts[label]
        if p99 is None and beats and running >= 0.99 * beats:
            p99 = label
        if counts[label]:
            worst = label
    stalls = [s for s in after.get("recent_stalls", []) if s not in before.get("recent_stalls", [])]
    return {"beats": beats, "histogram": counts, "p99": p99, "worst": worst,
            "stalls": after["stalls"] - before["stalls"], "stall_stacks": stalls}


def merge_lags(windows: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """Several `lag_window`s as one (the timed runs of a graph, without the pauses between)."""
    windows = [w for w in windows if w]
    if not windows:
        return None
    histogram = {k: sum(w["histogram"][k] for w in windows) for k in windows[0]["histogram"]}
    before = {"lag_histogram": {k: 0 for k in histogram}, "stalls": 0, "recent_stalls": []}
    after = {"lag_histogram": histogram, "stalls": sum(w["stalls"] for w in windows),
             "recent_stalls": [s for w in windows for s in w["stall_stacks"]][-5:]}
    return lag_window(before, after)


async def _open_window(loop_snapshot: Any, processes: Processes,
                       collect: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Collect garbage and read the CPU counters, then let the loop monitor record that pause
    *before* the window opens: the bench's own work must not count as the engine's."""
    if collect:
        gc.collect()
    cpu = processes.cpu()
    await asyncio.sleep(0.03)
    return await loop_snapshot(), cpu


class _Sampler:
    """Samples memory in a thread while a load runs (a thread: a busy event loop must not
    delay the sampling, and the sampling must not wait for the loop)."""

    def __init__(self, processes: Processes):
        self._processes = processes
        self._stop = threading.Event()
        self.samples: list[dict[str, int]] = []
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "_Sampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.samples.append(self._processes.memory())
            if self._stop.wait(_SAMPLE_EVERY_S):
                return


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


class Session:
    """One engine under measurement, driven step by step — so that bench.run can interleave the
    engines (each repeat of a graph runs on every engine within seconds, under the same noise
    from the rest of the machine). `measure` runs every step in order, for one engine alone."""

    def __init__(self, engine: Engine, plan: dict[str, Any], stub_pids: dict[str, int]):
        self.engine = engine
        self.plan = plan
        self._processes = Processes(stub_pids)
        self._monitor = LoopMonitor()
        self._graphs: dict[int, tuple[Any, Any]] = {}
        self._runs: dict[int, list[dict[str, Any]]] = {}
        self._load: tuple[dict[str, Any], Any] | None = None
        self.result: dict[str, Any] = {"engine": engine.name, "graphs": [], "loads": []}

    async def start(self) -> None:
        # asyncio's default pool has 6 threads on 2 cores; Sesame's worker actors have
        # SESAME_WORKER_THREADS each. In-process engines get as many threads as the whole pool.
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(self.plan["threads"], thread_name_prefix="sdk"))
        self._monitor.start()
        await self.engine.start()

    async def _loop_snapshot(self) -> dict[str, Any]:
        return await self.engine.loop_snapshot() or self._monitor.snapshot()

    async def prepare(self, index: int) -> None:
        """Build graph `index` of the plan, prepare it for the engine, and run it once (warm-up)."""
        graph = build(self.plan["graphs"][index])
        prepared = await self.engine.prepare(graph)
        await self.engine.run(prepared, f"{self.engine.name}-{graph.name}-warm")
        self._graphs[index] = (graph, prepared)
        self._runs[index] = []

    async def time_graph(self, index: int) -> float:
        """One timed run of graph `index` (prepared); returns its wall time."""
        graph, prepared = self._graphs[index]
        runs = self._runs[index]
        lag_before, cpu_before = await _open_window(self._loop_snapshot, self._processes,
                                                    self.plan.get("collect_garbage", True))
        started = time.perf_counter()
        await self.engine.run(prepared, f"{self.engine.name}-{graph.name}-{len(runs)}")
        wall = time.perf_counter() - started
        runs.append({"wall_s": wall, "cpu": _delta(self._processes.cpu(), cpu_before),
                     "lag": lag_window(lag_before, await self._loop_snapshot())})
        return wall

    def finish_graph(self, index: int) -> None:
        graph, _ = self._graphs.pop(index)
        runs = self._runs.pop(index)
        walls = [run["wall_s"] for run in runs]
        cpu: dict[str, float] = {}
        for run in runs:
            for group, seconds in run["cpu"].items():
                cpu[group] = cpu.get(group, 0.0) + seconds
        self.result["graphs"].append({
            **graph.describe(), "label": self.plan["graphs"][index]["label"], "walls_s": walls,
            "median_s": statistics.median(walls), "cpu": _cpu_summary(cpu, sum(walls)),
            "loop_lag": merge_lags([run["lag"] for run in runs])})

    async def _prepared_load(self) -> tuple[dict[str, Any], Any]:
        if self._load is None:
            graph = build(self.plan["load"]["graph"])
            prepared = await self.engine.prepare(graph)
            await self.engine.run(prepared, f"{self.engine.name}-load-warm")
            self._load = (graph.describe(), prepared)
        return self._load

    async def load(self, index: int) -> dict[str, Any]:
        graph, prepared = await self._prepared_load()
        figures = await _one_load(self.engine, prepared, graph, self.plan["load"], index,
                                  self._processes, self._loop_snapshot)
        self.result["loads"].append(figures)
        return figures

    async def profile(self) -> None:
        """One more load under py-spy (not one of the measured loads: sampling costs CPU)."""
        graph, prepared = await self._prepared_load()
        profiler = Profiler(Path(self.plan["profile_dir"]), self.engine.name, self._processes.profile_targets())
        with profiler:
            self.result["profiled_load"] = await _one_load(self.engine, prepared, graph, self.plan["load"], -1,
                                                           self._processes, self._loop_snapshot)
        self.result["profile"] = profiler.summaries()

    async def close(self) -> dict[str, Any]:
        await self.engine.close()
        self._monitor.stop()
        return self.result


async def measure(engine: Engine, plan: dict[str, Any], stub_pids: dict[str, int]) -> dict[str, Any]:
    """Every figure of one engine alone, raw: each graph (warm-up, then `repeats` timed runs),
    then the loads, then the profiled load if asked for."""
    session = Session(engine, plan, stub_pids)
    await session.start()
    for index in range(len(plan["graphs"])):
        await session.prepare(index)
        for _ in range(plan["repeats"]):
            await session.time_graph(index)
        session.finish_graph(index)
    if plan.get("load"):
        for index in range(plan["load"]["loads"]):
            await session.load(index)
        if plan.get("profile_dir"):
            await session.profile()
    return await session.close()


async def _one_load(engine: Engine, prepared: Any, graph: dict[str, Any], load: dict[str, Any],
                    index: int, processes: Processes, loop_snapshot: Any) -> dict[str, Any]:
    """`concurrency` clients, each running workflows back to back until `total` have started."""
    counter = itertools.count()
    latencies: list[float] = []
    failures: list[str] = []

    async def client() -> None:
        while (n := next(counter)) < load["total"]:
            started = time.perf_counter()
            try:
                await engine.run(prepared, f"{engine.name}-load{index}-{n}")
            except Exception as exc:  # counted and shown, not fatal: a figure with failures is flagged
                failures.append(f"{type(exc).__name__}: {str(exc)[:200]}")
                continue
            latencies.append(time.perf_counter() - started)

    lag_before, cpu_before = await _open_window(loop_snapshot, processes, load.get("collect_garbage", True))
    with _Sampler(processes) as sampler:
        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(load["concurrency"])))
        wall = time.perf_counter() - started
    cpu = _cpu_summary(_delta(processes.cpu(), cpu_before), wall)
    lag = lag_window(lag_before, await loop_snapshot())
    await asyncio.sleep(load.get("settle_s", _SETTLE_S))
    settled = processes.memory()
    settled_groups = processes.memory_by_group()
    return {
        "graph": graph, "concurrency": load["concurrency"], "total": load["total"], "wall_s": wall,
        "succeeded": len(latencies), "failed": len(failures), "failures": failures[:5],
        "workflows_per_s": len(latencies) / wall,
        "p50_s": _percentile(latencies, 0.50), "p99_s": _percentile(latencies, 0.99),
        "max_s": max(latencies, default=float("nan")),
        "peak_rss_cluster": max((s["cluster"] for s in sampler.samples), default=0),
        "peak_rss_driver": max((s["driver"] for s in sampler.samples), default=0),
        "peak_rss_total": max((s["cluster"] + s["driver"] for s in sampler.samples), default=0),
        "settled_rss_cluster": settled["cluster"], "settled_rss_driver": settled["driver"],
        "settled_rss_by_process": settled_groups,
        "rss_samples": len(sampler.samples), "cpu": cpu, "loop_lag": lag,
        "pid": os.getpid(), "lag_buckets_ms": list(BUCKETS_MS), "load_average": os.getloadavg()[0],
    }
