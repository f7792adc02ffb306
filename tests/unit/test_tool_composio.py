"""ComposioToolKind through the real `composio` SDK against the loopback Composio stub."""

from __future__ import annotations

import asyncio
import pickle
import socket
import time
from types import SimpleNamespace
from typing import Any, Iterator

import pytest

import nodes.tool_composio as tool_composio
from graph.errors import NodeError, NodeTimeout, ProviderError
from graph.kinds import RunContext, ToolKind, ToolRequest
from graph.schema import ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_composio import ComposioToolKind
from tests.stubs.composio_stub import ComposioStub

KEY = "test-composio-key"
USER = "user-42"
CONTEXT = RunContext(run_id="run-1", user_id=USER, conversation_id="conv-1")
LATEST_GMAIL = "20250909_00"


@pytest.fixture(scope="module")
def running_stub() -> Iterator[ComposioStub]:
    stub = ComposioStub(api_key=KEY).start()
    yield stub
    stub.stop()


@pytest.fixture
def stub(running_stub: ComposioStub, monkeypatch: pytest.MonkeyPatch) -> ComposioStub:
    running_stub.reset()
    for name in ("COMPOSIO_API_KEY", "COMPOSIO_BASE_URL", "COMPOSIO_USER_API_KEY", "COMPOSIO_ORG_API_KEY",
                 "COMPOSIO_TOOLKIT_VERSION_GMAIL"):
        monkeypatch.delenv(name, raising=False)
    return running_stub


@pytest.fixture
def telemetry(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every telemetry event the SDK would send to its own host (it must send none)."""
    import composio.core.models.base as base

    events: list[Any] = []
    monkeypatch.setattr(base, "push_event", events.append)
    return events


def kind_for(stub: ComposioStub, **overrides: Any) -> ComposioToolKind:
    values: dict[str, Any] = {"composio_api_key": KEY, "composio_base_url": stub.base_url,
                              "tool_timeout_s": 5.0, **overrides}
    return ComposioToolKind(Settings(**values))


def gmail(**fields: Any) -> ToolNodeSpec:
    return ToolNodeSpec(**{"id": "mail", "name": "Gmail", "tool_name": "gmail", "tool_type": "composio",
                           "url": "https://ui.example/connect-gmail", **fields})


def send(call_id: str = "call-1", version: str | None = None, **arguments: Any) -> ToolCall:
    arguments = arguments or {"recipient_email": "ada@example.com", "subject": "Hi", "body": "Hello"}
    return ToolCall(id=call_id, action="GMAIL_SEND_EMAIL", arguments=arguments, node_id="mail", version=version)


def run(kind: ComposioToolKind, *calls: ToolCall, spec: ToolNodeSpec | None = None):  # type: ignore[no-untyped-def]
    return asyncio.run(kind.run(ToolRequest(spec=spec or gmail(), context=CONTEXT, calls=list(calls))))


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tool_lists(stub: ComposioStub) -> list[Any]:
    return [r for r in stub.requests if r.method == "GET" and r.path == "/api/v3.1/tools"]


# ---- functions ---------------------------------------------------------------------------------

def test_is_a_tool_kind(stub: ComposioStub) -> None:
    assert isinstance(kind_for(stub), ToolKind)


def test_functions_offer_the_toolkit_actions_with_schema_version_and_node(stub: ComposioStub) -> None:
    functions = asyncio.run(kind_for(stub).functions(gmail(), CONTEXT))

    by_name = {f.name: f for f in functions}
    assert set(by_name) == {"GMAIL_SEND_EMAIL", "GMAIL_FETCH_EMAILS"}
    send_email = by_name["GMAIL_SEND_EMAIL"]
    assert send_email.node_id == "mail" and send_email.version == LATEST_GMAIL
    assert send_email.description == "Sends an email via the Gmail API."
    assert send_email.parameters["type"] == "object"
    assert set(send_email.parameters["properties"]) == {"recipient_email", "subject", "body"}
    assert send_email.parameters["required"] == ["recipient_email", "body"]
    (listed,) = tool_lists(stub)
    assert listed.query["toolkit_slug"] == "gmail" and listed.headers["x-api-key"] == KEY


def test_functions_with_an_action_offer_only_that_action(stub: ComposioStub) -> None:
    functions = asyncio.run(kind_for(stub).functions(gmail(action="GMAIL_FETCH_EMAILS"), CONTEXT))
    assert [f.name for f in functions] == ["GMAIL_FETCH_EMAILS"]


def test_an_action_outside_the_toolkit_is_refused_naming_the_known_ones(stub: ComposioStub) -> None:
    with pytest.raises(ProviderError) as caught:
        asyncio.run(kind_for(stub).functions(gmail(action="SLACK_SEND_MESSAGE"), CONTEXT))
    assert caught.value.error_code == "unknown_action" and not caught.value.retryable
    assert "SLACK_SEND_MESSAGE" in caught.value.message and "GMAIL_SEND_EMAIL" in caught.value.message


def test_an_unknown_toolkit_is_an_error_not_an_empty_offer(stub: ComposioStub) -> None:
    with pytest.raises(ProviderError) as caught:
        asyncio.run(kind_for(stub).functions(gmail(tool_name="gmial"), CONTEXT))
    assert caught.value.error_code == "unknown_toolkit" and "gmial" in caught.value.message


def test_functions_are_cached_per_toolkit_until_they_expire(stub: ComposioStub,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    now = [1000.0]
    monkeypatch.setattr(tool_composio, "time", SimpleNamespace(monotonic=lambda: now[0]))
    kind = kind_for(stub, composio_tool_cache_s=60)

    first = asyncio.run(kind.functions(gmail(), CONTEXT))
    asyncio.run(kind.functions(gmail(id="other", action="GMAIL_SEND_EMAIL"), CONTEXT))
    now[0] += 59
    asyncio.run(kind.functions(gmail(), CONTEXT))
    assert len(stub.requests) == 1

    now[0] += 2
    again = asyncio.run(kind.functions(gmail(), CONTEXT))
    assert len(tool_lists(stub)) == 2 and again == first


def test_a_burst_of_runs_fetches_the_schemas_once(stub: ComposioStub) -> None:
    kind = kind_for(stub)

    async def burst() -> list[Any]:
        return await asyncio.gather(*(kind.functions(gmail(), CONTEXT) for _ in range(20)))

    offers = asyncio.run(burst())
    assert len(tool_lists(stub)) == 1 and all(offer == offers[0] for offer in offers)


def test_cache_zero_fetches_every_time(stub: ComposioStub) -> None:
    kind = kind_for(stub, composio_tool_cache_s=0)
    asyncio.run(kind.functions(gmail(), CONTEXT))
    asyncio.run(kind.functions(gmail(), CONTEXT))
    assert len(tool_lists(stub)) == 2


# ---- preflight ---------------------------------------------------------------------------------

def test_preflight_without_a_key_asks_for_it_and_ignores_the_environment(
        stub: ComposioStub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMPOSIO_API_KEY", KEY)  # the SDK would use it; we must not
    (item,) = asyncio.run(kind_for(stub, composio_api_key=None).preflight(gmail(), CONTEXT))
    assert item.kind == "missing_api_key" and item.env_var == "COMPOSIO_API_KEY" and item.node_id == "mail"
    assert "COMPOSIO_API_KEY" in item.message
    assert stub.requests == []


def test_preflight_without_a_connection_points_at_the_nodes_url(stub: ComposioStub) -> None:
    (item,) = asyncio.run(kind_for(stub).preflight(gmail(), CONTEXT))
    assert item.kind == "connection_required" and item.url == "https://ui.example/connect-gmail"
    assert USER in item.message and "gmail" in item.message and KEY not in item.message
    (listed,) = [r for r in stub.requests if r.path == "/api/v3.1/connected_accounts"]
    assert listed.query == {"user_ids": USER, "toolkit_slugs": "gmail", "statuses": "ACTIVE", "limit": "1"}
    assert not [r for r in stub.requests if r.path.endswith("/link")]


def test_preflight_without_a_connection_makes_a_fresh_connect_link(stub: ComposioStub) -> None:
    kind = kind_for(stub, composio_auth_configs={"GMAIL": "ac_gmail_1"})
    (item,) = asyncio.run(kind.preflight(gmail(), CONTEXT))
    assert item.kind == "connection_required"
    assert item.url == f"{stub.base_url}/connect/ac_gmail_1/{USER}"
    (link,) = [r for r in stub.requests if r.path == "/api/v3.1/connected_accounts/link"]
    assert link.body == {"auth_config_id": "ac_gmail_1", "user_id": USER}


def test_preflight_falls_back_to_the_nodes_url_when_the_link_fails(stub: ComposioStub) -> None:
    stub.link_status = 500
    kind = kind_for(stub, composio_auth_configs={"gmail": "ac_gmail_1"})
    (item,) = asyncio.run(kind.preflight(gmail(), CONTEXT))
    assert item.kind == "connection_required" and item.url == "https://ui.example/connect-gmail"


def test_preflight_with_an_active_connection_asks_nothing(stub: ComposioStub) -> None:
    stub.active_users.add((USER, "gmail"))
    assert asyncio.run(kind_for(stub).preflight(gmail(), CONTEXT)) == []
    other_user = RunContext(run_id="run-2", user_id="someone-else", conversation_id="c")
    assert [i.kind for i in asyncio.run(kind_for(stub).preflight(gmail(), other_user))] == ["connection_required"]


def test_preflight_of_a_toolkit_that_needs_no_auth_asks_nothing(stub: ComposioStub) -> None:
    spec = gmail(id="hn", tool_name="hackernews", url=None)
    assert asyncio.run(kind_for(stub).preflight(spec, CONTEXT)) == []


def test_preflight_with_a_rejected_key_says_so_without_the_key(stub: ComposioStub) -> None:
    wrong = "sk-wrong-composio-key-123"
    (item,) = asyncio.run(kind_for(stub, composio_api_key=wrong).preflight(gmail(), CONTEXT))
    assert item.kind == "invalid_api_key" and item.env_var == "COMPOSIO_API_KEY"
    assert "401" in item.message and wrong not in item.message


def test_preflight_against_an_unreachable_composio_reports_it_quickly(stub: ComposioStub) -> None:
    started = time.monotonic()
    (item,) = asyncio.run(kind_for(stub, composio_base_url=closed_port_url()).preflight(gmail(), CONTEXT))
    assert item.kind == "provider_unreachable" and "could not reach Composio" in item.message
    assert KEY not in item.message and time.monotonic() - started < 5


def connection_checks(stub: ComposioStub) -> list[Any]:
    return [r for r in stub.requests if r.path == "/api/v3.1/connected_accounts"]


def test_a_seen_connection_is_trusted_for_a_while_without_asking_again(stub: ComposioStub) -> None:
    stub.active_users.add((USER, "gmail"))
    kind = kind_for(stub, composio_connection_cache_s=60)
    for _ in range(3):
        assert asyncio.run(kind.preflight(gmail(), CONTEXT)) == []
    assert len(connection_checks(stub)) == 1
    other_user = RunContext(run_id="run-2", user_id="someone-else", conversation_id="c")
    assert [i.kind for i in asyncio.run(kind.preflight(gmail(), other_user))] == ["connection_required"]
    uncached = kind_for(stub, composio_connection_cache_s=0)
    asyncio.run(uncached.preflight(gmail(), CONTEXT))
    asyncio.run(uncached.preflight(gmail(), CONTEXT))
    assert len(connection_checks(stub)) == 4


def test_a_connection_revoked_after_it_was_seen_is_asked_for_again(stub: ComposioStub) -> None:
    stub.active_users.add((USER, "gmail"))
    stub.execute_requires_connection = True
    kind = kind_for(stub, composio_connection_cache_s=60)
    assert asyncio.run(kind.preflight(gmail(), CONTEXT)) == []
    stub.active_users.clear()  # revoked in Composio
    with pytest.raises(NodeError) as failed:
        run(kind, send())
    assert failed.value.error_code == "connection_required"
    assert [i.kind for i in asyncio.run(kind.preflight(gmail(), CONTEXT))] == ["connection_required"]


def test_a_blip_in_the_connection_check_is_retried_not_reported(stub: ComposioStub) -> None:
    stub.active_users.add((USER, "gmail"))
    stub.fail_times["/api/v3.1/connected_accounts"] = 2
    kind = kind_for(stub, retry_attempts=3, retry_base_delay_s=0.01)
    assert asyncio.run(kind.preflight(gmail(), CONTEXT)) == []
    assert len(connection_checks(stub)) == 3


# ---- run ---------------------------------------------------------------------------------------

def test_run_executes_as_the_user_with_the_offered_version(stub: ComposioStub) -> None:
    stub.active_users.add((USER, "gmail"))
    output = run(kind_for(stub), send(version="20250901_00"))

    (executed,) = stub.executions()
    assert executed.path == "/api/v3.1/tools/execute/GMAIL_SEND_EMAIL" and executed.headers["x-api-key"] == KEY
    assert executed.body["user_id"] == USER and executed.body["version"] == "20250901_00"
    assert executed.body["arguments"] == {"recipient_email": "ada@example.com", "subject": "Hi", "body": "Hello"}
    assert output.error is None
    assert output.output == [{"call_id": "call-1", "action": "GMAIL_SEND_EMAIL", "arguments": executed.body["arguments"],
                              "successful": True, "data": executed.body["arguments"], "error": None}]


def test_run_without_a_version_uses_the_schemas_version(stub: ComposioStub) -> None:
    run(kind_for(stub), send())
    assert [e.body["version"] for e in stub.executions()] == [LATEST_GMAIL]


def test_a_version_pinned_for_the_toolkit_is_offered_and_executed(stub: ComposioStub,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The SDK's own pin variable is ignored: Settings is the one source of configuration.
    monkeypatch.setenv("COMPOSIO_TOOLKIT_VERSION_GMAIL", "20250909_00")
    kind = kind_for(stub, composio_toolkit_versions={"GMAIL": "20250901_00"})
    functions = asyncio.run(kind.functions(gmail(), CONTEXT))
    assert {f.version for f in functions} == {"20250901_00"}
    run(kind, send())
    assert [e.body["version"] for e in stub.executions()] == ["20250901_00"]


def test_results_come_back_in_call_order(stub: ComposioStub) -> None:
    fetch = ToolCall(id="call-2", action="GMAIL_FETCH_EMAILS", arguments={"query": "is:unread"})
    output = run(kind_for(stub), send(), fetch)
    assert [r["call_id"] for r in output.output] == ["call-1", "call-2"]
    assert [e.path.rsplit("/", 1)[1] for e in stub.executions()] == ["GMAIL_SEND_EMAIL", "GMAIL_FETCH_EMAILS"]
    assert output.tool_calls == [send(), fetch]


def test_a_failed_action_fails_the_node_and_shows_every_call(stub: ComposioStub) -> None:
    stub.execute_results["GMAIL_SEND_EMAIL"] = {"data": {}, "successful": False,
                                                "error": f"Gmail refused: invalid recipient (key {KEY})"}
    fetch = ToolCall(id="call-2", action="GMAIL_FETCH_EMAILS", arguments={})
    output = run(kind_for(stub), send(), fetch)

    assert output.error is not None and output.error.code == "tool_call_failed" and not output.error.retryable
    assert "GMAIL_SEND_EMAIL" in output.error.message and "invalid recipient" in output.error.message
    assert [r["successful"] for r in output.output] == [False, True]
    assert KEY not in output.error.message and KEY not in output.output[0]["error"]


def test_http_500_on_execute_is_retryable_but_may_have_reached_the_provider(stub: ComposioStub) -> None:
    stub.execute_status = 500
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub), send())
    error = caught.value
    assert error.retryable and error.may_have_reached_provider and "500" in error.message
    assert KEY not in error.message
    assert len(stub.executions()) == 1  # the SDK did not retry it either
    assert type(pickle.loads(pickle.dumps(error))) is ProviderError


def test_a_4xx_on_execute_is_not_retryable(stub: ComposioStub) -> None:
    stub.execute_requires_connection = True
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub), send())
    assert caught.value.error_code == "connection_required"
    assert not caught.value.retryable and caught.value.may_have_reached_provider


def test_a_slow_execute_times_out_and_may_have_reached_the_provider(stub: ComposioStub) -> None:
    stub.execute_delay_s = 1.5
    started = time.monotonic()
    with pytest.raises(NodeTimeout) as caught:
        run(kind_for(stub, tool_timeout_s=0.3), send())
    assert time.monotonic() - started < 1.4
    assert caught.value.retryable and caught.value.may_have_reached_provider


def test_an_unreachable_composio_is_an_error_not_a_hang(stub: ComposioStub) -> None:
    started = time.monotonic()
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub, composio_base_url=closed_port_url()), send())
    assert caught.value.error_code == "provider_unreachable" and caught.value.retryable
    assert not caught.value.may_have_reached_provider  # nothing was executed: safe to retry
    assert time.monotonic() - started < 5


def test_composio_going_away_before_execute_is_safe_to_retry(stub: ComposioStub) -> None:
    gone = ComposioStub(api_key=KEY).start()
    kind = kind_for(gone)
    run(kind, send())  # schemas known to us and to the SDK, then Composio goes away
    gone.stop()
    with pytest.raises(ProviderError) as caught:
        run(kind, send())
    assert caught.value.retryable and not caught.value.may_have_reached_provider


def test_a_call_failing_after_an_executed_one_must_not_be_retried(stub: ComposioStub) -> None:
    # The second call fails before its own request is sent (the SDK's schema lookup), but the
    # first one already ran: a retry of the node would send that email again.
    stub.fail_paths["/api/v3.1/tools/GMAIL_FETCH_EMAILS"] = 503
    fetch = ToolCall(id="call-2", action="GMAIL_FETCH_EMAILS", arguments={})
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub), send(), fetch)
    assert caught.value.retryable and caught.value.may_have_reached_provider
    assert len(stub.executions()) == 1


def test_a_first_call_failing_before_it_was_sent_is_safe_to_retry(stub: ComposioStub) -> None:
    stub.fail_paths["/api/v3.1/tools/GMAIL_SEND_EMAIL"] = 503
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub), send())
    assert caught.value.retryable and not caught.value.may_have_reached_provider
    assert stub.executions() == []


def test_an_action_outside_the_toolkit_executes_nothing(stub: ComposioStub) -> None:
    bogus = ToolCall(id="call-2", action="SLACK_SEND_MESSAGE", arguments={})
    with pytest.raises(ProviderError) as caught:
        run(kind_for(stub), send(), bogus)
    assert caught.value.error_code == "unknown_action" and not caught.value.may_have_reached_provider
    assert stub.executions() == []


def test_no_telemetry_leaves_the_process(stub: ComposioStub, telemetry: list[Any]) -> None:
    stub.active_users.add((USER, "gmail"))
    kind = kind_for(stub, composio_tool_cache_s=0, composio_auth_configs={"gmail": "ac_1"})
    asyncio.run(kind.preflight(gmail(), CONTEXT))
    asyncio.run(kind.functions(gmail(), CONTEXT))
    asyncio.run(kind.functions(gmail(), CONTEXT))
    run(kind, send(), send(call_id="call-2"))
    assert len(stub.requests) >= 5 and telemetry == []


# ---- the stub itself ---------------------------------------------------------------------------

def test_the_stub_answers_unknown_paths_and_bad_keys_in_composios_error_format(stub: ComposioStub) -> None:
    import httpx

    missing = httpx.get(f"{stub.base_url}/api/v3.1/nowhere", headers={"x-api-key": KEY})
    assert missing.status_code == 404 and "/api/v3.1/nowhere" in missing.json()["error"]["message"]
    denied = httpx.get(f"{stub.base_url}/api/v3.1/tools", params={"toolkit_slug": "gmail"})
    assert denied.status_code == 401
    assert set(denied.json()["error"]) >= {"message", "code", "slug", "status"}
