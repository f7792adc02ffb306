"""The protocol between the engine and node kinds.

A node kind (an LLM provider, a tool type) implements `NodeKind`; tool kinds also implement
`ToolKind` so a parent LLM can be offered their actions as functions. The engine only sees these
types and a `Registry` mapping `(type, provider-or-tool_type)` to a kind; `nodes/` provides the
concrete registry. Kinds are plain async code: concurrency lives in the scheduler and runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from graph.schema import ActionRequired, ErrorInfo, LLMNodeSpec, NodeSpec, ToolCall, ToolNodeSpec, Usage
from graph.settings import Settings

KindKey = tuple[str, str]

StaticCheck = Callable[[NodeSpec], list[tuple[str, str]]]
"""Optional hook: a kind class may define `check(spec) -> [(field, message), ...]` as a static
method — the problems validation can find in a node of this kind without I/O or settings (an
http tool without a URL). They are reported with every other problem as a 422."""


@dataclass(frozen=True)
class RunContext:
    """Who a run is for; passed explicitly to every kind call."""

    run_id: str
    user_id: str
    conversation_id: str


@dataclass(frozen=True)
class ToolFunction:
    """One action a tool node offers to its parent LLM, in OpenAI function format."""

    name: str
    description: str
    parameters: dict[str, Any]
    node_id: str
    version: str | None = None


@dataclass(frozen=True)
class Turn:
    """One earlier exchange of the conversation (conversation memory): the user's query and the
    run's final answer as text."""

    user: str
    assistant: str


@dataclass(frozen=True)
class LLMRequest:
    """One model call. `history` holds the conversation's earlier turns (oldest first) when the
    node uses memory: they go between the system prompt and `prompt`. `on_token`, when set, is
    called with each piece of generated text as it arrives (a kind that cannot stream ignores it
    and the full text still comes back in `NodeOutput.output`)."""

    spec: LLMNodeSpec
    context: RunContext
    system_prompt: str | None
    prompt: str
    functions: list[ToolFunction] = field(default_factory=list)
    history: tuple[Turn, ...] = ()
    on_token: Callable[[str], None] | None = None


@dataclass(frozen=True)
class ToolRequest:
    spec: ToolNodeSpec
    context: RunContext
    calls: list[ToolCall]


@dataclass(frozen=True)
class NodeOutput:
    """What a kind returns. `error` set means the work completed but failed (a tool call that
    reported failure): the node is `failed` and still shows its per-call `output`."""

    output: Any
    tool_calls: list[ToolCall] = field(default_factory=list)
    usage: Usage | None = None
    error: ErrorInfo | None = None


@runtime_checkable
class NodeKind(Protocol):
    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        """What must be fixed before this node can run (missing key, no connection). No
        model tokens may be spent here."""
        ...

    async def run(self, request: Any) -> NodeOutput:
        """Run once. Raise `graph.errors.NodeError` subclasses, never SDK exceptions."""
        ...


@runtime_checkable
class ToolKind(NodeKind, Protocol):
    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        """The actions this tool node offers a parent LLM."""
        ...


class Registry(Protocol):
    """Builds the kinds of one process. `known()` is used by validation; `kind()` by workers.
    `known()` may map each key to its kind's `StaticCheck` (or None) so validation runs it."""

    def known(self) -> list[KindKey] | Mapping[KindKey, StaticCheck | None]: ...

    def kind(self, key: KindKey) -> NodeKind: ...

    def warm_up(self) -> None:
        """Load slow dependencies ahead of the first run; blocking, called in a thread."""
        ...


class RegistryFactory(Protocol):
    def __call__(self, settings: Settings) -> Registry: ...
