"""The benchmark graphs are what their names say, and Sesame accepts every one of them."""

from __future__ import annotations

import pytest

from bench.graphs import build, chain, diamond, fan_out, random_dag, reference
from graph.validation import validate_request

KNOWN = [("llm", "openai"), ("tool", "composio")]


@pytest.mark.parametrize("graph, nodes, critical_path_s", [
    (reference(0.2, 0.3), 2, 0.5),
    (chain(50, 0.2), 50, 10.0),
    (fan_out(500, 0.2), 502, 0.6),
    (diamond(10, 10, 0.2), 102, 2.4),
    (random_dag(200, 10, 7, 0.2), 200, 2.0),
])
def test_sizes_and_critical_paths(graph, nodes, critical_path_s):
    assert len(graph.nodes) == nodes
    assert graph.critical_path_s == pytest.approx(critical_path_s)
    validate_request(graph.body, KNOWN)  # raises on any problem


def test_every_diamond_inner_node_joins_two_parents():
    parents = diamond(4, 3, 0.0).parents
    assert all(len(parents[f"d{layer}_{j}"]) == 2 for layer in (1, 2) for j in range(4))
    assert len(parents["sink"]) == 4


def test_the_random_dag_is_seeded():
    assert random_dag(50, 5, 1, 0.1).body == random_dag(50, 5, 1, 0.1).body
    assert random_dag(50, 5, 1, 0.1).body != random_dag(50, 5, 2, 0.1).body


def test_nodes_steer_the_stub_and_the_reference_is_the_seed_request():
    graph = build({"shape": "fan_out", "n": 3, "latency_ms": 150, "label": "x"})
    assert graph.nodes["b1"]["parameters"]["stub"] == {"latency_ms": 150, "content": "ok b1"}
    seed = reference(0.2, 0.2).nodes
    assert seed["1"]["children"] == ["2"] and seed["2"]["tool_name"] == "gmail"
    assert seed["1"]["parameters"] == {"stub": {"latency_ms": 200.0}}
