"""The raw HTTP body → a JSON value, refusing what JSON peers could not read (DESIGN §3, design §9).

`parse_body` is the first step of `graph.validation`: 400 (`MalformedJSON`) for bytes that are
not UTF-8 JSON; a 422 (`InvalidRequest`) for nesting deeper than `SESAME_MAX_JSON_DEPTH`, found
before parsing; and, as problems for `validate_request` to list with its own, duplicate keys,
lone surrogates and numbers outside a double or a 64-bit integer — each named by node and field.

Pure. Nothing here recurses on the body's nesting; paths are built only for a problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from graph.errors import InvalidRequest, MalformedJSON
from graph.limits import DEFAULT_LIMITS, Limits, encodable, nesting_over, short
from graph.schema import NodeId

MAX_ID_LENGTH = 256  # ids are stored as keys (graph.store_schema)
MAX_PROBLEMS = 100   # listed in one answer; the rest are counted
INT64 = 2**63        # integers must fit a signed 64-bit integer (what most JSON peers read)
Path = tuple[Any, ...] | None  # (parent path, key or index), built only when a problem needs it


class Problems:
    """Collects `{"node_id", "field", "message"}` entries in the order they are found; past
    `MAX_PROBLEMS` it only counts them (a million bad children must not make a huge answer)."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.dropped = 0

    def add(self, node_id: NodeId | None, field: str, message: str) -> None:
        if len(self.items) < MAX_PROBLEMS:
            self.items.append({"node_id": None if node_id is None else encodable(node_id),
                               "field": encodable(field), "message": encodable(message)})
        else:
            self.dropped += 1

    def extend(self, items: list[dict[str, Any]]) -> None:
        for item in items:
            self.add(item["node_id"], item["field"], item["message"])

    def listed(self) -> list[dict[str, Any]]:
        """The problems kept, and one more saying how many were not."""
        if not self.dropped:
            return list(self.items)
        return [*self.items, {"node_id": None, "field": "(request)", "message": f"{self.dropped:,} "
                              f"more problems are not listed (at most {MAX_PROBLEMS})"}]


class _Object(dict):  # type: ignore[type-arg]
    """A JSON object that remembers the keys it was sent more than once (json.loads would keep
    the last value silently: a client bug that would run a different graph than it sent)."""

    __slots__ = ("duplicates",)


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    result = _Object()
    result.duplicates = []
    for key, value in pairs:
        if key in result:
            result.duplicates.append(key)
        result[key] = value
    return result


class BadNumber:
    """Stands in for a number no JSON peer can read, so the walk can name its field."""

    def __init__(self, problem: str):
        self.problem = problem


def _constant(name: str) -> BadNumber:
    return BadNumber(f"{name} is not JSON (Python's json accepts it; JSON does not); send a "
                      "finite number, or a string")


def _float(text: str) -> float | BadNumber:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return BadNumber(f"the number {short(text, 40)} is out of range; numbers must be finite "
                          "64-bit floating point")
    return value


def _int(text: str) -> int | BadNumber:
    value = int(text) if len(text) <= 20 else None
    if value is None or not -INT64 <= value < INT64:
        return BadNumber(f"the integer {short(text, 40)} is out of range; integers must fit in "
                          "64 bits")
    return value


def parse_body(raw: bytes, limits: Limits = DEFAULT_LIMITS) -> tuple[Any, list[dict[str, Any]]]:
    """Parse the body. Returns the JSON value and the hygiene problems (duplicate keys, lone
    surrogates, numbers out of range); raises `MalformedJSON` when it is not JSON at all and
    `InvalidRequest` when it nests deeper than `limits.max_json_depth`."""
    try:  # strictly UTF-8 (a BOM is tolerated): json.loads would also guess UTF-16 and -32
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    depth = nesting_over(raw, limits.max_json_depth)
    if depth is not None:
        message = (f"the body nests arrays and objects {depth:,} levels deep; at most "
                   f"{limits.max_json_depth} are allowed (SESAME_MAX_JSON_DEPTH)")
        raise InvalidRequest(f"1 problem in the request; first: (body): {message}",
                             [{"node_id": None, "field": "(body)", "message": message}])
    try:
        value = json.loads(text, object_pairs_hook=_object, parse_constant=_constant,
                           parse_float=_float, parse_int=_int)
    except json.JSONDecodeError as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from None
    except (RecursionError, ValueError) as exc:
        raise MalformedJSON(f"the body is not valid JSON ({type(exc).__name__})") from None
    problems = Problems()
    for path, message in _hygiene(value):
        problems.add(*_where(path), message)
    return value, problems.listed()


def _hygiene(value: Any) -> Iterator[tuple[Path, str]]:
    """Every string, key and number the body should not have, in document order, walked with
    a stack (not recursion) although parse_body bounds the depth."""
    stack: list[tuple[Path, Any]] = [(None, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _is_valid_unicode(item):
                yield path, "invalid Unicode (a lone surrogate); send valid UTF-8 text"
        elif isinstance(item, BadNumber):
            yield path, item.problem
        elif isinstance(item, list):
            stack.extend(((path, index), v) for index, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            for key in dict.fromkeys(getattr(item, "duplicates", ())):
                yield (path, key), f'duplicate key "{short(key)}" in a JSON object; send each key once'
            children = []
            for key, v in item.items():
                if _is_valid_unicode(key):
                    children.append(((path, key), v))
                else:
                    yield (path, key), "invalid Unicode (a lone surrogate) in a key; send valid UTF-8 text"
            stack.extend(reversed(children))


def _where(path: Path) -> tuple[NodeId | None, str]:
    """`(node_id, field)` of a place in the body: inside a node, the node's id and the field
    within it (`"1", "children[0]"`), as every other problem names it; elsewhere `(None,
    "user_query")`, `(None, "(body)")` for the body itself."""
    parts: list[str | int] = []
    while path is not None:
        path, key = path
        parts.append(key)
    parts.reverse()
    if len(parts) >= 2 and parts[0] == "agent_config" and isinstance(parts[1], str):
        return short(parts[1], MAX_ID_LENGTH), _field(parts[2:]) if len(parts) > 2 else "(node)"
    return None, _field(parts) if parts else "(body)"


def _field(parts: list[str | int]) -> str:
    return "".join(f"[{part}]" if isinstance(part, int) else "." + (short(part) or '""')
                   for part in parts).removeprefix(".")


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
