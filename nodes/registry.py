"""The literal table of node kinds. Add a kind here and nowhere else."""

from __future__ import annotations

from graph.kinds import KindKey, NodeKind
from graph.settings import Settings
from nodes.llm_openai import OpenAIChatKind
from nodes.tool_composio import ComposioToolKind

KINDS: dict[KindKey, type] = {
    ("llm", "openai"): OpenAIChatKind,
    ("tool", "composio"): ComposioToolKind,
}


class KindRegistry:
    """The kinds of one process, each built once (they hold SDK clients and caches)."""

    def __init__(self, settings: Settings):
        self._settings = settings
        self._built: dict[KindKey, NodeKind] = {}

    def known(self) -> list[KindKey]:
        return list(KINDS)

    def warm_up(self) -> None:
        """Build every kind and let it load what it loads lazily (slow SDK imports)."""
        for key in KINDS:
            warm_up = getattr(self.kind(key), "warm_up", None)
            if warm_up is not None:
                warm_up()

    def kind(self, key: KindKey) -> NodeKind:
        if key not in self._built:
            self._built[key] = KINDS[key](self._settings)
        return self._built[key]


def build_registry(settings: Settings) -> KindRegistry:
    return KindRegistry(settings)
