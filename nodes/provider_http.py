"""What every HTTP provider edge decides the same way: which statuses are worth a retry, how
long a provider asked us to wait (`Retry-After`, seconds or an HTTP date), and the one TLS
context per process that every outbound client shares."""

from __future__ import annotations

import functools
import ssl
from collections.abc import Mapping
from typing import Any
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import httpx2

_RETRYABLE_STATUS = {408, 409, 429}  # plus every 5xx


def retryable_status(status: int) -> bool:
    return status in _RETRYABLE_STATUS or status >= 500


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(timezone.utc)).total_seconds())
    except (TypeError, ValueError):
        return None


def origin(request: Any) -> str:
    """`scheme://host:port` of the request an SDK error carries (no path, query or credentials),
    to say which server could not be reached; "the model server" when there is none."""
    url = getattr(request, "url", None)
    host = getattr(url, "host", None)
    if not host:
        return "the model server"
    port = f":{url.port}" if getattr(url, "port", None) else ""
    return f"{url.scheme}://{host}{port}"


@functools.cache
def shared_ssl_context(trust_env: bool) -> ssl.SSLContext:
    """The TLS context for outbound clients, built once per process. Building one loads the CA
    bundle: ~34 ms of CPU, which every new SDK client paid on the worker's event loop (a burst
    of first calls on a fresh worker stalled it for a second). `trust_env` honours
    SSL_CERT_FILE/SSL_CERT_DIR, as the SDKs' own default clients do; guarded clients pass False."""
    return httpx2.create_ssl_context(verify=True, trust_env=trust_env)
