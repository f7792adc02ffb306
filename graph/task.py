"""What the scheduler sends a worker: one node (`NodeTask`), or a chain of nodes (`Chain`).

Frozen values that cross Ray as they are. A `NodeTask` is ready to run (its templates rendered);
a `Chain` is a first `NodeTask` plus the nodes after it — each the only child of the one
before, which is its only parent — whose tasks the worker builds from the results as it goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from graph.kinds import RunContext, Turn
from graph.schema import NodeId, NodeSpec, ToolCall, ToolNodeSpec


@dataclass(frozen=True)
class NodeTask:
    """Everything a worker needs to run one node; built by the scheduler, already rendered."""

    spec: NodeSpec
    context: RunContext
    prompt: str = ""                          # LLM: the rendered prompt (user message)
    system_prompt: str | None = None          # LLM: the rendered system prompt
    tools: tuple[ToolNodeSpec, ...] = ()      # LLM: tool children whose actions it is offered
    history: tuple[Turn, ...] = ()            # LLM: earlier turns of the conversation (memory)
    calls: tuple[ToolCall, ...] = ()          # Tool: the calls to execute, in order


@dataclass(frozen=True)
class ChainStep:
    spec: NodeSpec
    tools: tuple[ToolNodeSpec, ...] = ()      # LLM: tool children whose actions it is offered
    history: tuple[Turn, ...] = ()            # LLM: earlier turns, if it reads memory


@dataclass(frozen=True)
class Chain:
    first: NodeTask
    steps: tuple[ChainStep, ...]
    user_query: str
    outputs: Mapping[NodeId, str]             # texts of the earlier nodes the steps' templates name
    limit: int                                # SESAME_MAX_RENDERED_CHARS

    @property
    def specs(self) -> list[NodeSpec]:
        return [self.first.spec, *(step.spec for step in self.steps)]
