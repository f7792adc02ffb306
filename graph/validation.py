"""Request → `Workflow`, or every problem at once (DESIGN §2, §3).

Pure: no I/O, no provider calls. `parse_body` (graph.body, re-exported here) turns the raw HTTP
body into JSON and the problems JSON itself has (duplicate keys, lone surrogates, numbers out of
range); `validate_request` checks fields, kinds, edges, cycles, templates and the limits of
`graph.limits` and either returns a `Workflow` the scheduler can trust or raises
`InvalidRequest` listing every problem found (the first `MAX_PROBLEMS` of them).

Hostile input is expected here: nothing recurses on the body's nesting, and no message grows
with the size of the graph (ids and lists are shortened).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from pydantic import ValidationError

from graph.body import MAX_ID_LENGTH, MAX_PROBLEMS, BadNumber, Problems, parse_body
from graph.errors import InvalidRequest
from graph.kinds import StaticCheck
from graph.limits import DEFAULT_LIMITS, Limits, listed, longest_chain, short
from graph.schema import SPEC_BY_TYPE, LLMNodeSpec, NodeId, NodeSpec, ToolNodeSpec
from graph.templates import referenced_nodes, strings_in
from graph.workflow import Workflow

KindKey = tuple[str, str]
RESERVED_PARAMETERS = ("model", "messages", "tools", "stream")
RUN_FIELDS = ("user_query", "user_id", "conversation_id")
__all__ = ["MAX_PROBLEMS", "identifier_problem", "parse_body", "validate_request"]


def validate_request(body: Any, known_kinds: Iterable[KindKey] | Mapping[KindKey, StaticCheck | None],
                     hygiene: list[dict[str, Any]] | None = None,
                     limits: Limits = DEFAULT_LIMITS) -> Workflow:
    """Check everything that can be checked without running anything. `body` is a JSON value
    (from `parse_body`, or built in Python); `hygiene` the problems `parse_body` found in it.
    `known_kinds` may map each kind to its static check (`graph.kinds.StaticCheck`), whose
    problems are reported too."""
    problems = Problems()
    problems.extend(hygiene or [])
    if not isinstance(body, dict):
        problems.add(None, "(body)", f"the body must be a JSON object, got {_json_type(body)}")
        _raise(problems)

    run_fields = _run_fields(body, limits, problems)
    deadline_s = _deadline(body, problems)
    config = body.get("agent_config")
    checks = dict(known_kinds) if isinstance(known_kinds, Mapping) else dict.fromkeys(known_kinds)
    specs = _node_specs(config, checks, limits, problems)
    if isinstance(config, dict) and len(config) <= limits.max_nodes:
        _check_edges(_raw_children(config), limits, problems)
    if problems.items or specs is None or run_fields is None:
        _raise(problems)

    workflow = Workflow(nodes=specs, limits=limits, **run_fields, deadline_s=deadline_s)
    _check_bindings_and_templates(workflow, problems)
    if problems.items:
        _raise(problems)
    return workflow


def _raise(problems: Problems) -> None:
    items = problems.listed()
    first = items[0]
    where = f'node "{first["node_id"]}" ' if first["node_id"] is not None else ""
    count = len(problems.items) + problems.dropped
    raise InvalidRequest(f"{count} problem{'s' if count != 1 else ''} in the request; first: "
                         f"{where}{first['field']}: {first['message']}", items)


def _json_type(value: Any) -> str:
    if isinstance(value, dict):  # also the objects parse_body makes
        return "an object"
    names = {list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", BadNumber: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _echo(value: Any) -> str:
    """A value repeated in a message: a short string in quotes, or its JSON type."""
    return f'"{short(value)}"' if isinstance(value, str) else _json_type(value)


def _run_fields(body: dict[str, Any], limits: Limits, problems: Problems) -> dict[str, str] | None:
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


def _deadline(body: dict[str, Any], problems: Problems) -> float | None:
    """`deadline_s`: optional seconds the whole run may take (the server caps it)."""
    value = body.get("deadline_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        problems.add(None, "deadline_s", "deadline_s must be a positive number of seconds, got "
                     + (_echo(value) if not isinstance(value, float) else str(value)))
        return None
    return float(value)


def _text_problem(text: str, limits: Limits) -> str | None:
    if len(text) > limits.max_text_chars:
        return (f"is {len(text):,} characters long; at most {limits.max_text_chars:,} are allowed "
                "(SESAME_MAX_TEXT_CHARS)")
    return None


def _node_specs(config: Any, checks: dict[KindKey, StaticCheck | None], limits: Limits,
                problems: Problems) -> dict[NodeId, NodeSpec] | None:
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
        if spec.kind not in checks:
            _unknown_kind(spec, set(checks), problems)
        elif (check := checks[spec.kind]) is not None:
            for field, message in check(spec):
                problems.add(key, field, message)
        _check_texts(spec, limits, problems)
        specs[key] = spec
    return specs if len(specs) == len(config) else None


def _node_spec(key: str, node: Any, problems: Problems) -> NodeSpec | None:
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


def _unknown_kind(spec: NodeSpec, known_kinds: set[KindKey], problems: Problems) -> None:
    family, name = spec.kind
    field = "provider_name" if isinstance(spec, LLMNodeSpec) else "tool_type"
    given = spec.provider_name if isinstance(spec, LLMNodeSpec) else spec.tool_type
    known = sorted(k[1] for k in known_kinds if k[0] == family)
    problems.add(spec.id, field, f"unknown {field} {_echo(given)}; known: "
                 + (", ".join(f'"{k}"' for k in known) or "none"))


def _check_texts(spec: NodeSpec, limits: Limits, problems: Problems) -> None:
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


def _check_edges(edges: dict[NodeId, list[NodeId]], limits: Limits, problems: Problems) -> None:
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


def _check_depth(edges: dict[NodeId, list[NodeId]], limits: Limits, problems: Problems) -> None:
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


def _check_bindings_and_templates(workflow: Workflow, problems: Problems) -> None:
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
                    problems: Problems) -> list[tuple[str, str | None]]:
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
                     ancestors: set[NodeId], problems: Problems) -> None:
    if ref not in workflow.nodes:
        problems.add(node_id, field, f'{{node.{short(ref)}}} names "{short(ref)}", which is not in '
                     "agent_config")
    elif ref not in ancestors:
        problems.add(node_id, field, f'{{node.{short(ref)}}} names "{short(ref)}", which is not an '
                     f'ancestor of node "{node_id}": its output is not ready when this node runs')
