"""Failure semantics and isolation over real Serve, Ray and the loopback stubs: 429 storms with
Retry-After, 5xx, hangs, per-node retry and timeout, the run deadline, endpoint API keys and
tenants, and the per-user cap. The stub's record proves what was (not) called and when."""

from __future__ import annotations

import json
import time
import uuid

import httpx
import pytest
from ray import serve

from serve_app import app_builder
from tests.integration.test_run_lifecycle import USER, body_of, llm, wait_for

pytestmark = pytest.mark.integration
ACME, GLOBEX = "acme-key-7a1c9e3f5b2d4a6c", "globex-key-1b3d5f7a9c2e4b6d"


@pytest.fixture(scope="module")
def secure_url(sesame_url, database_file):
    """A Sesame app with endpoint API keys (two tenants) and a cap of 2 runs in flight per user."""
    serve.run(app_builder({"database_url": f"sqlite:///{database_file}", "heartbeat_s": 0.5,
                           "api_keys": json.dumps({ACME: "acme", GLOBEX: "globex"}),
                           "max_runs_per_user": 2}), name="secure", route_prefix="/secure")
    yield f"{sesame_url}/secure"
    serve.delete("secure")


def as_tenant(url, key):
    return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})


def fast_retries(node, **retry):
    return {**node, "retry": {"base_delay_s": 0.01, **retry}}


def test_a_429_storm_is_retried_after_the_providers_retry_after(client, openai_stub):
    node = llm("A", status=429, retry_after=1, fail_first=2, key=f"storm-{uuid.uuid4().hex}")
    run = client.post("/", json=body_of(node)).json()
    assert run["status"] == "succeeded" and run["nodes"]["A"]["attempts"] == 3
    starts = [r.started_at for r in openai_stub.requests]
    assert len(starts) == 3
    assert all(later - earlier >= 0.95 for earlier, later in zip(starts, starts[1:]))  # Retry-After: 1


def test_5xx_is_retried_up_to_the_nodes_attempts_then_fails_clearly(client, openai_stub):
    node = fast_retries(llm("A", ["B"], status=503, message="upstream overloaded"), attempts=4)
    run = client.post("/", json=body_of(node, llm("B"))).json()
    assert run["status"] == "failed"
    a = run["nodes"]["A"]
    assert a["attempts"] == 4 and a["error"]["retryable"] is True and "503" in a["error"]["message"]
    assert run["nodes"]["B"]["status"] == "skipped"
    assert len(openai_stub.requests) == 4


def test_a_caller_error_is_never_retried_even_with_attempts_to_spare(client, openai_stub):
    node = fast_retries(llm("A", status=401, message="bad key"), attempts=5)
    run = client.post("/", json=body_of(node)).json()
    assert run["nodes"]["A"]["attempts"] == 1 and len(openai_stub.requests) == 1
    assert run["nodes"]["A"]["error"]["code"] == "provider_auth_failed"


def test_a_hanging_provider_times_the_node_out_and_the_run_goes_on(client, openai_stub):
    hanging = fast_retries({**llm("hang", latency_ms=5000), "timeout_s": 0.5}, attempts=3)
    started = time.monotonic()
    run = client.post("/", json=body_of(hanging, llm("fine"))).json()
    assert time.monotonic() - started < 4
    assert run["status"] == "partial"
    assert run["nodes"]["hang"]["error"]["code"] == "node_timeout"
    assert run["nodes"]["fine"]["status"] == "succeeded"


def test_the_run_deadline_ends_the_run_with_what_finished_and_calls_nothing_after(client, openai_stub):
    body = body_of(llm("slow", ["after"], latency_ms=3000), llm("after"), llm("quick"))
    body["deadline_s"] = 1.0
    started = time.monotonic()
    run = client.post("/", json=body).json()
    assert time.monotonic() - started < 2.5
    assert run["status"] == "partial" and run["error"]["code"] == "deadline_exceeded"
    assert run["nodes"]["quick"]["status"] == "succeeded"
    assert run["nodes"]["slow"]["status"] == run["nodes"]["after"]["status"] == "cancelled"
    assert run["outputs"] == {"quick": "echo: hello"}
    time.sleep(2.5)
    assert sorted(r.user_message for r in openai_stub.requests) == ["hello", "hello"]  # no "after"


def test_bad_retry_and_deadline_fields_are_422_naming_the_field(client, openai_stub):
    body = body_of({**llm("A"), "retry": {"attempts": 0, "jitter": True}, "timeout_s": -1})
    body["deadline_s"] = "soon"
    problems = client.post("/", json=body).json()["error"]["details"]["problems"]
    fields = {(p["node_id"], p["field"]) for p in problems}
    assert {("A", "retry.attempts"), ("A", "retry.jitter"), ("A", "timeout_s"), (None, "deadline_s")} <= fields
    assert openai_stub.requests == []


def test_endpoint_keys_are_required_and_tenants_see_only_their_own_runs(secure_url, openai_stub):
    body = body_of(llm("A"))
    anonymous = httpx.post(f"{secure_url}/", json=body, timeout=30)
    assert anonymous.status_code == 401 and anonymous.json()["error"]["code"] == "unauthorized"
    assert anonymous.headers["www-authenticate"].startswith("Bearer")
    wrong = httpx.post(f"{secure_url}/", json=body, headers={"Authorization": "Bearer nope-" + ACME}, timeout=30)
    assert wrong.status_code == 401 and ACME not in wrong.text
    assert openai_stub.requests == []
    assert httpx.get(f"{secure_url}/healthz", timeout=30).status_code == 200

    with as_tenant(secure_url, ACME) as acme, as_tenant(secure_url, GLOBEX) as globex:
        run = acme.post("/", json=body).json()
        assert run["status"] == "succeeded"
        assert acme.get(f"/runs/{run['run_id']}", params={"user_id": USER}).status_code == 200
        for method, path in (("GET", f"/runs/{run['run_id']}"), ("GET", f"/runs/{run['run_id']}/events"),
                             ("POST", f"/runs/{run['run_id']}/cancel"),
                             ("GET", f"/conversations/{body['conversation_id']}")):
            response = globex.request(method, path, params={"user_id": USER})
            assert response.status_code == 404, path  # same user id, another tenant
        # the same user and conversation under another tenant starts with no memory
        globex.post("/", json=body)
        assert [m["role"] for m in openai_stub.requests[-1].body["messages"]] == ["user"]
        assert acme.get(f"/runs/{run['run_id']}").status_code == 422  # user_id still required


def test_one_users_batch_hits_its_cap_while_another_user_still_runs(secure_url, openai_stub):
    with as_tenant(secure_url, ACME) as acme:
        slow = [acme.post("/runs", json=body_of(llm("A", latency_ms=1500), user="batch@example.com"))
                for _ in range(2)]
        assert [r.status_code for r in slow] == [202, 202]
        third = acme.post("/runs", json=body_of(llm("A"), user="batch@example.com"))
        assert third.status_code == 429 and third.json()["error"]["code"] == "too_many_runs"
        assert third.headers["retry-after"] == "1" and "SESAME_MAX_RUNS_PER_USER" in third.text
        other = acme.post("/", json=body_of(llm("A"), user="someone-else@example.com"))
        assert other.status_code == 200 and other.json()["status"] == "succeeded"
        run_id = slow[0].json()["run_id"]
        wait_for(lambda: acme.get(f"/runs/{run_id}", params={"user_id": "batch@example.com"}).json()["status"]
                 == "succeeded", timeout=10)
        time.sleep(0.2)
        assert acme.post("/runs", json=body_of(llm("A"), user="batch@example.com")).status_code == 202
