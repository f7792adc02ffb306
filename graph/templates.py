"""Safe prompt templating (DESIGN §3).

Only `{input}`, `{user_query}`, `{user_id}`, `{conversation_id}` and `{node.<id>}` are replaced;
`{{` and `}}` are literal braces; every other brace text (JSON examples, `{0}`,
`{input.__class__}`) stays exactly as written. Substituted values are never re-scanned, so user
text can never inject a placeholder. `str.format` is never used.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

VARIABLES = ("input", "user_query", "user_id", "conversation_id")
_TOKEN = re.compile(r"\{\{|\}\}|\{(input|user_query|user_id|conversation_id|node\.[^{}]+)\}")


def render(template: str, variables: Mapping[str, str], node_outputs: Mapping[str, str]) -> str:
    """Render `template`. `node_outputs` maps node id → output text for `{node.<id>}`; a
    reference to an id not in it stays literal (validation rejects those beforehand)."""

    def replace(match: re.Match[str]) -> str:
        token = match.group(0)
        if token == "{{":
            return "{"
        if token == "}}":
            return "}"
        name = match.group(1)
        if name.startswith("node."):
            node_id = name[len("node."):]
            return node_outputs[node_id] if node_id in node_outputs else token
        return variables[name]

    return _TOKEN.sub(replace, template)


def referenced_nodes(template: str) -> list[str]:
    """The node ids that `template` refers to with `{node.<id>}`, in order of appearance."""
    return [m.group(1)[len("node."):] for m in _TOKEN.finditer(template)
            if m.group(1) and m.group(1).startswith("node.")]


def render_value(value: Any, variables: Mapping[str, str], node_outputs: Mapping[str, str]) -> Any:
    """Render every string inside a JSON-like value (used for a Tool node's `arguments`)."""
    if isinstance(value, str):
        return render(value, variables, node_outputs)
    if isinstance(value, list):
        return [render_value(v, variables, node_outputs) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, variables, node_outputs) for k, v in value.items()}
    return value


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON-like value (to find the templates in `arguments`)."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in strings_in(v)]
    if isinstance(value, dict):
        return [s for v in value.values() for s in strings_in(v)]
    return []
