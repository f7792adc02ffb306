"""The LLM providers Sesame knows by name: where each one's API is and which environment variable
holds its key. One literal table; `provider_name` is matched case-insensitively.

Every provider but Anthropic speaks the OpenAI chat-completions API (`nodes.llm_openai`).
`endpoint` decides, per node, which URL is called and which key is sent — and it is the one
place that keeps a server key from leaving for a URL the server did not configure: with a node's
own `base_url`, only the node's own `api_key_value` is sent (a server key never is).
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from graph.errors import ProviderError
from graph.kinds import RunContext
from graph.schema import ActionRequired, LLMNodeSpec, NodeSpec
from graph.settings import Settings
from nodes.netguard import AddressPolicy

C = TypeVar("C")

NO_KEY = "sesame-no-key"  # what keyless servers get: the OpenAI SDK needs a non-empty key


@dataclass(frozen=True)
class Provider:
    name: str                # lower case, as matched against provider_name
    base_url: str | None     # None: the SDK's own default (api.openai.com)
    key_env: str | None      # the environment variable holding the server's key
    key_required: bool = True


PROVIDERS: dict[str, Provider] = {p.name: p for p in (
    Provider("openai", None, "OPENAI_API_KEY"),
    Provider("anthropic", "https://api.anthropic.com", "ANTHROPIC_API_KEY"),
    Provider("ollama", "http://127.0.0.1:11434/v1", None, key_required=False),
    Provider("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", key_required=False),
    Provider("lmstudio", "http://127.0.0.1:1234/v1", None, key_required=False),
    Provider("llamacpp", "http://127.0.0.1:8080/v1", None, key_required=False),
    Provider("groq", "https://api.groq.com/openai/v1", "GROQ_API_KEY"),
    Provider("together", "https://api.together.xyz/v1", "TOGETHER_API_KEY"),
    Provider("deepseek", "https://api.deepseek.com/v1", "DEEPSEEK_API_KEY"),
    Provider("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY"),
    Provider("mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY"),
    Provider("fireworks", "https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY"),
    Provider("xai", "https://api.x.ai/v1", "XAI_API_KEY"),
    Provider("perplexity", "https://api.perplexity.ai", "PERPLEXITY_API_KEY"),
    Provider("gemini", "https://generativelanguage.googleapis.com/v1beta/openai", "GEMINI_API_KEY"),
)}
OPENAI_COMPATIBLE = [name for name in PROVIDERS if name != "anthropic"]


@dataclass(frozen=True)
class Endpoint:
    """Where one node's calls go and with which key."""

    base_url: str | None     # None: the SDK's default
    key: str | None          # None: no key available (see `missing_key_env`)
    key_env: str | None      # the variable the key was (or would be) read from
    from_node: bool          # the URL came from the request: connections are guarded (netguard)
    missing: bool            # a key is needed and there is none: preflight says which variable


def provider_of(spec: LLMNodeSpec) -> Provider:
    return PROVIDERS[spec.kind[1]]


def configured_url(provider: Provider, settings: Settings) -> str | None:
    """The URL the server trusts for `provider`: a setting, else the built-in one."""
    overrides = {name.strip().lower(): url for name, url in settings.provider_base_urls.items()}
    if provider.name in overrides:
        return overrides[provider.name]
    if provider.name == "openai" and settings.openai_base_url is not None:
        return settings.openai_base_url
    return provider.base_url


def endpoint(spec: LLMNodeSpec, settings: Settings) -> Endpoint:
    provider = provider_of(spec)
    trusted = configured_url(provider, settings)
    from_node = spec.base_url is not None and spec.base_url.rstrip("/") != (trusted or "").rstrip("/")
    key_env = spec.api_key_name or provider.key_env
    if spec.api_key_value is not None:
        key: str | None = spec.api_key_value.get_secret_value()
    elif from_node:
        key = None  # a server key is never sent to a URL the request chose
    else:
        key = (os.environ.get(key_env) or None) if key_env else None
    missing = key is None and provider.key_required and not from_node
    return Endpoint(base_url=spec.base_url if from_node else trusted, key=key, key_env=key_env,
                    from_node=from_node, missing=missing)


def check_base_url(spec: LLMNodeSpec) -> list[tuple[str, str]]:
    """Static check shared by the LLM kinds: a node's base_url must be an http(s) URL."""
    url = spec.base_url
    if url is not None and not url.startswith(("http://", "https://")):
        return [("base_url", f"base_url must be an http:// or https:// URL, got {url!r}")]
    return []


def missing_key(spec: LLMNodeSpec, where: Endpoint) -> ActionRequired:
    env_var = where.key_env or "the provider's key variable"
    return ActionRequired(
        node_id=spec.id, kind="missing_api_key", env_var=where.key_env,
        message=f'node "{spec.id}" has no API key: set the environment variable {env_var} on '
                "the Sesame server (then restart it), or send api_key_value in the node")


class ClientCache(Generic[C]):
    """SDK clients by (URL, key, guarded), least recently used first out (`close` is awaited on
    the ones evicted). Each endpoint gets up to `shards` clients, used in turn: one client's
    connection pool scans every pooled connection on each request, so 500 concurrent calls on
    one client cost 2.4–2.7 ms of CPU each against 1.5 ms spread over 16 (bench/RESULTS.md)."""

    def __init__(self, make: Callable[[Endpoint], C], close: Callable[[C], Awaitable[Any]],
                 size: int = 32, shards: int = 1):
        self._make, self._close, self._size, self._shards = make, close, size, max(1, shards)
        self._clients: OrderedDict[tuple[str | None, str | None, bool], list[C]] = OrderedDict()
        self._turn = itertools.count()

    async def get(self, where: Endpoint) -> C:
        key = (where.base_url, where.key, where.from_node)
        clients = self._clients.pop(key, None) or []
        self._clients[key] = clients
        index = next(self._turn) % self._shards
        if index >= len(clients):
            clients.append(self._make(where))
            index = len(clients) - 1
        while len(self._clients) > self._size:
            _, oldest = self._clients.popitem(last=False)
            for client in oldest:
                await self._close(client)
        return clients[index]


class LLMKind(Generic[C]):
    """What the LLM kinds share: the static `base_url` check, the key preflight, the endpoint of
    a node's call, and their SDK clients per endpoint (`_new_client` is each kind's own)."""

    check = staticmethod(check_base_url)

    def __init__(self, settings: Settings):
        self._settings = settings
        self._policy = AddressPolicy.from_settings(settings.http_allowed_networks)
        self._clients: ClientCache[C] = ClientCache(
            self._new_client, lambda c: c.close(), shards=settings.llm_clients_per_endpoint)

    def _new_client(self, where: Endpoint) -> C:
        raise NotImplementedError

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        assert isinstance(spec, LLMNodeSpec)
        where = endpoint(spec, self._settings)
        return [missing_key(spec, where)] if where.missing else []

    def _endpoint(self, spec: LLMNodeSpec) -> Endpoint:
        """Where `spec`'s call goes. A missing key (preflight reports it first) fails the node."""
        where = endpoint(spec, self._settings)
        if where.missing:
            raise ProviderError(f'node "{spec.id}" has no API key', "missing_api_key", False)
        return where
