"""The mcp tool kind through the real `mcp` SDK against our own MCP server
(tests/stubs/mcp_server.py), over stdio (started by the kind from settings) and streamable HTTP
(started here, on loopback). What the server received is read from its call log."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from graph.errors import NodeTimeout, ProviderError
from graph.kinds import RunContext, ToolKind, ToolRequest
from graph.schema import ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_mcp import MCPToolKind

CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
SERVER = str(Path(__file__).parents[1] / "stubs" / "mcp_server.py")
TOKEN = "Bearer mcp-token-77c1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def log_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mcp") / "calls.jsonl"


@pytest.fixture(scope="module")
def http_url(log_file: Path) -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen([sys.executable, SERVER, "http", "--port", str(port), "--log", str(log_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    yield f"http://127.0.0.1:{port}/mcp"
    process.terminate()
    process.wait(10)


@pytest.fixture
def calls(log_file: Path) -> Any:
    log_file.write_text("")
    return lambda: [json.loads(line) for line in log_file.read_text().splitlines()]


def kind(log_file: Path, **settings: Any) -> MCPToolKind:
    servers = {"ours": {"command": sys.executable, "args": [SERVER, "stdio", "--log", str(log_file)],
                        "env": {"OURS_SECRET": "server-env-secret-5150"}}}
    return MCPToolKind(Settings(**{"mcp_servers": servers, "mcp_timeout_s": 20.0,
                                   "http_allowed_networks": ["127.0.0.1/32"], **settings}))


def stdio_node(**config: Any) -> ToolNodeSpec:
    return ToolNodeSpec(id="mcp", tool_name="ours", tool_type="mcp", config={"server": "ours", **config})


def http_node(url: str, **config: Any) -> ToolNodeSpec:
    return ToolNodeSpec(id="mcp", tool_name="ours", tool_type="mcp", config={"url": url, **config},
                        auth_params={"Authorization": TOKEN})


def run(k: MCPToolKind, spec: ToolNodeSpec, *calls: tuple[str, dict[str, Any]]):  # type: ignore[no-untyped-def]
    request = ToolRequest(spec=spec, context=CONTEXT,
                          calls=[ToolCall(id=f"c{i}", action=a, arguments=args) for i, (a, args) in enumerate(calls)])
    return asyncio.run(k.run(request))


def test_stdio_tools_are_offered_with_their_schemas(log_file: Path) -> None:
    k = kind(log_file)
    assert isinstance(k, ToolKind)
    functions = asyncio.run(k.functions(stdio_node(), CONTEXT))
    by_name = {f.name: f for f in functions}
    assert set(by_name) == {"add", "echo", "fail", "slow"}
    add = by_name["add"]
    assert add.node_id == "mcp" and add.description == "Add two integers and return the sum."
    assert add.parameters["required"] == ["a", "b"] and add.parameters["properties"]["a"]["type"] == "integer"


def test_config_tools_narrows_the_offer(log_file: Path) -> None:
    functions = asyncio.run(kind(log_file).functions(stdio_node(tools=["echo"]), CONTEXT))
    assert [f.name for f in functions] == ["echo"]


def test_stdio_calls_run_on_the_server_and_an_error_result_fails_its_call(log_file: Path, calls: Any) -> None:
    output = run(kind(log_file), stdio_node(), ("add", {"a": 2, "b": 3}), ("fail", {"message": "disk full"}))
    added, failed = output.output
    assert added["successful"] and added["data"] == {"result": 5}
    assert not failed["successful"] and "disk full" in failed["error"]
    assert output.error.code == "tool_call_failed" and "disk full" in output.error.message
    assert [(c["tool"], c["arguments"]) for c in calls()] == [("add", {"a": 2, "b": 3}), ("fail", {"message": "disk full"})]


def test_http_calls_carry_auth_params_as_headers_and_secrets_never_come_back(log_file: Path, calls: Any,
                                                                            http_url: str) -> None:
    output = run(kind(log_file), http_node(http_url), ("echo", {"text": f"the token is {TOKEN}"}))
    [echoed] = output.output
    assert echoed["successful"] and TOKEN not in json.dumps(echoed["data"]) and "[redacted]" in json.dumps(echoed["data"])
    [received] = calls()
    assert received["headers"]["authorization"] == TOKEN and received["arguments"]["text"].endswith(TOKEN)


def test_an_action_the_server_lacks_is_refused_before_any_call(log_file: Path, calls: Any) -> None:
    with pytest.raises(ProviderError) as caught:
        run(kind(log_file), stdio_node(), ("add", {"a": 1, "b": 1}), ("drop_tables", {}))
    assert caught.value.error_code == "unknown_action" and "drop_tables" in caught.value.message
    assert calls() == []


def test_a_request_given_loopback_url_is_refused_without_the_setting(log_file: Path, http_url: str) -> None:
    with pytest.raises(ProviderError) as caught:
        asyncio.run(kind(log_file, http_allowed_networks=[]).functions(http_node(http_url), CONTEXT))
    assert caught.value.error_code == "address_refused" and "loopback" in caught.value.message


def test_a_slow_tool_call_times_out_and_is_not_retried(log_file: Path, calls: Any, http_url: str) -> None:
    k = kind(log_file)
    asyncio.run(k.functions(http_node(http_url), CONTEXT))  # list while the limit is generous
    k._settings = k._settings.model_copy(update={"mcp_timeout_s": 1.0})
    with pytest.raises(NodeTimeout) as caught:
        run(k, http_node(http_url), ("slow", {"seconds": 5}))
    assert caught.value.retryable and caught.value.may_have_reached_provider  # so the worker won't repeat it
    assert [c["tool"] for c in calls()] == ["slow"]


def test_a_server_that_never_answers_times_out_while_listing(log_file: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    try:
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/mcp"
        started = time.monotonic()
        with pytest.raises(NodeTimeout) as caught:
            asyncio.run(kind(log_file, mcp_timeout_s=1.0).functions(http_node(url), CONTEXT))
        assert caught.value.error_code == "tool_timeout" and time.monotonic() - started < 5
    finally:
        for sock in accepted:
            sock.close()
        listener.close()


def test_an_unknown_server_name_is_action_required_naming_the_setting(log_file: Path) -> None:
    spec = ToolNodeSpec(id="mcp", tool_name="x", tool_type="mcp", config={"server": "nope"})
    [item] = asyncio.run(kind(log_file).preflight(spec, CONTEXT))
    assert item.kind == "unknown_mcp_server" and item.env_var == "SESAME_MCP_SERVERS" and "ours" in item.message


def test_the_static_check_wants_exactly_one_of_server_and_url() -> None:
    for config in ({}, {"server": "a", "url": "http://h/mcp"}):
        spec = ToolNodeSpec(id="m", tool_name="x", tool_type="mcp", config=config)
        assert MCPToolKind.check(spec)[0][0] == "config"
    spec = ToolNodeSpec(id="m", tool_name="x", tool_type="mcp", config={"url": "stdio:rm -rf /"})
    assert MCPToolKind.check(spec)[0][0] == "config.url"
