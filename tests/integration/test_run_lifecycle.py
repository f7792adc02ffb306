"""Runs that are never lost, over real HTTP, Serve and Ray: background runs, live SSE events with
token deltas, resuming with Last-Event-ID, cancellation, conversation memory, idempotency keys,
isolation between users. Assertions come from what a client sees and what the stubs recorded."""

from __future__ import annotations

import time
import uuid

import pytest

from tests.integration.conftest import sse_events

pytestmark = pytest.mark.integration
USER = "dev@example.com"


def llm(node_id, children=(), prompt="{input}", **stub):
    return {"id": node_id, "type": "LLM", "name": f"llm {node_id}", "provider_name": "OpenAI",
            "model_name": "gpt-4o-mini", "system_prompt": "", "prompt_template": prompt,
            "parameters": {"stub": stub} if stub else {}, "api_key_name": "OPENAI_API_KEY",
            "api_key_value": "NONE", "children": list(children)}


def body_of(*nodes, user_query="hello", user=USER, conversation=None):
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": user_query, "user_id": user,
            "conversation_id": conversation or f"conv-{uuid.uuid4().hex[:8]}"}


def start(client, body, **headers):
    response = client.post("/runs", json=body, headers=headers)
    assert response.status_code == 202, response.text
    return response.json()


def events_of(client, run_id, user=USER, limit=None, **headers):
    with client.stream("GET", f"/runs/{run_id}/events", params={"user_id": user}, headers=headers) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response, limit)


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError("condition not met in time")


def test_a_background_run_streams_its_events_in_order_with_token_deltas(client, openai_stub):
    words = "one two three four"
    body = body_of(llm("A", ["B"], content=words, chunk_delay_ms=20),
                   llm("B", ["C"], content=words, chunk_delay_ms=20),
                   llm("C", content=words, chunk_delay_ms=20))
    accepted = start(client, body)
    assert accepted["status"] in ("queued", "running")
    assert accepted["urls"]["events"] == f"/runs/{accepted['run_id']}/events?user_id=dev%40example.com"

    events = events_of(client, accepted["run_id"])
    assert [e["id"] for e in events] == list(range(1, len(events) + 1))
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    position = {(e["event"], e["data"].get("node_id") or e["data"].get("node", {}).get("id")): i
                for i, e in enumerate(events) if e["event"] in ("node_started", "node_finished")}
    for node in "ABC":
        tokens = [e for e in events if e["event"] == "token" and e["data"]["node_id"] == node]
        assert "".join(t["data"]["text"] for t in tokens) == words
        assert len(tokens) >= 2  # the text arrived in pieces, not at the end
        assert all(position["node_started", node] < events.index(t) < position["node_finished", node]
                   for t in tokens)
    assert position["node_finished", "A"] < position["node_started", "B"]
    assert position["node_finished", "B"] < position["node_started", "C"]
    final = events[-1]["data"]["run"]
    assert final["status"] == "succeeded" and final["output"] == words
    assert all(r.body["stream"] is True for r in openai_stub.requests)

    stored = client.get(f"/runs/{accepted['run_id']}", params={"user_id": USER})
    assert stored.status_code == 200 and stored.json() == final


def test_a_client_that_reconnects_with_last_event_id_loses_and_repeats_nothing(client):
    body = body_of(llm("A", ["B"], content="alpha beta gamma delta", chunk_delay_ms=60),
                   llm("B", content="epsilon zeta eta", chunk_delay_ms=60))
    run_id = start(client, body)["run_id"]
    first = events_of(client, run_id, limit=4)  # the connection drops mid-run
    rest = events_of(client, run_id, **{"Last-Event-ID": str(first[-1]["id"])})
    assert rest[0]["id"] == first[-1]["id"] + 1
    whole = events_of(client, run_id)  # connecting after the end gets the whole history
    assert [e["id"] for e in first + rest] == [e["id"] for e in whole]
    assert first + rest == whole
    assert whole[-1]["event"] == "run_finished"


def test_post_with_accept_event_stream_streams_the_run(client):
    body = body_of(llm("A", content="streamed here", chunk_delay_ms=10))
    with client.stream("POST", "/", json=body, headers={"Accept": "text/event-stream"}) as response:
        assert response.status_code == 200
        events = sse_events(response)
    assert [e["event"] for e in events][:2] == ["run_started", "node_started"]
    assert "".join(e["data"]["text"] for e in events if e["event"] == "token") == "streamed here"
    assert events[-1]["data"]["run"]["status"] == "succeeded"


def test_cancelling_during_a_slow_call_stops_every_further_call(client, openai_stub):
    body = body_of(llm("slow", ["after"], latency_ms=3000), llm("after"), llm("other", ["after2"], latency_ms=3000),
                   llm("after2"))
    run_id = start(client, body)["run_id"]
    wait_for(lambda: len(openai_stub.requests) == 2)  # both slow calls are in flight
    cancelled = client.post(f"/runs/{run_id}/cancel", params={"user_id": USER})
    assert cancelled.status_code == 200
    run = cancelled.json()
    assert run["status"] == "cancelled"
    assert {n: s["status"] for n, s in run["nodes"].items()} == {
        "slow": "cancelled", "after": "cancelled", "other": "cancelled", "after2": "cancelled"}
    time.sleep(3.5)  # longer than the slow calls: nothing may follow them
    assert len(openai_stub.requests) == 2
    assert client.get(f"/runs/{run_id}", params={"user_id": USER}).json()["status"] == "cancelled"
    again = client.post(f"/runs/{run_id}/cancel", params={"user_id": USER})
    assert again.status_code == 200 and again.json()["status"] == "cancelled"


def test_a_client_that_disconnects_from_post_cancels_its_run(client, openai_stub, sesame_url):
    import httpx

    body = body_of(llm("slow", ["after"], latency_ms=2000), llm("after"))
    key = f"disconnect-{uuid.uuid4().hex}"
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{sesame_url}/", json=body, headers={"Idempotency-Key": key}, timeout=0.5)
    # the key finds the same run again (without starting a second one)
    replay = client.post("/runs", json=body, headers={"Idempotency-Key": key})
    assert replay.headers["Idempotent-Replayed"] == "true"
    run_id = replay.json()["run_id"]
    wait_for(lambda: client.get(f"/runs/{run_id}", params={"user_id": USER}).json()["status"] == "cancelled")
    time.sleep(2.0)
    assert [r.user_message for r in openai_stub.requests] == ["hello"]  # "after" never ran


def test_a_second_request_in_a_conversation_sends_the_first_turn_to_the_model(client, openai_stub):
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    first = client.post("/", json=body_of(llm("A", content="Paris."), user_query="Capital of France?",
                                          conversation=conversation)).json()
    assert first["status"] == "succeeded"
    second = client.post("/", json=body_of(llm("A"), user_query="And of Italy?", conversation=conversation)).json()
    assert second["status"] == "succeeded"
    messages = openai_stub.requests[1].body["messages"]
    assert messages == [{"role": "user", "content": "Capital of France?"},
                        {"role": "assistant", "content": "Paris."},
                        {"role": "user", "content": "And of Italy?"}]
    turns = client.get(f"/conversations/{conversation}", params={"user_id": USER})
    assert turns.status_code == 200
    assert [(t["user_query"], t["output"], t["run_id"]) for t in turns.json()["turns"]] == [
        ("Capital of France?", "Paris.", first["run_id"]),
        ("And of Italy?", "echo: And of Italy?", second["run_id"])]


def test_another_user_gets_404_for_someone_elses_run_and_conversation(client, openai_stub):
    conversation = f"conv-{uuid.uuid4().hex[:8]}"
    run = client.post("/", json=body_of(llm("A"), conversation=conversation)).json()
    for path in (f"/runs/{run['run_id']}", f"/runs/{run['run_id']}/events", f"/conversations/{conversation}"):
        response = client.get(path, params={"user_id": "mallory@example.com"})
        assert response.status_code == 404, path
        assert response.json()["error"]["code"] == "not_found"
        assert run["output"] not in response.text
    cancel = client.post(f"/runs/{run['run_id']}/cancel", params={"user_id": "mallory@example.com"})
    assert cancel.status_code == 404
    # the same conversation id under another user is another conversation: no memory leaks in
    client.post("/", json=body_of(llm("A"), user="mallory@example.com", conversation=conversation))
    assert [m["role"] for m in openai_stub.requests[-1].body["messages"]] == ["user"]
    assert client.get(f"/runs/{run['run_id']}").status_code == 422  # user_id is required


def test_an_idempotency_key_returns_the_first_run_and_refuses_a_different_body(client, openai_stub):
    key = f"key-{uuid.uuid4().hex}"
    body = body_of(llm("A"))
    first = client.post("/", json=body, headers={"Idempotency-Key": key})
    second = client.post("/", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == second.status_code == 200
    assert second.json() == first.json() and second.headers["Idempotent-Replayed"] == "true"
    assert len(openai_stub.requests) == 1
    other = client.post("/", json={**body, "user_query": "something else"}, headers={"Idempotency-Key": key})
    assert other.status_code == 422 and other.json()["error"]["code"] == "idempotency_key_reused"
    assert len(openai_stub.requests) == 1
    bad = client.post("/", json=body, headers={"Idempotency-Key": "x" * 300})
    assert bad.status_code == 422 and bad.json()["error"]["details"]["problems"][0]["field"] == "Idempotency-Key"


def test_bad_event_cursors_and_unknown_runs_are_clear_errors(client):
    run_id = client.post("/", json=body_of(llm("A"))).json()["run_id"]
    bad = client.get(f"/runs/{run_id}/events", params={"user_id": USER}, headers={"Last-Event-ID": "abc"})
    assert bad.status_code == 422 and "Last-Event-ID" in bad.json()["error"]["message"]
    missing = client.get("/runs/run_doesnotexist", params={"user_id": USER})
    assert missing.status_code == 404 and "run_doesnotexist" in missing.json()["error"]["message"]


def test_a_synchronous_run_cancelled_by_another_request_answers_cancelled(client, openai_stub, sesame_url):
    import threading

    import httpx

    body = body_of(llm("slow", ["after"], latency_ms=3000), llm("after"))
    key = f"sync-cancel-{uuid.uuid4().hex}"
    answer = {}
    waiting = threading.Thread(target=lambda: answer.update(response=httpx.post(
        f"{sesame_url}/", json=body, headers={"Idempotency-Key": key}, timeout=30)))
    waiting.start()
    wait_for(lambda: len(openai_stub.requests) == 1)
    run_id = client.post("/runs", json=body, headers={"Idempotency-Key": key}).json()["run_id"]
    assert client.post(f"/runs/{run_id}/cancel", params={"user_id": USER}).json()["status"] == "cancelled"
    waiting.join(10)
    assert answer["response"].status_code == 200
    assert answer["response"].json()["status"] == "cancelled"
    assert answer["response"].json()["run_id"] == run_id
