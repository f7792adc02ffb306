"""Durability and secrecy over real Serve and Ray: a restart keeps finished runs and marks the
ones in flight `interrupted` (a clean stop and a crash); no secret reaches a response, an event,
a log line or the database."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import httpx
import pytest
import ray
from ray import serve

from serve_app import app_builder
from tests.integration.conftest import OPENAI_KEY, sse_events
from tests.integration.test_run_lifecycle import USER, body_of, llm, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def restartable(sesame_url, tmp_path, openai_stub):
    """A second Sesame app with its own store, at /restart, that a test may stop and start."""
    options = {"database_url": f"sqlite:///{tmp_path / 'restart.db'}", "heartbeat_s": 0.5}

    def deploy():
        serve.run(app_builder(options), name="restart", route_prefix="/restart")

    deploy()
    openai_stub.reset()
    with httpx.Client(base_url=f"{sesame_url}/restart", timeout=60) as client:
        yield client, deploy
    serve.delete("restart")


def _status(client, run_id):
    return client.get(f"/runs/{run_id}", params={"user_id": USER}).json()["status"]


def test_a_clean_restart_keeps_finished_runs_and_interrupts_the_ones_in_flight(restartable, openai_stub):
    client, deploy = restartable
    finished = client.post("/", json=body_of(llm("A"))).json()
    assert finished["status"] == "succeeded"
    slow = client.post("/runs", json=body_of(llm("slow", ["after"], latency_ms=4000), llm("after"))).json()
    wait_for(lambda: len(openai_stub.requests) == 2)

    serve.delete("restart")  # a clean stop: the replica's __del__ runs
    deploy()

    assert client.get(f"/runs/{finished['run_id']}", params={"user_id": USER}).json() == finished
    run = client.get(f"/runs/{slow['run_id']}", params={"user_id": USER}).json()
    assert run["status"] == "interrupted" and run["error"]["code"] == "interrupted"
    assert run["nodes"]["slow"]["status"] == "cancelled" and run["nodes"]["after"]["status"] == "cancelled"
    with client.stream("GET", f"/runs/{slow['run_id']}/events", params={"user_id": USER}) as response:
        events = sse_events(response)
    assert events[-1]["event"] == "run_finished" and events[-1]["data"]["run"]["status"] == "interrupted"
    time.sleep(4.5)
    assert len(openai_stub.requests) == 2  # "after" never ran


def test_runs_of_a_crashed_replica_become_interrupted(restartable, openai_stub):
    client, _ = restartable
    slow = client.post("/runs", json=body_of(llm("slow", latency_ms=4000))).json()
    wait_for(lambda: len(openai_stub.requests) == 1)
    [replica] = [a for a in ray.util.list_named_actors(all_namespaces=True)
                 if "restart" in a["name"] and "SesameIngress" in a["name"]]
    ray.kill(ray.get_actor(replica["name"], namespace=replica["namespace"]), no_restart=True)
    # Serve starts a new replica; it sees the old one's heartbeats stop (3 × 0.5 s)
    wait_for(lambda: _safe_status(client, slow["run_id"]) == "interrupted", timeout=30)


def _safe_status(client, run_id):
    try:
        return _status(client, run_id)
    except (httpx.HTTPError, ValueError):
        return None  # the replica is being replaced


def test_no_secret_reaches_a_response_an_event_a_log_or_the_database(client, openai_stub, database_file):
    canary = f"sk-canary-{uuid.uuid4().hex}"
    with_key = llm("A", ["B"], content="fine")
    with_key["api_key_value"] = canary
    rejected = llm("R", status=401, message=f"Incorrect API key provided: {canary}")
    rejected["api_key_value"] = canary
    env_rejected = llm("E", status=401, message=f"Incorrect API key provided: {OPENAI_KEY}")
    bodies = [body_of(with_key, llm("B")), body_of(rejected), body_of(env_rejected),
              body_of({**with_key, "children": []}, rejected, env_rejected)]

    seen: list[str] = []
    for body in bodies:
        seen.append(client.post("/", json=body).text)
        with client.stream("POST", "/", json=body, headers={"Accept": "text/event-stream"}) as response:
            seen.append(response.read().decode())
        accepted = client.post("/runs", json=body).json()
        with client.stream("GET", f"/runs/{accepted['run_id']}/events", params={"user_id": USER}) as response:
            seen.append(response.read().decode())
        seen.append(client.get(f"/runs/{accepted['run_id']}", params={"user_id": USER}).text)
        seen.append(client.get(f"/conversations/{body['conversation_id']}", params={"user_id": USER}).text)
    assert any('"status":"failed"' in text.replace(" ", "") for text in seen)  # the error paths ran
    assert any("Incorrect API key provided: [redacted]" in text for text in seen)
    assert any(r.headers["authorization"] == f"Bearer {canary}" for r in openai_stub.requests)

    time.sleep(1.0)  # let the store writer and the log files catch up
    logs = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    places = {f"response {i}": text.encode() for i, text in enumerate(seen)}
    places.update({str(p): p.read_bytes() for p in logs.rglob("*") if p.is_file()})
    places.update({str(p): p.read_bytes() for p in database_file.parent.glob(database_file.name + "*")})
    assert len(places) > 20
    for secret in (canary, OPENAI_KEY):
        leaks = [where for where, data in places.items() if secret.encode() in data]
        assert leaks == [], f"{secret[:12]}… found in {leaks}"
