"""Property tests (hypothesis) on the request model, validation, templates and the engine:

1. Any JSON — arbitrary values, mutations of valid requests, mangled bytes — either validates
   into a `Workflow` or is refused with `InvalidRequest` whose problems each name a field (and
   can be sent as UTF-8 JSON); bytes that are not JSON are `MalformedJSON`. Nothing else, ever.
2. Any valid graph — random DAGs, random templates (hostile literals included), LLM and Tool
   nodes, Tool nodes with and without LLM parents, failing nodes — runs in-process with the fake
   kinds to a terminal status, every node in a terminal status, each join seeing its parents'
   outputs in declaration order.

Example counts keep the unit suite fast; `SESAME_HYPOTHESIS=long` multiplies them (tests/hostile.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from graph.engine import run_workflow
from graph.errors import InvalidRequest, MalformedJSON
from graph.schema import TERMINAL_RUN_STATUSES
from graph.scheduler import as_text
from graph.settings import Settings
from graph.templates import render, rendered_size
from graph.validation import MAX_PROBLEMS, parse_body, validate_request
from graph.workflow import Workflow
from graph.worker import LocalRunner
from tests.hostile import examples, tried
from tests.unit.fakes import FakeRegistry, llm, request, tool

KNOWN = FakeRegistry().known()

# ---- 1. any JSON either validates or names its fields ---------------------------------------------

any_text = st.text(st.characters(exclude_categories=()), max_size=12)  # lone surrogates included
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | any_text
           | st.sampled_from(["NONE", "", "LLM", "Tool", "OpenAI", "fake", "{input}", "{node.1}", "1"]))
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(any_text | st.sampled_from(list(llm("1")) + list(tool("1"))),
                                             inner, max_size=5), max_leaves=24)


def outcome(raw: bytes) -> Workflow | InvalidRequest | MalformedJSON:
    """Parse and validate `raw` the way the ingress does; any other exception fails the test."""
    try:
        value, hygiene = parse_body(raw)
        return validate_request(value, KNOWN, hygiene)
    except (InvalidRequest, MalformedJSON) as refused:
        return refused


def assert_well_formed(result: Workflow | InvalidRequest | MalformedJSON) -> None:
    if isinstance(result, InvalidRequest):
        assert 0 < len(result.problems) <= MAX_PROBLEMS + 2
        for problem in result.problems:
            assert set(problem) == {"node_id", "field", "message"}
            assert isinstance(problem["field"], str) and problem["field"]
            assert isinstance(problem["message"], str) and problem["message"]
            assert problem["node_id"] is None or isinstance(problem["node_id"], str)
        json.dumps(result.problems, ensure_ascii=False).encode()  # what the 422 sends
    elif isinstance(result, MalformedJSON):
        result.message.encode()
    else:
        assert result.nodes and all(spec.id == key for key, spec in result.nodes.items())


@settings(max_examples=examples(200))
@given(json_values)
def test_any_json_value_validates_or_is_refused_with_field_paths(value):
    tried("property: any JSON")
    assert_well_formed(outcome(json.dumps(value).encode()))


def valid_requests() -> st.SearchStrategy[dict[str, Any]]:
    """Small valid requests: a chain or a fan of LLM nodes, maybe a Tool child."""
    return st.builds(lambda n, with_tool: request(*[llm(str(i), [str(i + 1)] if i + 1 < n else
                                                        (["t"] if with_tool else [])) for i in range(n)],
                                                  *([tool("t")] if with_tool else [])),
                     st.integers(1, 4), st.booleans())


@st.composite
def mutated(draw, requests=valid_requests()) -> dict[str, Any]:
    """A valid request with a few values replaced, removed or added anywhere in it."""
    body = draw(requests)
    for _ in range(draw(st.integers(1, 3))):
        target = body
        while isinstance(target, (dict, list)) and target and draw(st.booleans()):
            keys = list(target) if isinstance(target, dict) else list(range(len(target)))
            key = draw(st.sampled_from(keys))
            if not isinstance(target[key], (dict, list)) or not target[key]:
                break
            target = target[key]
        if isinstance(target, dict):
            key = draw(st.sampled_from(list(target)) if target and draw(st.booleans()) else any_text)
            action = draw(st.sampled_from(["replace", "delete"]))
            if action == "delete" and key in target:
                del target[key]
            else:
                target[key] = draw(json_values)
        elif isinstance(target, list) and target:
            target[draw(st.integers(0, len(target) - 1))] = draw(json_values)
    return body


@settings(max_examples=examples(200))
@given(mutated())
def test_a_mutated_request_validates_or_is_refused_with_field_paths(body):
    tried("property: mutated request")
    assert_well_formed(outcome(json.dumps(body).encode()))


@settings(max_examples=examples(200))
@given(valid_requests(), st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "drop", "insert"]),
                                            st.binary(min_size=1, max_size=3)), min_size=1, max_size=4))
def test_mangled_bytes_are_a_400_a_422_or_a_request(body, edits):
    tried("property: mangled bytes")
    raw = bytearray(json.dumps(body).encode())
    for position, edit, data in edits:
        at = position % (len(raw) + 1)
        if edit == "flip" and at < len(raw):
            raw[at] = data[0]
        elif edit == "drop":
            del raw[at:at + len(data)]
        else:
            raw[at:at] = data
    assert_well_formed(outcome(bytes(raw)))


@settings(max_examples=examples(100))
@given(st.lists(st.sampled_from(["{input}", "{user_query}", "{node.a}", "{node.zz}", "{{", "}}", "{",
                                 "}", "{0}", "{input.__class__}", "x", "é😀", "{node.}", "{ input }"]),
                max_size=12), st.text(max_size=20))
def test_rendered_size_is_what_render_returns(pieces, value):
    tried("property: templates")
    template = "".join(pieces)
    variables = {"input": value, "user_query": "q", "user_id": "u", "conversation_id": "c"}
    rendered = render(template, variables, {"a": value * 2})
    assert rendered_size(template, variables, {"a": value * 2}) == len(rendered)
    assert render(value, variables, {}) == value or "{" in value or "}" in value  # text stays text


# ---- 2. any valid graph runs to a terminal status --------------------------------------------------

HOSTILE_LITERALS = ["{0}", "{input.__class__}", "{ input }", '{"k": 1}', "{inputs}", "{node}", "%s", "$"]
NODE_IDS = st.text(st.characters(exclude_categories=("Cc", "Cs"), exclude_characters="{}"), min_size=1, max_size=6)


@dataclass
class Plan:
    """A random graph and what each node's template is made of (to predict what it receives)."""

    body: dict[str, Any]
    pieces: dict[str, list[str]]   # node id → template pieces, joined by a space
    failing: set[str]


@st.composite
def plans(draw) -> Plan:
    ids = draw(st.lists(NODE_IDS, min_size=1, max_size=9, unique=True))
    rank = {node_id: index for index, node_id in enumerate(ids)}  # edges go from lower to higher rank
    is_tool = {node_id: draw(st.booleans()) and index > 0 for index, node_id in enumerate(ids)}
    children = {n: [c for c in ids if rank[c] > rank[n] and draw(st.integers(0, 3)) == 0] for n in ids}
    parents = {n: [p for p in ids if n in children[p]] for n in ids}
    ancestors: dict[str, set[str]] = {}
    for node_id in ids:
        ancestors[node_id] = set(parents[node_id]).union(*(ancestors[p] for p in parents[node_id]))
    nodes, pieces, failing = {}, {}, set()
    for node_id in ids:
        choices = ["{input}", "{user_query}", "{user_id}", "{conversation_id}", "{{", "}}", "plain"]
        choices += HOSTILE_LITERALS + [f"{{node.{a}}}" for a in sorted(ancestors[node_id])]
        pieces[node_id] = draw(st.lists(st.sampled_from(choices), max_size=5))
        template = " ".join(pieces[node_id])
        kids = children[node_id] + (children[node_id][:1] if draw(st.integers(0, 5)) == 0 else [])  # a repeat
        if not is_tool[node_id]:
            calls = [{"action": f"T{c}_SEND".upper(), "arguments": {"n": 1}}
                     for c in children[node_id] if is_tool[c] and draw(st.booleans())]
            fails = draw(st.integers(0, 5)) == 0
            failing.update([node_id] if fails else [])
            nodes[node_id] = llm(node_id, kids, prompt=template, calls=calls, **({"fail": "bad"} if fails else {}))
        else:
            nodes[node_id] = tool(node_id, kids, tool_name=f"t{node_id}", action="SEND",
                                  arguments={"text": template, "n": [1, None]})
    order = draw(st.permutations(ids))  # declaration order is not the topological order
    body = request(*(nodes[n] for n in order), user_query=draw(st.text(max_size=8)))
    return Plan(body, pieces, failing)


def expected_render(pieces: list[str], variables: dict[str, str], outputs: dict[str, str]) -> str:
    """An oracle independent of graph.templates: each piece on its own."""
    def one(piece: str) -> str:
        if piece in ("{input}", "{user_query}", "{user_id}", "{conversation_id}"):
            return variables[piece[1:-1]]
        if piece.startswith("{node.") and piece not in HOSTILE_LITERALS:
            return outputs[piece[len("{node."):-1]]
        return {"{{": "{", "}}": "}"}.get(piece, piece)
    return " ".join(one(p) for p in pieces)


@settings(max_examples=examples(100))
@given(plans())
def test_any_valid_graph_runs_to_a_terminal_status_with_joins_in_declaration_order(plan):
    tried("property: valid graph runs")
    registry = FakeRegistry()
    workflow = validate_request(plan.body, registry.known())
    response = asyncio.run(asyncio.wait_for(
        run_workflow(workflow, LocalRunner(registry, Settings(retry_base_delay_s=0))), 10))

    assert response.status in TERMINAL_RUN_STATUSES and response.status != "action_required"
    nodes = response.nodes
    assert list(nodes) == workflow.order
    for node_id, node in nodes.items():
        parents = workflow.parents[node_id]
        ran = registry.requests(node_id)
        assert node.status in ("succeeded", "failed", "skipped")
        assert len(ran) == (0 if node.status == "skipped" else 1)
        if node.status == "skipped":
            assert node.skip_reason
            continue
        assert all(nodes[p].status == "succeeded" for p in parents)
        assert (node.status == "failed") == (node_id in plan.failing)
        outputs = {p: as_text(nodes[p].output) for p in workflow.ancestors_of(node_id)}
        variables = {"input": "\n\n".join(outputs[p] for p in parents) if parents else workflow.user_query,
                     "user_query": workflow.user_query, "user_id": "u1", "conversation_id": "c1"}
        received = ran[0].prompt if node.type == "LLM" else (ran[0].calls[0].arguments["text"]
                                                               if not workflow.llm_parents(node_id) else None)
        pieces = plan.pieces[node_id] or (["{input}"] if node.type == "LLM" else [])  # "" = not given
        if received is not None:
            assert received == expected_render(pieces, variables, outputs)
    for node_id, node in nodes.items():
        upstream = [nodes[p].status for p in workflow.parents[node_id]]
        if "failed" in upstream or "skipped" in upstream:
            assert node.status == "skipped"
