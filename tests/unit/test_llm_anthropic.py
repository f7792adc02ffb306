"""AnthropicKind through the real `anthropic` SDK against the loopback Messages API stub: messages,
tools and tool_use, history, usage, streaming (text and tool input deltas), errors at the edge."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import pytest

from graph.errors import NodeTimeout, ProviderError
from graph.kinds import LLMRequest, RunContext, ToolFunction, Turn
from graph.schema import LLMNodeSpec
from graph.settings import Settings
from nodes.llm_anthropic import AnthropicKind
from tests.stubs.anthropic_stub import AnthropicStub

KEY = "sk-ant-canary-0b7e"
CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
SEND = ToolFunction(name="send_email", description="Send an e-mail", node_id="mail",
                    parameters={"type": "object", "required": ["to"], "properties": {"to": {"type": "string"}}})


@pytest.fixture(scope="module")
def running_stub() -> Iterator[AnthropicStub]:
    stub = AnthropicStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(running_stub: AnthropicStub) -> AnthropicStub:
    running_stub.reset()
    return running_stub


def node(parameters: dict[str, Any] | None = None, **stub_directives: Any) -> LLMNodeSpec:
    parameters = dict(parameters or {})
    if stub_directives:
        parameters["stub"] = stub_directives
    return LLMNodeSpec(id="claude", provider_name="Anthropic", model_name="claude-test", api_key_value=KEY,
                       parameters=parameters)


def call(stub: AnthropicStub, spec: LLMNodeSpec, *, tokens: list[tuple[float, str]] | None = None,
         functions: list[ToolFunction] = (), history: tuple[Turn, ...] = (), system: str | None = "be brief",
         prompt: str = "write to ada@example.com", **settings: Any):  # type: ignore[no-untyped-def]
    on_token = None if tokens is None else (lambda text: tokens.append((time.time(), text)))
    kind = AnthropicKind(Settings(**{"provider_base_urls": {"anthropic": stub.base_url}, "llm_timeout_s": 5.0,
                                     **settings}))
    request = LLMRequest(spec=spec, context=CONTEXT, system_prompt=system, prompt=prompt,
                         functions=list(functions), history=history, on_token=on_token)
    return asyncio.run(kind.run(request))


def test_system_history_prompt_and_parameters_are_sent_as_the_messages_api_wants(stub: AnthropicStub) -> None:
    output = call(stub, node({"temperature": 0.0, "max_tokens": 300, "memory": True}, content="hi there"),
                  history=(Turn("q1", "a1"),), prompt="q2")
    [sent] = stub.requests
    assert sent.path == "/v1/messages" and sent.api_key == KEY and "anthropic-version" in sent.headers
    body = sent.body
    assert body["system"] == "be brief" and body["model"] == "claude-test"
    assert body["messages"] == [{"role": "user", "content": "q1"}, {"role": "assistant", "content": "a1"},
                                {"role": "user", "content": "q2"}]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 300 and "memory" not in body
    assert "stream" not in body or body["stream"] is False
    assert output.output == "hi there" and output.tool_calls == []
    assert output.usage.completion_tokens == 2 and output.usage.prompt_tokens > 0


def test_max_tokens_defaults_to_the_setting_and_no_system_prompt_sends_none(stub: AnthropicStub) -> None:
    call(stub, node(), system=None, anthropic_max_tokens=77)
    body = stub.requests[0].body
    assert body["max_tokens"] == 77 and "system" not in body


def test_tools_are_offered_and_tool_use_comes_back_as_tool_calls(stub: AnthropicStub) -> None:
    output = call(stub, node(content="sending", tool_calls=[{"name": "send_email", "arguments": {"to": "ada@example.com"}}]),
                  functions=[SEND])
    [sent] = stub.requests
    assert sent.body["tools"] == [{"name": "send_email", "description": "Send an e-mail",
                                   "input_schema": SEND.parameters}]
    [tool_call] = output.tool_calls
    assert (tool_call.id, tool_call.action, tool_call.arguments) == ("toolu_0", "send_email", {"to": "ada@example.com"})
    assert output.output == "sending"


def test_streaming_hands_text_over_as_it_arrives_and_assembles_tool_input(stub: AnthropicStub) -> None:
    tokens: list[tuple[float, str]] = []
    wanted = [{"name": "send_email", "arguments": {"to": "ada@example.com", "note": "long enough to be split"}}]
    output = call(stub, node(content="one two three four", tool_calls=wanted, chunk_delay_ms=60),
                  functions=[SEND], tokens=tokens)
    [sent] = stub.requests
    assert sent.body["stream"] is True
    assert [text for _, text in tokens] == ["one ", "two ", "three ", "four"]
    text_times = [t for t, e in zip(sent.event_times, sent.events) if e.get("delta", {}).get("type") == "text_delta"]
    assert tokens[0][0] < text_times[-1] - 0.1  # the first word arrived long before the last was sent
    assert sum(e.get("delta", {}).get("type") == "input_json_delta" for e in sent.events) >= 2
    [tool_call] = output.tool_calls
    assert tool_call.arguments == wanted[0]["arguments"] and tool_call.id == "toolu_0"
    plain = call(stub, node(content="one two three four", tool_calls=wanted), functions=[SEND])
    assert output == plain  # same NodeOutput, usage included


def test_an_overloaded_error_event_mid_stream_is_retryable(stub: AnthropicStub) -> None:
    tokens: list[tuple[float, str]] = []
    with pytest.raises(ProviderError) as caught:
        call(stub, node(content="alpha beta gamma", error_after=5), tokens=tokens)
    assert [t for _, t in tokens] == ["alpha ", "beta "]  # start, ping, block start, two words
    assert caught.value.error_code == "provider_stream_error" and caught.value.retryable
    assert "overloaded_error" in caught.value.message


def test_a_connection_dropped_mid_stream_is_retryable(stub: AnthropicStub) -> None:
    with pytest.raises(ProviderError) as caught:
        call(stub, node(content="alpha beta gamma", drop_after=4), tokens=[])
    assert caught.value.error_code == "provider_disconnected" and caught.value.retryable


@pytest.mark.parametrize("status, error_type, code, retryable", [
    (429, "rate_limit_error", "provider_rate_limited", True),
    (529, "overloaded_error", "provider_overloaded", True),
    (500, "api_error", "provider_error", True),
    (400, "invalid_request_error", "provider_error", False),
    (401, "authentication_error", "provider_auth_failed", False)])
def test_status_errors_are_converted_with_retryable_and_retry_after(stub: AnthropicStub, status: int, error_type: str,
                                                                   code: str, retryable: bool) -> None:
    with pytest.raises(ProviderError) as caught:
        call(stub, node(status=status, error_type=error_type, retry_after=2, message=f"no, {KEY}"))
    error = caught.value
    assert (error.error_code, error.retryable, error.retry_after_s) == (code, retryable, 2)
    assert KEY not in error.message and str(status) in error.message
    assert len(stub.requests) == 1  # the SDK's own retries are off


def test_a_timeout_is_a_retryable_node_timeout(stub: AnthropicStub) -> None:
    with pytest.raises(NodeTimeout) as caught:
        call(stub, node(latency_ms=1500), llm_timeout_s=0.3)
    assert caught.value.retryable


def test_without_a_key_preflight_names_anthropic_api_key(stub: AnthropicStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    spec = LLMNodeSpec(id="claude", provider_name="anthropic", model_name="m")
    [item] = asyncio.run(AnthropicKind(Settings()).preflight(spec, CONTEXT))
    assert item.kind == "missing_api_key" and item.env_var == "ANTHROPIC_API_KEY"
    monkeypatch.setenv("ANTHROPIC_API_KEY", "server-key-ant-1")
    assert asyncio.run(AnthropicKind(Settings()).preflight(spec, CONTEXT)) == []
    output = call(stub, LLMNodeSpec(id="claude", provider_name="ANTHROPIC", model_name="m"))
    assert output.output.startswith("echo:") and stub.requests[0].api_key == "server-key-ant-1"


def test_a_node_base_url_on_loopback_is_refused_without_the_setting(stub: AnthropicStub) -> None:
    spec = node().model_copy(update={"base_url": stub.base_url})
    with pytest.raises(ProviderError) as caught:
        call(stub, spec, provider_base_urls={})
    assert caught.value.error_code == "address_refused" and stub.requests == []
    call(stub, spec, provider_base_urls={}, http_allowed_networks=["127.0.0.1/32"])
    assert stub.requests[0].api_key == KEY  # the node's own key goes to the node's own URL
