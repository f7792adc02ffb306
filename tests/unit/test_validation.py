"""Validation: every problem at once, with node id and field; nothing runs on rejection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from graph.errors import InvalidRequest, MalformedJSON
from graph.validation import parse_body, validate_request
from tests.unit.fakes import llm, request, tool

KNOWN = [("llm", "openai"), ("tool", "composio"), ("tool", "fake")]
SEED = Path(__file__).parents[2] / "examples" / "seed_request.json"


def problems_of(body) -> list[dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    value, hygiene = parse_body(raw)
    with pytest.raises(InvalidRequest) as caught:
        validate_request(value, KNOWN, hygiene)
    return caught.value.problems


def find(problems, node_id, field):
    hits = [p for p in problems if p["node_id"] == node_id and p["field"] == field]
    assert hits, f"no problem for node {node_id!r} field {field!r} in {problems}"
    return hits[0]["message"]


def test_the_reference_request_is_accepted_as_sent():
    value, hygiene = parse_body(SEED.read_bytes())
    workflow = validate_request(value, KNOWN, hygiene)
    assert workflow.parents == {"1": [], "2": ["1"]}
    llm_spec, tool_spec = workflow.nodes["1"], workflow.nodes["2"]
    assert llm_spec.api_key_value is None and llm_spec.system_prompt is None
    assert tool_spec.auth_params is None and tool_spec.input_schema is None


def test_every_problem_is_reported_at_once():
    body = request(llm("1", ["2", "9"]), llm("2", ["2"]), llm("3"),
                   {**llm("5"), "type": "Robot"}, {**llm("6"), "provider_name": "Acme"},
                   {**tool("7"), "tool_type": "zapier"})
    body["agent_config"]["3"]["id"] = "4"
    problems = problems_of(body)
    assert 'name "9", which is not in agent_config (known: "1", "2", "3", "5", "6", "7")' in find(problems, "1", "children[1]")
    assert "self-loop" in find(problems, "2", "children[0]")
    assert '"4"' in find(problems, "3", "id")
    assert 'unknown type "Robot"; known: "LLM", "Tool"' in find(problems, "5", "type")
    assert 'unknown provider_name "Acme"; known: "openai"' in find(problems, "6", "provider_name")
    assert 'known: "composio", "fake"' in find(problems, "7", "tool_type")
    assert len(problems) == 6


def test_a_cycle_is_reported_with_its_path():
    problems = problems_of(request(llm("a", ["b"]), llm("b", ["c"]), llm("c", ["a"])))
    assert '"a" → "b" → "c" → "a"' in find(problems, "a", "children")


def test_empty_and_missing_top_level_fields():
    problems = problems_of({"agent_config": {}, "user_id": 3})
    assert "empty" in find(problems, None, "agent_config")
    assert "required" in find(problems, None, "user_query")
    assert "must be a string, got a number" in find(problems, None, "user_id")
    assert "required" in find(problems, None, "conversation_id")


def test_wrong_json_types_name_the_field():
    node = {**llm("1"), "children": "2", "parameters": [], "model_name": 7}
    problems = problems_of(request(node))
    assert "valid list" in find(problems, "1", "children")
    assert "valid dictionary" in find(problems, "1", "parameters")
    assert "valid string" in find(problems, "1", "model_name")
    assert "must be an object" in find(problems_of({"agent_config": [], "user_query": "q",
                                                    "user_id": "u", "conversation_id": "c"}), None, "agent_config")
    assert "node must be an object" in find(problems_of(request() | {"agent_config": {"1": 5}}), "1", "(node)")


def test_missing_required_node_fields():
    node = llm("1")
    del node["model_name"]
    assert find(problems_of(request(node)), "1", "model_name") == "model_name is required"


def test_parameters_we_own_are_refused():
    node = llm("1")
    node["parameters"] = {"model": "x", "stream": True, "temperature": 0.0, "memory": "yes"}
    problems = problems_of(request(node))
    assert "set by Sesame" in find(problems, "1", "parameters.model")
    assert "set by Sesame" in find(problems, "1", "parameters.stream")
    assert "true or false" in find(problems, "1", "parameters.memory")
    assert not [p for p in problems if p["field"] == "parameters.temperature"]


def test_template_references_must_be_ancestors():
    body = request(llm("a", ["b"]), llm("b", prompt="{node.c} {node.zz} {node.a}"), llm("c"))
    problems = problems_of(body)
    assert "not an ancestor" in find(problems, "b", "prompt_template")
    assert '"zz", which is not in agent_config' in [p["message"] for p in problems][1]
    assert len(problems) == 2


def test_tool_without_llm_parent_needs_action_and_arguments():
    problems = problems_of(request(tool("t")))
    assert "needs action" in find(problems, "t", "action")
    assert "needs arguments" in find(problems, "t", "arguments")


def test_duplicate_keys_and_lone_surrogates_are_named():
    raw = (b'{"agent_config": {"1": {"id": "1", "type": "LLM", "provider_name": "OpenAI", '
           b'"model_name": "m", "model_name": "n", "prompt_template": "\\ud800"}}, '
           b'"user_query": "q", "user_id": "u", "conversation_id": "c"}')
    problems = problems_of(raw)
    assert 'duplicate key "model_name"' in find(problems, "1", "model_name")
    assert "lone surrogate" in find(problems, "1", "prompt_template")


@pytest.mark.parametrize("raw", [b"", b"{", b"\xff\xfe", b'{"a": 1,}'])
def test_bytes_that_are_not_json_are_a_400(raw):
    with pytest.raises(MalformedJSON):
        parse_body(raw)


def test_a_body_that_is_not_an_object():
    assert "must be a JSON object, got an array" in find(problems_of([1, 2]), None, "(body)")


def test_nothing_but_markers_means_absent():
    node = {**tool("t", action="A", arguments={}), "auth_params": "NONE", "input_schema": None, "url": ""}
    value, hygiene = parse_body(json.dumps(request(node)).encode())
    spec = validate_request(value, KNOWN, hygiene).nodes["t"]
    assert spec.auth_params is None and spec.input_schema is None and spec.url is None


def test_ids_are_short_printable_keys():
    body = request(llm("ok")) | {"user_id": "u\x00ser", "conversation_id": "c" * 257}
    body["agent_config"]["bad\nid"] = {**llm("bad\nid")}
    problems = problems_of(body)
    assert "control character" in find(problems, None, "user_id")
    assert "257 characters long; at most 256" in find(problems, None, "conversation_id")
    assert "control character" in find(problems, "bad\nid", "id")
