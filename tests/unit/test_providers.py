"""LLM providers by name (nodes/providers.py) and a node's own base_url, through the real openai
SDK against the loopback OpenAI stub; the registry's kinds and static checks in validation."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from graph.errors import InvalidRequest, ProviderError
from graph.kinds import LLMRequest, RunContext
from graph.schema import LLMNodeSpec
from graph.settings import Settings
from graph.validation import validate_request
from nodes.llm_openai import OpenAIChatKind
from nodes.providers import NO_KEY, PROVIDERS, endpoint
from nodes.registry import build_registry
from tests.stubs.openai_stub import OpenAIStub

CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
SERVER_KEY = "sk-server-canary-44aa"


@pytest.fixture(scope="module")
def running_stub() -> Iterator[OpenAIStub]:
    stub = OpenAIStub().start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(running_stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> OpenAIStub:
    running_stub.reset()
    for provider in PROVIDERS.values():
        if provider.key_env:
            monkeypatch.delenv(provider.key_env, raising=False)
    return running_stub


def llm(provider: str, **fields: Any) -> LLMNodeSpec:
    return LLMNodeSpec(id="1", provider_name=provider, model_name="m", **fields)


def ask(kind: OpenAIChatKind, spec: LLMNodeSpec):  # type: ignore[no-untyped-def]
    return asyncio.run(kind.run(LLMRequest(spec=spec, context=CONTEXT, system_prompt=None, prompt="hi")))


def test_the_table_has_the_usual_providers_with_urls_and_key_variables() -> None:
    assert PROVIDERS["ollama"].base_url == "http://127.0.0.1:11434/v1" and not PROVIDERS["ollama"].key_required
    for name, variable in (("groq", "GROQ_API_KEY"), ("together", "TOGETHER_API_KEY"),
                           ("deepseek", "DEEPSEEK_API_KEY"), ("openrouter", "OPENROUTER_API_KEY"),
                           ("anthropic", "ANTHROPIC_API_KEY")):
        assert PROVIDERS[name].key_env == variable and PROVIDERS[name].base_url.startswith("https://")
    assert "vllm" in PROVIDERS


def test_a_keyless_provider_needs_no_key_and_a_setting_overrides_its_url(stub: OpenAIStub) -> None:
    kind = OpenAIChatKind(Settings(provider_base_urls={"Ollama": stub.base_url}))
    assert asyncio.run(kind.preflight(llm("Ollama"), CONTEXT)) == []
    assert ask(kind, llm("OLLAMA")).output == "echo: hi"
    assert stub.requests[0].headers["authorization"] == f"Bearer {NO_KEY}"


def test_a_provider_key_comes_from_its_own_variable(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    kind = OpenAIChatKind(Settings(provider_base_urls={"groq": stub.base_url}))
    [item] = asyncio.run(kind.preflight(llm("Groq"), CONTEXT))
    assert item.kind == "missing_api_key" and item.env_var == "GROQ_API_KEY" and "GROQ_API_KEY" in item.message
    monkeypatch.setenv("GROQ_API_KEY", SERVER_KEY)
    assert asyncio.run(kind.preflight(llm("Groq"), CONTEXT)) == []
    ask(kind, llm("groq"))
    assert stub.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"


def test_a_node_base_url_never_gets_a_server_key(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    spec = llm("OpenAI", base_url=stub.base_url, api_key_name="OPENAI_API_KEY")
    where = endpoint(spec, Settings())
    assert where.from_node and where.key is None and not where.missing
    kind = OpenAIChatKind(Settings(http_allowed_networks=["127.0.0.1/32"]))
    assert asyncio.run(kind.preflight(spec, CONTEXT)) == []
    ask(kind, spec)
    assert stub.requests[0].headers["authorization"] == f"Bearer {NO_KEY}"
    ask(kind, spec.model_copy(update={"api_key_value": llm("x", api_key_value="node-own-key").api_key_value}))
    assert stub.requests[1].headers["authorization"] == "Bearer node-own-key"


def test_a_node_base_url_on_loopback_is_refused_without_the_setting(stub: OpenAIStub) -> None:
    with pytest.raises(ProviderError) as caught:
        ask(OpenAIChatKind(Settings()), llm("OpenAI", base_url=stub.base_url))
    assert caught.value.error_code == "address_refused" and not caught.value.retryable
    assert "loopback" in caught.value.message and stub.requests == []


def test_a_base_url_equal_to_the_configured_one_is_trusted(stub: OpenAIStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SERVER_KEY)
    kind = OpenAIChatKind(Settings(openai_base_url=stub.base_url))
    ask(kind, llm("openai", base_url=stub.base_url + "/"))
    assert stub.requests[0].headers["authorization"] == f"Bearer {SERVER_KEY}"


def body(*nodes: dict[str, Any]) -> dict[str, Any]:
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": "q", "user_id": "u", "conversation_id": "c"}


def problems(request: dict[str, Any]) -> list[dict[str, Any]]:
    with pytest.raises(InvalidRequest) as caught:
        validate_request(request, build_registry(Settings()).known())
    return caught.value.problems


def test_an_unknown_provider_or_tool_type_is_a_422_listing_the_known_ones() -> None:
    found = problems(body({"id": "1", "type": "LLM", "provider_name": "Acme", "model_name": "m"},
                          {"id": "2", "type": "Tool", "tool_name": "t", "tool_type": "zapier"}))
    llm_problem, tool_problem = found
    assert llm_problem["field"] == "provider_name" and '"ollama"' in llm_problem["message"]
    assert '"anthropic"' in llm_problem["message"] and '"groq"' in llm_problem["message"]
    assert tool_problem["field"] == "tool_type"
    for name in ("composio", "mcp", "http", "email", "python"):
        assert f'"{name}"' in tool_problem["message"]


def test_static_checks_of_the_kinds_are_reported_with_the_node_and_field() -> None:
    found = problems(body({"id": "1", "type": "LLM", "provider_name": "Groq", "model_name": "m",
                           "base_url": "ftp://x", "children": ["2"]},
                          {"id": "2", "type": "Tool", "tool_name": "w", "tool_type": "HTTP", "config": {}},
                          {"id": "3", "type": "Tool", "tool_name": "p", "tool_type": "python", "code": "NONE",
                           "action": "p", "arguments": {}}))
    assert [(p["node_id"], p["field"]) for p in found] == [("1", "base_url"), ("2", "config.url"), ("3", "code")]


def test_each_openai_compatible_provider_is_served_by_one_kind_instance() -> None:
    registry = build_registry(Settings())
    assert registry.kind(("llm", "groq")) is registry.kind(("llm", "openai"))
    assert type(registry.kind(("llm", "anthropic"))).__name__ == "AnthropicKind"


def test_an_endpoints_clients_are_used_in_turn_and_evicted_together():
    import asyncio

    from nodes.providers import ClientCache, Endpoint

    made, closed = [], []

    def make(where):
        made.append(where)
        return object()

    async def close(client):
        closed.append(client)

    async def scenario():
        cache = ClientCache(make, close, size=1, shards=3)
        a = Endpoint(base_url="http://a", key="k", key_env=None, from_node=False, missing=False)
        first = [await cache.get(a) for _ in range(6)]
        b = Endpoint(base_url="http://b", key="k", key_env=None, from_node=False, missing=False)
        await cache.get(b)  # evicts every client of a
        return first

    first = asyncio.run(scenario())
    assert len(set(map(id, first))) == 3 and first[:3] == first[3:]
    assert len(closed) == 3


def test_every_outbound_client_shares_one_tls_context_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    # Each client used to load the CA bundle into a context of its own: ~34 ms of CPU per new
    # SDK client on the worker's loop, which stalled a fresh worker's first burst of calls.
    import httpcore2

    from nodes.llm_anthropic import AnthropicKind
    from nodes.netguard import AddressPolicy, guarded_client
    from nodes.provider_http import shared_ssl_context

    built = []
    real = httpcore2.default_ssl_context
    monkeypatch.setattr(httpcore2, "default_ssl_context", lambda *a, **k: built.append(1) or real(*a, **k))
    shared_ssl_context.cache_clear()
    settings = Settings()
    openai_kind, anthropic_kind = OpenAIChatKind(settings), AnthropicKind(settings)
    server = endpoint(llm("openai", api_key_value="k"), settings)
    own = endpoint(llm("openai", api_key_value="k", base_url="https://llm.example.com/v1"), settings)
    assert not server.from_node and own.from_node
    clients = [make(where) for make in (openai_kind._new_client, anthropic_kind._new_client)
               for where in (server, own) for _ in range(3)]
    clients += [guarded_client(AddressPolicy.from_settings(())) for _ in range(3)]
    assert len(built) == 2  # one honouring SSL_CERT_FILE (the SDKs' own), one for guarded clients
