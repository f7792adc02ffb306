"""The Anthropic chat node, through the official `anthropic` SDK (Messages API).

One model turn: the system prompt as `system`, the conversation's earlier turns as alternating
user/assistant messages, the rendered prompt as the last user message; the tool children's
actions offered as Anthropic tools (`input_schema` = the function's JSON schema); `tool_use`
blocks come back as Sesame `ToolCall`s. `parameters` pass through as given (`memory` is ours;
`max_tokens`, which the API requires, defaults to `SESAME_ANTHROPIC_MAX_TOKENS`). With
`on_token` the call streams and each text delta is handed over as it arrives; tool input arrives
as JSON pieces and is assembled per content block.

It must not retry (the SDK's retries are off; the worker owns them), let the SDK read a key or
URL from the environment (both are passed explicitly), log prompts or keys, or
let an SDK exception escape: they become `graph.errors` types here — 429, 5xx, 529 overloaded,
timeouts and dropped connections retryable, with `Retry-After` — and the key is redacted.
The SDK is imported on first use (it takes over a second): nothing here runs at import.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2

from graph.errors import NodeError, NodeTimeout, ProviderError, redact
from graph.kinds import LLMRequest, NodeOutput
from graph.schema import LLMNodeSpec, ToolCall, Usage
from nodes.llm_openai import SESAME_PARAMETERS, messages
from nodes.netguard import AddressRefused, guarded_client, refused_cause
from nodes.provider_http import origin, retry_after_s, retryable_status, shared_ssl_context
from nodes.providers import NO_KEY, Endpoint, LLMKind

if TYPE_CHECKING:
    import anthropic

_RETRYABLE_STREAM_ERRORS = ("overloaded_error", "api_error", "rate_limit_error", "timeout_error")


class AnthropicKind(LLMKind["anthropic.AsyncAnthropic"]):
    def warm_up(self) -> None:
        import anthropic  # noqa: F401

    async def run(self, request: LLMRequest) -> NodeOutput:
        import anthropic

        spec = request.spec
        where = self._endpoint(spec)
        extra = {k: v for k, v in spec.parameters.items() if k not in SESAME_PARAMETERS}
        max_tokens = extra.pop("max_tokens") if "max_tokens" in extra else self._settings.anthropic_max_tokens
        tools = [{"name": f.name, "description": f.description, "input_schema": f.parameters}
                 for f in request.functions]
        call = {"model": spec.model_name, "max_tokens": max_tokens,
                "messages": messages(None, request.history, request.prompt),  # Anthropic takes `system` apart
                "system": request.system_prompt or anthropic.omit, "tools": tools or anthropic.omit,
                "extra_body": extra or None, "timeout": self._settings.llm_timeout_s}
        client = await self._clients.get(where)
        streamed = _Streamed()
        try:
            if request.on_token is not None:
                await _stream(client, call, request.on_token, streamed)
                if not streamed.finished:
                    raise ProviderError(f"{_where(spec)}: the stream ended before the model finished",
                                        "provider_disconnected", True)
                return NodeOutput(output="".join(streamed.text), tool_calls=streamed.tool_calls(spec),
                                  usage=Usage(prompt_tokens=streamed.input_tokens,
                                              completion_tokens=streamed.output_tokens,
                                              total_tokens=streamed.input_tokens + streamed.output_tokens))
            message = await client.messages.create(**call)
        except (anthropic.APIError, httpx2.TransportError, AddressRefused) as exc:
            raise _converted(exc, spec, where.key, streamed.started) from None
        text = "".join(block.text for block in message.content if block.type == "text")
        calls = [ToolCall(id=block.id, action=block.name, arguments=_object(spec, block.name, block.input))
                 for block in message.content if block.type == "tool_use"]
        return NodeOutput(output=text, tool_calls=calls, usage=_usage(message.usage))

    def _new_client(self, where: Endpoint) -> anthropic.AsyncAnthropic:
        import anthropic

        # Explicit key and URL: the SDK would otherwise read ANTHROPIC_* variables and credential
        # profiles from the worker's environment.
        return anthropic.AsyncAnthropic(
            api_key=where.key or NO_KEY, base_url=where.base_url, max_retries=0,
            timeout=self._settings.llm_timeout_s,
            http_client=(guarded_client(self._policy) if where.from_node
                         else anthropic.DefaultAsyncHttpxClient(verify=shared_ssl_context(trust_env=True))))


@dataclass
class _Block:
    type: str
    id: str = ""
    name: str = ""
    json_pieces: list[str] = field(default_factory=list)


@dataclass
class _Streamed:
    started: bool = False
    finished: bool = False
    input_tokens: int = 0
    output_tokens: int = 0
    text: list[str] = field(default_factory=list)
    blocks: dict[int, _Block] = field(default_factory=dict)

    def tool_calls(self, spec: LLMNodeSpec) -> list[ToolCall]:
        calls = []
        for index in sorted(self.blocks):
            block = self.blocks[index]
            if block.type != "tool_use":
                continue
            try:
                arguments = json.loads("".join(block.json_pieces) or "{}")
            except json.JSONDecodeError:
                raise ProviderError(f'node "{spec.id}": the model called {block.name} with arguments '
                                    "that are not JSON", "invalid_tool_arguments", False) from None
            calls.append(ToolCall(id=block.id, action=block.name, arguments=_object(spec, block.name, arguments)))
        return calls


async def _stream(client: anthropic.AsyncAnthropic, call: dict[str, Any], on_token: Callable[[str], None],
                  streamed: _Streamed) -> None:
    stream = await client.messages.create(**call, stream=True)
    async with stream:
        async for event in stream:
            streamed.started = True
            if event.type == "message_start":
                streamed.input_tokens = _input_tokens(event.message.usage)
                streamed.output_tokens = event.message.usage.output_tokens or 0
            elif event.type == "content_block_start":
                block = event.content_block
                streamed.blocks[event.index] = _Block(type=block.type, id=getattr(block, "id", "") or "",
                                                      name=getattr(block, "name", "") or "")
            elif event.type == "content_block_delta":
                delta = event.delta
                if delta.type == "text_delta" and delta.text:
                    streamed.text.append(delta.text)
                    on_token(delta.text)
                elif delta.type == "input_json_delta" and event.index in streamed.blocks:
                    streamed.blocks[event.index].json_pieces.append(delta.partial_json)
            elif event.type == "message_delta":
                streamed.output_tokens = event.usage.output_tokens  # cumulative
                if event.usage.input_tokens is not None:
                    streamed.input_tokens = _input_tokens(event.usage)
            elif event.type == "message_stop":
                streamed.finished = True


def _object(spec: LLMNodeSpec, name: str, arguments: Any) -> dict[str, Any]:
    if not isinstance(arguments, dict):
        raise ProviderError(f'node "{spec.id}": the model called {name} with arguments that are not '
                            "a JSON object", "invalid_tool_arguments", False)
    return dict(arguments)


def _input_tokens(usage: Any) -> int:
    return ((usage.input_tokens or 0) + (getattr(usage, "cache_creation_input_tokens", None) or 0)
            + (getattr(usage, "cache_read_input_tokens", None) or 0))


def _usage(usage: Any) -> Usage:
    prompt = _input_tokens(usage)
    return Usage(prompt_tokens=prompt, completion_tokens=usage.output_tokens or 0,
                 total_tokens=prompt + (usage.output_tokens or 0))


def _where(spec: LLMNodeSpec) -> str:
    return f'node "{spec.id}" ({spec.model_name})'


def _converted(exc: Exception, spec: LLMNodeSpec, key: str | None, mid_stream: bool) -> NodeError:
    import anthropic

    where = _where(spec)
    refused = refused_cause(exc)
    if refused is not None:  # a node's own base_url
        return ProviderError(f"{where}: {refused.message}", "address_refused", False)
    if isinstance(exc, (anthropic.APITimeoutError, httpx2.TimeoutException)):  # before connection errors
        return NodeTimeout(f"{where}: the model call timed out", "provider_timeout", True)
    if isinstance(exc, (anthropic.APIConnectionError, httpx2.TransportError)):
        if mid_stream:
            return ProviderError(f"{where}: the connection dropped mid-stream", "provider_disconnected", True)
        return ProviderError(f"{where}: could not reach {origin(getattr(exc, 'request', None))}",
                             "provider_unreachable", True)
    if isinstance(exc, anthropic.APIStatusError):
        body = exc.body if isinstance(exc.body, dict) else {}
        error = body.get("error") if isinstance(body.get("error"), dict) else {}
        detail = error.get("message") or exc.message
        if exc.status_code == 200:  # an `error` event inside a streamed answer
            retryable = error.get("type") in _RETRYABLE_STREAM_ERRORS
            return ProviderError(redact(f"{where}: the stream failed: {error.get('type')}: {detail}", [key]),
                                 "provider_stream_error", retryable)
        status = exc.status_code
        code = {401: "provider_auth_failed", 403: "provider_forbidden", 404: "model_not_found",
                429: "provider_rate_limited", 529: "provider_overloaded"}.get(status, "provider_error")
        return ProviderError(redact(f"{where}: the provider answered {status}: {detail}", [key]), code,
                             retryable_status(status), False, retry_after_s(exc.response.headers))
    message = exc.message if isinstance(exc, anthropic.APIError) else str(exc)
    return ProviderError(redact(f"{where}: {message}", [key]), "provider_error", False)
