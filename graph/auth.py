"""Who is calling: endpoint API keys mapped to tenants, and the rule for running without keys.

With `SESAME_API_KEYS` set (JSON `{"<key>": "<tenant>"}`), every request but the health check
must carry `Authorization: Bearer <key>`, and runs and conversations belong to that key's tenant.
Without keys everyone is the tenant `default` — which is only allowed while Sesame listens on a
loopback address, unless `SESAME_ALLOW_ANONYMOUS=true` says that open access is intended.

Keys are compared in constant time and never logged or echoed.
"""

from __future__ import annotations

import hmac
import ipaddress
import json

from graph.errors import Unauthorized
from graph.settings import Settings

ANONYMOUS_TENANT = "default"


class ConfigurationError(RuntimeError):
    """The settings cannot be served safely; raised at start, before anything listens."""


class Authenticator:
    def __init__(self, settings: Settings):
        self._keys = _parse_keys(settings)
        check_exposure(settings, bool(self._keys))

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def tenant(self, authorization: str | None) -> str:
        """The caller's tenant, from the `Authorization` header; raises `Unauthorized`."""
        if not self._keys:
            return ANONYMOUS_TENANT
        scheme, _, token = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("this Sesame needs an API key: send Authorization: Bearer <key>")
        presented = token.strip().encode()
        for key, tenant in self._keys:
            if hmac.compare_digest(presented, key):
                return tenant
        raise Unauthorized("the API key is not valid for this Sesame")


def check_exposure(settings: Settings, has_keys: bool) -> None:
    if has_keys or settings.allow_anonymous or is_loopback(settings.host):
        return
    raise ConfigurationError(
        f"Sesame would listen on {settings.host} without API keys: set SESAME_API_KEYS "
        '(JSON {"<key>": "<tenant>"}), or SESAME_HOST=127.0.0.1, or SESAME_ALLOW_ANONYMOUS=true '
        "if anyone who can reach it may use it")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_keys(settings: Settings) -> list[tuple[bytes, str]]:
    if settings.api_keys is None:
        return []
    raw = settings.api_keys.get_secret_value()
    try:
        mapping = json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        raise ConfigurationError('SESAME_API_KEYS must be JSON {"<key>": "<tenant>"}') from None
    if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) >= 16 and v for k, v in mapping.items()):
        raise ConfigurationError('SESAME_API_KEYS must map each key (16 characters or more) to a '
                                 'tenant name: {"<key>": "<tenant>"}')
    return [(key.encode(), tenant) for key, tenant in mapping.items()]
