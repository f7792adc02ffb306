"""Safe prompt templating (DESIGN §3).

Only `{input}`, `{user_query}`, `{user_id}`, `{conversation_id}` and `{node.<id>}` are replaced;
`{{` and `}}` are literal braces; every other brace text (JSON examples, `{0}`,
`{input.__class__}`) stays exactly as written. Substituted values are never re-scanned, so user
text can never inject a placeholder. `str.format` is never used.

A template of 100,000 characters that says `{input}` 14,000 times over a 1 MB input would
render to 14 GB: with a `limit`, the size of the result is added up first (cheap: lengths only)
and a result over it raises `PromptTooLarge` before anything is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from graph.errors import PromptTooLarge

VARIABLES = ("input", "user_query", "user_id", "conversation_id")
_TOKEN = re.compile(r"\{\{|\}\}|\{(input|user_query|user_id|conversation_id|node\.[^{}]+)\}")


def render(template: str, variables: Mapping[str, str], node_outputs: Mapping[str, str],
           limit: int | None = None) -> str:
    """Render `template`. `node_outputs` maps node id → output text for `{node.<id>}`; a
    reference to an id not in it stays literal (validation rejects those beforehand). With a
    `limit`, a result longer than it raises `PromptTooLarge` instead."""
    if limit is not None and (size := rendered_size(template, variables, node_outputs)) > limit:
        raise PromptTooLarge(_too_large(size, limit))
    return _TOKEN.sub(lambda match: _value(match, variables, node_outputs), template)


def _too_large(size: int, limit: int) -> str:
    return (f"the rendered text would be {size:,} characters; at most {limit:,} are allowed "
            "(SESAME_MAX_RENDERED_CHARS)")


def rendered_size(template: str, variables: Mapping[str, str], node_outputs: Mapping[str, str]) -> int:
    """How many characters `render` would return, without building it."""
    return len(template) + sum(len(_value(m, variables, node_outputs)) - len(m.group(0))
                               for m in _TOKEN.finditer(template))


def _value(match: re.Match[str], variables: Mapping[str, str], node_outputs: Mapping[str, str]) -> str:
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


def referenced_nodes(template: str) -> list[str]:
    """The node ids that `template` refers to with `{node.<id>}`, in order of appearance."""
    return [m.group(1)[len("node."):] for m in _TOKEN.finditer(template)
            if m.group(1) and m.group(1).startswith("node.")]


def render_value(value: Any, variables: Mapping[str, str], node_outputs: Mapping[str, str],
                 limit: int | None = None) -> Any:
    """Render every string inside a JSON-like value (used for a Tool node's `arguments`). With
    a `limit`, the rendered strings together may be at most that long."""
    if limit is not None:
        size = sum(rendered_size(s, variables, node_outputs) for s in strings_in(value))
        if size > limit:
            raise PromptTooLarge(_too_large(size, limit))
    return _render_value(value, variables, node_outputs)


def _render_value(value: Any, variables: Mapping[str, str], node_outputs: Mapping[str, str]) -> Any:
    # Recursive, on arguments whose nesting parse_body bounded (SESAME_MAX_JSON_DEPTH).
    if isinstance(value, str):
        return render(value, variables, node_outputs)
    if isinstance(value, list):
        return [_render_value(v, variables, node_outputs) for v in value]
    if isinstance(value, dict):
        return {k: _render_value(v, variables, node_outputs) for k, v in value.items()}
    return value


def strings_in(value: Any) -> list[str]:
    """Every string inside a JSON-like value, in order (to find the templates in `arguments`)."""
    strings: list[str] = []
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            strings.append(item)
        elif isinstance(item, list):
            stack.extend(reversed(item))
        elif isinstance(item, dict):
            stack.extend(reversed(list(item.values())))
    return strings
