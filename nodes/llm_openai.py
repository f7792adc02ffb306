"""The OpenAI (and OpenAI-compatible) chat node.

Sends one chat completion through the real `openai` SDK: system prompt + rendered prompt, the
tool children's actions as functions, and the node's `parameters` passed through as given (so new
provider options work and `0.0` stays `0.0`) — minus `memory`, which is Sesame's. The key is
`api_key_value` when given, else the worker's environment variable named by `api_key_name`.

It must not retry (the worker owns retries: the SDK's own are off), log prompts or keys, or
let an SDK exception escape: they become `graph.errors` types here, with secrets redacted.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from typing import Any

import openai

from graph.errors import NodeTimeout, ProviderError, redact
from graph.kinds import LLMRequest, NodeOutput, RunContext
from graph.schema import ActionRequired, LLMNodeSpec, NodeSpec, ToolCall, Usage
from graph.settings import Settings
from nodes.provider_http import retry_after_s, retryable_status

SESAME_PARAMETERS = ("memory",)  # consumed by Sesame, never sent to the provider
_MAX_CLIENTS = 32                # one SDK client (connection pool) per distinct key, LRU


class OpenAIChatKind:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._clients: OrderedDict[str, openai.AsyncOpenAI] = OrderedDict()

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        assert isinstance(spec, LLMNodeSpec)
        if self._api_key(spec):
            return []
        env_var = spec.api_key_name or "OPENAI_API_KEY"
        return [ActionRequired(
            node_id=spec.id, kind="missing_api_key", env_var=env_var,
            message=f'node "{spec.id}" has no API key: set the environment variable {env_var} on '
                    "the Sesame server (then restart it), or send api_key_value in the node")]

    async def run(self, request: LLMRequest) -> NodeOutput:
        spec = request.spec
        key = self._api_key(spec)
        if not key:
            raise ProviderError(f'node "{spec.id}" has no API key', "missing_api_key", False)
        messages: list[dict[str, Any]] = []
        if request.system_prompt:
            messages.append({"role": "system", "content": request.system_prompt})
        messages.append({"role": "user", "content": request.prompt})
        tools = [{"type": "function", "function": {"name": f.name, "description": f.description,
                                                    "parameters": f.parameters}}
                 for f in request.functions]
        extra = {k: v for k, v in spec.parameters.items() if k not in SESAME_PARAMETERS}
        try:
            response = await (await self._client(key)).chat.completions.create(
                model=spec.model_name, messages=messages, tools=tools or openai.omit,
                extra_body=extra or None, timeout=self._settings.llm_timeout_s)
        except openai.APIError as exc:
            raise _converted(exc, spec, key) from None
        if not response.choices:
            raise ProviderError(f'node "{spec.id}": the model returned no choices', "empty_response", True)
        message = response.choices[0].message
        return NodeOutput(output=message.content or "", tool_calls=_tool_calls(message, spec),
                          usage=_usage(response.usage))

    def _api_key(self, spec: LLMNodeSpec) -> str | None:
        if spec.api_key_value is not None:
            return spec.api_key_value.get_secret_value()
        return os.environ.get(spec.api_key_name or "OPENAI_API_KEY") or None

    async def _client(self, key: str) -> openai.AsyncOpenAI:
        client = self._clients.pop(key, None)
        if client is None:
            client = openai.AsyncOpenAI(api_key=key, base_url=self._settings.openai_base_url,
                                        max_retries=0, timeout=self._settings.llm_timeout_s)
        self._clients[key] = client
        if len(self._clients) > _MAX_CLIENTS:
            _, oldest = self._clients.popitem(last=False)
            await oldest.close()
        return client


def _tool_calls(message: Any, spec: LLMNodeSpec) -> list[ToolCall]:
    calls = []
    for call in message.tool_calls or []:
        if call.type != "function":  # "custom" tool calls have no .function
            continue
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except json.JSONDecodeError:
            raise ProviderError(f'node "{spec.id}": the model called {call.function.name} with '
                                "arguments that are not JSON", "invalid_tool_arguments", False) from None
        if not isinstance(arguments, dict):
            raise ProviderError(f'node "{spec.id}": the model called {call.function.name} with '
                                "arguments that are not a JSON object", "invalid_tool_arguments", False)
        calls.append(ToolCall(id=call.id, action=call.function.name, arguments=arguments))
    return calls


def _usage(usage: Any) -> Usage | None:
    if usage is None:
        return None
    return Usage(prompt_tokens=usage.prompt_tokens or 0, completion_tokens=usage.completion_tokens or 0,
                 total_tokens=usage.total_tokens or 0)


def _converted(exc: openai.APIError, spec: LLMNodeSpec, key: str) -> ProviderError | NodeTimeout:
    where = f'node "{spec.id}" ({spec.model_name})'
    if isinstance(exc, openai.APITimeoutError):  # subclasses APIConnectionError: check it first
        return NodeTimeout(f"{where}: the model call timed out", "provider_timeout", True)
    if isinstance(exc, openai.APIConnectionError):
        return ProviderError(f"{where}: could not reach the model server", "provider_unreachable", True)
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        retryable = retryable_status(status)
        message = redact(f"{where}: the provider answered {status}: {exc.message}", [key])
        code = {401: "provider_auth_failed", 403: "provider_forbidden", 404: "model_not_found",
                429: "provider_rate_limited"}.get(status, "provider_error")
        return ProviderError(message, code, retryable, False, retry_after_s(exc.response.headers))
    return ProviderError(redact(f"{where}: {exc.message}", [key]), "provider_error", False)
