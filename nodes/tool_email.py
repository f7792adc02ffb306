"""The email tool kind: sends mail through the SMTP server the settings name, offered to a parent
LLM as `send_email(to, subject, body)` (or the node's `action` name). A node without an LLM
parent sends its `arguments` (`to`, `subject`, `body`; templates allowed).

Host, port, STARTTLS or implicit TLS, AUTH user and password, sender and the CA to trust come
from `SESAME_SMTP_*` settings, never from a request: a request cannot choose the server, the
sender or the credentials. The password is a secret: never in an output, error or log line.
`smtplib` is blocking, so every SMTP conversation runs in a thread, bounded by
`SESAME_SMTP_TIMEOUT_S`. A message the server may have accepted is never sent twice.
"""

from __future__ import annotations

import asyncio
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import getaddresses, make_msgid
from typing import Any

from graph.errors import NodeError, NodeTimeout, ProviderError, redact
from graph.kinds import NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, NodeSpec, ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_calls import check_actions, finished, result

ACTION = "send_email"
PARAMETERS = {
    "type": "object",
    "properties": {
        "to": {"type": "string", "description": "Recipient address, or several separated by commas"},
        "subject": {"type": "string", "description": "Subject line"},
        "body": {"type": "string", "description": "Plain-text message body"},
    },
    "required": ["to", "subject", "body"],
}


class _Refused(Exception):
    """The call's arguments cannot make an e-mail (no recipient, a header with a line break)."""


class EmailToolKind:
    def __init__(self, settings: Settings):
        self._settings = settings

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        s = self._settings
        missing = ("SESAME_SMTP_HOST" if not s.smtp_host else
                   "SESAME_SMTP_PASSWORD" if s.smtp_username and s.smtp_password is None else
                   "SESAME_SMTP_FROM" if not (s.smtp_from or s.smtp_username) else None)
        if missing is None:
            return []
        return [ActionRequired(node_id=spec.id, kind="missing_configuration", env_var=missing,
                               message=f'node "{spec.id}" sends e-mail, but the server has no {missing}: '
                                       "set it on the Sesame server (then restart it)")]

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        return [ToolFunction(name=spec.action or ACTION, parameters=PARAMETERS, node_id=spec.id,
                             description=spec.tool_description or "Send a plain-text e-mail")]

    async def run(self, request: ToolRequest) -> NodeOutput:
        spec = request.spec
        check_actions(spec, request.calls, [spec.action or ACTION])
        results: list[dict[str, Any]] = []
        for call in request.calls:
            try:
                message, recipients = self._message(call)
            except _Refused as exc:
                results.append(result(call, False, error=str(exc)))
                continue
            where = f'node "{spec.id}" (email to {", ".join(recipients)})'
            try:
                refused = await asyncio.wait_for(asyncio.to_thread(self._send, message, recipients),
                                                 self._settings.smtp_timeout_s)
            except TimeoutError:
                raise NodeTimeout(f"{where}: the SMTP server did not finish within "
                                  f"{self._settings.smtp_timeout_s:g} s", "tool_timeout", True, True) from None
            except NodeError as exc:
                raise type(exc)(exc.message, exc.error_code, exc.retryable,
                                exc.may_have_reached_provider or bool(results), exc.retry_after_s) from None
            accepted = [r for r in recipients if r not in refused]
            results.append(result(call, True, {"message_id": message["Message-ID"], "accepted": accepted,
                                               "refused": sorted(refused)}))
        return finished(spec, request.calls, results)

    def _message(self, call: ToolCall) -> tuple[EmailMessage, list[str]]:
        arguments = call.arguments
        to = arguments.get("to")
        to_text = ", ".join(to) if isinstance(to, list) else str(to or "")
        subject, body = str(arguments.get("subject") or ""), str(arguments.get("body") or "")
        if any(ch in to_text + subject for ch in "\r\n"):
            raise _Refused("to and subject must be single lines")
        recipients = [address for _, address in getaddresses([to_text]) if "@" in address]
        if not recipients:
            raise _Refused(f"no recipient address in to={to_text!r}")
        message = EmailMessage()
        message["From"] = self._settings.smtp_from or self._settings.smtp_username or ""
        message["To"] = ", ".join(recipients)
        message["Subject"] = subject
        message["Message-ID"] = make_msgid(domain="sesame.local")
        message.set_content(body)
        return message, recipients

    def _send(self, message: EmailMessage, recipients: list[str]) -> dict[str, Any]:
        """One SMTP conversation (in a thread). Returns the recipients the server refused."""
        s = self._settings
        password = s.smtp_password.get_secret_value() if s.smtp_password is not None else None
        where = f"SMTP {s.smtp_host}:{s.smtp_port}"
        context = ssl.create_default_context(cafile=s.smtp_ca_file)
        sending = False
        try:
            smtp = (smtplib.SMTP_SSL(s.smtp_host or "", s.smtp_port, timeout=s.smtp_timeout_s, context=context)
                    if s.smtp_ssl else smtplib.SMTP(s.smtp_host or "", s.smtp_port, timeout=s.smtp_timeout_s))
            with smtp:
                if s.smtp_starttls and not s.smtp_ssl:
                    smtp.starttls(context=context)
                if s.smtp_username:
                    smtp.login(s.smtp_username, password or "")
                sending = True
                return smtp.send_message(message, to_addrs=recipients)
        except smtplib.SMTPAuthenticationError as exc:
            raise ProviderError(redact(f"{where}: authentication failed ({exc.smtp_code})", [password]),
                                "smtp_auth_failed", False) from None
        except smtplib.SMTPRecipientsRefused as exc:
            raise ProviderError(f"{where}: every recipient was refused: {', '.join(exc.recipients)}",
                                "smtp_recipients_refused", False) from None
        except smtplib.SMTPResponseException as exc:
            detail = redact(exc.smtp_error.decode("utf-8", "replace") if isinstance(exc.smtp_error, bytes)
                            else str(exc.smtp_error), [password])
            raise ProviderError(f"{where}: the server answered {exc.smtp_code}: {detail}", "smtp_error",
                                400 <= exc.smtp_code < 500, sending) from None
        except (ssl.SSLError, smtplib.SMTPNotSupportedError) as exc:
            raise ProviderError(f"{where}: TLS failed: {type(exc).__name__}: {exc}", "smtp_tls_failed", False) from None
        except (OSError, smtplib.SMTPException) as exc:
            raise ProviderError(f"{where}: {type(exc).__name__}: {redact(str(exc), [password])}",
                                "smtp_unreachable", True, sending) from None
