"""Limits on one request (graph.limits): each is a 422 naming the node, the field and the
setting; the checks themselves stay cheap on hostile input (no recursion, no message that grows
with the graph, no quadratic scan)."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from graph.engine import run_workflow
from graph.errors import InvalidRequest, MalformedJSON
from graph.limits import Limits, longest_chain, nesting_over
from graph.settings import Settings
from graph.validation import MAX_PROBLEMS, parse_body, validate_request
from graph.worker import LocalRunner
from tests.unit.fakes import FakeRegistry, llm, request, tool

KNOWN = [("llm", "openai"), ("tool", "fake")]


def problems_of(body, limits: Limits = Limits()) -> list[dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(InvalidRequest) as caught:
        value, hygiene = parse_body(raw, limits)
        validate_request(value, KNOWN, hygiene, limits)
    return caught.value.problems


def only(problems, node_id, field) -> str:
    hits = [p["message"] for p in problems if (p["node_id"], p["field"]) == (node_id, field)]
    assert hits, f"no problem for {node_id!r} {field!r} in {problems}"
    return hits[0]


def chain(n: int, **fake) -> dict:
    return request(*(llm(str(i), [str(i + 1)] if i + 1 < n else [], **fake) for i in range(n)))


# ---- the body ---------------------------------------------------------------------------------

@pytest.mark.parametrize("depth", [65, 1_000, 100_000])
def test_a_body_nested_too_deeply_is_refused_before_parsing(depth):
    raw = b'{"user_query": ' + b"[" * depth + b"]" * depth + b"}"
    message = only(problems_of(raw), None, "(body)")
    assert f"{depth + 1:,} levels deep" in message and "SESAME_MAX_JSON_DEPTH" in message


def test_the_depth_limit_counts_brackets_outside_strings_only():
    assert nesting_over(b'{"a": "[[[[[[[[[[{{{{{{{"}', 3) is None
    assert nesting_over(b'[[["\\"[[[["]]]', 3) is None
    assert nesting_over(b'[[[["x"]]]]', 3) == 4
    body = request(llm("1", prompt="[" * 5000)) | {"user_query": "{" * 5000}
    value, _ = parse_body(json.dumps(body).encode())
    assert value["user_query"] == "{" * 5000


@pytest.mark.parametrize("raw", [
    b'["' + b'\\"' * 500_000,             # an unterminated string of escaped quotes
    b'"' * 1_000_000,
    b"[" + b"[]," * 330_000 + b"[]]",     # a million brackets, one level deep
])
def test_the_depth_scan_is_linear_on_hostile_bytes(raw):
    started = time.perf_counter()
    nesting_over(raw, 64)
    assert time.perf_counter() - started < 2  # milliseconds in fact; seconds would be a hang


@pytest.mark.parametrize("literal, expected", [
    (b"NaN", "NaN is not JSON"), (b"Infinity", "Infinity is not JSON"),
    (b"-Infinity", "-Infinity is not JSON"), (b"1e400", "1e400 is out of range"),
    (b"-1e400", "-1e400 is out of range"), (b"9223372036854775808", "out of range"),
    (b"1" + b"0" * 5000, "out of range"),  # Python would raise ValueError (4,300 digits at most)
])
def test_numbers_no_json_peer_can_read_are_named(literal, expected):
    raw = (b'{"agent_config": {"1": {"type": "LLM", "provider_name": "OpenAI", "model_name": "m",'
           b' "parameters": {"temperature": ' + literal + b'}}}, "user_query": "q", "user_id": "u",'
           b' "conversation_id": "c"}')
    assert expected in only(problems_of(raw), "1", "parameters.temperature")


def test_negative_zero_and_64_bit_integers_are_numbers():
    body = request(llm("1")) | {"user_query": "q"}
    body["agent_config"]["1"]["parameters"] = {"seed": -9223372036854775808, "temperature": -0.0, "n": -0}
    value, hygiene = parse_body(json.dumps(body).encode())
    assert hygiene == []
    assert validate_request(value, KNOWN, hygiene).nodes["1"].parameters == {
        "seed": -(2**63), "temperature": 0.0, "n": 0}


def test_bytes_python_json_itself_chokes_on_are_a_400():
    with pytest.raises(MalformedJSON):
        parse_body(b'{"a": 1' + b"0" * 5000)  # unterminated: not a ValueError escaping json


# ---- the graph --------------------------------------------------------------------------------

def test_too_many_nodes_is_one_problem_and_the_nodes_are_not_looked_at():
    nodes = {str(i): {"type": "Robot", "children": ["nowhere"]} for i in range(50_000)}
    started = time.perf_counter()
    problems = problems_of({"agent_config": nodes, "user_query": "q", "user_id": "u",
                            "conversation_id": "c"})
    assert time.perf_counter() - started < 2
    assert len(problems) == 1
    assert "50,000 nodes; at most 1,000 are allowed (SESAME_MAX_NODES)" in only(problems, None, "agent_config")


def test_too_many_children():
    body = request(llm("root", [f"b{i}" for i in range(4)]), *(llm(f"b{i}") for i in range(4)))
    message = only(problems_of(body, Limits(max_children=3)), "root", "children")
    assert "4 children; at most 3 are allowed (SESAME_MAX_CHILDREN)" in message
    validate_request(body, KNOWN, limits=Limits(max_children=4))


def test_a_chain_too_long_names_the_edge_that_makes_it_so():
    problems = problems_of(chain(12), Limits(max_depth=10))
    message = only(problems, "9", "children[0]")
    assert "12 nodes" in message and "at most 10 are allowed (SESAME_MAX_DEPTH)" in message
    assert '"0" → "1" → "2" → … (6 more) → "9" → "10" → "11"' in message
    validate_request(chain(10), KNOWN, limits=Limits(max_depth=10))


def test_the_longest_chain_is_found_through_joins_without_recursion():
    edges = {"a": ["b", "x"], "b": ["c"], "c": ["j"], "x": ["j"], "j": []}
    assert longest_chain(edges) == ["a", "b", "c", "j"]
    deep = {str(i): [str(i + 1)] for i in range(20_000)} | {"20000": []}
    assert len(longest_chain(deep)) == 20_001


@pytest.mark.parametrize("field", ["prompt_template", "system_prompt"])
def test_a_template_too_long(field):
    node = llm("1") | {field: "x" * 101}
    message = only(problems_of(request(node), Limits(max_text_chars=100)), "1", field)
    assert "101 characters long; at most 100 are allowed (SESAME_MAX_TEXT_CHARS)" in message


def test_a_string_in_tool_arguments_too_long_is_named_by_its_path():
    node = tool("t", action="SEND", arguments={"to": "me", "cc": ["ok", "x" * 101]})
    assert "SESAME_MAX_TEXT_CHARS" in only(problems_of(request(node), Limits(max_text_chars=100)),
                                           "t", "arguments.cc[1]")


def test_a_user_query_too_long():
    body = request(llm("1"), user_query="é" * 101)
    assert "101 characters" in only(problems_of(body, Limits(max_text_chars=100)), None, "user_query")


def test_settings_carry_the_limits(monkeypatch):
    monkeypatch.setenv("SESAME_MAX_NODES", "7")
    monkeypatch.setenv("SESAME_MAX_OUTPUT_CHARS", "99")
    limits = Settings().limits
    assert limits.max_nodes == 7 and limits.max_output_chars == 99
    assert limits.max_depth == Limits().max_depth


# ---- answers stay small and cheap ---------------------------------------------------------------

def test_problems_are_capped_and_the_rest_counted():
    node = llm("1", [f"missing{i}" for i in range(400)])
    problems = problems_of(request(node), Limits(max_children=1000))
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1] == {"node_id": None, "field": "(request)",
                            "message": "300 more problems are not listed (at most 100)"}


def test_messages_do_not_grow_with_the_graph():
    nodes = [llm(str(i)) for i in range(900)] + [llm("x", ["nowhere"])]
    message = only(problems_of(request(*nodes)), "x", "children[0]")
    assert len(message) < 300 and "… (891 more)" in message


def test_many_cycles_are_counted_not_all_listed():
    nodes = [llm(str(i), [str(i + 1), "0"] if i < 499 else ["0"]) for i in range(500)]
    started = time.perf_counter()
    problems = problems_of(request(*nodes))
    assert time.perf_counter() - started < 2
    assert len(problems) == MAX_PROBLEMS + 1 and "more problems" in problems[-1]["message"]
    assert all(len(p["message"]) < 400 for p in problems)


def test_long_keys_deep_down_are_cheap_to_walk_and_shortened_when_named():
    body = request(llm("1")) | {"user_query": "q"}
    inner = {f"k{i}": "v" for i in range(20_000)} | {"bad": "\ud800"}
    for level in range(40):
        inner = {("k" * 10_000) + str(level): inner}
    body["agent_config"]["1"]["parameters"] = inner
    raw = json.dumps(body).encode()
    started = time.perf_counter()
    message_fields = [p["field"] for p in problems_of(raw)]
    assert time.perf_counter() - started < 2
    assert len(message_fields) == 1 and len(message_fields[0]) < 5_000


# ---- when the node runs -------------------------------------------------------------------------

def run(body, limits: Limits = Limits(), **settings):
    registry = FakeRegistry()
    workflow = validate_request(body, registry.known(), limits=limits)
    return asyncio.run(run_workflow(workflow, LocalRunner(registry, Settings(**settings)))), registry


def test_an_output_over_the_limit_fails_the_node_and_is_not_kept():
    body = request(llm("A", ["B"], output="x" * 1_001), llm("B"), llm("C", output="y" * 1_000))
    response, registry = run(body, max_output_chars=1_000)
    node = response.nodes["A"]
    assert node.status == "failed" and node.output is None
    assert node.error.code == "output_too_large" and not node.error.retryable
    assert "1,001 characters; at most 1,000 are kept (SESAME_MAX_OUTPUT_CHARS)" in node.error.message
    assert response.nodes["B"].status == "skipped" and registry.requests("B") == []
    assert response.nodes["C"].output == "y" * 1_000 and response.status == "partial"


def test_a_structured_output_is_measured_as_json():
    calls = [{"action": "GMAIL_SEND", "arguments": {"body": "z" * 500}}]
    response, _ = run(request(llm("1", ["2"], calls=calls), tool("2")), max_output_chars=300)
    assert response.nodes["2"].error.code == "output_too_large"


def test_a_prompt_that_would_render_too_large_fails_the_node_before_it_is_built():
    body = request(llm("A", ["B"], output="x" * 1_000), llm("B", prompt="{input}" * 5))
    response, registry = run(body, Limits(max_rendered_chars=4_999))
    node = response.nodes["B"]
    assert node.status == "failed" and node.error.code == "prompt_too_large"
    assert "5,000 characters; at most 4,999 are allowed (SESAME_MAX_RENDERED_CHARS)" in node.error.message
    assert registry.requests("B") == [] and node.started_at is not None
    response, _ = run(body, Limits(max_rendered_chars=5_000))
    assert response.status == "succeeded"


def test_tool_arguments_that_would_render_too_large_fail_the_node():
    body = request(tool("S", ["T"], action="SEND", arguments={"x": "y" * 100}),
                   tool("T", action="SEND", arguments={"a": ["{input}"] * 30}))
    response, registry = run(body, Limits(max_rendered_chars=2_999))
    assert response.nodes["T"].error.code == "prompt_too_large" and registry.requests("T") == []
