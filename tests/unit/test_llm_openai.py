"""OpenAIChatKind through the real `openai` SDK against the loopback OpenAI stub: messages with
conversation history, the plain path, the streamed path (tokens over time, tool calls assembled
from deltas, usage) and errors converted at the edge."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Iterator

import pytest

from graph.errors import ProviderError
from graph.kinds import LLMRequest, RunContext, ToolFunction, Turn
from graph.schema import LLMNodeSpec
from graph.settings import Settings
from nodes.llm_openai import OpenAIChatKind
from tests.stubs.openai_stub import OpenAIStub

KEY = "sk-unit-canary-5e1f"
CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
SEND = ToolFunction(name="SEND_EMAIL", description="Send an e-mail", node_id="mail",
                    parameters={"type": "object", "required": ["to", "body"],
                                "properties": {"to": {"type": "string"}, "body": {"type": "string"}}})
HISTORY = (Turn("first question", "first answer"), Turn("second question", "second answer"))


@pytest.fixture(scope="module")
def running_stub() -> Iterator[OpenAIStub]:
    stub = OpenAIStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(running_stub: OpenAIStub) -> OpenAIStub:
    running_stub.reset()
    return running_stub


def node(**stub_directives: Any) -> LLMNodeSpec:
    parameters: dict[str, Any] = {"temperature": 0.0}
    if stub_directives:
        parameters["stub"] = stub_directives
    return LLMNodeSpec(id="llm", provider_name="OpenAI", model_name="gpt-test", api_key_value=KEY,
                       parameters=parameters)


def call(stub: OpenAIStub, spec: LLMNodeSpec, *, tokens: list[tuple[float, str]] | None = None,
         functions: list[ToolFunction] = (), history: tuple[Turn, ...] = (),
         system: str | None = "be brief", prompt: str = "write to ada@example.com"):  # type: ignore[no-untyped-def]
    on_token = None if tokens is None else (lambda text: tokens.append((time.time(), text)))
    kind = OpenAIChatKind(Settings(openai_base_url=stub.base_url, llm_timeout_s=5.0))
    request = LLMRequest(spec=spec, context=CONTEXT, system_prompt=system, prompt=prompt,
                         functions=list(functions), history=history, on_token=on_token)
    return asyncio.run(kind.run(request))


# ---- messages and the plain path --------------------------------------------------------------

def test_history_goes_between_the_system_prompt_and_the_prompt_as_alternating_turns(stub: OpenAIStub) -> None:
    call(stub, node(), history=HISTORY, prompt="third question")
    [sent] = stub.requests
    assert sent.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first question"}, {"role": "assistant", "content": "first answer"},
        {"role": "user", "content": "second question"}, {"role": "assistant", "content": "second answer"},
        {"role": "user", "content": "third question"}]


def test_without_a_system_prompt_or_history_only_the_prompt_is_sent(stub: OpenAIStub) -> None:
    call(stub, node(), system=None, prompt="hi")
    assert stub.requests[0].body["messages"] == [{"role": "user", "content": "hi"}]


def test_without_on_token_the_call_is_not_streamed(stub: OpenAIStub) -> None:
    output = call(stub, node(content="plain answer"))
    [sent] = stub.requests
    assert "stream" not in sent.body and "stream_options" not in sent.body and sent.chunks == []
    assert output.output == "plain answer" and output.tool_calls == []
    assert output.usage.completion_tokens == 2 and output.usage.total_tokens > 2
    assert sent.body["temperature"] == 0.0 and sent.headers["authorization"] == f"Bearer {KEY}"


def test_a_plain_tool_call_is_returned_and_custom_items_are_ignored(stub: OpenAIStub) -> None:
    wanted = [{"type": "custom", "name": "grammar_tool", "input": "x"},
              {"name": "SEND_EMAIL", "arguments": {"to": "ada@example.com", "body": "hello"}}]
    output = call(stub, node(tool_calls=wanted, content=""), functions=[SEND])
    [sent] = stub.requests
    assert sent.tool_names == ["SEND_EMAIL"]
    [tool_call] = output.tool_calls
    assert (tool_call.id, tool_call.action) == ("call_1", "SEND_EMAIL")
    assert tool_call.arguments == {"to": "ada@example.com", "body": "hello"}


# ---- the streamed path ------------------------------------------------------------------------

def test_streaming_hands_each_piece_to_on_token_as_it_arrives(stub: OpenAIStub) -> None:
    tokens: list[tuple[float, str]] = []
    output = call(stub, node(content="one two three four five", chunk_delay_ms=60), tokens=tokens)

    [sent] = stub.requests
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert [text for _, text in tokens] == ["one ", "two ", "three ", "four ", "five"]
    assert output.output == "one two three four five"
    # Each piece reached on_token after the stub sent it, and the first long before the last
    # was sent: the answer was not buffered until the end.
    content_times = [t for t, chunk in zip(sent.chunk_times, sent.chunks)
                     if chunk["choices"] and chunk["choices"][0]["delta"].get("content")]
    assert all(got >= sent_at for (got, _), sent_at in zip(tokens, content_times))
    assert tokens[0][0] < content_times[-1] - 0.15


def test_streaming_returns_the_usage_of_the_final_chunk(stub: OpenAIStub) -> None:
    plain = call(stub, node(content="same words here"))
    streamed = call(stub, node(content="same words here"), tokens=[])
    assert streamed.usage == plain.usage and streamed.usage.total_tokens > 0
    assert stub.requests[1].chunks[-1]["choices"] == []  # the usage chunk came last


def test_a_streamed_tool_call_is_assembled_from_its_pieces(stub: OpenAIStub) -> None:
    arguments = {"to": "ada@example.com", "body": "a body long enough to be split in three pieces"}
    wanted = [{"name": "SEND_EMAIL", "arguments": arguments},
              {"type": "custom", "name": "grammar_tool", "input": "x"},
              {"name": "SEND_EMAIL", "arguments": {"to": "bob@example.com", "body": "second"}}]
    tokens: list[tuple[float, str]] = []
    output = call(stub, node(tool_calls=wanted, content="sending now"), functions=[SEND], tokens=tokens)

    [sent] = stub.requests
    argument_pieces = [tc["function"]["arguments"] for chunk in sent.chunks for choice in chunk["choices"]
                       for tc in choice["delta"].get("tool_calls", [])
                       if tc.get("function", {}).get("arguments")]
    assert len(argument_pieces) >= 4  # the stub really split them
    assert [(c.id, c.action, c.arguments) for c in output.tool_calls] == [
        ("call_0", "SEND_EMAIL", arguments),
        ("call_2", "SEND_EMAIL", {"to": "bob@example.com", "body": "second"})]
    assert output.output == "sending now" and "".join(t for _, t in tokens) == "sending now"


def test_streamed_and_plain_answers_are_the_same_node_output(stub: OpenAIStub) -> None:
    directives = {"content": "same", "tool_calls": [{"name": "SEND_EMAIL", "arguments": {"to": "a@b.co"}}]}
    plain = call(stub, node(**directives), functions=[SEND])
    streamed = call(stub, node(**directives), functions=[SEND], tokens=[])
    assert streamed == plain


# ---- errors -----------------------------------------------------------------------------------

def test_an_error_event_mid_stream_fails_the_node_after_the_tokens_before_it(stub: OpenAIStub) -> None:
    tokens: list[tuple[float, str]] = []
    with pytest.raises(ProviderError) as caught:
        call(stub, node(content="alpha beta gamma delta", error_after=3, message="model overloaded"),
             tokens=tokens)
    assert [text for _, text in tokens] == ["alpha ", "beta "]  # role chunk, then two words
    assert caught.value.error_code == "provider_stream_error" and caught.value.retryable
    assert "model overloaded" in caught.value.message


def test_a_connection_dropped_mid_stream_is_a_retryable_failure(stub: OpenAIStub) -> None:
    tokens: list[tuple[float, str]] = []
    with pytest.raises(ProviderError) as caught:
        call(stub, node(content="alpha beta gamma", drop_after=2), tokens=tokens)
    assert [text for _, text in tokens] == ["alpha "]
    assert caught.value.error_code == "provider_disconnected" and caught.value.retryable


def test_an_error_status_on_a_streamed_call_keeps_retry_after_and_hides_the_key(stub: OpenAIStub) -> None:
    with pytest.raises(ProviderError) as caught:
        call(stub, node(status=429, retry_after=3, message=f"slow down, {KEY}"), tokens=[])
    error = caught.value
    assert error.error_code == "provider_rate_limited" and error.retryable and error.retry_after_s == 3
    assert KEY not in error.message and "[redacted]" in error.message


def test_a_client_error_is_not_retryable(stub: OpenAIStub) -> None:
    with pytest.raises(ProviderError) as caught:
        call(stub, node(status=400, message="context too long"))
    assert caught.value.error_code == "provider_error" and not caught.value.retryable
    assert "400" in caught.value.message and "context too long" in caught.value.message


def test_an_unreachable_server_is_named_in_the_error() -> None:
    import socket

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    kind = OpenAIChatKind(Settings(openai_base_url=f"http://127.0.0.1:{port}/v1", llm_timeout_s=5.0))
    request = LLMRequest(spec=node(), context=CONTEXT, system_prompt=None, prompt="hi")
    with pytest.raises(ProviderError) as caught:
        asyncio.run(kind.run(request))
    assert caught.value.error_code == "provider_unreachable" and caught.value.retryable
    assert f"could not reach http://127.0.0.1:{port}" in caught.value.message
    assert KEY not in caught.value.message
