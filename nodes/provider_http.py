"""What every HTTP provider edge decides the same way: which statuses are worth a retry, and
how long a provider asked us to wait (`Retry-After`, seconds or an HTTP date)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

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
