"""Request → `Workflow`, or every problem at once (DESIGN §2, §3).

Pure: no I/O, no provider calls. `parse_body` turns the raw HTTP body into JSON (400 for bytes
that are not JSON; duplicate keys and lone surrogates are 422 problems, not silently merged);
`validate_request` checks fields, kinds, edges, cycles and templates and either returns a
`Workflow` the scheduler can trust or raises `InvalidRequest` listing every problem found.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from graph.errors import InvalidRequest, MalformedJSON
from graph.kinds import StaticCheck
from graph.schema import SPEC_BY_TYPE, LLMNodeSpec, NodeId, NodeSpec, ToolNodeSpec
from graph.templates import referenced_nodes, strings_in
from graph.workflow import Workflow

KindKey = tuple[str, str]
RESERVED_PARAMETERS = ("model", "messages", "tools", "stream")
RUN_FIELDS = ("user_query", "user_id", "conversation_id")
MAX_ID_LENGTH = 256  # ids are stored as keys (graph.store_schema)


class _Problems:
    """Collects `{"node_id", "field", "message"}` entries in the order they are found."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def add(self, node_id: NodeId | None, field: str, message: str) -> None:
        self.items.append({"node_id": node_id, "field": field, "message": message})


class _DuplicateKeys:
    """`object_pairs_hook` for json.loads that remembers duplicate keys instead of keeping the
    last one silently (a client bug that would otherwise run a different graph than it sent)."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    def __call__(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                self.keys.append(key)
            result[key] = value
        return result


def parse_body(raw: bytes) -> tuple[Any, list[dict[str, Any]]]:
    """Parse the body. Returns the JSON value and the hygiene problems (duplicate keys, lone
    surrogates); raises `MalformedJSON` when it is not JSON at all."""
    duplicates = _DuplicateKeys()
    try:
        value = json.loads(raw, object_pairs_hook=duplicates)
    except UnicodeDecodeError as exc:
        raise MalformedJSON(f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON") from None
    except json.JSONDecodeError as exc:
        raise MalformedJSON(f"the body is not valid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from None
    except RecursionError:
        raise MalformedJSON("the body is nested too deeply to parse") from None
    problems = _Problems()
    for key in dict.fromkeys(duplicates.keys):
        problems.add(None, _shown(key), f'duplicate key "{_shown(key)}" in a JSON object; '
                     "send each key once")
    for path in _lone_surrogates(value, ""):
        problems.add(None, path or "(body)", "invalid Unicode (a lone surrogate); send valid UTF-8 text")
    return value, problems.items


def _lone_surrogates(value: Any, path: str) -> Iterable[str]:
    if isinstance(value, str):
        if not _is_valid_unicode(value):
            yield path
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _lone_surrogates(item, f"{path}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{path}.{_shown(key)}" if path else _shown(key)
            if not _is_valid_unicode(key):
                yield child
            else:
                yield from _lone_surrogates(item, child)


def _is_valid_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _shown(text: str) -> str:
    """A key as it can be printed in a message (lone surrogates escaped)."""
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def validate_request(body: Any, known_kinds: Iterable[KindKey] | Mapping[KindKey, StaticCheck | None],
                     hygiene: list[dict[str, Any]] | None = None) -> Workflow:
    """Check everything that can be checked without running anything. `known_kinds` may map
    each kind to its static check (`graph.kinds.StaticCheck`), whose problems are reported too."""
    problems = _Problems()
    problems.items.extend(hygiene or [])
    if not isinstance(body, dict):
        problems.add(None, "(body)", f"the body must be a JSON object, got {_json_type(body)}")
        _raise(problems)

    run_fields = _run_fields(body, problems)
    deadline_s = _deadline(body, problems)
    config = body.get("agent_config")
    checks = dict(known_kinds) if isinstance(known_kinds, Mapping) else dict.fromkeys(known_kinds)
    specs = _node_specs(config, checks, problems)
    if isinstance(config, dict):
        _check_edges(_raw_children(config), problems)
    if problems.items or specs is None or run_fields is None:
        _raise(problems)

    workflow = Workflow(nodes=specs, **run_fields, deadline_s=deadline_s)
    _check_bindings_and_templates(workflow, problems)
    if problems.items:
        _raise(problems)
    return workflow


def _raise(problems: _Problems) -> None:
    count = len(problems.items)
    first = problems.items[0]
    where = f'node "{first["node_id"]}" ' if first["node_id"] is not None else ""
    raise InvalidRequest(f"{count} problem{'s' if count != 1 else ''} in the request; first: "
                         f"{where}{first['field']}: {first['message']}", problems.items)


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _run_fields(body: dict[str, Any], problems: _Problems) -> dict[str, str] | None:
    values: dict[str, str] = {}
    for name in RUN_FIELDS:
        value = body.get(name)
        if value is None:
            problems.add(None, name, f"{name} is required (a string)")
        elif not isinstance(value, str):
            problems.add(None, name, f"{name} must be a string, got {_json_type(value)}")
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
    if len(value) > MAX_ID_LENGTH:
        return f"is {len(value)} characters long; at most {MAX_ID_LENGTH} are allowed"
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        return "contains a control character; send printable text"
    return None


def _deadline(body: dict[str, Any], problems: _Problems) -> float | None:
    """`deadline_s`: optional seconds the whole run may take (the server caps it)."""
    value = body.get("deadline_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        problems.add(None, "deadline_s", f"deadline_s must be a positive number of seconds, got "
                     f"{json.dumps(value) if not isinstance(value, float) else value}")
        return None
    return float(value)


def _node_specs(config: Any, checks: dict[KindKey, StaticCheck | None],
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

    specs: dict[NodeId, NodeSpec] = {}
    for key, node in config.items():
        if problem := identifier_problem(key):
            problems.add(_shown(key)[:MAX_ID_LENGTH], "id", f"a node id {problem}")
            continue
        spec = _node_spec(key, node, problems)
        if spec is None:
            continue
        if spec.kind not in checks:
            _unknown_kind(spec, set(checks), problems)
        elif (check := checks[spec.kind]) is not None:
            for field, message in check(spec):
                problems.add(key, field, message)
        specs[key] = spec
    return specs if len(specs) == len(config) else None


def _node_spec(key: str, node: Any, problems: _Problems) -> NodeSpec | None:
    if not isinstance(node, dict):
        problems.add(key, "(node)", f"node must be an object, got {_json_type(node)}")
        return None
    ok = True
    if "id" in node and node["id"] != key:
        problems.add(key, "id", f'id is {json.dumps(node["id"])} but its key in agent_config is '
                     f'"{key}"; they must be equal')
        ok = False
    node_type = node.get("type")
    model = SPEC_BY_TYPE.get(node_type) if isinstance(node_type, str) else None
    if model is None:
        known = ", ".join(f'"{name}"' for name in SPEC_BY_TYPE)
        problems.add(key, "type", f"unknown type {json.dumps(node_type)}; known: {known}")
        return None
    try:
        spec = model.model_validate({"id": key, **node})
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
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(node)"


def _unknown_kind(spec: NodeSpec, known_kinds: set[KindKey], problems: _Problems) -> None:
    family, name = spec.kind
    field = "provider_name" if isinstance(spec, LLMNodeSpec) else "tool_type"
    given = spec.provider_name if isinstance(spec, LLMNodeSpec) else spec.tool_type
    known = sorted(k[1] for k in known_kinds if k[0] == family)
    problems.add(spec.id, field, f'unknown {field} "{given}"; known: '
                 + (", ".join(f'"{k}"' for k in known) or "none"))


def _raw_children(config: dict[str, Any]) -> dict[NodeId, list[NodeId]]:
    """Each node's children as sent, where they are a list of strings (type errors are reported
    by the node's model), so edge problems are found even in nodes with other problems."""
    edges: dict[NodeId, list[NodeId]] = {}
    for node_id, node in config.items():
        children = node.get("children", []) if isinstance(node, dict) else []
        ok = isinstance(children, list) and all(isinstance(c, str) for c in children)
        edges[node_id] = children if ok else []
    return edges


def _check_edges(edges: dict[NodeId, list[NodeId]], problems: _Problems) -> None:
    known = ", ".join(f'"{k}"' for k in edges)
    for node_id, children in edges.items():
        for index, child in enumerate(children):
            if child == node_id:
                problems.add(node_id, f"children[{index}]", f'node "{node_id}" lists itself as a '
                             "child (a self-loop); remove it")
            elif child not in edges:
                problems.add(node_id, f"children[{index}]", f'children of node "{node_id}" name '
                             f'"{child}", which is not in agent_config (known: {known})')
    for cycle in _cycles(edges):
        path = " → ".join(f'"{n}"' for n in cycle + [cycle[0]])
        problems.add(cycle[0], "children", f"the graph has a cycle: {path}; a workflow must be "
                     "acyclic")


def _cycles(edges: dict[NodeId, list[NodeId]]) -> list[list[NodeId]]:
    """One cycle per back edge found by depth-first search (self-loops are reported apart)."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(edges, white)
    cycles: list[list[NodeId]] = []
    for start in edges:
        if color[start] != white:
            continue
        stack: list[tuple[NodeId, Iterator[NodeId]]] = [(start, iter(edges[start]))]
        path = [start]
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
                cycles.append(path[path.index(child):])
            elif color[child] == white:
                color[child] = grey
                path.append(child)
                stack.append((child, iter(edges[child])))
    return cycles


def _check_bindings_and_templates(workflow: Workflow, problems: _Problems) -> None:
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
            for ref in referenced_nodes(template or ""):
                _check_reference(workflow, node_id, field, ref, problems)


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
                     problems: _Problems) -> None:
    if ref not in workflow.nodes:
        problems.add(node_id, field, f'{{node.{ref}}} names "{ref}", which is not in agent_config')
    elif ref not in workflow.ancestors_of(node_id):
        problems.add(node_id, field, f'{{node.{ref}}} names "{ref}", which is not an ancestor of '
                     f'node "{node_id}": its output is not ready when this node runs')
