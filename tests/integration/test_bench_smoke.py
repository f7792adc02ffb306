"""The benchmark must not rot: every engine runs every benchmark graph and a small load once, at
tiny sizes, against the session's Ray + Serve and stubs, and the report builds. Not timed: it
asserts that every figure is there and every workflow succeeded, not how fast they were."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys

import httpx
import pytest

from bench import report
from bench.engine_process import ENGINES, build_engine
from bench.graphs import USER_ID
from bench.measure import measure
from bench.run import parse_args, plan_for
from bench.stubs import ROOT, StubProcess

pytestmark = pytest.mark.integration

TINY = ["--quick", "--repeats", "1", "--latency-ms", "5", "--chain", "4", "--fan-out", "3,5",
        "--diamond", "2x2", "--random", "8/3", "--load-concurrency", "3", "--load-total", "6", "--loads", "2"]


def test_every_engine_runs_every_benchmark_graph_and_the_report_builds(sesame_url, openai_stub, composio_stub):
    composio_stub.reset()
    composio_stub.active_users = {(USER_ID, "gmail")}
    plan = plan_for(parse_args(TINY))
    plan.update(threads=8, collect_garbage=False)  # a full collection per run costs ~0.1 s here
    plan["load"].update(settle_s=0, collect_garbage=False)

    results = {name: asyncio.run(measure(build_engine(name, sesame_url), plan, {})) for name in ENGINES}

    labels = [g["label"] for g in plan["graphs"]]
    assert {"reference @5ms", "chain-4 @0ms", "fan-out-5 @5ms", "diamond-2x2 @5ms", "random-8 @5ms"} <= set(labels)
    for name, result in results.items():
        assert [g["label"] for g in result["graphs"]] == labels, name
        assert all(len(g["walls_s"]) == 1 and g["median_s"] > 0 for g in result["graphs"]), name
        assert [(load["succeeded"], load["failed"]) for load in result["loads"]] == [(6, 0), (6, 0)], name
    # The reference workflow really went LLM -> Gmail tool for every engine.
    executed = [r for r in composio_stub.executions() if r.path.endswith("/GMAIL_SEND_EMAIL")]
    assert len(executed) >= len(ENGINES) * (1 + 1 + 12)  # warm-up + repeat + warm-up + 2 loads × 6

    summary = report.summarise(results)
    text = report.tables(summary, list(ENGINES))
    for title in report.TITLES.values():
        assert title in text
    http_load = summary["loads"]["sesame-http"]
    assert http_load["x_langgraph"] is not None and max(http_load["peak_rss_cluster"]) > 0
    json.dumps(summary)  # the results file is JSON


def test_stubs_run_in_processes_of_their_own():
    stub = StubProcess("openai")
    try:
        reply = httpx.post(f"{stub.base_url}/chat/completions", timeout=10,
                           headers={"authorization": "Bearer k"},
                           json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        assert reply.json()["choices"][0]["message"]["content"] == "echo: hi"
        assert stub.cpu_s() >= 0
    finally:
        stub.stop()


def test_the_command_drives_engine_processes_and_writes_the_results(tmp_path):
    # The in-process engines only: the Ray ones are covered above on the session's cluster.
    out = tmp_path / "results.json"
    run = subprocess.run([sys.executable, "-m", "bench", *TINY, "--loads", "1", "--settle-s", "0",
                          "--engines", "asyncio,langgraph,sesame-local", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    results = json.loads(out.read_text())
    assert set(results["raw"]) == {"asyncio", "langgraph", "sesame-local"}
    assert "| reference @5ms |" in run.stdout and "plain asyncio" in run.stdout
    assert results["machine"]["cores"] >= 1 and results["summary"]["loads"]["langgraph"]["failed"] == 0


def test_the_fault_load_keeps_its_promises_at_a_tiny_size(tmp_path):
    # Its own Ray (a subprocess: this session has one), Serve's direct ingress, a failing stub.
    out = tmp_path / "fault_load.json"
    run = subprocess.run([sys.executable, "-m", "bench.fault_load", "--total", "40", "--concurrency", "8",
                          "--fail-rate", "0.3", "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["five_xx"] == 0 and result["no_answer"] == 0 and result["http_statuses"] == {"200": 40}
    assert result["runs"] == 40 and result["unreadable"] == 0 and result["not_terminal"] == 0
    assert len(result["run_statuses"]) >= 2  # the faults showed: not every run succeeded
    assert "| HTTP 5xx from Sesame | 0 |" in run.stdout
