"""Batch runs as users start them: `sesame batch` (a subprocess on a real Ray, the real SDK against
the stub) and `POST /batch` (stored runs with progress)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import OPENAI_KEY
from tests.integration.test_run_lifecycle import body_of, llm

pytestmark = pytest.mark.integration
ROOT = Path(__file__).parents[2]


def sesame_batch(openai_stub, *args):
    env = {**os.environ, "OPENAI_BASE_URL": openai_stub.base_url, "OPENAI_API_KEY": OPENAI_KEY}
    return subprocess.run([sys.executable, "-m", "sesame_cli", "batch", *map(str, args)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=240)


def test_a_batch_runs_every_line_reports_bad_ones_and_resumes(tmp_path, openai_stub):
    requests = tmp_path / "requests.jsonl"
    out = tmp_path / "results.jsonl"
    good = [body_of(llm("A", content=f"answer {i}", latency_ms=300), user_query=f"q{i}") for i in range(8)]
    lines = [json.dumps(b) for b in good[:4]] + ["{broken", ""] + [json.dumps(b) for b in good[4:]]
    lines.append(json.dumps(body_of(llm("A", ["nowhere"]))))
    requests.write_text("\n".join(lines) + "\n")

    done = sesame_batch(openai_stub, requests, "--out", out, "--concurrency", "3")
    assert done.returncode == 0, done.stderr
    results = [json.loads(line) for line in out.read_text().splitlines()]
    by_line = {r["line"]: r for r in results}
    assert sorted(by_line) == [1, 2, 3, 4, 5, 7, 8, 9, 10, 11]
    assert by_line[5]["status"] == by_line[11]["status"] == "invalid"
    assert "line 5:" in done.stderr and "line 11:" in done.stderr and "nowhere" in done.stderr
    outputs = {r["run"]["output"] for r in results if r["status"] == "succeeded"}
    assert outputs == {f"answer {i}" for i in range(8)}
    assert len(openai_stub.requests) == 8 and openai_stub.max_in_flight <= 3
    assert "done" in done.stderr and "/s" in done.stderr  # the progress line
    summary = json.loads(done.stderr.strip().splitlines()[-1])["summary"]
    assert summary["done"] == 10 and summary["failed"] == 2 and summary["statuses"]["succeeded"] == 8

    # a crash lost the last outcomes: the same command runs only what is missing
    out.write_text("\n".join(out.read_text().splitlines()[:6]) + "\n")
    openai_stub.reset()
    again = sesame_batch(openai_stub, requests, "--out", out)
    assert again.returncode == 0, again.stderr
    assert "6 already done" in again.stderr
    final = {json.loads(line)["line"] for line in out.read_text().splitlines()}
    assert final == set(by_line)
    missing = {r["line"] for r in results[6:] if r["status"] != "invalid"}
    assert len(openai_stub.requests) == len(missing)


def test_post_batch_runs_the_lines_as_stored_runs_with_progress(client, openai_stub):
    import time

    good = [json.dumps(body_of(llm("A", content=f"item {i}", latency_ms=300), user=f"user{i}@example.com"))
            for i in range(4)]
    body = "\n".join(good[:2] + ["[1, 2", json.dumps(body_of(llm("A", ["nope"])))] + good[2:])
    accepted = client.post("/batch", params={"concurrency": 2}, content=body,
                           headers={"content-type": "application/x-ndjson"})
    assert accepted.status_code == 202, accepted.text
    batch = accepted.json()
    assert batch["total"] == 6 and [i["line"] for i in batch["invalid"]] == [3, 4]
    deadline = time.monotonic() + 30
    while (view := client.get(f"/batch/{batch['batch_id']}").json())["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert view["done"] == 6 and view["failed"] == 2 and view["statuses"] == {"succeeded": 4, "invalid": 2}
    runs = [item for item in view["items"] if item["status"] == "succeeded"]
    assert [item["line"] for item in runs] == [1, 2, 5, 6]
    for item, i in zip(runs, range(4)):
        stored = client.get(f"/runs/{item['run_id']}", params={"user_id": f"user{i}@example.com"}).json()
        assert stored["output"] == f"item {i}"
    assert len(openai_stub.requests) == 4 and openai_stub.max_in_flight <= 2
    assert client.get("/batch/batch_unknown").status_code == 404
    empty = client.post("/batch", content="\n\n", headers={"content-type": "application/x-ndjson"})
    assert empty.status_code == 422
