"""The seed workflow and graph shapes end-to-end: real HTTP → Serve → Ray actors → real SDKs →
loopback stubs. Assertions come from the response a user sees and from what the stubs recorded."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import OPENAI_KEY

pytestmark = pytest.mark.integration
SEED = json.loads((Path(__file__).parents[2] / "examples" / "seed_request.json").read_text())
USER = SEED["user_id"]


def llm(node_id, children=(), prompt="{input}", **stub):
    return {"id": node_id, "type": "LLM", "name": f"llm {node_id}", "provider_name": "OpenAI",
            "model_name": "gpt-4o-mini", "system_prompt": "", "prompt_template": prompt,
            "parameters": {"stub": stub} if stub else {}, "api_key_name": "OPENAI_API_KEY",
            "api_key_value": "NONE", "children": list(children)}


def body_of(*nodes, user_query="hello"):
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": user_query,
            "user_id": "dev@example.com", "conversation_id": "conv-1"}


def test_the_reference_request_writes_and_sends_the_email(client, openai_stub, composio_stub):
    composio_stub.active_users.add((USER, "gmail"))
    response = client.post("/", json=SEED)
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded", run

    [model_call] = openai_stub.requests
    assert "GMAIL_SEND_EMAIL" in model_call.tool_names
    assert model_call.user_message == SEED["user_query"]
    assert model_call.system_message is None  # "" means no system prompt
    assert model_call.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    emitted = model_call.response["choices"][0]["message"]["tool_calls"][0]["function"]

    [execution] = composio_stub.executions()
    assert execution.path.endswith("/GMAIL_SEND_EMAIL")
    assert execution.body["arguments"] == json.loads(emitted["arguments"])
    assert execution.body["arguments"]["recipient_email"] == "sam@example.com"
    assert execution.body["user_id"] == USER
    assert execution.body["version"]  # the toolkit version of the schema the model was offered

    llm_node, tool_node = run["nodes"]["1"], run["nodes"]["2"]
    assert llm_node["status"] == tool_node["status"] == "succeeded"
    assert llm_node["tool_calls"][0]["action"] == "GMAIL_SEND_EMAIL"
    assert llm_node["usage"]["total_tokens"] > 0 and run["usage"]["total_tokens"] > 0
    assert tool_node["output"][0]["successful"] is True
    assert run["output"] == tool_node["output"] and run["outputs"] == {"2": tool_node["output"]}
    for node in (llm_node, tool_node):
        assert node["placement"]["ray_node_id"] and node["placement"]["pid"] > 0
        assert node["started_at"] <= node["finished_at"]


def test_without_an_active_connection_the_user_gets_a_connect_link(client, openai_stub, composio_stub):
    run = client.post("/", json=SEED).json()
    assert run["status"] == "action_required"
    [item] = run["action_required"]
    assert item["node_id"] == "2" and item["kind"] == "connection_required"
    assert item["url"].startswith(composio_stub.base_url)  # a fresh link from Composio
    assert run["nodes"]["1"]["status"] == "skipped" and run["nodes"]["2"]["status"] == "action_required"
    assert openai_stub.requests == [] and composio_stub.executions() == []


def test_without_auth_config_or_composio_key_the_node_url_and_variable_are_named(client, openai_stub,
                                                                               composio_stub, sesame_url):
    run = httpx.post(f"{sesame_url}/bare/", json=SEED, timeout=60).json()  # through Serve's proxy
    assert run["status"] == "action_required"
    [item] = run["action_required"]
    assert item["kind"] == "missing_api_key" and item["env_var"] == "COMPOSIO_API_KEY"
    assert openai_stub.requests == []


def test_without_an_openai_key_the_variable_is_named_and_no_model_call_is_made(client, openai_stub,
                                                                              composio_stub):
    composio_stub.active_users.add((USER, "gmail"))
    request = copy.deepcopy(SEED)
    request["agent_config"]["1"]["api_key_name"] = "SESAME_TEST_UNSET_OPENAI_KEY"
    run = client.post("/", json=request).json()
    assert run["status"] == "action_required"
    [item] = run["action_required"]
    assert item == {**item, "node_id": "1", "kind": "missing_api_key",
                    "env_var": "SESAME_TEST_UNSET_OPENAI_KEY"}
    assert "SESAME_TEST_UNSET_OPENAI_KEY" in item["message"]
    assert openai_stub.requests == []


def test_api_key_value_is_used_and_never_echoed(client, openai_stub):
    node = llm("1")
    node["api_key_value"] = "sk-canary-7f3a9c1e"
    response = client.post("/", json=body_of(node))
    assert response.json()["status"] == "succeeded"
    assert openai_stub.requests[0].headers["authorization"] == "Bearer sk-canary-7f3a9c1e"
    assert "sk-canary-7f3a9c1e" not in response.text


def test_parameters_pass_through_with_zero_kept(client, openai_stub):
    node = llm("1")
    node["parameters"] = {"temperature": 0.0, "max_tokens": 0, "top_p": 1, "seed": 7, "memory": False}
    assert client.post("/", json=body_of(node)).json()["status"] == "succeeded"
    sent = openai_stub.requests[0].body
    assert (sent["temperature"], sent["max_tokens"], sent["top_p"], sent["seed"]) == (0.0, 0, 1, 7)
    assert "memory" not in sent and sent["model"] == "gpt-4o-mini"


def _calls_by_prompt_prefix(stub):
    return {r.user_message.split(":")[0]: r for r in stub.requests}


def test_a_diamond_runs_the_join_once_after_both_parents_in_declaration_order(client, openai_stub):
    # B is declared before C but answers last; the join sees B first anyway.
    body = body_of(llm("A", ["B", "C"], prompt="A: {input}"),
                   llm("B", ["D"], prompt="B: {input}", latency_ms=300, content="from-B"),
                   llm("C", ["D"], prompt="C: {input}", latency_ms=50, content="from-C"),
                   llm("D", prompt="D: {input}"))
    run = client.post("/", json=body).json()
    assert run["status"] == "succeeded", run
    calls = _calls_by_prompt_prefix(openai_stub)
    assert len(openai_stub.requests) == 4
    assert calls["D"].user_message == "D: from-B\n\nfrom-C"
    assert calls["D"].started_at >= max(calls["B"].finished_at, calls["C"].finished_at)
    assert calls["C"].finished_at < calls["B"].finished_at
    assert run["output"] == "echo: D: from-B\n\nfrom-C"


def test_an_uneven_join_waits_for_the_long_branch(client, openai_stub):
    body = body_of(llm("A", ["J", "B"], prompt="A: {input}", content="a"),
                   llm("B", ["C"], prompt="B: {input}", content="b"),
                   llm("C", ["J"], prompt="C: {input}", latency_ms=100, content="c"),
                   llm("J", prompt="J: {input}"))
    run = client.post("/", json=body).json()
    calls = _calls_by_prompt_prefix(openai_stub)
    assert sum(r.user_message.startswith("J") for r in openai_stub.requests) == 1
    assert calls["J"].started_at >= calls["C"].finished_at
    assert calls["J"].user_message == "J: a\n\nc"
    assert run["status"] == "succeeded"


def test_a_fan_out_of_20_has_all_branches_in_flight_at_once(client, openai_stub):
    branches = [llm(f"b{i}", ["join"], prompt=f"b{i}: {{input}}", latency_ms=400) for i in range(20)]
    body = body_of(llm("root", [b["id"] for b in branches], prompt="root: {input}"), *branches,
                   llm("join", prompt="join: {input}"))
    run = client.post("/", json=body).json()
    assert run["status"] == "succeeded"
    assert len(openai_stub.requests) == 22
    assert openai_stub.max_in_flight >= 20
    join = _calls_by_prompt_prefix(openai_stub)["join"]
    assert join.user_message.removeprefix("join: ").split("\n\n") == [
        f"echo: b{i}: echo: root: hello" for i in range(20)]
    workers = {(n["placement"]["actor_id"]) for n in run["nodes"].values()}
    assert len(workers) == 2  # spread over the pool, not run in the HTTP replica


def test_a_failing_node_skips_its_descendants_and_the_independent_branch_finishes(client, openai_stub):
    body = body_of(llm("bad", ["below"], status=400, message="context too long"), llm("below"),
                   llm("good"))
    response = client.post("/", json=body)
    assert response.status_code == 200
    run = response.json()
    assert run["status"] == "partial"
    bad = run["nodes"]["bad"]
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"]["code"] == "provider_error" and bad["error"]["retryable"] is False
    assert "400" in bad["error"]["message"] and "context too long" in bad["error"]["message"]
    assert run["nodes"]["below"]["status"] == "skipped"
    assert run["nodes"]["good"]["status"] == "succeeded"
    assert run["outputs"] == {"good": "echo: hello"}
    assert sorted(r.user_message for r in openai_stub.requests) == ["hello", "hello"]


def test_a_retryable_error_is_retried(client, openai_stub):
    node = llm("1", status=503, fail_first=1, key="flaky-503", retry_after=0)
    run = client.post("/", json=body_of(node)).json()
    assert run["status"] == "succeeded" and run["nodes"]["1"]["attempts"] == 2
    assert len(openai_stub.requests) == 2
