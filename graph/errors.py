"""The one error tree of Sesame.

    SesameError                      base; `code` (snake_case) and `http_status`
    ├── RequestError                 the caller sent something we cannot accept (4xx)
    │   ├── MalformedJSON            400: the body is not JSON
    │   ├── Unauthorized             401: no or an unknown endpoint API key
    │   ├── NotFound                 404: no such run or conversation *for this caller*
    │   ├── BodyTooLarge             413: the body is over `SESAME_MAX_BODY_BYTES`
    │   ├── InvalidRequest           422: the graph or a field is invalid; carries every problem
    │   ├── IdempotencyKeyReused     422: an Idempotency-Key sent again with a different body
    │   └── TooManyRuns              429: this user has too many runs in flight (Retry-After)
    ├── Overloaded                   503: this process has too many runs in flight (Retry-After)
    ├── NodeError                    a node failed while running; recorded on the node, never an
    │   │                            HTTP error (the run still answers 200)
    │   ├── ProviderError            the model/tool provider answered with an error
    │   ├── NodeTimeout              the node's call did not finish in time (retryable)
    │   ├── PromptTooLarge           a rendered prompt is over SESAME_MAX_RENDERED_CHARS
    │   └── ToolCallFailed           a tool call ran and reported failure
    └── InternalError                500: our own bug, never the caller's mistake

Every class keeps its constructor arguments equal to `self.args`, so instances survive pickling
across Ray with their type intact (a test round-trips each one). Messages never carry secrets:
node edges pass provider messages through `redact` first.
"""

from __future__ import annotations

from typing import Any


class SesameError(Exception):
    code = "sesame_error"
    http_status = 500

    def __init__(self, message: str):
        super().__init__(message)

    @property
    def message(self) -> str:
        return self.args[0]

    @property
    def headers(self) -> dict[str, str]:
        """HTTP headers that go with the error's answer."""
        return {}


class _RetryLater(SesameError):
    def __init__(self, message: str, retry_after_s: int = 1):
        Exception.__init__(self, message, retry_after_s)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.args[1])}


class RequestError(SesameError):
    code = "bad_request"
    http_status = 400


class MalformedJSON(RequestError):
    code = "malformed_json"
    http_status = 400


class Unauthorized(RequestError):
    code = "unauthorized"
    http_status = 401

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="sesame"'}


class NotFound(RequestError):
    """Also what another user or tenant gets for a run that exists: ids are not secrets, and a
    403 would confirm that the run exists."""

    code = "not_found"
    http_status = 404


class BodyTooLarge(RequestError):
    code = "body_too_large"
    http_status = 413


class InvalidRequest(RequestError):
    """422. `problems` is a list of `{"node_id", "field", "message"}` dicts, all found at once."""

    code = "invalid_request"
    http_status = 422

    def __init__(self, message: str, problems: list[dict[str, Any]]):
        Exception.__init__(self, message, problems)

    @property
    def problems(self) -> list[dict[str, Any]]:
        return self.args[1]


class IdempotencyKeyReused(RequestError):
    code = "idempotency_key_reused"
    http_status = 422


class TooManyRuns(_RetryLater, RequestError):
    code = "too_many_runs"
    http_status = 429


class Overloaded(_RetryLater):
    code = "overloaded"
    http_status = 503


class NodeError(SesameError):
    """A node's failure. `retryable` says whether trying again may help (429, 5xx, timeouts,
    dropped connections); `may_have_reached_provider` forbids retrying a side-effecting call."""

    code = "node_error"

    def __init__(self, message: str, code: str | None = None, retryable: bool = False,
                 may_have_reached_provider: bool = False, retry_after_s: float | None = None):
        Exception.__init__(self, message, code, retryable, may_have_reached_provider, retry_after_s)

    @property
    def error_code(self) -> str:
        return self.args[1] or self.code

    @property
    def retryable(self) -> bool:
        return self.args[2]

    @property
    def may_have_reached_provider(self) -> bool:
        return self.args[3]

    @property
    def retry_after_s(self) -> float | None:
        return self.args[4]


class ProviderError(NodeError):
    code = "provider_error"


class NodeTimeout(NodeError):
    code = "node_timeout"


class PromptTooLarge(NodeError):
    """Raised by `graph.templates` when a node's prompt or arguments would render to more than
    SESAME_MAX_RENDERED_CHARS characters; the scheduler fails the node with it (not retryable)."""

    code = "prompt_too_large"


class ToolCallFailed(NodeError):
    code = "tool_call_failed"


class InternalError(SesameError):
    code = "internal_error"
    http_status = 500


def redact(text: str, secrets: list[str | None]) -> str:
    """Remove every non-empty secret from `text` (provider messages can echo a key back)."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return text
