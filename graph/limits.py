"""Limits that keep one request from taking a machine down, and the cheap checks behind them.

Every limit is a `SESAME_*` setting (`graph.settings`); `Limits` is the part of the settings that
validation, the scheduler and the workers need, so they need not carry the whole `Settings`.
Going over a limit is a 422 problem naming the node, the field and the setting (the body's size
is a 413, checked by the ingress while it reads). The defaults, and why a 2-core machine
survives them, are in docs/design.md §9.

Pure: no I/O. Nothing here may recurse on user data — the point is to look at hostile input
before anything that recurses (json.loads, pydantic, our own walks) does.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Limits:
    max_json_depth: int = 64            # SESAME_MAX_JSON_DEPTH: nesting of the JSON body
    max_nodes: int = 1000               # SESAME_MAX_NODES: nodes in agent_config
    max_depth: int = 100                # SESAME_MAX_DEPTH: nodes on the longest chain
    max_children: int = 500             # SESAME_MAX_CHILDREN: children of one node
    max_text_chars: int = 100_000       # SESAME_MAX_TEXT_CHARS: one template, or user_query
    max_rendered_chars: int = 4_000_000  # SESAME_MAX_RENDERED_CHARS: one prompt after substitution
    max_output_chars: int = 250_000     # SESAME_MAX_OUTPUT_CHARS: one node's output kept in a run


DEFAULT_LIMITS = Limits()

# A JSON string, escapes included; the closing quote is optional so that a match, once started,
# never fails: the scan stays linear even on an unterminated string full of escaped quotes.
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"?', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def nesting_over(raw: bytes, limit: int) -> int | None:
    """How deeply the JSON text `raw` nests arrays and objects, if that is more than `limit`;
    else None. Found without parsing (json.loads recurses once per level, deep in the C stack).
    Exact for valid JSON; for invalid JSON any answer will do (json.loads refuses it next).
    A body with at most `limit` brackets cannot be too deep: two `bytes.count` calls."""
    if raw.count(b"[") + raw.count(b"{") <= limit:
        return None
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    depth = max(itertools.accumulate(map(_STEP.__getitem__, brackets)), default=0)
    return depth if depth > limit else None


def output_chars(output: Any) -> int:
    """The size of a node's output as a child sees it: text as is, anything else as JSON."""
    if output is None:
        return 0
    if isinstance(output, str):
        return len(output)
    return len(json.dumps(output, ensure_ascii=False, default=str))


def longest_chain(edges: dict[str, list[str]]) -> list[str]:
    """The longest path (in nodes) of a graph given as {node: [children]}, iteratively (Kahn's
    order). Unknown children are ignored; nodes on a cycle are never reached (cycles are
    reported apart)."""
    parents_left = dict.fromkeys(edges, 0)
    for children in edges.values():
        for child in dict.fromkeys(children):
            if child in parents_left:
                parents_left[child] += 1
    depth = dict.fromkeys(edges, 1)
    via: dict[str, str] = {}
    ready = [node for node, count in parents_left.items() if count == 0]
    deepest = ready[0] if ready else None
    while ready:
        node = ready.pop()
        if depth[node] > depth[deepest]:
            deepest = node
        for child in dict.fromkeys(edges[node]):
            if child not in parents_left:
                continue
            if depth[node] + 1 > depth[child]:
                depth[child], via[child] = depth[node] + 1, node
            parents_left[child] -= 1
            if parents_left[child] == 0:
                ready.append(child)
    chain = []
    while deepest is not None:
        chain.append(deepest)
        deepest = via.get(deepest)
    return chain[::-1]


def listed(items: list[str], shown: int = 10) -> str:
    """`"a", "b", "c"` — at most `shown` of them, so that a message never grows with the graph."""
    quoted = ", ".join(f'"{short(item)}"' for item in items[:shown])
    return quoted + (f", … ({len(items) - shown} more)" if len(items) > shown else "")


def short(text: str, chars: int = 80) -> str:
    """User text repeated in a message: encodable and bounded."""
    text = encodable(text)
    return text if len(text) <= chars else f"{text[:chars]}… ({len(text):,} characters)"


def encodable(text: str) -> str:
    """`text` with lone surrogates escaped (`\\ud800`): an answer that repeats one could not
    be encoded as UTF-8 — that was a 500."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
