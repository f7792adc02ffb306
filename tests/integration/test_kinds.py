"""Every node kind end to end: real HTTP → Serve → Ray worker actors → the kind's real SDK or
protocol → a loopback server of ours, which records what it received. An LLM parent (the OpenAI
stub, told which function to call) is offered each tool kind's actions; the call is executed by
the tool node. The kinds are deployed as a third app, `/kinds/`, with the settings they need
(python on, loopback allowed for request-given URLs, SMTP, an MCP server, provider URLs)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.stubs.anthropic_stub import AnthropicStub
from tests.stubs.http_target import HttpTarget
from tests.stubs.smtp_server import SMTPServer

pytestmark = pytest.mark.integration
MCP_SERVER = str(Path(__file__).parents[1] / "stubs" / "mcp_server.py")
SMTP_PASSWORD = "smtp-integration-canary-6d2f"
HTTP_SECRET = "Bearer integration-http-secret-71"


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    anthropic, target = AnthropicStub().start(), HttpTarget().start()
    smtp = SMTPServer(users={"sesame": SMTP_PASSWORD}).start()
    mcp_log = tmp_path_factory.mktemp("mcp") / "calls.jsonl"
    mcp_log.write_text("")
    yield {"anthropic": anthropic, "target": target, "smtp": smtp, "mcp_log": mcp_log}
    anthropic.stop(), target.stop(), smtp.stop()


@pytest.fixture(scope="module")
def kinds_app(sesame_url: str, openai_stub: Any, servers: dict[str, Any]) -> str:
    from ray import serve

    from serve_app import app_builder

    serve.run(app_builder({
        "workers": 1, "python_enabled": True, "http_allowed_networks": ["127.0.0.1/32"],
        "smtp_host": "127.0.0.1", "smtp_port": servers["smtp"].port, "smtp_starttls": False,
        "smtp_username": "sesame", "smtp_password": SMTP_PASSWORD, "smtp_from": "sesame@example.com",
        "mcp_servers": {"ours": {"command": sys.executable,
                                 "args": [MCP_SERVER, "stdio", "--log", str(servers["mcp_log"])]}},
        "provider_base_urls": {"anthropic": servers["anthropic"].base_url, "ollama": openai_stub.base_url},
    }), name="kinds", route_prefix="/kinds")
    return "/kinds/"


@pytest.fixture
def kinds(client: Any, sesame_url: str, kinds_app: str, servers: dict[str, Any]) -> Any:
    servers["anthropic"].reset()
    servers["target"].requests.clear()
    servers["smtp"].messages.clear()
    servers["mcp_log"].write_text("")
    with httpx.Client(base_url=sesame_url, timeout=60) as proxy:  # the app's prefix, through Serve's proxy
        yield lambda body: proxy.post(kinds_app, json=body)


def llm(children: list[str], calls: list[dict[str, Any]] | None = None, provider: str = "OpenAI",
        **fields: Any) -> dict[str, Any]:
    stub = {"tool_calls": calls, "content": "calling"} if calls is not None else {}
    return {"id": "llm", "type": "LLM", "name": "planner", "provider_name": provider, "model_name": "m",
            "system_prompt": "", "prompt_template": "{input}", "parameters": {"stub": stub} if stub else {},
            "api_key_name": "OPENAI_API_KEY", "api_key_value": "NONE", "children": children, **fields}


def tool(node_id: str, tool_type: str, **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "Tool", "name": node_id, "tool_name": node_id, "tool_type": tool_type,
            "logo": "x", "code": None, "auth_params": "NONE", "input_schema": "NONE", "children": [], **fields}


def body(*nodes: dict[str, Any], user_query: str = "please do it") -> dict[str, Any]:
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": user_query,
            "user_id": "dev@example.com", "conversation_id": "conv-kinds"}


def succeeded(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded", json.dumps(run, indent=1)
    return run


def test_http_tool_called_by_an_llm(kinds: Any, openai_stub: Any, servers: dict[str, Any]) -> None:
    weather = tool("weather", "http", tool_description="Current weather for a city",
                   config={"method": "GET", "url": servers["target"].base_url + "/echo/{city}"},
                   auth_params={"Authorization": HTTP_SECRET})
    response = kinds(body(llm(["weather"], [{"name": "weather", "arguments": {"city": "Oslo"}}]), weather))
    run = succeeded(response)
    [offer] = openai_stub.requests
    assert offer.body["tools"][0]["function"] == {
        "name": "weather", "description": "Current weather for a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
    [received] = servers["target"].requests
    assert received.path == "/echo/Oslo" and received.headers["authorization"] == HTTP_SECRET
    [result] = run["nodes"]["weather"]["output"]
    assert result["successful"] and result["data"]["body"]["path"] == "/echo/Oslo"
    assert HTTP_SECRET not in response.text


def test_http_tool_refuses_an_address_outside_the_allowed_network(kinds: Any, servers: dict[str, Any]) -> None:
    # This app allows 127.0.0.1/32 only; 127.0.0.2 is loopback too, and refused.
    grab = tool("grab", "http", config={"url": f"http://127.0.0.2:{servers['target'].port}/echo"},
                action="grab", arguments={})
    run = kinds(body(grab)).json()
    assert run["status"] == "failed" and run["nodes"]["grab"]["error"]["code"] == "tool_call_failed"
    assert "127.0.0.2: a loopback address" in run["nodes"]["grab"]["error"]["message"]
    assert servers["target"].requests == []


def test_email_tool_sends_what_the_llm_asked(kinds: Any, servers: dict[str, Any]) -> None:
    call = {"name": "send_email", "arguments": {"to": "sam@example.com", "subject": "Budget", "body": "Spend less."}}
    response = kinds(body(llm(["mailer"], [call]), tool("mailer", "email")))
    run = succeeded(response)
    [received] = servers["smtp"].messages
    assert received.rcpt_tos == ["sam@example.com"] and received.authenticated_as == "sesame"
    assert received.message["Subject"] == "Budget" and received.message.get_payload().strip() == "Spend less."
    assert run["nodes"]["mailer"]["output"][0]["data"]["accepted"] == ["sam@example.com"]
    assert SMTP_PASSWORD not in response.text


def test_python_tool_runs_the_code_on_the_llm_arguments(kinds: Any) -> None:
    code = "def main(arguments):\n    return arguments['a'] * arguments['b']"
    run = succeeded(kinds(body(llm(["multiply"], [{"name": "multiply", "arguments": {"a": 6, "b": 7}}]),
                               tool("multiply", "python", code=code))))
    [result] = run["nodes"]["multiply"]["output"]
    assert result["data"] == {"result": 42, "stdout": ""}
    assert run["nodes"]["multiply"]["placement"]["pid"] > 0  # ran on a worker actor


def test_python_tool_without_a_parent_uses_action_and_templated_arguments(kinds: Any) -> None:
    node = tool("shout", "python", code="result = arguments['text'].upper()", action="shout",
                arguments={"text": "{user_query}"})
    run = succeeded(kinds(body(node, user_query="quiet please")))
    assert run["output"][0]["data"]["result"] == "QUIET PLEASE"


def test_python_tool_is_action_required_where_it_is_not_enabled(client: Any, openai_stub: Any) -> None:
    node = tool("shout", "python", code="result = 1", action="shout", arguments={})
    run = client.post("/", json=body(llm(["shout"], []), node)).json()
    assert run["status"] == "action_required"
    [item] = run["action_required"]
    assert item["node_id"] == "shout" and item["env_var"] == "SESAME_PYTHON_ENABLED"
    assert openai_stub.requests == []


def test_mcp_tool_over_stdio_called_by_an_llm(kinds: Any, openai_stub: Any, servers: dict[str, Any]) -> None:
    calc = tool("calc", "mcp", config={"server": "ours", "tools": ["add"]})
    run = succeeded(kinds(body(llm(["calc"], [{"name": "add", "arguments": {"a": 2, "b": 3}}]), calc)))
    assert [t["function"]["name"] for t in openai_stub.requests[0].body["tools"]] == ["add"]
    [result] = run["nodes"]["calc"]["output"]
    assert result["successful"] and result["data"] == {"result": 5}
    [logged] = [json.loads(line) for line in servers["mcp_log"].read_text().splitlines()]
    assert logged["tool"] == "add" and logged["arguments"] == {"a": 2, "b": 3}


def test_anthropic_llm_with_a_tool_child(kinds: Any, servers: dict[str, Any]) -> None:
    claude = llm(["multiply"], provider="Anthropic", api_key_value="sk-ant-integration-1")
    claude["parameters"] = {"stub": {"content": "on it", "tool_calls": [{"name": "multiply", "arguments": {"a": 3, "b": 4}}]}}
    response = kinds(body(claude, tool("multiply", "python", code="result = arguments['a'] * arguments['b']")))
    run = succeeded(response)
    [sent] = servers["anthropic"].requests
    assert sent.api_key == "sk-ant-integration-1" and sent.tool_names == ["multiply"]
    assert sent.body["messages"][-1] == {"role": "user", "content": "please do it"}
    assert run["nodes"]["llm"]["tool_calls"][0]["node_id"] == "multiply"
    assert run["nodes"]["multiply"]["output"][0]["data"]["result"] == 12
    assert run["nodes"]["llm"]["usage"]["total_tokens"] > 0
    assert "sk-ant-integration-1" not in response.text


def test_a_keyless_provider_by_name(kinds: Any, openai_stub: Any) -> None:
    run = succeeded(kinds(body(llm([], provider="Ollama", api_key_name="NONE"))))
    [sent] = openai_stub.requests
    assert sent.headers["authorization"] == "Bearer sesame-no-key" and run["output"] == "echo: please do it"


def test_static_checks_of_new_kinds_are_a_422(kinds: Any, openai_stub: Any) -> None:
    response = kinds(body(llm(["web", "calc"], []), tool("web", "http", config={"url": "gopher://x"}),
                          tool("calc", "mcp", config={})))
    assert response.status_code == 422
    found = {(p["node_id"], p["field"]) for p in response.json()["error"]["details"]["problems"]}
    assert found == {("web", "config.url"), ("calc", "config")}
    assert openai_stub.requests == []
