"""The HTTP surface: validation errors as 422 listing every problem (and no provider call),
malformed bodies, limits, the error shape, health and docs."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration
SEED = json.loads((Path(__file__).parents[2] / "examples" / "seed_request.json").read_text())


def seed_with(**changes):
    body = copy.deepcopy(SEED)
    for path, value in changes.items():
        target = body
        *parents, last = path.split("__")
        for part in parents:
            target = target[part]
        if value is ...:
            del target[last]
        else:
            target[last] = value
    return body


def _cycle():
    body = copy.deepcopy(SEED)
    body["agent_config"]["2"]["children"] = ["1"]
    return body


INVALID = {
    "key_differs_from_id": (seed_with(agent_config__1__id="9"), ("1", "id")),
    "child_not_in_config": (seed_with(agent_config__2__children=["7"]), ("2", "children[0]")),
    "self_loop": (seed_with(agent_config__2__children=["2"]), ("2", "children[0]")),
    "cycle": (_cycle(), ("1", "children")),
    "empty_config": (seed_with(agent_config={}), (None, "agent_config")),
    "unknown_type": (seed_with(agent_config__2__type="Robot"), ("2", "type")),
    "unknown_provider": (seed_with(agent_config__1__provider_name="Acme"), ("1", "provider_name")),
    "unknown_tool_type": (seed_with(agent_config__2__tool_type="zapier"), ("2", "tool_type")),
    "missing_user_query": (seed_with(user_query=...), (None, "user_query")),
    "missing_user_id": (seed_with(user_id=...), (None, "user_id")),
    "missing_conversation_id": (seed_with(conversation_id=...), (None, "conversation_id")),
    "wrong_type_children": (seed_with(agent_config__1__children="2"), ("1", "children")),
    "wrong_type_user_query": (seed_with(user_query=["x"]), (None, "user_query")),
    "reserved_parameter": (seed_with(agent_config__1__parameters={"stream": True}), ("1", "parameters.stream")),
}


@pytest.mark.parametrize("case", INVALID, ids=list(INVALID))
def test_invalid_requests_are_a_422_naming_node_and_field(client, openai_stub, composio_stub, case):
    composio_stub.active_users.add((SEED["user_id"], "gmail"))
    body, (node_id, field) = INVALID[case]
    response = client.post("/", json=body)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_request" and response.json()["request_id"]
    assert {"node_id": node_id, "field": field} in [
        {"node_id": p["node_id"], "field": p["field"]} for p in error["details"]["problems"]]
    assert openai_stub.requests == [] and composio_stub.executions() == []


def test_all_problems_come_back_in_one_answer(client, openai_stub):
    body = seed_with(agent_config__1__provider_name="Acme", agent_config__2__children=["2", "x"],
                     user_id=...)
    problems = client.post("/", json=body).json()["error"]["details"]["problems"]
    assert {(p["node_id"], p["field"]) for p in problems} == {
        ("1", "provider_name"), ("2", "children[0]"), ("2", "children[1]"), (None, "user_id")}
    assert openai_stub.requests == []


def test_duplicate_keys_and_lone_surrogates_are_422(client):
    raw = json.dumps(SEED)[:-1] + ', "user_id": "other", "user_query": "\\udc00"}'
    response = client.post("/", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422
    messages = [p["message"] for p in response.json()["error"]["details"]["problems"]]
    assert any('duplicate key "user_id"' in m for m in messages)
    assert any("lone surrogate" in m for m in messages)


@pytest.mark.parametrize("raw", [b"", b"{not json", b"\xff\xfe\x00", b"[1, 2"])
def test_malformed_json_is_a_400(client, raw):
    response = client.post("/", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "malformed_json"


def test_a_body_over_the_limit_is_a_413(client, openai_stub):
    body = seed_with(user_query="x" * 1_100_000)
    response = client.post("/", json=body)
    assert response.status_code == 413
    assert "SESAME_MAX_BODY_BYTES" in response.json()["error"]["message"]
    assert openai_stub.requests == []


def test_unknown_routes_use_the_error_shape(client):
    response = client.get("/nowhere")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    response = client.get("/")
    assert response.status_code == 405 and response.json()["error"]["code"] == "method_not_allowed"


def test_health_reports_the_worker_pool_and_the_event_loop(client):
    health = client.get("/healthz").json()
    loop = health.pop("event_loop")  # graph.loop_monitor, watching the replica's event loop
    assert health == {"status": "ok", "workers": 2, "ray_nodes": 1}
    assert loop["samples"] > 0 and loop["max_lag_ms"] >= 0
    assert {"lag_histogram", "stalls", "recent_stalls"} <= set(loop)


def test_openapi_documents_the_request_and_response(client):
    schema = client.get("/openapi.json").json()
    body = schema["paths"]["/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/RunRequest"}
    assert "agent_config" in schema["components"]["schemas"]["RunRequest"]["properties"]
    assert "RunResponse" in schema["components"]["schemas"]
    assert client.get("/docs").status_code == 200
