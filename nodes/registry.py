"""The literal table of node kinds. Add a kind here and nowhere else.

Every OpenAI-compatible provider of `nodes.providers` is served by `OpenAIChatKind`; `known()`
maps each kind to its optional static check (`graph.kinds.StaticCheck`), which validation runs.
"""

from __future__ import annotations

from graph.kinds import KindKey, NodeKind, StaticCheck
from graph.settings import Settings
from nodes.llm_anthropic import AnthropicKind
from nodes.llm_openai import OpenAIChatKind
from nodes.providers import OPENAI_COMPATIBLE
from nodes.tool_composio import ComposioToolKind
from nodes.tool_email import EmailToolKind
from nodes.tool_http import HttpToolKind
from nodes.tool_mcp import MCPToolKind
from nodes.tool_python import PythonToolKind

KINDS: dict[KindKey, type] = {
    **{("llm", name): OpenAIChatKind for name in OPENAI_COMPATIBLE},
    ("llm", "anthropic"): AnthropicKind,
    ("tool", "composio"): ComposioToolKind,
    ("tool", "mcp"): MCPToolKind,
    ("tool", "http"): HttpToolKind,
    ("tool", "email"): EmailToolKind,
    ("tool", "python"): PythonToolKind,
}


class KindRegistry:
    """The kinds of one process, each built once (they hold SDK clients and caches). One
    `OpenAIChatKind` serves every OpenAI-compatible provider."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._built: dict[type, NodeKind] = {}

    def known(self) -> dict[KindKey, StaticCheck | None]:
        return {key: getattr(cls, "check", None) for key, cls in KINDS.items()}

    def warm_up(self) -> None:
        """Build every kind and let it load what it loads lazily (slow SDK imports)."""
        for key in dict((cls, key) for key, cls in KINDS.items()).values():  # each class once
            warm_up = getattr(self.kind(key), "warm_up", None)
            if warm_up is not None:
                warm_up()

    def kind(self, key: KindKey) -> NodeKind:
        cls = KINDS[key]
        if cls not in self._built:
            self._built[cls] = cls(self._settings)
        return self._built[cls]


def build_registry(settings: Settings) -> KindRegistry:
    return KindRegistry(settings)
