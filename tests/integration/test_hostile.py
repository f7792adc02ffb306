"""Hostile input over real HTTP (issue 5): every request below gets a 4xx naming the field, or a
200 for a valid run — never a 5xx, never a hang (each request has a client timeout). Each
input that once caused a 500 stays here as a regression case (marked `# was a 500`).

The cases are lists (one test per family, one request per case) so a failure lists every bad
answer at once; `tests.hostile` counts them for the session summary.
"""

from __future__ import annotations

import json
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from tests.hostile import server_error, tried

pytestmark = pytest.mark.integration
TIMEOUT_S = 30  # a hang fails the test instead of hanging it
USER = "hostile@example.com"


def llm(node_id: str, children=(), **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "LLM", "name": f"llm {node_id}", "provider_name": "OpenAI",
            "model_name": "gpt-4o-mini", "system_prompt": "", "prompt_template": "{input}",
            "parameters": {"memory": False}, "api_key_name": "OPENAI_API_KEY",
            "api_key_value": "NONE", "children": list(children), **fields}


def tool(node_id: str, children=(), **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "Tool", "name": "gmail", "tool_name": "gmail",
            "tool_description": "Gmail", "tool_type": "composio", "logo": "x", "code": None,
            "composio_connection": True, "url": "NONE", "request_id": "r", "auth_params": "NONE",
            "input_schema": "NONE", "children": list(children), **fields}


def body(*nodes: dict[str, Any], **run: Any) -> dict[str, Any]:
    return {"agent_config": {n["id"]: n for n in nodes or (llm("1"),)}, "user_query": "Q",
            "user_id": USER, "conversation_id": f"c-{uuid.uuid4().hex}", **run}


@dataclass
class Case:
    """One hostile request and what it must get: `status`, and for a 422 the `(node_id,
    field)` one of its problems must name (`field` may be a prefix ending in `*`)."""

    name: str
    method: str = "POST"
    url: str = "/"
    json: Any = None
    content: bytes | str | None = None
    headers: dict[str, Any] = field(default_factory=dict)
    status: int | tuple[int, ...] = 200
    names: tuple[str | None, str] | None = None
    shape: bool = True  # a 4xx in our error shape (not one from the HTTP server before our app)


def send(client: httpx.Client, case: Case) -> httpx.Response:
    tried("HTTP list")
    kwargs: dict[str, Any] = {"headers": case.headers, "timeout": TIMEOUT_S}
    if case.json is not None:
        kwargs["content"] = json.dumps(case.json, ensure_ascii=False).encode()
        kwargs["headers"] = {"content-type": "application/json", **case.headers}
    elif case.content is not None:
        kwargs["content"] = case.content
    response = client.request(case.method, case.url, **kwargs)
    if response.status_code >= 500:
        server_error(f"{case.name}: {response.status_code} {response.text[:300]}")
    return response


def check(client: httpx.Client, cases: list[Case]) -> list[httpx.Response]:
    """Send every case; fail listing each one whose answer was not the expected one."""
    wrong, responses = [], []
    for case in cases:
        try:
            response = send(client, case)
        except httpx.TransportError as exc:  # a dropped connection or a timeout (a hang)
            wrong.append(f"{case.name}: {type(exc).__name__}: {exc}")
            continue
        responses.append(response)
        if problem := _unexpected(case, response):
            wrong.append(f"{case.name}: {problem}")
    assert not wrong, "\n".join(wrong)
    return responses


def _unexpected(case: Case, response: httpx.Response) -> str | None:
    expected = case.status if isinstance(case.status, tuple) else (case.status,)
    if response.status_code not in expected:
        return f"{response.status_code} (expected {expected}): {response.text[:300]}"
    if response.status_code >= 400 and case.method != "HEAD" and case.shape:
        error = response.json().get("error", {})
        if not error.get("code") or not response.json().get("request_id"):
            return f"not the error shape: {response.text[:300]}"
    if case.names is not None:
        named = [(p["node_id"], p["field"]) for p in response.json()["error"]["details"]["problems"]]
        node_id, wanted = case.names
        if not any(n == node_id and (f == wanted or wanted.endswith("*") and f.startswith(wanted[:-1]))
                   for n, f in named):
            return f"no problem names {case.names}: {named}"
    return None


def invalid(name: str, payload: Any, node_id: str | None, field_name: str, **kw: Any) -> Case:
    return Case(name, json=payload, status=422, names=(node_id, field_name), **kw)


def raw(name: str, text: str | bytes, status: int | tuple[int, ...],
        names: tuple[str | None, str] | None = None) -> Case:
    return Case(name, content=text.encode() if isinstance(text, str) else text,
                headers={"content-type": "application/json"}, status=status, names=names)


def raw_body(**replace: str) -> str:
    """The JSON text of a valid request with some values replaced by raw JSON text (escapes,
    literals Python's json would not write, duplicate keys)."""
    text = json.dumps(body(llm("1", prompt_template="@TEMPLATE@", parameters={"memory": "@MEMORY@"}),
                           user_query="@QUERY@", user_id="@USER@"))
    defaults = {"TEMPLATE": '"{input}"', "MEMORY": "false", "QUERY": '"Q"', "USER": f'"{USER}"'}
    for key, value in {**defaults, **replace}.items():
        text = text.replace(f'"@{key}@"', value)
    return text


# ---- templates ----------------------------------------------------------------------------

INJECTIONS = [  # (template, what the model must receive for user_query "Q")
    ("{input.__class__.__mro__[1].__subclasses__()}", "{input.__class__.__mro__[1].__subclasses__()}"),
    ("{0}", "{0}"), ("{0!r:>10}", "{0!r:>10}"), ("{user_query!r}", "{user_query!r}"),
    ("{input[0]}", "{input[0]}"), ("{__import__('os').system('id')}", "{__import__('os').system('id')}"),
    ("%s %(input)s ${input} #{input} {{input}}", "%s %(input)s $Q #Q {input}"),
    ("{", "{"), ("}", "}"), ("{input", "{input"), ("input}", "input}"), ("{{{", "{{"), ("}}}", "}}"),
    ("{{{input}}}", "{Q}"), ("{ input }", "{ input }"), ("{INPUT}", "{INPUT}"), ("{node}", "{node}"),
    ("{node.}", "{node.}"), ("{input}{input}", "QQ"), ('{"json": {"k": [1, 2]}} {input}', '{"json": {"k": [1, 2]} Q'),  # `}}` is a literal `}`
    ("{user_id}/{conversation_id}", None),
]


def test_template_injection_stays_literal(client, openai_stub):
    cases = [Case(f"template {template!r}", json=body(llm("1", prompt_template=template)))
             for template, _ in INJECTIONS]
    cases.append(Case("placeholders inside user_query are not re-scanned",
                      json=body(llm("1"), user_query="{user_id} {node.1} {{input}}")))
    cases.append(Case("system prompt injection", json=body(llm("1", system_prompt="{0} {input.__dict__} {"))))
    responses = check(client, cases)
    assert all(r.json()["status"] == "succeeded" for r in responses)
    received = [r.user_message for r in openai_stub.requests]
    for template, expected in INJECTIONS:
        if expected is not None:
            assert expected in received, (template, expected)
    assert "{user_id} {node.1} {{input}}" in received
    assert "{0} {input.__dict__} {" in [r.system_message for r in openai_stub.requests]


def test_template_references_that_cannot_be_met_are_422(client, openai_stub):
    check(client, [
        invalid("a node naming itself", body(llm("1", prompt_template="{node.1}")), "1", "prompt_template"),
        invalid("a node naming a child", body(llm("1", ["2"], system_prompt="{node.2}"), llm("2")),
                "1", "system_prompt"),
        invalid("a node naming nobody", body(llm("1", prompt_template="{node.__class__}")), "1", "prompt_template"),
        invalid("arguments naming nobody", body(tool("t", action="GMAIL_SEND_EMAIL",
                                                     arguments={"to": "{node.x}"})), "t", "arguments"),
    ])
    assert openai_stub.requests == []


# ---- Unicode, NUL, size --------------------------------------------------------------------

def test_lone_surrogates_anywhere_are_422_naming_the_field(client, openai_stub):
    check(client, [
        raw("in user_query", raw_body(QUERY='"\\ud800"'), 422, (None, "user_query")),
        raw("in user_id", raw_body(USER='"\\udfff"'), 422, (None, "user_id")),
        raw("in a template", raw_body(TEMPLATE='"a\\udc00b"'), 422, ("1", "prompt_template")),
        raw("in a parameters key", raw_body(MEMORY='false, "\\ud800": 1'), 422, ("1", "parameters.*")),
        raw("in a node key", raw_body().replace('{"1": {', '{"\\ud800": {', 1), 422,
            ("\\ud800", "(node)")),  # was a 500: the answer repeated the key
        raw("in a node id", raw_body().replace('"id": "1"', '"id": "\\ud800"', 1), 422, ("1", "id")),
        raw("in a child id", raw_body().replace('"children": []', '"children": ["\\udbff"]', 1), 422,
            ("1", "children[0]")),
        raw("as a top-level key", raw_body()[:-1] + ', "\\ud800": 1}', 422, (None, "\\ud800")),
        raw("reversed pair", raw_body(QUERY='"\\ude00\\ud83d"'), 422, (None, "user_query")),
        raw("surrogate bytes (CESU-8), not UTF-8", raw_body(QUERY='"@"').encode().replace(b"@", b"\xed\xa0\x80"),
            400),
    ])
    assert openai_stub.requests == []


def test_valid_unicode_of_every_kind_runs(client, openai_stub):
    emoji = "😀👩‍👩‍👧‍👦🏳️‍🌈"
    check(client, [
        raw("an escaped surrogate pair", raw_body(QUERY='"\\ud83d\\ude00"'), 200),
        Case("emoji everywhere", json=body(llm(emoji, name=emoji, prompt_template=f"{emoji}{{input}}"),
                                           user_query=emoji * 100, user_id=emoji)),
        Case("right-to-left override and zero-width", json=body(llm("\u202e1\u200b"), user_query="\u202eabc\ufeff")),
        Case("zalgo", json=body(llm("1"), user_query="Z" + "\u0301" * 20_000)),
        Case("200 KB of emoji", json=body(llm("1"), user_query="😀" * 50_000)),
        Case("NUL inside text", json=body(llm("1", prompt_template="a\u0000{input}"), user_query="b\u0000c")),
    ])
    assert "a\x00b\x00c" in [r.user_message for r in openai_stub.requests]
    assert "😀" * 50_000 in [r.user_message for r in openai_stub.requests]


def test_sizes_over_the_limits(client, openai_stub):
    check(client, [
        Case("1 MB of emoji", json=body(user_query="😀" * 262_144), status=413),
        invalid("100,001 emoji in user_query", body(user_query="😀" * 100_001), None, "user_query"),
        invalid("a 100,001-character template", body(llm("1", prompt_template="{" * 100_001)), "1", "prompt_template"),
        invalid("1,001 nodes", body(*(llm(f"n{i}") for i in range(1_001))), None, "agent_config"),
        invalid("501 children", body(llm("r", [f"n{i}" for i in range(501)]),
                                     *(llm(f"n{i}") for i in range(501))), "r", "children"),
        invalid("a chain of 101", body(*(llm(str(i), [str(i + 1)] if i < 100 else []) for i in range(101))),
                "99", "children[0]"),
        invalid("a 257-character node id", body(llm("n" * 257)), "n" * 256 + "… (257 characters)", "id"),
    ])
    assert openai_stub.requests == []


def test_a_graph_at_every_limit_at_once_runs(client, openai_stub):
    """1,000 nodes; a chain of 100; 500 children of one node: what the defaults let through,
    this machine runs (the answer is ~1 MB)."""
    chain = [f"c{i}" for i in range(100)]
    fan = [f"f{i}" for i in range(499)]
    late = [f"g{i}" for i in range(401)]
    nodes = [llm(c, [chain[i + 1]] if i < 99 else [], prompt_template="{node.c0} {input}" if i else "{input}")
             for i, c in enumerate(chain)]
    nodes[0]["children"] += fan
    nodes[50]["children"] += late
    nodes += [llm(n, prompt_template="x") for n in fan + late]
    [response] = check(client, [Case("1,000 nodes, depth 100, 500 children", json=body(*nodes))])
    run = response.json()
    assert run["status"] == "succeeded" and len(run["nodes"]) == 1_000
    assert len(openai_stub.requests) == 1_000


def test_answers_do_not_grow_with_the_graph(client):
    """Each unknown child's message once listed every node id: 8,000 nodes in 0.85 MB made a
    700 MB answer and 2 GB of memory (quadratic)."""
    def lost(n: int, children: int) -> dict:
        return body(*({"id": f"n{i}", "type": "LLM", "provider_name": "OpenAI", "model_name": "m",
                       "children": ["zz"] * children} for i in range(n)))
    responses = check(client, [
        invalid("8,000 nodes with an unknown child each", lost(8_000, 1), None, "agent_config"),  # was a hang
        invalid("1,000 nodes with 100 unknown children each", lost(1_000, 100), "n0", "children[0]"),
    ])
    assert all(len(r.content) < 50_000 for r in responses), [len(r.content) for r in responses]


def test_control_characters_in_ids_are_422(client):
    check(client, [
        invalid("NUL in user_id", body(user_id="a\u0000b"), None, "user_id"),
        invalid("newline in conversation_id", body(conversation_id="a\nb"), None, "conversation_id"),
        invalid("DEL in a node id", body(llm("a\u007f")), "a\u007f", "id"),
        invalid("C1 control in a node id", body(llm("a\u0085")), "a\u0085", "id"),
        invalid("an empty node id", body(llm("")), "", "id"),
        invalid("a blank user_id", body(user_id=" \t "), None, "user_id"),
    ])


# ---- JSON itself ----------------------------------------------------------------------------

def _dup(text: str, anchor: str, duplicate: str) -> str:
    assert anchor in text, anchor
    return text.replace(anchor, duplicate + anchor, 1)


def test_duplicate_keys_at_every_level_are_422(client, openai_stub):
    text = json.dumps(body(llm("1", ["2"], parameters={"temperature": 0.5, "memory": False}),
                           tool("2", input_schema={"type": "object", "properties": {}})))
    check(client, [
        raw("top level", _dup(text, '"user_id"', '"user_id": "x", '), 422, (None, "user_id")),
        raw("agent_config", _dup(text, '"agent_config"', '"agent_config": {}, '), 422, (None, "agent_config")),
        raw("a node", _dup(text, '"2": {', '"2": {}, '), 422, ("2", "(node)")),
        raw("a node field", _dup(text, '"model_name"', '"model_name": "x", '), 422, ("1", "model_name")),
        raw("parameters", _dup(text, '"temperature"', '"temperature": 1, '), 422, ("1", "parameters.temperature")),
        raw("deep in input_schema", _dup(text, '"properties"', '"properties": 1, '), 422,
            ("2", "input_schema.properties")),
        raw("the same key three times", _dup(_dup(text, '"user_query"', '"user_query": 1, '),
                                             '"user_query"', '"user_query": 2, '), 422, (None, "user_query")),
    ])
    assert openai_stub.requests == []


def _nested(depth: int, inner: str = "1", opener: str = "[", closer: str = "]") -> str:
    return opener * depth + inner + closer * depth


def test_deep_nesting_is_refused_before_parsing(client, openai_stub):
    check(client, [
        raw("100,000-deep arrays", _nested(100_000, ""), 422, (None, "(body)")),
        raw("100,000-deep objects", _nested(100_000, "1", '{"a":', "}"), 422, (None, "(body)")),
        raw("100,000 unclosed brackets", "[" * 100_000, (400, 422)),
        raw("65 levels in parameters", raw_body(MEMORY=f'false, "x": {_nested(61)}'), 422, (None, "(body)")),
        raw("1,000 levels (what json.loads still parses)", raw_body(MEMORY=f'false, "x": {_nested(1_000)}'),
            422, (None, "(body)")),
    ])
    assert openai_stub.requests == []


def test_nesting_within_the_limit_survives_every_layer(client, openai_stub, composio_stub):
    composio_stub.active_users.add((USER, "gmail"))
    deep_arguments = {"to": "sam@example.com", "subject": "{user_query}", "body": "x"}
    inner: Any = "{input}"
    for _ in range(28):  # 60 levels in all
        inner = {"x": [inner]}
    deep_arguments["extra"] = inner
    check(client, [
        raw("60 levels in parameters", raw_body(MEMORY=f'false, "x": {_nested(56)}'), 200),
        Case("60 levels in tool arguments, templates at the bottom",
             json=body(tool("t", action="GMAIL_SEND_EMAIL", arguments=deep_arguments))),
    ])


NUMBERS = [("NaN", 422), ("Infinity", 422), ("-Infinity", 422), ("1e400", 422), ("-1e400", 422),
           ("1" + "0" * 5000, 422), ("9223372036854775808", 422), ("-9223372036854775809", 422),
           ("1e-400", 200), ("-0", 200), ("-0.0", 200), ("9223372036854775807", 200), ("0.1e1", 200)]


def test_numbers_no_json_peer_can_read(client):
    cases = [raw(f"temperature {n[:20]}", raw_body(MEMORY=f'false, "temperature": {n}'), status,
                 ("1", "parameters.temperature") if status == 422 else None) for n, status in NUMBERS]
    cases += [raw(f"user_query {n[:20]}", raw_body(QUERY=n), 422, (None, "user_query")) for n, _ in NUMBERS]
    cases += [raw("NaN as the body", "NaN", 422, (None, "(body)")),
              raw("1e400 as the body", "1e400", 422, (None, "(body)")),
              raw("a 5,000-digit integer", '{"a": 1' + "0" * 5000 + "}", 422, (None, "a")),  # was a 500
              raw("a 5,000-digit integer, unterminated", '{"a": 1' + "0" * 5000, 400)]
    check(client, cases)


# ---- every field, every wrong type ------------------------------------------------------------

WRONG = [7, 1.5, True, [], {}, ["x"], {"a": 1}, "text"]
LLM_FIELDS = {  # field → the wrong values that must be refused (others may be accepted)
    "id": [7, True, [], {}], "type": WRONG, "name": [7, 1.5, True, [], {}],
    "provider_name": [7, 1.5, True, [], {}, ["x"]], "model_name": [7, 1.5, True, [], {}],
    "system_prompt": [7, 1.5, True, ["x"], {"a": 1}], "prompt_template": [7, 1.5, True, ["x"], {"a": 1}],
    "parameters": [7, 1.5, True, [], ["x"], "text"], "api_key_name": [7, 1.5, True, ["x"], {"a": 1}],
    "api_key_value": [7, 1.5, True, ["x"], {"a": 1}], "children": [7, 1.5, True, {}, {"a": 1}, "text", [7], ["x"]],
}
TOOL_FIELDS = {
    "id": [7, True, [], {}], "type": WRONG, "name": [7, True, [], {}], "tool_name": [7, 1.5, True, [], {}],
    "tool_type": [7, 1.5, True, [], {}, "text"], "tool_description": [7, True, ["x"], {"a": 1}],
    "composio_connection": [1.5, [], {}, ["x"], {"a": 1}, "text"], "url": [7, True, ["x"], {"a": 1}],
    "request_id": [7, True, ["x"], {"a": 1}], "auth_params": [7, True, ["x"], "text"],
    "input_schema": [7, True, ["x"], "text"], "action": [7, True, ["x"], {"a": 1}],
    "arguments": [7, True, ["x"], "text"], "children": [7, True, {}, "text", [7], ["x"]],
}
RUN_FIELDS = {"user_query": [7, 1.5, True, [], {}, None], "user_id": [7, True, [], {}, None, ""],
              "conversation_id": [7, True, [], {}, None, ""], "agent_config": [7, True, [], "text", None, {}]}


def _field_cases() -> list[Case]:
    cases = []
    for make, fields in ((llm, LLM_FIELDS), (tool, TOOL_FIELDS)):
        for name, values in fields.items():
            for value in values:
                node = make("1", action="GMAIL_SEND_EMAIL", arguments={"to": "x"}) if make is tool else make("1")
                node[name] = value
                cases.append(invalid(f"{make.__name__}.{name} = {value!r}", body() | {"agent_config": {"1": node}}, "1",
                                     "children*" if name == "children" else name))
    for name, values in RUN_FIELDS.items():
        for value in values:
            cases.append(invalid(f"{name} = {value!r}", body() | {name: value}, None, name))
    for name in RUN_FIELDS:
        payload = body()
        del payload[name]
        cases.append(invalid(f"{name} missing", payload, None, name))
    for name in ("provider_name", "model_name"):
        node = llm("1")
        del node[name]
        cases.append(invalid(f"llm without {name}", body(node), "1", name))
    for name in ("tool_name", "tool_type"):
        node = tool("1", action="GMAIL_SEND_EMAIL", arguments={})
        del node[name]
        cases.append(invalid(f"tool without {name}", body(node), "1", name))
    return cases


def test_every_field_of_every_node_type_with_a_wrong_type_is_422_naming_it(client, openai_stub):
    check(client, _field_cases())
    assert openai_stub.requests == []


def test_ui_fields_and_unknown_fields_take_anything(client):
    node = tool("1", action="GMAIL_SEND_EMAIL", arguments={"to": "a@example.com"},
                logo={"x": [1]}, code=[1, 2], surprise=None)
    responses = check(client, [Case("extra fields", json=body(llm("0", ["1"], unknown=[{}]), node) | {"extra": 1})])
    assert responses[0].json()["status"] in ("succeeded", "action_required")


# ---- not a request at all --------------------------------------------------------------------

def test_bodies_that_are_not_a_request(client, openai_stub):
    seed = body()
    check(client, [
        raw("empty", b"", 400), raw("whitespace", b" \n\t ", 400), raw("a BOM alone", b"\xef\xbb\xbf", 400),
        raw("an array", "[]", 422, (None, "(body)")), raw("a string", '"x"', 422, (None, "(body)")),
        raw("a number", "1", 422, (None, "(body)")), raw("null", "null", 422, (None, "(body)")),
        raw("true", "true", 422, (None, "(body)")), raw("the request in an array", json.dumps([seed]), 422),
        raw("an empty object", "{}", 422, (None, "agent_config")),
        raw("two objects", "{} {}", 400), raw("trailing comma", '{"a": 1,}', 400),
        raw("single quotes", "{'a': 1}", 400), raw("a comment", '{"a": 1 /* x */}', 400),
        raw("a raw NUL in a string", b'{"user_query": "a\x00b"}', 400),
        raw("invalid UTF-8", b'{"user_query": "\xff"}', 400),
        raw("UTF-16 with a BOM", json.dumps(seed).encode("utf-16"), 400),
        raw("UTF-16 without a BOM", json.dumps(seed).encode("utf-16-le"), 400),
        raw("UTF-8 with a BOM", b"\xef\xbb\xbf" + json.dumps(seed).encode(), 200),
        raw("truncated", json.dumps(seed)[:-5], 400),
        raw("binary noise", bytes(range(256)) * 10, 400),
    ])
    assert len(openai_stub.requests) == 1  # the request with a BOM only


def test_content_types(client):
    valid = json.dumps(body())
    check(client, [
        Case("text/plain with JSON", content=valid, headers={"content-type": "text/plain"}),
        Case("no content type", content=valid.encode()),
        Case("a form", content="a=1&b=2", headers={"content-type": "application/x-www-form-urlencoded"}, status=400),
        Case("multipart", content=b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\n1\r\n--x--\r\n",
             headers={"content-type": "multipart/form-data; boundary=x"}, status=400),
        Case("XML", content="<request/>", headers={"content-type": "application/xml"}, status=400),
        Case("JSON said to be UTF-16", content=valid, headers={"content-type": "application/json; charset=utf-16"}),
        Case("events accepted, body invalid", json={"x": 1}, headers={"accept": "text/event-stream"}, status=422),
        Case("gzip said, not sent", content=valid, headers={"content-encoding": "gzip",
                                                            "content-type": "application/json"}),
    ])


# ---- methods, headers, query and path ------------------------------------------------------------

def test_http_methods(client):
    cases = [Case(f"{method} {url}", method=method, url=url, status=(404, 405))
             for method in ("PUT", "PATCH", "DELETE", "OPTIONS", "TRACE")
             for url in ("/", "/runs", "/runs/run_x?user_id=u", "/healthz", "/conversations/c?user_id=u")]
    cases += [Case("GET /", method="GET", status=405), Case("HEAD /", method="HEAD", status=405),
              Case("GET /runs", method="GET", url="/runs", status=405),
              Case("POST /healthz", url="/healthz", status=405),
              Case("GET /runs/x/cancel", method="GET", url="/runs/x/cancel?user_id=u", status=405),
              Case("PROPFIND /", method="PROPFIND", status=(400, 404, 405, 501))]
    check(client, cases)


@pytest.fixture
def finished_run(client) -> str:
    response = client.post("/", json=body(), timeout=TIMEOUT_S)
    assert response.status_code == 200, response.text
    return response.json()["run_id"]


def test_header_abuse(client, finished_run):
    valid = body()
    events = f"/runs/{finished_run}/events?user_id={USER}"
    cases = [invalid(f"Idempotency-Key {key[:20]!r}", valid, None, "Idempotency-Key",
                     headers={"idempotency-key": key})
             for key in ("", "k" * 257, "tab\there", "é".encode("latin-1"), "ü".encode())]
    cases += [Case(f"Last-Event-ID {value[:20]!r}", method="GET", url=events, headers={"last-event-id": value},
                   status=422, names=(None, "Last-Event-ID"))
              for value in ("abc", "-1", "1.5", "1e3", "0x10", "²".encode("latin-1"),  # was a 500
                            "9" * 5000, "9" * 20, "")]  # was a 500 (twice)
    cases += [Case("Idempotency-Key of quotes and backslashes", json=valid, headers={"idempotency-key": 'a\\b"c'}),
              Case("Last-Event-ID 02", method="GET", url=events, headers={"last-event-id": "02"}),
              Case("DEL in a header", json=body(), headers={"idempotency-key": "del\x7f"}, status=400,
                   shape=False),  # refused by the HTTP server itself
              Case("X-Request-ID of 8 KB", json=body(), headers={"x-request-id": "r" * 8000}),
              # both were a bare 500 from Serve's proxy (serve_app._HeadersServeCanRead)
              Case("X-Request-ID not UTF-8", json=body(), headers={"x-request-id": b"\xff\xfe../../etc"}),
              Case("X-Session-ID not UTF-8", json=body(), headers={"x-session-id": b"\xe9"}),
              Case("Accept nonsense", json=body(), headers={"accept": "*/*;q=abc, text/event-stream;q=-1"}),
              Case("many headers", json=body(), headers={f"x-h{i}": "v" * 100 for i in range(90)})]
    check(client, cases)


def test_query_and_path_abuse(client, finished_run):
    run = f"/runs/{finished_run}"
    check(client, [
        Case("user_id missing", method="GET", url=run, status=422, names=(None, "query.user_id")),
        Case("user_id empty", method="GET", url=f"{run}?user_id=", status=422, names=(None, "query.user_id")),
        Case("user_id huge", method="GET", url=f"{run}?user_id={'u' * 8000}", status=(404, 422)),
        Case("user_id NUL", method="GET", url=f"{run}?user_id=a%00b", status=(404, 422)),
        Case("user_id newline", method="GET", url=f"{run}?user_id=a%0Ab", status=(404, 422)),
        Case("user_id not UTF-8", method="GET", url=f"{run}?user_id=%FF%FE", status=(404, 422)),
        Case("user_id twice", method="GET", url=f"{run}?user_id=x&user_id={USER}", status=(200, 404, 422)),
        Case("another user", method="GET", url=f"{run}?user_id=intruder", status=404),
        Case("after negative", method="GET", url=f"{run}/events?user_id={USER}&after=-1", status=422),
        Case("after text", method="GET", url=f"{run}/events?user_id={USER}&after=x", status=422),
        Case("after huge", method="GET", url=f"{run}/events?user_id={USER}&after={'9' * 30}",
             status=422),  # was a dropped stream (a 500 inside it)
        Case("run id huge", method="GET", url=f"/runs/{'r' * 8000}?user_id={USER}", status=(404, 422)),
        Case("run id NUL", method="GET", url=f"/runs/run_%00?user_id={USER}", status=(404, 422)),
        Case("run id dots", method="GET", url=f"/runs/..%2F..%2Fetc?user_id={USER}", status=404),
        Case("run id emoji", method="GET", url=f"/runs/😀?user_id={USER}", status=404),
        Case("run id not UTF-8", method="GET", url=f"/runs/%FF?user_id={USER}", status=(404, 422)),
        Case("cancel of nobody's run", url=f"/runs/run_{'0' * 32}/cancel?user_id={USER}", status=404),
        Case("events of nobody's run", method="GET", url=f"/runs/run_{'0' * 32}/events?user_id={USER}", status=404),
        Case("conversation id NUL", method="GET", url=f"/conversations/a%00b?user_id={USER}", status=(404, 422)),
        Case("conversation id huge", method="GET", url=f"/conversations/{'c' * 8000}?user_id={USER}", status=(404, 422)),
        Case("a query on POST /", url="/?user_id=%00&x=" + "y" * 4000, json=body()),
    ])


def _raw_http(sesame_url: str, request: bytes) -> bytes:
    """Send bytes no HTTP client would; answer with what came back (b"" if the server closed)."""
    host, port = urlsplit(sesame_url).hostname, urlsplit(sesame_url).port
    with socket.create_connection((host, port), timeout=TIMEOUT_S) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    return reply


@pytest.mark.parametrize("request_bytes", [
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{}",  # shorter than it says
    b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: " + b"9" * 40 + b"\r\n\r\n{}",
    b"GET /runs/" + b"r" * 70_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(32),  # a TLS hello on the plain port
], ids=["length-text", "length-negative", "two-lengths", "bad-chunk", "short-body", "length-huge",
        "url-70KB", "http-9.9", "tls-hello"])
def test_malformed_http_is_refused_or_closed(sesame_url, request_bytes):
    tried("HTTP list")
    reply = _raw_http(sesame_url, request_bytes)
    status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/") else None
    if status is not None and status >= 500:
        server_error(f"raw HTTP {request_bytes[:60]!r}: {reply[:200]!r}")
    assert status is None or 400 <= status < 500 or status == 200, reply[:300]
