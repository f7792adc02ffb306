"""The http tool kind and the SSRF guard (nodes/netguard.py) against a loopback target server.
The target is reachable only because each test that needs it allows 127.0.0.1/32 explicitly;
every refusal is proven with what the target did (not) receive."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Iterator

import httpcore2
import pytest

from graph.errors import NodeTimeout
from graph.kinds import RunContext, ToolKind, ToolRequest
from graph.schema import ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.netguard import AddressPolicy
from nodes.tool_http import HttpToolKind
from tests.stubs.http_target import HttpTarget

CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
LOOPBACK = ["127.0.0.1/32"]
TOKEN = "Bearer http-secret-9f2c"


@pytest.fixture(autouse=True)
def outside_attempts(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """A tripwire under the guard: any connection to an address outside 127.0.0.0/8 is recorded
    and fails without a packet sent — so the refusal tests stay on loopback even if the guard
    broke, and they can prove that nothing was attempted."""
    attempts: list[str] = []
    real = httpcore2.AnyIOBackend.connect_tcp

    async def connect_tcp(self: Any, host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if ipaddress.ip_address(host) not in ipaddress.ip_network("127.0.0.0/8"):
            attempts.append(host)
            raise httpcore2.ConnectError(f"test tripwire: no connection to {host}")
        return await real(self, host, port, *args, **kwargs)

    monkeypatch.setattr(httpcore2.AnyIOBackend, "connect_tcp", connect_tcp)
    return attempts


@pytest.fixture(scope="module")
def running_target() -> Iterator[HttpTarget]:
    target = HttpTarget().start()
    yield target
    target.stop()


@pytest.fixture
def target(running_target: HttpTarget) -> HttpTarget:
    running_target.requests.clear()
    return running_target


def node(url: str, **config: Any) -> ToolNodeSpec:
    return ToolNodeSpec(id="web", tool_name="weather lookup", tool_type="http",
                        config={"url": url, **config}, auth_params={"Authorization": TOKEN})


def call(spec: ToolNodeSpec, allowed: list[str] | None = LOOPBACK, **settings: Any):  # type: ignore[no-untyped-def]
    arguments = settings.pop("arguments", {"city": "Paris"})
    kind = HttpToolKind(Settings(http_allowed_networks=allowed or [], **settings))
    request = ToolRequest(spec=spec, context=CONTEXT,
                          calls=[ToolCall(id="c1", action="weather_lookup", arguments=arguments)])
    return asyncio.run(kind.run(request))


# ---- what the tool offers and sends ----------------------------------------------------------

def test_offers_one_function_named_after_the_tool_with_the_placeholders_as_arguments() -> None:
    kind = HttpToolKind(Settings())
    assert isinstance(kind, ToolKind)
    [function] = asyncio.run(kind.functions(node("https://api.example.com/w/{city}?units={units}"), CONTEXT))
    assert function.name == "weather_lookup" and function.node_id == "web"
    assert function.parameters == {"type": "object", "required": ["city", "units"],
                                   "properties": {"city": {"type": "string"}, "units": {"type": "string"}}}


def test_a_get_fills_the_url_encodes_arguments_and_sends_the_secret_header(target: HttpTarget) -> None:
    spec = node(target.base_url + "/echo/{city}", headers={"Accept": "application/json"})
    output = call(spec, arguments={"city": "São Paulo/x", "units": "metric"})
    [request] = target.requests
    assert request.method == "GET" and request.path == "/echo/S%C3%A3o%20Paulo%2Fx"
    assert request.query == {"units": "metric"}  # arguments not in the URL become the query
    assert request.headers["authorization"] == TOKEN and request.headers["accept"] == "application/json"
    [result] = output.output
    assert result["successful"] and result["data"]["status"] == 200
    assert result["data"]["body"]["path"] == "/echo/S%C3%A3o%20Paulo%2Fx"
    assert TOKEN not in str(output.output)  # echoed back by the server, redacted here
    assert output.error is None


def test_a_post_sends_the_body_template_with_typed_values(target: HttpTarget) -> None:
    spec = node(target.base_url + "/echo", method="POST", body={"q": "{city}", "n": "{count}", "note": "for {city}"})
    call(spec, arguments={"city": "Oslo", "count": 3})
    [request] = target.requests
    assert request.method == "POST" and request.headers["content-type"] == "application/json"
    import json
    assert json.loads(request.body) == {"q": "Oslo", "n": 3, "note": "for Oslo"}


def test_an_error_status_fails_the_call_and_the_node(target: HttpTarget) -> None:
    output = call(node(target.base_url + "/status/404"), arguments={})
    [result] = output.output
    assert not result["successful"] and result["data"]["status"] == 404
    assert output.error.code == "tool_call_failed" and "404" in output.error.message


def test_a_static_check_requires_an_http_url() -> None:
    spec = ToolNodeSpec(id="web", tool_name="w", tool_type="http", config={"url": "file:///etc/passwd"})
    assert [field for field, _ in HttpToolKind.check(spec)] == ["config.url"]
    assert HttpToolKind.check(ToolNodeSpec(id="w", tool_name="w", tool_type="http"))[0][0] == "config.url"


# ---- refusals ---------------------------------------------------------------------------------

def refused(output) -> str:  # type: ignore[no-untyped-def]
    [result] = output.output
    assert not result["successful"] and output.error.code == "tool_call_failed"
    return result["error"]


def test_loopback_is_refused_without_the_setting(target: HttpTarget) -> None:
    assert "loopback" in refused(call(node(target.base_url + "/echo"), allowed=None))
    assert target.requests == []


def test_a_hostname_that_resolves_to_loopback_is_refused(target: HttpTarget) -> None:
    message = refused(call(node(f"http://localhost:{target.port}/echo"), allowed=None))
    assert "localhost" in message and "loopback" in message
    assert target.requests == []


@pytest.mark.parametrize("address, reason", [
    ("10.1.2.3", "private"), ("192.168.1.1", "private"), ("172.16.0.1", "private"),
    ("169.254.169.254", "metadata"), ("169.254.10.10", "link-local"), ("224.0.0.1", "multicast"),
    ("0.0.0.0", "unspecified"), ("[::1]", "loopback"), ("[::ffff:127.0.0.1]", "loopback"),
    ("[fe80::1]", "link-local"), ("100.64.0.1", "not a public address")])
def test_non_public_addresses_are_refused_before_connecting(address: str, reason: str,
                                                           outside_attempts: list[str]) -> None:
    assert reason in refused(call(node(f"http://{address}/x"), allowed=None))
    assert outside_attempts == []


def test_a_metadata_address_stays_refused_inside_an_allowed_network() -> None:
    policy = AddressPolicy.from_settings(["169.254.0.0/16"])
    assert policy.refusal(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    assert policy.refusal(ipaddress.ip_address("169.254.1.1")) is None
    assert AddressPolicy.from_settings(["169.254.169.254/32"]).refusal(ipaddress.ip_address("169.254.169.254")) is None


def test_a_redirect_into_a_forbidden_address_is_refused(target: HttpTarget, outside_attempts: list[str]) -> None:
    url = target.base_url + "/redirect?to=http://169.254.169.254/latest/meta-data/"
    assert "metadata" in refused(call(node(url), arguments={}))
    assert [r.path for r in target.requests] == ["/redirect"] and outside_attempts == []


def test_each_redirect_hop_is_checked_against_the_host_allowlist_again(target: HttpTarget) -> None:
    other = HttpTarget().start()
    try:
        url = target.base_url + f"/redirect?to=http://localhost:{other.port}/echo"
        message = refused(call(node(url), http_allowed_hosts=["127.0.0.1"], arguments={}))
        assert "'localhost' is not in SESAME_HTTP_ALLOWED_HOSTS" in message
        assert [r.path for r in target.requests] == ["/redirect"] and other.requests == []
    finally:
        other.stop()


def test_a_followed_redirect_is_rechecked_and_drops_the_secret_header_off_origin(target: HttpTarget) -> None:
    other = HttpTarget().start()
    try:
        url = target.base_url + f"/redirect?status=303&to={other.base_url}/echo"
        output = call(node(url, method="POST", body={"x": 1}), arguments={})
        assert output.output[0]["successful"]
        [hop] = other.requests
        assert hop.method == "GET" and "authorization" not in hop.headers  # 303: GET, new origin: no secret
        assert target.requests[0].headers["authorization"] == TOKEN
    finally:
        other.stop()


def test_too_many_redirects_are_refused(target: HttpTarget) -> None:
    url = target.base_url + "/redirect?to=/redirect%3Fto%3D/echo"
    assert "redirects" in refused(call(node(url), http_max_redirects=1, arguments={}))


def test_a_host_outside_the_allowlist_is_refused(target: HttpTarget) -> None:
    message = refused(call(node(target.base_url + "/echo"), http_allowed_hosts=["api.example.com"]))
    assert "SESAME_HTTP_ALLOWED_HOSTS" in message and target.requests == []


def test_a_response_over_the_size_limit_is_refused(target: HttpTarget) -> None:
    message = refused(call(node(target.base_url + "/big?n=5000"), http_max_response_bytes=1000, arguments={}))
    assert "over 1000 bytes" in message


def test_a_slow_answer_times_out(target: HttpTarget) -> None:
    with pytest.raises(NodeTimeout) as caught:
        call(node(target.base_url + "/slow?s=3"), http_timeout_s=0.5, arguments={})
    assert caught.value.retryable  # a GET may be tried again


def test_every_resolved_address_must_pass_and_the_checked_one_is_connected_to(
        target: HttpTarget, monkeypatch: pytest.MonkeyPatch) -> None:
    real = socket.getaddrinfo
    # Only 127.0.0.1 is allowed. "mixed.test" has it and 127.0.0.3; "rebind.test" answers
    # 127.0.0.1 once, then 127.0.0.2 (where nothing listens) to any second lookup.
    answers = {"mixed.test": ["127.0.0.1", "127.0.0.3"], "rebind.test": ["127.0.0.1"]}
    asked: list[str] = []

    def fake(host: str, port: Any, *args: Any, **kwargs: Any) -> list[Any]:
        if host not in answers:
            return real(host, port, *args, **kwargs)
        asked.append(host)
        addresses, answers[host] = answers[host], ["127.0.0.2"]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addresses]

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    # One allowed and one refused address: refused, though the first one alone would pass.
    assert "127.0.0.3" in refused(call(node(f"http://mixed.test:{target.port}/echo"), arguments={}))
    assert target.requests == []
    # Resolved once, checked, and that address connected to: no second lookup happens.
    output = call(node(f"http://rebind.test:{target.port}/echo"), arguments={})
    assert output.output[0]["successful"] and asked == ["mixed.test", "rebind.test"]
    assert target.requests[-1].headers["host"] == f"rebind.test:{target.port}"


def test_a_url_that_is_not_valid_fails_the_call(target: HttpTarget) -> None:
    assert "not valid" in refused(call(node("http://127.0.0.1:{port}/x"), arguments={"port": "99999"}))
    assert "not valid" in refused(call(node(target.base_url + "/redirect?to=http://[::1"), arguments={}))
