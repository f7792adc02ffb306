"""The benchmark graphs, as Sesame requests, with their critical paths.

Every engine runs the request built here: Sesame takes it as is; the in-process engines walk the
same nodes and edges. LLM nodes steer the loopback OpenAI stub through `parameters.stub`
(latency, and a short fixed reply so joins do not grow their prompts exponentially); the one
Tool node (the reference workflow's Gmail child) waits on the Composio stub's execute delay.

A graph is pure data: building one does no I/O (the reference reads examples/seed_request.json).
"""

from __future__ import annotations

import copy
import graphlib
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SEED_REQUEST = Path(__file__).resolve().parent.parent / "examples" / "seed_request.json"
USER_ID = "alex@example.com"  # the seed request's user; the Composio stub has Gmail active for it
CONVERSATION_MARK = "bench-conversation"  # each run replaces it with a conversation of its own


@dataclass(frozen=True)
class BenchGraph:
    name: str
    body: dict[str, Any]          # the Sesame request
    llm_latency_s: float          # per model call
    tool_latency_s: float         # per tool execution (the Composio stub's delay)

    @property
    def nodes(self) -> dict[str, dict[str, Any]]:
        return self.body["agent_config"]

    @property
    def parents(self) -> dict[str, list[str]]:
        """Each node's parents in declaration order (the order its inputs are joined in)."""
        parents: dict[str, list[str]] = {node_id: [] for node_id in self.nodes}
        for node_id, node in self.nodes.items():
            for child in dict.fromkeys(node["children"]):
                parents[child].append(node_id)
        return parents

    @property
    def critical_path_s(self) -> float:
        """The longest chain, summing each node's latency: no engine can finish sooner."""
        parents = self.parents
        finish: dict[str, float] = {}
        for node_id in graphlib.TopologicalSorter(parents).static_order():
            own = self.llm_latency_s if self.nodes[node_id]["type"] == "LLM" else self.tool_latency_s
            finish[node_id] = own + max((finish[p] for p in parents[node_id]), default=0.0)
        return max(finish.values())

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "nodes": len(self.nodes), "llm_latency_ms": self.llm_latency_s * 1000,
                "tool_latency_ms": self.tool_latency_s * 1000, "critical_path_s": self.critical_path_s}


def _llm(node_id: str, children: list[str], latency_s: float) -> dict[str, Any]:
    return {"id": node_id, "type": "LLM", "name": f"step {node_id}", "provider_name": "OpenAI",
            "model_name": "gpt-4o-mini", "system_prompt": "", "prompt_template": "{input}",
            "parameters": {"stub": {"latency_ms": latency_s * 1000, "content": f"ok {node_id}"}},
            "api_key_name": "OPENAI_API_KEY", "api_key_value": "NONE", "children": children}


def _request(nodes: list[dict[str, Any]]) -> dict[str, Any]:
    return {"agent_config": {node["id"]: node for node in nodes},
            "user_query": "Summarise the quarter in one line", "user_id": USER_ID,
            "conversation_id": CONVERSATION_MARK}


def reference(latency_s: float, tool_latency_s: float) -> BenchGraph:
    """examples/seed_request.json: an LLM writes an e-mail, its Gmail child sends it."""
    body = json.loads(SEED_REQUEST.read_text())
    body["agent_config"]["1"]["parameters"] = {"stub": {"latency_ms": latency_s * 1000}}
    body["conversation_id"] = CONVERSATION_MARK
    return BenchGraph("reference", body, latency_s, tool_latency_s)


def chain(n: int, latency_s: float) -> BenchGraph:
    ids = [str(i) for i in range(n)]
    nodes = [_llm(node_id, ids[i + 1:i + 2], latency_s) for i, node_id in enumerate(ids)]
    return BenchGraph(f"chain-{n}", _request(nodes), latency_s, 0.0)


def fan_out(n: int, latency_s: float) -> BenchGraph:
    """root → n branches → one join."""
    branches = [f"b{i}" for i in range(n)]
    nodes = [_llm("root", branches, latency_s), *(_llm(b, ["join"], latency_s) for b in branches),
             _llm("join", [], latency_s)]
    return BenchGraph(f"fan-out-{n}", _request(nodes), latency_s, 0.0)


def diamond(width: int, depth: int, latency_s: float) -> BenchGraph:
    """root → `depth` layers of `width` nodes → one sink; node j of a layer feeds nodes j and
    j+1 (wrapping) of the next, so every inner node is a join of two."""
    def name(layer: int, j: int) -> str:
        return f"d{layer}_{j % width}"

    nodes = [_llm("root", [name(0, j) for j in range(width)], latency_s)]
    for layer in range(depth):
        for j in range(width):
            children = (list(dict.fromkeys([name(layer + 1, j), name(layer + 1, j + 1)]))
                        if layer + 1 < depth else ["sink"])
            nodes.append(_llm(name(layer, j), children, latency_s))
    nodes.append(_llm("sink", [], latency_s))
    return BenchGraph(f"diamond-{width}x{depth}", _request(nodes), latency_s, 0.0)


def random_dag(n: int, layers: int, seed: int, latency_s: float) -> BenchGraph:
    """n nodes in `layers` layers (seeded): each node below the first has one parent in the layer
    just above (so the critical path is exactly `layers` nodes) and up to two more anywhere above."""
    rng = random.Random(seed)
    cuts = sorted(rng.sample(range(1, n), layers - 1))
    sizes = [b - a for a, b in zip([0, *cuts], [*cuts, n])]
    layer_of: list[int] = [layer for layer, size in enumerate(sizes) for _ in range(size)]
    ids = [f"r{i}" for i in range(n)]
    starts = [sum(sizes[:layer]) for layer in range(layers)]
    children: dict[str, list[str]] = {node_id: [] for node_id in ids}
    for i, node_id in enumerate(ids):
        layer = layer_of[i]
        if layer == 0:
            continue
        above = range(starts[layer - 1], starts[layer - 1] + sizes[layer - 1])
        parents = {rng.choice(above)} | {rng.randrange(0, starts[layer]) for _ in range(rng.randint(0, 2))}
        for parent in sorted(parents):
            children[ids[parent]].append(node_id)
    nodes = [_llm(node_id, children[node_id], latency_s) for node_id in ids]
    return BenchGraph(f"random-{n}", _request(nodes), latency_s, 0.0)


def with_conversation(body: dict[str, Any], conversation_id: str) -> dict[str, Any]:
    """The same request on a conversation of its own (a shallow copy: nodes are shared)."""
    return {**body, "conversation_id": conversation_id}


def build(spec: dict[str, Any]) -> BenchGraph:
    """A graph from its JSON description, e.g. {"shape": "fan_out", "n": 500, "latency_ms": 200}."""
    spec = copy.deepcopy(spec)
    shape = spec.pop("shape")
    spec.pop("label", None)
    latency_s = spec.pop("latency_ms") / 1000
    if shape == "reference":
        return reference(latency_s, spec.pop("tool_latency_ms") / 1000)
    builders = {"chain": chain, "fan_out": fan_out, "diamond": diamond, "random_dag": random_dag}
    graph = builders[shape](latency_s=latency_s, **spec)
    return graph
