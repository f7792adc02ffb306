"""Batch runs without Ray: line-numbered problems, bounded concurrency, resume, progress."""

from __future__ import annotations

import asyncio
import json

from graph.batch import Progress, read_items, run_batch
from graph.engine import run_workflow
from graph.settings import Settings
from graph.worker import LocalRunner
from sesame_cli import done_lines
from tests.unit.fakes import FakeRegistry, llm, request


def lines_of(*bodies):
    return [b if isinstance(b, str) else json.dumps(b) for b in bodies]


def test_bad_lines_are_reported_with_their_number_and_do_not_stop_the_rest():
    lines = lines_of(request(llm("A")), "{not json", "", request(llm("A", ["ghost"])), '{"x": "\\udc00"}',
                     request(llm("B")))
    items = list(read_items(lines, FakeRegistry().known()))
    assert [(i.line, i.workflow is not None) for i in items] == [
        (1, True), (2, False), (4, False), (5, False), (6, True)]
    assert items[1].problems[0]["field"] == "(line)"
    assert "ghost" in items[2].problems[0]["message"]
    assert any("lone surrogate" in p["message"] for p in items[3].problems)


def test_lines_already_done_are_skipped():
    items = list(read_items(lines_of(request(llm("A")), request(llm("B")), request(llm("C"))),
                            FakeRegistry().known(), skip={1, 3}))
    assert [i.line for i in items] == [2]


def test_a_batch_runs_everything_with_at_most_concurrency_in_flight():
    registry = FakeRegistry()
    runner = LocalRunner(registry, Settings())
    in_flight, peak = 0, 0

    async def execute(item):
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            return await run_workflow(item.workflow, runner)
        finally:
            in_flight -= 1

    lines = lines_of(*[request(llm("A", delay=0.02)) for _ in range(20)], "oops", request(llm("A", fail="x")))
    results = []
    progress = asyncio.run(run_batch(read_items(lines, registry.known()), execute, 3, results.append,
                                     Progress(total=22)))
    assert peak == 3
    assert sorted(r["line"] for r in results) == list(range(1, 23))
    assert progress.statuses == {"succeeded": 20, "invalid": 1, "failed": 1}
    assert progress.done == 22 and progress.failed == 2
    summary = progress.summary()
    assert summary["workflows_per_s"] > 0 and summary["p50_ms"] >= 20


def test_a_crashing_run_is_recorded_and_the_batch_goes_on():
    async def execute(item):
        if item.workflow.user_query == "boom":
            raise RuntimeError("bug")
        return await run_workflow(item.workflow, LocalRunner(FakeRegistry(), Settings()))

    results = []
    lines = lines_of(request(llm("A"), user_query="boom"), request(llm("A")))
    asyncio.run(run_batch(read_items(lines, FakeRegistry().known()), execute, 2, results.append, Progress()))
    assert sorted((r["line"], r["status"]) for r in results) == [(1, "failed"), (2, "succeeded")]


def test_resume_reads_the_last_outcome_of_each_line(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("\n".join([json.dumps({"line": 1, "status": "succeeded"}),
                              json.dumps({"line": 2, "status": "failed"}),
                              json.dumps({"line": 3, "status": "interrupted"}),
                              json.dumps({"line": 3, "status": "partial"}),
                              '{"line": 4, "sta']) + "\n")  # torn by a crash: runs again
    assert done_lines(out, retry_failed=False) == {1, 2, 3}
    assert done_lines(out, retry_failed=True) == {1, 3}
    assert done_lines(tmp_path / "missing.jsonl", retry_failed=False) == set()
