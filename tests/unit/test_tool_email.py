"""The email tool kind against a real SMTP server (aiosmtpd) on loopback: plain, STARTTLS with a
self-signed certificate made here, SMTPS, AUTH — asserting what the server received."""

from __future__ import annotations

import asyncio
from typing import Any, Iterator

import pytest

from graph.errors import ProviderError
from graph.kinds import RunContext, ToolRequest
from graph.schema import ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_email import EmailToolKind
from tests.stubs.smtp_server import Certificate, SMTPServer, make_certificate

CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
PASSWORD = "smtp-pass-canary-31d7"
SPEC = ToolNodeSpec(id="mail", tool_name="email", tool_type="email")


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def server() -> Iterator[SMTPServer]:
    smtp = SMTPServer().start()
    yield smtp
    smtp.stop()


def send(server: SMTPServer, *calls: dict[str, Any], **settings: Any):  # type: ignore[no-untyped-def]
    values: dict[str, Any] = {"smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_starttls": False,
                              "smtp_from": "sesame@example.com", "smtp_timeout_s": 10, **settings}
    kind = EmailToolKind(Settings(**values))
    calls = calls or ({"to": "ada@example.com", "subject": "Hello", "body": "Line one\nLine two"},)
    request = ToolRequest(spec=SPEC, context=CONTEXT,
                          calls=[ToolCall(id=f"c{i}", action="send_email", arguments=a) for i, a in enumerate(calls)])
    return asyncio.run(kind.run(request))


def test_offers_send_email_to_subject_body() -> None:
    [function] = asyncio.run(EmailToolKind(Settings()).functions(SPEC, CONTEXT))
    assert function.name == "send_email" and function.node_id == "mail"
    assert function.parameters["required"] == ["to", "subject", "body"]


def test_without_an_smtp_host_preflight_names_the_setting() -> None:
    [item] = asyncio.run(EmailToolKind(Settings()).preflight(SPEC, CONTEXT))
    assert item.kind == "missing_configuration" and item.env_var == "SESAME_SMTP_HOST"
    assert asyncio.run(EmailToolKind(Settings(smtp_host="h", smtp_from="a@b.c")).preflight(SPEC, CONTEXT)) == []


def test_a_plain_message_reaches_the_server(server: SMTPServer) -> None:
    output = send(server, {"to": "ada@example.com, Bob <bob@example.com>", "subject": "Hello", "body": "Hi both"})
    [received] = server.messages
    assert received.mail_from == "sesame@example.com"
    assert received.rcpt_tos == ["ada@example.com", "bob@example.com"]
    assert received.message["Subject"] == "Hello" and received.message["From"] == "sesame@example.com"
    assert received.message.get_payload().strip() == "Hi both"
    assert not received.tls and received.authenticated_as is None
    [result] = output.output
    assert result["successful"] and result["data"]["accepted"] == ["ada@example.com", "bob@example.com"]
    assert result["data"]["message_id"] == received.message["Message-ID"]


def test_starttls_with_a_self_signed_certificate_and_auth(certificate: Certificate,
                                                          request: pytest.FixtureRequest) -> None:
    tls_server = SMTPServer(tls=certificate, starttls=True, users={"ann": PASSWORD}).start()
    request.addfinalizer(tls_server.stop)
    output = send(tls_server, smtp_starttls=True, smtp_ca_file=certificate.cert_file,
                  smtp_username="ann", smtp_password=PASSWORD)
    [received] = tls_server.messages
    assert received.tls and received.authenticated_as == "ann"
    assert received.rcpt_tos == ["ada@example.com"] and output.output[0]["successful"]
    assert PASSWORD not in str(output.output)


def test_smtps_from_the_first_byte(certificate: Certificate, request: pytest.FixtureRequest) -> None:
    tls_server = SMTPServer(tls=certificate, starttls=False).start()
    request.addfinalizer(tls_server.stop)
    send(tls_server, smtp_ssl=True, smtp_ca_file=certificate.cert_file)
    [received] = tls_server.messages
    assert received.message["To"] == "ada@example.com"


def test_a_certificate_that_is_not_trusted_is_refused(certificate: Certificate, request: pytest.FixtureRequest) -> None:
    tls_server = SMTPServer(tls=certificate, starttls=True).start()
    request.addfinalizer(tls_server.stop)
    with pytest.raises(ProviderError) as caught:
        send(tls_server, smtp_starttls=True)  # no smtp_ca_file: the self-signed certificate is not trusted
    assert caught.value.error_code == "smtp_tls_failed" and tls_server.messages == []


def test_a_wrong_password_fails_without_showing_it(certificate: Certificate, request: pytest.FixtureRequest) -> None:
    tls_server = SMTPServer(tls=certificate, starttls=True, users={"ann": "the-right-one"}).start()
    request.addfinalizer(tls_server.stop)
    with pytest.raises(ProviderError) as caught:
        send(tls_server, smtp_starttls=True, smtp_ca_file=certificate.cert_file,
             smtp_username="ann", smtp_password=PASSWORD)
    assert caught.value.error_code == "smtp_auth_failed" and not caught.value.retryable
    assert PASSWORD not in caught.value.message and set(tls_server.failed_logins) == {"ann"}
    assert tls_server.messages == []


def test_header_injection_and_missing_recipients_fail_the_call_not_the_server(server: SMTPServer) -> None:
    output = send(server, {"to": "ada@example.com", "subject": "Hi\r\nBcc: eve@example.com", "body": "x"},
                  {"to": "nobody", "subject": "s", "body": "b"},
                  {"to": ["ada@example.com"], "subject": "fine", "body": "ok"})
    first, second, third = output.output
    assert not first["successful"] and "single lines" in first["error"]
    assert not second["successful"] and "no recipient" in second["error"]
    assert third["successful"]
    assert [m.message["Subject"] for m in server.messages] == ["fine"]
    assert output.error.code == "tool_call_failed"


def test_an_unreachable_server_is_a_retryable_error() -> None:
    kind = EmailToolKind(Settings(smtp_host="127.0.0.1", smtp_port=1, smtp_starttls=False, smtp_from="a@b.c"))
    request = ToolRequest(spec=SPEC, context=CONTEXT, calls=[ToolCall(
        id="c", action="send_email", arguments={"to": "ada@example.com", "subject": "s", "body": "b"})])
    with pytest.raises(ProviderError) as caught:
        asyncio.run(kind.run(request))
    assert caught.value.error_code == "smtp_unreachable" and caught.value.retryable
    assert not caught.value.may_have_reached_provider
