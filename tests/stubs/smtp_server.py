"""A real SMTP server on loopback (aiosmtpd) that records what it received, plus a self-signed
certificate maker, for the email tool's tests.

    server = SMTPServer(tls=make_certificate(tmp_path), starttls=True, users={"ann": "pw"}).start()
    ... server.messages  -> [Received(mail_from, rcpt_tos, message, authenticated_as, tls)]
"""

from __future__ import annotations

import datetime
import email
import ipaddress
import socket
import ssl
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    message: Message
    authenticated_as: str | None
    tls: bool


@dataclass(frozen=True)
class Certificate:
    cert_file: str
    key_file: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def make_certificate(folder: Path) -> Certificate:
    """A self-signed certificate for 127.0.0.1 and localhost, valid for a day."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.DNSName("localhost")]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = folder / "smtp-cert.pem", folder / "smtp-key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return Certificate(str(cert_file), str(key_file))


class SMTPServer:
    """`tls` with `starttls=True`: STARTTLS offered and required; with `starttls=False`: TLS from
    the first byte (SMTPS). `users`: AUTH required (only over TLS when there is TLS)."""

    def __init__(self, tls: Certificate | None = None, starttls: bool = True,
                 users: dict[str, str] | None = None):
        self.messages: list[Received] = []
        self.failed_logins: list[str] = []
        self.port = _free_port()
        self._users = users
        options: dict[str, Any] = {}
        if tls is not None and starttls:
            options.update(tls_context=tls.server_context(), require_starttls=True)
        if users is not None:
            options.update(authenticator=self._authenticate, auth_require_tls=tls is not None)
        self._controller = Controller(self, hostname="127.0.0.1", port=self.port,
                                      ssl_context=tls.server_context() if tls is not None and not starttls else None,
                                      **options)

    def start(self) -> "SMTPServer":
        self._controller.start()
        return self

    def stop(self) -> None:
        self._controller.stop()

    def _authenticate(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            login, password = auth_data.login.decode(), auth_data.password.decode()
            if self._users is not None and self._users.get(login) == password:
                return AuthResult(success=True, auth_data=login)
            self.failed_logins.append(login)
        return AuthResult(success=False, handled=False)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(Received(
            mail_from=envelope.mail_from, rcpt_tos=list(envelope.rcpt_tos),
            message=email.message_from_bytes(envelope.original_content or envelope.content),
            authenticated_as=session.auth_data if session.authenticated else None,
            tls=session.ssl is not None))
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
