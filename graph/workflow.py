"""A validated workflow: typed node specs plus the edges the scheduler walks.

Built only by `graph.validation.validate_request`; everything downstream may assume the graph is
acyclic, every child exists, and every kind is known.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from graph.limits import DEFAULT_LIMITS, Limits
from graph.schema import LLMNodeSpec, NodeId, NodeSpec, ToolNodeSpec


@dataclass(frozen=True)
class Workflow:
    nodes: dict[NodeId, NodeSpec]  # in agent_config declaration order
    user_query: str
    user_id: str
    conversation_id: str
    deadline_s: float | None = None  # the caller's deadline for the whole run, if any
    limits: Limits = DEFAULT_LIMITS  # what it was validated against; the scheduler applies the rest

    @cached_property
    def order(self) -> list[NodeId]:
        return list(self.nodes)

    @cached_property
    def parents(self) -> dict[NodeId, list[NodeId]]:
        """Parents of each node, in agent_config declaration order (never completion order)."""
        parents: dict[NodeId, list[NodeId]] = {node_id: [] for node_id in self.nodes}
        for node_id, spec in self.nodes.items():
            for child in dict.fromkeys(spec.children):
                parents[child].append(node_id)
        return parents

    @cached_property
    def sinks(self) -> list[NodeId]:
        return [node_id for node_id, spec in self.nodes.items() if not spec.children]

    def ancestors_of(self, node_id: NodeId) -> set[NodeId]:
        """Every node above `node_id`. Computed on demand (only templates that name
        `{node.<id>}` need it): a table for all nodes would be quadratic on long chains."""
        seen: set[NodeId] = set()
        stack = list(self.parents[node_id])
        while stack:
            parent = stack.pop()
            if parent not in seen:
                seen.add(parent)
                stack.extend(self.parents[parent])
        return seen

    def reads_memory(self, node_id: NodeId) -> bool:
        """Whether an LLM node gets the conversation's earlier turns: `parameters.memory` when
        given, else only root LLM nodes do (DESIGN §3)."""
        spec = self.nodes[node_id]
        if not isinstance(spec, LLMNodeSpec):
            return False
        memory = spec.parameters.get("memory")
        return memory if isinstance(memory, bool) else not self.parents[node_id]

    @cached_property
    def uses_memory(self) -> bool:
        return any(self.reads_memory(node_id) for node_id in self.nodes)

    def chain_after(self, node_id: NodeId) -> list[NodeId]:
        """The nodes that can run right after `node_id` in the same trip (graph.worker's
        `execute_chain`): while a node's only child has it as its only parent, that child."""
        chain: list[NodeId] = []
        current = node_id
        while True:
            children = list(dict.fromkeys(self.nodes[current].children))
            if len(children) != 1 or len(self.parents[children[0]]) != 1:
                return chain
            current = children[0]
            chain.append(current)

    def tool_children(self, node_id: NodeId) -> list[ToolNodeSpec]:
        return [child for c in self.nodes[node_id].children
                if isinstance(child := self.nodes[c], ToolNodeSpec)]

    def llm_parents(self, node_id: NodeId) -> list[LLMNodeSpec]:
        return [p for pid in self.parents[node_id]
                if isinstance(p := self.nodes[pid], LLMNodeSpec)]
