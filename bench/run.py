"""The benchmark, end to end: stubs up, each engine measured in a process of its own, one table.

    scripts/bench            # the full run (issue 4's sizes; ~20 min on 2 cores)
    scripts/bench --quick    # smaller graphs and load, ~3 min
    scripts/bench --help     # every size and flag

Engines: plain asyncio (the floor), LangGraph, Sesame in-process (its scheduler, no Ray), Sesame
through its Python entry point on Ray, Sesame over HTTP (Serve) — each in a process of its own,
all alive at once and interleaved run by run, so the machine's noise falls on them alike. All call the same loopback
OpenAI stub through the real openai SDK, and the reference workflow's Gmail tool goes through
the real composio SDK to the Composio stub. Writes bench/results/bench-<time>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import signal
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import psutil

from bench import report
from bench.engine_process import ENGINES
from bench.graphs import USER_ID
from bench.stubs import COMPOSIO_KEY, ROOT, StubProcess

OPENAI_KEY = "bench-openai-key"
_STEP_TIMEOUT_S = 1800  # one step (a run, a load) of one engine


def plan_for(args: argparse.Namespace) -> dict[str, Any]:
    latency = args.latency_ms

    def graph(shape: str, name: str, ms: float = latency, **size: Any) -> dict[str, Any]:
        return {"shape": shape, "label": f"{name} @{ms:g}ms", "latency_ms": ms, **size}

    reference = graph("reference", "reference", tool_latency_ms=latency)
    graphs = [reference, graph("chain", f"chain-{args.chain}", 0, n=args.chain)]
    if not args.quick:
        graphs.append(graph("chain", f"chain-{args.chain}", n=args.chain))
    graphs += [graph("fan_out", f"fan-out-{n}", n=n) for n in args.fan_out]
    graphs += [graph("diamond", f"diamond-{args.diamond[0]}x{args.diamond[1]}",
                     width=args.diamond[0], depth=args.diamond[1]),
               graph("random_dag", f"random-{args.random[0]}", n=args.random[0], layers=args.random[1],
                     seed=args.seed)]
    if args.graphs is not None:
        graphs = [g for g in graphs if g["shape"] in args.graphs]
    load = None if args.loads == 0 else {"graph": reference, "concurrency": args.load_concurrency,
                                         "total": args.load_total or 2 * args.load_concurrency,
                                         "loads": args.loads, "settle_s": args.settle_s}
    return {"graphs": graphs, "repeats": args.repeats, "load": load,
            "profile_dir": str(Path(args.profile).resolve()) if args.profile else None}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="smaller graphs and load, 3 repeats, 2 loads (a few minutes)")
    parser.add_argument("--engines", default=",".join(ENGINES),
                        help=f"comma-separated subset of {','.join(ENGINES)}")
    parser.add_argument("--repeats", type=int, help="timed runs per graph (after one warm-up run)")
    parser.add_argument("--latency-ms", type=float, default=200.0, help="stub latency per model and tool call")
    parser.add_argument("--chain", type=int, default=50, help="chain length")
    parser.add_argument("--fan-out", type=lambda s: [int(x) for x in s.split(",")], help="fan-out widths, e.g. 100,500")
    parser.add_argument("--diamond", type=lambda s: [int(x) for x in s.split("x")], help="lattice WIDTHxDEPTH")
    parser.add_argument("--random", type=lambda s: [int(x) for x in s.split("/")], help="random DAG NODES/LAYERS")
    parser.add_argument("--graphs", type=lambda s: [x for x in s.split(",") if x],
                        help="only these shapes (reference,chain,fan_out,diamond,random_dag); '' = none")
    parser.add_argument("--seed", type=int, default=7, help="seed of the random DAG")
    parser.add_argument("--load-concurrency", type=int, help="concurrent clients in the load")
    parser.add_argument("--load-total", type=int, help="workflows per load (default 2 × concurrency)")
    parser.add_argument("--loads", type=int, help="repeated loads (to see memory growth); 0 = no load")
    parser.add_argument("--settle-s", type=float, default=3.0,
                        help="seconds to wait after each load before reading the RSS it settled at")
    parser.add_argument("--out", help="JSON results path (default bench/results/bench-<time>.json)")
    parser.add_argument("--profile", metavar="DIR",
                        help="after the loads, run one more under py-spy and summarise where the CPU went")
    args = parser.parse_args(argv)
    quick = args.quick
    defaults = {"repeats": 3 if quick else 5, "fan_out": [100, 500], "diamond": [5, 5] if quick else [10, 10],
                "random": [100, 5] if quick else [200, 10], "load_concurrency": 200 if quick else 1000,
                "loads": 2 if quick else 3}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    unknown = [e for e in args.engines if e not in ENGINES]
    if unknown:
        parser.error(f"unknown engine(s) {', '.join(unknown)}; known: {', '.join(ENGINES)}")
    return args


def machine() -> dict[str, Any]:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    versions = {}
    for package in ("ray", "langgraph", "openai", "composio", "httpx", "fastapi", "pydantic"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"host": platform.node(), "platform": platform.platform(), "cpu": model,
            "cores": psutil.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
            "python": platform.python_version(), "versions": versions}


class EngineProcess:
    """One engine's process (bench.engine_process), driven by commands; a failed engine is
    dropped (`failed` says why) and the others go on."""

    def __init__(self, name: str, plan: dict[str, Any], env: dict[str, str], workdir: Path):
        self.name = name
        self.failed: str | None = None
        plan_path = workdir / f"{name}.plan.json"
        plan_path.write_text(json.dumps(plan))
        reply_read, reply_write = os.pipe()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "bench.engine_process", name, str(plan_path), str(reply_write)],
            cwd=ROOT, env=env, stdin=subprocess.PIPE, text=True, pass_fds=(reply_write,),
            start_new_session=True)
        os.close(reply_write)
        self._replies = os.fdopen(reply_read, "r")

    def call(self, op: str, **args: Any) -> Any:
        if self.failed:
            return None
        try:
            assert self._process.stdin is not None
            self._process.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self._process.stdin.flush()
            ready, _, _ = select.select([self._replies], [], [], _STEP_TIMEOUT_S)
            line = self._replies.readline() if ready else ""
        except OSError as exc:
            line = json.dumps({"ok": False, "error": f"{type(exc).__name__}: {exc}"})
        if not line:
            line = json.dumps({"ok": False, "error": f"no answer to {op!r} (exit code {self._process.poll()})"})
        reply = json.loads(line)
        if not reply["ok"]:
            self.failed = f"{op}: {reply['error']}"
            print(f"[bench] {self.name} FAILED at {self.failed}", file=sys.stderr, flush=True)
            self.stop()
            return None
        return reply["value"]

    def stop(self) -> None:
        if self._replies.closed:
            return
        if self._process.stdin and not self._process.stdin.closed:
            try:
                self._process.stdin.close()
            except OSError:
                pass
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait()
        self._replies.close()


def measure_all(engines: list[EngineProcess], plan: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Interleaved: every engine prepares a graph, then each repeat runs on every engine in turn
    (the order rotating), then the same for each load — so noise from the rest of the machine
    falls on all engines alike, instead of on whichever ran during it."""
    def each(op: str, rotate: int = 0, **args: Any) -> None:
        for engine in engines[rotate % len(engines):] + engines[:rotate % len(engines)]:
            engine.call(op, **args)

    def log(message: str) -> None:
        print(f"[bench] {time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)

    log("starting " + ", ".join(e.name for e in engines))
    each("start")
    for index, spec in enumerate(plan["graphs"]):
        log(f"{spec['label']}: warm-up and {plan['repeats']} repeats per engine")
        each("prepare", graph=index)
        for repeat in range(plan["repeats"]):
            each("time", rotate=repeat, graph=index)
        each("finish", graph=index)
    load = plan.get("load")
    if load:
        for index in range(load["loads"]):
            log(f"load {index + 1} of {load['loads']}: {load['concurrency']} clients, {load['total']} workflows")
            each("load", rotate=index, index=index)
        if plan.get("profile_dir"):
            log("one more load per engine under py-spy")
            each("profile")
    results = {}
    for engine in engines:
        result = engine.call("close")
        engine.stop()
        if result is not None:
            results[engine.name] = result
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    plan = plan_for(args)
    started_at = datetime.datetime.now().astimezone()
    load_before = os.getloadavg()
    openai = StubProcess("openai")
    composio = StubProcess("composio", "--execute-delay-ms", str(args.latency_ms), "--active-user", USER_ID)
    results: dict[str, dict[str, Any]] = {}
    try:
        plan["stub_pids"] = {"openai": openai.pid, "composio": composio.pid}
        env = {**os.environ, "OPENAI_BASE_URL": openai.base_url, "OPENAI_API_KEY": OPENAI_KEY,
               "COMPOSIO_BASE_URL": composio.base_url, "COMPOSIO_API_KEY": COMPOSIO_KEY,
               "PYTHONPATH": str(ROOT)}
        with tempfile.TemporaryDirectory(prefix="sesame-bench-") as workdir:
            engines = [EngineProcess(name, plan, env, Path(workdir)) for name in args.engines]
            try:
                results = measure_all(engines, plan)
            finally:
                for engine in engines:
                    engine.stop()
    finally:
        openai.stop()
        composio.stop()

    summary = report.summarise(results)
    out = {"started_at": started_at.isoformat(timespec="seconds"), "args": sys.argv[1:] if argv is None else argv,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "machine": machine(), "plan": plan, "summary": summary, "raw": results}
    path = Path(args.out) if args.out else ROOT / "bench" / "results" / f"bench-{started_at:%Y%m%d-%H%M%S}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    m = out["machine"]
    print(f"\nSesame benchmark — {started_at:%Y-%m-%d %H:%M %Z}, {m['cpu']}, {m['cores']} cores, "
          f"{m['memory_gib']} GiB, Python {m['python']}, ray {m['versions']['ray']}, "
          f"langgraph {m['versions']['langgraph']}; load average before/after "
          f"{load_before[0]:.2f}/{out['load_average_after'][0]:.2f}; {args.repeats} repeats per graph")
    print(report.tables(summary, [e for e in args.engines if e in results]))
    print(report.profiles(results))
    missing = [e for e in args.engines if e not in results]
    if missing:
        print(f"\nengines that failed: {', '.join(missing)} (see the log above)")
    print(f"\nresults: {path}")
    if missing:
        sys.exit(1)
