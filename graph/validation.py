"""Request → `Workflow`, or every problem at once (DESIGN §2, §3).

Pure: no I/O, no provider calls. `parse_body` turns the raw HTTP body into JSON (400 for bytes
that are not JSON; nesting deeper than `SESAME_MAX_JSON_DEPTH`, duplicate keys, lone
surrogates and numbers no JSON peer can read are 422 problems, not silently accepted);
`validate_request` checks fields, kinds, edges, cycles, templates and the limits of
`graph.limits` and either returns a `Workflow` the scheduler can trust or raises
`InvalidRequest` listing every problem found (the first `MAX_PROBLEMS` of them).

Hostile input is expected here: nothing recurses on the body's nesting, and no message grows
with the size of the graph (ids and lists are shortened).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import ValidationError

from graph.errors import InvalidRequest, MalformedJSON
from graph.limits import (DEFAULT_LIMITS, Limits, encodable, listed, longest_chain, nesting_over,
                          short)
from graph.schema import SPEC_BY_TYPE, LLMNodeSpec, NodeId, NodeSpec, ToolNodeSpec
from graph.templates import referenced_nodes, strings_in
from graph.workflow import Workflow

KindKey = tuple[str, str]
RESERVED_PARAMETERS = ("model", "messages", "tools", "stream")
RUN_FIELDS = ("user_query", "user_id", "conversation_id")
MAX_ID_LENGTH = 256  # ids are stored as keys (graph.store_schema)
MAX_PROBLEMS = 100   # listed in one answer; the rest are counted
INT64 = 2**63        # integers must fit a signed 64-bit integer (what most JSON peers read)
Path = tuple[Any, ...] | None  # (parent path, key or index), built only when a problem needs it


class _Problems:
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


class _BadNumber:
    """Stands in for a number no JSON peer can read, so the walk can name its field."""

    def __init__(self, problem: str):
        self.problem = problem


def _constant(name: str) -> _BadNumber:
    return _BadNumber(f"{name} is not JSON (Python's json accepts it; JSON does not); send a "
                      "finite number, or a string")


def _float(text: str) -> float | _BadNumber:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        return _BadNumber(f"the number {short(text, 40)} is out of range; numbers must be finite "
                          "64-bit floating point")
    return value


def _int(text: str) -> int | _BadNumber:
    value = int(text) if len(text) <= 20 else None
    if value is None or not -INT64 <= value < INT64:
        return _BadNumber(f"the integer {short(text, 40)} is out of range; integers must fit in "
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
    problems = _Problems()
    for path, message in _hygiene(value):
        problems.add(*_where(path), message)
    return value, problems.items + _summary(problems)


def _hygiene(value: Any) -> Iterator[tuple[Path, str]]:
    """Every string, key and number the body should not have, in document order, walked with
    a stack (not recursion) although parse_body bounds the depth."""
    stack: list[tuple[Path, Any]] = [(None, value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            if not _is_valid_unicode(item):
                yield path, "invalid Unicode (a lone surrogate); send valid UTF-8 text"
        elif isinstance(item, _BadNumber):
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


def _summary(problems: _Problems) -> list[dict[str, Any]]:
    if not problems.dropped:
        return []
    return [{"node_id": None, "field": "(request)",
             "message": f"{problems.dropped:,} more problems are not listed (at most {MAX_PROBLEMS})"}]


def validate_request(body: Any, known_kinds: Iterable[KindKey],
                     hygiene: list[dict[str, Any]] | None = None,
                     limits: Limits = DEFAULT_LIMITS) -> Workflow:
    """Check everything that can be checked without running anything. `body` is a JSON value
    (from `parse_body`, or built in Python); `hygiene` the problems `parse_body` found in it."""
    problems = _Problems()
    problems.extend(hygiene or [])
    if not isinstance(body, dict):
        problems.add(None, "(body)", f"the body must be a JSON object, got {_json_type(body)}")
        _raise(problems)

    run_fields = _run_fields(body, limits, problems)
    config = body.get("agent_config")
    specs = _node_specs(config, set(known_kinds), limits, problems)
    if isinstance(config, dict) and len(config) <= limits.max_nodes:
        _check_edges(_raw_children(config), limits, problems)
    if problems.items or specs is None or run_fields is None:
        _raise(problems)

    workflow = Workflow(nodes=specs, limits=limits, **run_fields)
    _check_bindings_and_templates(workflow, problems)
    if problems.items:
        _raise(problems)
    return workflow


def _raise(problems: _Problems) -> None:
    items = problems.items + _summary(problems)
    first = items[0]
    where = f'node "{first["node_id"]}" ' if first["node_id"] is not None else ""
    count = len(problems.items) + problems.dropped
    raise InvalidRequest(f"{count} problem{'s' if count != 1 else ''} in the request; first: "
                         f"{where}{first['field']}: {first['message']}", items)


def _json_type(value: Any) -> str:
    names = {dict: "an object", _Object: "an object", list: "an array", str: "a string",
             bool: "a boolean", int: "a number", float: "a number", _BadNumber: "a number",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _echo(value: Any) -> str:
    """A value repeated in a message: a short string in quotes, or its JSON type."""
    return f'"{short(value)}"' if isinstance(value, str) else _json_type(value)


def _run_fields(body: dict[str, Any], limits: Limits, problems: _Problems) -> dict[str, str] | None:
    values: dict[str, str] = {}
    for name in RUN_FIELDS:
        value = body.get(name)
        if value is None:
            problems.add(None, name, f"{name} is required (a string)")
        elif not isinstance(value, str):
            problems.add(None, name, f"{name} must be a string, got {_json_type(value)}")
        elif name == "user_query" and (problem := _text_problem(value, limits)):
            problems.add(None, name, f"{name} {problem}")
        elif name != "user_query" and not value.strip():
            problems.add(None, name, f"{name} must not be empty")
        elif name != "user_query" and (problem := identifier_problem(value)):
            problems.add(None, name, f"{name} {problem}")
        else:
            values[name] = value
    return values if len(values) == len(RUN_FIELDS) else None


def identifier_problem(value: str) -> str | None:
    """What is wrong with an id (a user, conversation or node id), if anything: ids are keys in
    the store and in URLs, so they are short and free of control characters."""
    if not value:
        return "is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value):,} characters long; at most {MAX_ID_LENGTH} are allowed"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "contains a control character; send printable text"
    return None


def _text_problem(text: str, limits: Limits) -> str | None:
    if len(text) > limits.max_text_chars:
        return (f"is {len(text):,} characters long; at most {limits.max_text_chars:,} are allowed "
                "(SESAME_MAX_TEXT_CHARS)")
    return None


def _node_specs(config: Any, known_kinds: set[KindKey], limits: Limits,
                problems: _Problems) -> dict[NodeId, NodeSpec] | None:
    if config is None:
        problems.add(None, "agent_config", "agent_config is required: an object {node_id: node}")
        return None
    if not isinstance(config, dict):
        problems.add(None, "agent_config", f"agent_config must be an object {{node_id: node}}, "
                     f"got {_json_type(config)}")
        return None
    if not config:
        problems.add(None, "agent_config", "agent_config is empty; give at least one node")
        return None
    if len(config) > limits.max_nodes:  # the nodes are not looked at: that is what costs
        problems.add(None, "agent_config", f"agent_config has {len(config):,} nodes; at most "
                     f"{limits.max_nodes:,} are allowed (SESAME_MAX_NODES)")
        return None

    specs: dict[NodeId, NodeSpec] = {}
    for key, node in config.items():
        if problem := identifier_problem(key):
            problems.add(short(key, MAX_ID_LENGTH), "id", f"a node id {problem}")
            continue
        spec = _node_spec(key, node, problems)
        if spec is None:
            continue
        if spec.kind not in known_kinds:
            _unknown_kind(spec, known_kinds, problems)
        _check_texts(spec, limits, problems)
        specs[key] = spec
    return specs if len(specs) == len(config) else None


def _node_spec(key: str, node: Any, problems: _Problems) -> NodeSpec | None:
    if not isinstance(node, dict):
        problems.add(key, "(node)", f"node must be an object, got {_json_type(node)}")
        return None
    ok = True
    if "id" in node and node["id"] != key:
        problems.add(key, "id", f'id is {_echo(node["id"])} but its key in agent_config is '
                     f'"{key}"; they must be equal')
        ok = False
    node_type = node.get("type")
    model = SPEC_BY_TYPE.get(node_type) if isinstance(node_type, str) else None
    if model is None:
        known = ", ".join(f'"{name}"' for name in SPEC_BY_TYPE)
        problems.add(key, "type", f"unknown type {_echo(node_type)}; known: {known}")
        return None
    try:
        spec = model.model_validate({**node, "id": key})
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            field = _field_path(error["loc"])
            if error["type"] == "missing":
                problems.add(key, field, f"{field} is required")
            else:
                problems.add(key, field, f"{error['msg']} (got {_json_type(error['input'])})")
        return None
    return spec if ok else None


def _field_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{short(str(part))}" if path else short(str(part)))
    return path or "(node)"


def _unknown_kind(spec: NodeSpec, known_kinds: set[KindKey], problems: _Problems) -> None:
    family, name = spec.kind
    field = "provider_name" if isinstance(spec, LLMNodeSpec) else "tool_type"
    given = spec.provider_name if isinstance(spec, LLMNodeSpec) else spec.tool_type
    known = sorted(k[1] for k in known_kinds if k[0] == family)
    problems.add(spec.id, field, f"unknown {field} {_echo(given)}; known: "
                 + (", ".join(f'"{k}"' for k in known) or "none"))


def _check_texts(spec: NodeSpec, limits: Limits, problems: _Problems) -> None:
    """Templates are at most `max_text_chars` each (what they render to is checked when the
    node starts: `SESAME_MAX_RENDERED_CHARS`)."""
    if isinstance(spec, LLMNodeSpec):
        texts = [("prompt_template", spec.prompt_template), ("system_prompt", spec.system_prompt)]
    else:
        texts = [(f"arguments{path}", text) for path, text in _strings_with_paths(spec.arguments or {})]
    for field, text in texts:
        if text is not None and (problem := _text_problem(text, limits)):
            problems.add(spec.id, field, f"{field} {problem}")


def _strings_with_paths(value: Any) -> Iterator[tuple[str, str]]:
    """Every string inside a JSON-like value with its path (`.to`, `.cc[1]`), walked with a stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, item = stack.pop()
        if isinstance(item, str):
            yield path, item
        elif isinstance(item, list):
            stack.extend((f"{path}[{i}]", v) for i, v in reversed(list(enumerate(item))))
        elif isinstance(item, dict):
            stack.extend((f"{path}.{short(str(k))}", v) for k, v in reversed(list(item.items())))


def _raw_children(config: dict[str, Any]) -> dict[NodeId, list[NodeId]]:
    """Each node's children as sent, where they are a list of strings (type errors are reported
    by the node's model), so edge problems are found even in nodes with other problems."""
    edges: dict[NodeId, list[NodeId]] = {}
    for node_id, node in config.items():
        children = node.get("children", []) if isinstance(node, dict) else []
        ok = isinstance(children, list) and all(isinstance(c, str) for c in children)
        edges[node_id] = children if ok else []
    return edges


def _check_edges(edges: dict[NodeId, list[NodeId]], limits: Limits, problems: _Problems) -> None:
    known = listed(list(edges))
    for node_id, children in edges.items():
        if len(children) > limits.max_children:
            problems.add(node_id, "children", f'node "{short(node_id)}" has {len(children):,} '
                         f"children; at most {limits.max_children:,} are allowed "
                         "(SESAME_MAX_CHILDREN)")
        for index, child in enumerate(children):
            if child == node_id:
                problems.add(node_id, f"children[{index}]", f'node "{short(node_id)}" lists itself '
                             "as a child (a self-loop); remove it")
            elif child not in edges:
                problems.add(node_id, f"children[{index}]", f'children of node "{short(node_id)}" '
                             f'name "{short(child)}", which is not in agent_config (known: {known})')
    cycles, count = _cycles(edges, MAX_PROBLEMS)
    for cycle in cycles:
        problems.add(cycle[0], "children", f"the graph has a cycle: {_chain(cycle + [cycle[0]])}; "
                     "a workflow must be acyclic")
    problems.dropped += count - len(cycles)
    if not count:
        _check_depth(edges, limits, problems)


def _check_depth(edges: dict[NodeId, list[NodeId]], limits: Limits, problems: _Problems) -> None:
    """The longest chain is at most `max_depth` nodes; the problem names the edge that makes
    it one node too long."""
    chain = longest_chain(edges)
    if len(chain) <= limits.max_depth:
        return
    parent, child = chain[limits.max_depth - 1], chain[limits.max_depth]
    problems.add(parent, f"children[{edges[parent].index(child)}]",
                 f"the longest chain has {len(chain):,} nodes ({_chain(chain)}); at most "
                 f"{limits.max_depth:,} are allowed (SESAME_MAX_DEPTH)")


def _chain(nodes: list[NodeId]) -> str:
    """`"a" → "b" → … → "z"`, shortened in the middle when long."""
    if len(nodes) > 8:
        middle = f"… ({len(nodes) - 6:,} more)"
        return " → ".join([*(f'"{short(n)}"' for n in nodes[:3]), middle,
                           *(f'"{short(n)}"' for n in nodes[-3:])])
    return " → ".join(f'"{short(n)}"' for n in nodes)


def _cycles(edges: dict[NodeId, list[NodeId]], keep: int) -> tuple[list[list[NodeId]], int]:
    """One cycle per back edge found by depth-first search (self-loops are reported apart):
    the first `keep` of them, and how many there are."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    position: dict[NodeId, int] = {}  # of each grey node in `path`
    cycles: list[list[NodeId]] = []
    count = 0
    for start in edges:
        if color[start] != white:
            continue
        stack: list[tuple[NodeId, Iterator[NodeId]]] = [(start, iter(edges[start]))]
        path = [start]
        position[start] = 0
        color[start] = grey
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                color[node] = black
                stack.pop()
                path.pop()
            elif child == node or child not in edges:
                continue
            elif color[child] == grey:
                count += 1
                if len(cycles) < keep:
                    cycles.append(path[position[child]:])
            elif color[child] == white:
                color[child] = grey
                position[child] = len(path)
                path.append(child)
                stack.append((child, iter(edges[child])))
    return cycles, count


def _check_bindings_and_templates(workflow: Workflow, problems: _Problems) -> None:
    ancestors: dict[NodeId, set[NodeId]] = {}  # per node, computed once: templates may repeat refs
    for node_id, spec in workflow.nodes.items():
        if isinstance(spec, LLMNodeSpec):
            for key in RESERVED_PARAMETERS:
                if key in spec.parameters:
                    problems.add(node_id, f"parameters.{key}", f'"{key}" is set by Sesame and cannot '
                                 "be passed in parameters; remove it")
            memory = spec.parameters.get("memory")
            if memory is not None and not isinstance(memory, bool):
                problems.add(node_id, "parameters.memory", "memory must be true or false, got "
                             f"{_json_type(memory)}")
            templates = [("prompt_template", spec.prompt_template), ("system_prompt", spec.system_prompt)]
        else:
            templates = _tool_templates(workflow, spec, problems)
        for field, template in templates:
            for ref in dict.fromkeys(referenced_nodes(template or "")):
                if ref in workflow.nodes and node_id not in ancestors:
                    ancestors[node_id] = workflow.ancestors_of(node_id)
                _check_reference(workflow, node_id, field, ref, ancestors.get(node_id, set()), problems)


def _tool_templates(workflow: Workflow, spec: ToolNodeSpec,
                    problems: _Problems) -> list[tuple[str, str | None]]:
    if workflow.llm_parents(spec.id):
        return []
    if spec.action is None:
        problems.add(spec.id, "action", "a Tool node without an LLM parent needs action (e.g. "
                     '"GMAIL_SEND_EMAIL"): no model is there to choose one')
    if spec.arguments is None:
        problems.add(spec.id, "arguments", "a Tool node without an LLM parent needs arguments: an "
                     "object whose string values may be templates such as {input}")
    return [("arguments", text) for text in strings_in(spec.arguments or {})]


def _check_reference(workflow: Workflow, node_id: NodeId, field: str, ref: str,
                     ancestors: set[NodeId], problems: _Problems) -> None:
    if ref not in workflow.nodes:
        problems.add(node_id, field, f'{{node.{short(ref)}}} names "{short(ref)}", which is not in '
                     "agent_config")
    elif ref not in ancestors:
        problems.add(node_id, field, f'{{node.{short(ref)}}} names "{short(ref)}", which is not an '
                     f'ancestor of node "{node_id}": its output is not ready when this node runs')
