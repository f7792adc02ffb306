"""A bounded load with injected provider failures: does Sesame keep its promises under it?

Sesame as `scripts/serve` runs it (its own Ray, Serve's direct ingress, a fresh SQLite store)
gets TOTAL synchronous `POST /` requests from CONCURRENCY clients; each request is a small
workflow (a root LLM fanning out to two LLM children) whose model calls fail at random with
FAIL_RATE probability (429 with Retry-After, 500, 503 — retried — or 400, which is not). Then
every run id is read back. It checks, and prints as a table (JSON in bench/results/):

- no HTTP 5xx from Sesame (a failed node is a 200 with `partial`/`failed`, never a 500);
- every run id is readable afterwards and every run is in a terminal status;
- the Ray cluster's memory is flat: RSS (sum over Sesame's Ray processes) sampled each second
  through the load (not the read-back), compared between the end of the first quarter and the
  end of the load, with the growth by process (which one grows).

Loopback only; it stops by itself.

    .venv/bin/python -m bench.fault_load [--total 2000] [--concurrency 50] [--fail-rate 0.05]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

from bench import sesame_adapter
from bench.measure import Processes
from bench.stubs import StubProcess

TERMINAL = {"succeeded", "partial", "failed", "action_required", "cancelled", "interrupted"}


def workflow(index: int, fail_rate: float) -> dict[str, Any]:
    def llm(node_id: str, children: list[str]) -> dict[str, Any]:
        return {"id": node_id, "type": "LLM", "name": node_id, "provider_name": "OpenAI",
                "model_name": "m", "prompt_template": "{input}", "api_key_name": "OPENAI_API_KEY",
                "parameters": {"stub": {"latency_ms": 50, "fail_rate": fail_rate}},
                "children": children}

    nodes = [llm("root", ["a", "b"]), llm("a", []), llm("b", [])]
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": f"question {index}",
            "user_id": f"user{index % 50}@example.com", "conversation_id": f"load-{index}"}


async def drive(url: str, total: int, concurrency: int, fail_rate: float,
                load_done: threading.Event) -> dict[str, Any]:
    import aiohttp

    statuses: collections.Counter[int] = collections.Counter()
    no_answer: collections.Counter[str] = collections.Counter()  # by the client's error
    run_statuses: collections.Counter[str] = collections.Counter()
    runs: dict[str, str] = {}  # run id -> user
    latencies: list[float] = []
    pending = iter(range(total))
    async with aiohttp.ClientSession(url, timeout=aiohttp.ClientTimeout(total=120)) as http:
        async def client() -> None:
            for index in pending:
                body = workflow(index, fail_rate)
                started = time.monotonic()
                try:
                    async with http.post("/", json=body) as response:
                        status, text = response.status, await response.text()
                except (aiohttp.ClientError, asyncio.TimeoutError) as exc:  # counted, not fatal
                    no_answer[type(exc).__name__] += 1
                    continue
                latencies.append(time.monotonic() - started)
                statuses[status] += 1
                if status == 200:
                    answer = json.loads(text)
                    runs[answer["run_id"]] = body["user_id"]
                    run_statuses[answer["status"]] += 1

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        wall = time.monotonic() - started
        load_done.set()
        unreadable, not_terminal = 0, 0
        for run_id, user in runs.items():
            async with http.get(f"/runs/{run_id}", params={"user_id": user}) as response:
                if response.status != 200:
                    unreadable += 1
                    continue
                if (await response.json())["status"] not in TERMINAL:
                    not_terminal += 1
    latencies.sort()
    return {"http_statuses": dict(statuses), "no_answer": sum(no_answer.values()), "no_answer_by_error": dict(no_answer),
            "run_statuses": dict(run_statuses), "runs": len(runs),
            "unreadable": unreadable, "not_terminal": not_terminal, "wall_s": round(wall, 2),
            "requests_per_s": round(total / wall, 1),
            "p50_ms": round(statistics.median(latencies) * 1000, 1),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--total", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--fail-rate", type=float, default=0.05)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)

    stub = StubProcess("openai")
    direct_port, proxy_port = _free_port(), _free_port()
    os.environ.update({"OPENAI_BASE_URL": stub.base_url, "OPENAI_API_KEY": "sk-bench-fault-load",
                       "SESAME_RETRY_BASE_DELAY_S": "0.05"})
    samples: list[dict[str, int]] = []
    try:
        sesame_adapter.start_ray(direct_port)
        url = sesame_adapter.start_serve(proxy_port, direct_port)
        processes = Processes({"openai": stub.pid})
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                samples.append(processes.memory_by_group())
                stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        result = asyncio.run(drive(url, args.total, args.concurrency, args.fail_rate, stop))
        sampler.join()
    finally:
        sesame_adapter.stop_serve()
        sesame_adapter.stop_ray()
        stub.stop()
    result["rss_mib"] = _memory(samples)
    result["five_xx"] = sum(n for status, n in result["http_statuses"].items() if status >= 500)
    result.update(total=args.total, concurrency=args.concurrency, fail_rate=args.fail_rate,
                  load_average=list(os.getloadavg()))
    print(_table(result))
    out = args.out or Path("bench/results") / f"fault_load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"results: {out}")


def _memory(samples: list[dict[str, int]]) -> dict[str, Any]:
    """Cluster RSS (MiB; every process but the driver) at the end of the first quarter of the
    load, at its peak and at its end, and each process group's growth over the last three
    quarters."""
    if not samples:
        return {}
    mib = [sum(rss for group, rss in sample.items() if group != "driver") / 2**20 for sample in samples]
    first = max(0, len(mib) // 4 - 1)
    quarter, last = samples[first], samples[-1]
    growth = {group: round((last.get(group, 0) - quarter.get(group, 0)) / 2**20, 1)
              for group in sorted(set(quarter) | set(last)) if group != "driver"}
    return {"after_first_quarter": round(mib[first], 1), "peak": round(max(mib), 1), "end": round(mib[-1], 1),
            "growth_after_first_quarter": round(mib[-1] - mib[first], 1),
            "growth_by_process": {g: v for g, v in sorted(growth.items(), key=lambda kv: -abs(kv[1])) if v}}


def _table(r: dict[str, Any]) -> str:
    rows = [("requests", f"{r['total']} at {r['concurrency']} concurrent, {r['fail_rate']:.0%} of model calls failing"),
            ("HTTP statuses", json.dumps(r["http_statuses"])), ("HTTP 5xx from Sesame", r["five_xx"]),
            ("requests with no answer (connection error, 120 s timeout)",
             f"{r['no_answer']} {json.dumps(r['no_answer_by_error'])}" if r["no_answer"] else 0),
            ("run statuses", json.dumps(r["run_statuses"])),
            ("runs readable afterwards", f"{r['runs'] - r['unreadable']} of {r['runs']}"),
            ("runs not in a terminal status", r["not_terminal"]),
            ("throughput", f"{r['requests_per_s']} requests/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms"),
            ("cluster RSS MiB (quarter / peak / end)",
             f"{r['rss_mib'].get('after_first_quarter')} / {r['rss_mib'].get('peak')} / {r['rss_mib'].get('end')}"),
            ("growth after the first quarter by process, MiB",
             ", ".join(f"{g} {v:+}" for g, v in r["rss_mib"].get("growth_by_process", {}).items()) or "none")]
    return "| figure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
