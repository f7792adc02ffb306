"""The OpenAI-compatible chat node: OpenAI itself and every provider in `nodes.providers` that
speaks its API (Ollama, vLLM, Groq, Together, DeepSeek, OpenRouter, …), or any server a node
names with `base_url`.

Sends one chat completion through the real `openai` SDK: system prompt + the conversation's
earlier turns (alternating user/assistant messages) + rendered prompt, the tool children's
actions as functions, and the node's `parameters` passed through as given (so new provider
options work and `0.0` stays `0.0`) — minus `memory`, which is Sesame's. Which URL and key are
used is `nodes.providers.endpoint`'s decision; a node's own `base_url` is reached through the
SSRF guard (`nodes.netguard`) and never gets a server key.

Without `on_token` it makes one plain call (the fast path). With `on_token` it streams
(`stream=True`, usage requested in the last chunk), hands each piece of text to `on_token` as it
arrives, assembles the tool calls from their deltas, and returns the same `NodeOutput`.

It must not retry (the worker owns retries: the SDK's own are off), log prompts or keys, or
let an SDK exception escape: they become `graph.errors` types here, with secrets redacted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import openai

from graph.errors import NodeTimeout, ProviderError, redact
from graph.kinds import LLMRequest, NodeOutput, Turn
from graph.schema import LLMNodeSpec, ToolCall, Usage
from nodes.netguard import AddressRefused, guarded_client, refused_cause
from nodes.provider_http import origin, retry_after_s, retryable_status, shared_ssl_context
from nodes.providers import NO_KEY, Endpoint, LLMKind

SESAME_PARAMETERS = ("memory",)  # consumed by Sesame, never sent to the provider


class OpenAIChatKind(LLMKind[openai.AsyncOpenAI]):
    async def run(self, request: LLMRequest) -> NodeOutput:
        spec = request.spec
        where = self._endpoint(spec)
        key = where.key or ""
        tools = [{"type": "function", "function": {"name": f.name, "description": f.description,
                                                    "parameters": f.parameters}}
                 for f in request.functions]
        extra = {k: v for k, v in spec.parameters.items() if k not in SESAME_PARAMETERS}
        call = {"model": spec.model_name, "tools": tools or openai.omit, "extra_body": extra or None,
                "messages": messages(request.system_prompt, request.history, request.prompt),
                "timeout": self._settings.llm_timeout_s}
        client = await self._clients.get(where)
        streamed = _Streamed()
        try:
            if request.on_token is not None:
                await _stream(client, call, request.on_token, streamed)
                if not streamed.finished:
                    raise ProviderError(f'node "{spec.id}" ({spec.model_name}): the stream ended before '
                                        "the model finished", "provider_disconnected", True)
                return NodeOutput(output="".join(streamed.text), usage=_usage(streamed.usage),
                                  tool_calls=_tool_calls(streamed.calls(), spec))
            response = await client.chat.completions.create(**call)
        except openai.APIError as exc:
            raise _converted(exc, spec, key, streamed.started) from None
        except AddressRefused as exc:  # a node's own base_url (the SDK lets it through unwrapped)
            raise ProviderError(f'node "{spec.id}" ({spec.model_name}): {exc.message}', "address_refused", False) from None
        if not response.choices:
            raise ProviderError(f'node "{spec.id}": the model returned no choices', "empty_response", True)
        message = response.choices[0].message
        pieces = [_Call(id=c.id, type=c.type, name=c.function.name if c.type == "function" else "",
                        arguments=c.function.arguments if c.type == "function" else "")
                  for c in message.tool_calls or []]  # "custom" tool calls have no .function
        return NodeOutput(output=message.content or "", tool_calls=_tool_calls(pieces, spec),
                          usage=_usage(response.usage))

    def _new_client(self, where: Endpoint) -> openai.AsyncOpenAI:
        http_client = (guarded_client(self._policy) if where.from_node
                       else openai.DefaultAsyncHttpxClient(verify=shared_ssl_context(trust_env=True)))
        return openai.AsyncOpenAI(api_key=where.key or NO_KEY, base_url=where.base_url, max_retries=0,
                                  timeout=self._settings.llm_timeout_s, http_client=http_client)


def messages(system_prompt: str | None, history: tuple[Turn, ...], prompt: str) -> list[dict[str, Any]]:
    """System prompt, then the earlier turns oldest first, then the rendered prompt."""
    result: list[dict[str, Any]] = []
    if system_prompt:
        result.append({"role": "system", "content": system_prompt})
    for turn in history:
        result.append({"role": "user", "content": turn.user})
        result.append({"role": "assistant", "content": turn.assistant})
    result.append({"role": "user", "content": prompt})
    return result


@dataclass
class _Call:
    """A tool call as the model emitted it (whole, or assembled from streamed deltas)."""

    id: str | None
    type: str | None
    name: str = ""
    arguments: str = ""


@dataclass
class _Streamed:
    """What a stream delivered so far: text pieces, tool calls by index, usage, and whether the
    model said it finished (a stream that ends without a finish reason was cut short)."""

    started: bool = False
    finished: bool = False
    usage: Any = None
    text: list[str] = field(default_factory=list)
    by_index: dict[int, _Call] = field(default_factory=dict)

    def calls(self) -> list[_Call]:
        return [self.by_index[index] for index in sorted(self.by_index)]


async def _stream(client: openai.AsyncOpenAI, call: dict[str, Any], on_token: Callable[[str], None],
                  streamed: _Streamed) -> None:
    stream = await client.chat.completions.create(**call, stream=True,
                                                  stream_options={"include_usage": True})
    async with stream:
        async for chunk in stream:
            streamed.started = True
            if chunk.usage is not None:
                streamed.usage = chunk.usage
            for choice in chunk.choices:
                if choice.index != 0:  # n > 1: the node's answer is the first choice, as unstreamed
                    continue
                streamed.finished = streamed.finished or choice.finish_reason is not None
                delta = choice.delta
                if delta.content:
                    streamed.text.append(delta.content)
                    on_token(delta.content)
                for piece in delta.tool_calls or []:
                    _add_piece(streamed.by_index, piece)


def _add_piece(calls: dict[int, _Call], piece: Any) -> None:
    """Tool calls arrive in pieces keyed by `index`: the first has the id, type and name, the
    rest carry slices of the arguments string (as OpenAI's own accumulator, names concatenate)."""
    call = calls.setdefault(piece.index, _Call(id=None, type=None))
    call.id = call.id or piece.id
    call.type = call.type or piece.type
    function = getattr(piece, "function", None)
    if function is not None:
        call.name += function.name or ""
        call.arguments += function.arguments or ""


def _tool_calls(calls: list[_Call], spec: LLMNodeSpec) -> list[ToolCall]:
    result = []
    for index, call in enumerate(calls):
        if call.type not in ("function", None) or not call.name:  # e.g. "custom": not ours to run
            continue
        try:
            arguments = json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            raise ProviderError(f'node "{spec.id}": the model called {call.name} with '
                                "arguments that are not JSON", "invalid_tool_arguments", False) from None
        if not isinstance(arguments, dict):
            raise ProviderError(f'node "{spec.id}": the model called {call.name} with '
                                "arguments that are not a JSON object", "invalid_tool_arguments", False)
        result.append(ToolCall(id=call.id or f"call_{index}", action=call.name, arguments=arguments))
    return result


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    return Usage(prompt_tokens=usage.prompt_tokens or 0, completion_tokens=usage.completion_tokens or 0,
                 total_tokens=usage.total_tokens or 0)


def _converted(exc: openai.APIError, spec: LLMNodeSpec, key: str,
               mid_stream: bool = False) -> ProviderError | NodeTimeout:
    where = f'node "{spec.id}" ({spec.model_name})'
    if isinstance(exc, openai.APITimeoutError):  # subclasses APIConnectionError: check it first
        return NodeTimeout(f"{where}: the model call timed out", "provider_timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        refused = refused_cause(exc)
        if refused is not None:
            return ProviderError(f"{where}: {refused.message}", "address_refused", False)
        if mid_stream:
            return ProviderError(f"{where}: the connection dropped mid-stream", "provider_disconnected", True)
        return ProviderError(f"{where}: could not reach {origin(getattr(exc, 'request', None))}",
                             "provider_unreachable", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = retryable_status(status)
        message = redact(f"{where}: the provider answered {status}: {exc.message}", [key])
        code = {401: "provider_auth_failed", 403: "provider_forbidden", 404: "model_not_found",
                429: "provider_rate_limited"}.get(status, "provider_error")
        return ProviderError(message, code, retryable, False, retry_after_s(exc.response.headers))
    if mid_stream:  # an error event inside a 200 stream: the provider failed while generating
        body = exc.body if isinstance(exc.body, dict) else {}
        kind = f'{body.get("type") or ""} {body.get("code") or ""}'
        retryable = any(word in kind for word in ("server", "overloaded", "rate_limit", "timeout"))
        return ProviderError(redact(f"{where}: the stream failed: {exc.message}", [key]),
                             "provider_stream_error", retryable)
    return ProviderError(redact(f"{where}: {exc.message}", [key]), "provider_error", False)
