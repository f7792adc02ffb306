"""The http tool kind: one HTTP request per call, described by the node's `config`
(`method`, `url` template, `headers`, `body`), offered to a parent LLM as one function whose
arguments fill the `{name}` placeholders (docs/node_kinds.md).

Safety, because the URL comes from a request (and may be filled in by a model):
- only http/https; when `SESAME_HTTP_ALLOWED_HOSTS` is set, only those hosts;
- every connection goes through `nodes.netguard` (all resolved addresses checked, the checked
  address connected to; loopback, private, link-local, multicast, unspecified, metadata refused);
- redirects are followed here, hop by hop, each re-checked (and `auth_params` headers are dropped
  when a redirect leaves the origin);
- the whole call is bounded by `SESAME_HTTP_TIMEOUT_S` and the body by
  `SESAME_HTTP_MAX_RESPONSE_BYTES` (counted after decompression).
`auth_params` are secret headers: never in an output, error or log line.

It must not retry a request that may have reached the server unless the method is idempotent.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx2

from graph.errors import NodeError, NodeTimeout, ProviderError, redact
from graph.kinds import NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, NodeSpec, ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.netguard import AddressPolicy, AddressRefused, guarded_client, refused_cause
from nodes.tool_calls import check_actions, config_of, finished, function_name, redacted, result

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD")
IDEMPOTENT = ("GET", "PUT", "DELETE", "HEAD")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REDIRECTS = (301, 302, 303, 307, 308)


class CallRefused(Exception):
    """This call may not be made or its answer may not be taken (a policy, not a failure)."""


@dataclass(frozen=True)
class _Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None


class HttpToolKind:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._policy = AddressPolicy.from_settings(settings.http_allowed_networks)

    @staticmethod
    def check(spec: NodeSpec) -> list[tuple[str, str]]:
        assert isinstance(spec, ToolNodeSpec)
        config = config_of(spec)
        problems = []
        url = config.get("url")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            problems.append(("config.url", "an http tool needs config.url, an http:// or https:// URL "
                                           f"(placeholders such as {{city}} allowed), got {url!r}"))
        method = config.get("method", "GET")
        if not isinstance(method, str) or method.upper() not in METHODS:
            problems.append(("config.method", f"config.method must be one of {', '.join(METHODS)}, got {method!r}"))
        headers = config.get("headers", {})
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            problems.append(("config.headers", "config.headers must be an object of strings"))
        auth = spec.auth_params or {}
        if not all(isinstance(v, str) for v in auth.values()):
            problems.append(("auth_params", "auth_params of an http tool are secret headers: an object of strings"))
        return problems

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        return []

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        config = config_of(spec)
        method = str(config.get("method", "GET")).upper()
        description = spec.tool_description or f"HTTP {method} {config.get('url')}"
        return [ToolFunction(name=function_name(spec), description=description,
                             parameters=spec.input_schema or _schema_of(config), node_id=spec.id)]

    async def run(self, request: ToolRequest) -> NodeOutput:
        spec = request.spec
        check_actions(spec, request.calls, [function_name(spec)])
        secrets = [str(v) for v in (spec.auth_params or {}).values()]
        results: list[dict[str, Any]] = []
        for call in request.calls:
            try:
                data = await self._call(spec, call)
            except CallRefused as exc:
                results.append(result(call, False, error=redact(str(exc), secrets)))
                continue
            except NodeError as exc:
                raise type(exc)(redact(exc.message, secrets), exc.error_code, exc.retryable,
                                exc.may_have_reached_provider or bool(results), exc.retry_after_s) from None
            data = redacted(data, secrets)
            ok = 200 <= data["status"] < 300
            results.append(result(call, ok, data, None if ok else f'{spec.id}: the server answered {data["status"]}'))
        return finished(spec, request.calls, results)

    async def _call(self, spec: ToolNodeSpec, call: ToolCall) -> dict[str, Any]:
        try:
            first = _build(spec, call.arguments)
        except (httpx2.InvalidURL, ValueError) as exc:
            raise CallRefused(f"the URL is not valid: {exc}") from None
        where = f'node "{spec.id}" (http {first.method})'
        try:
            async with asyncio.timeout(self._settings.http_timeout_s):
                async with guarded_client(self._policy, timeout=self._settings.http_timeout_s) as client:
                    return await self._follow(client, first, dict(spec.auth_params or {}))
        except TimeoutError:
            raise NodeTimeout(f"{where}: no complete answer within {self._settings.http_timeout_s:g} s",
                              "tool_timeout", True, first.method not in IDEMPOTENT) from None
        except httpx2.InvalidURL as exc:  # a redirect's Location, or a URL made from arguments
            raise CallRefused(f"the URL is not valid: {exc}") from None
        except httpx2.HTTPError as exc:
            refused = refused_cause(exc)
            if refused is not None:
                raise CallRefused(refused.message) from None
            sent = not isinstance(exc, (httpx2.ConnectError, httpx2.ConnectTimeout))
            raise ProviderError(f"{where}: {type(exc).__name__} talking to {_origin(first.url)}",
                                "tool_unreachable", True, sent and first.method not in IDEMPOTENT) from None
        except AddressRefused as exc:
            raise CallRefused(exc.message) from None

    async def _follow(self, client: httpx2.AsyncClient, request: _Request, secret_headers: dict[str, str]) -> dict[str, Any]:
        origin = _origin(request.url)
        for _ in range(self._settings.http_max_redirects + 1):
            self._check_host(request.url)
            headers = {**request.headers, **secret_headers} if _origin(request.url) == origin else request.headers
            async with client.stream(request.method, request.url, headers=headers, content=request.body) as response:
                location = response.headers.get("location")
                if response.status_code in _REDIRECTS and location:
                    request = _redirected(request, response.status_code, str(response.url.join(location)))
                    continue
                return {"status": response.status_code, "url": str(response.url),
                        "headers": {k: v for k, v in response.headers.items() if k.lower() == "content-type"},
                        "body": _decoded(await self._read(response), response.headers.get("content-type", ""))}
        raise CallRefused(f"more than {self._settings.http_max_redirects} redirects "
                          "(SESAME_HTTP_MAX_REDIRECTS)")

    async def _read(self, response: httpx2.Response) -> bytes:
        limit = self._settings.http_max_response_bytes
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > limit:
                raise CallRefused(f"the response body is over {limit} bytes (SESAME_HTTP_MAX_RESPONSE_BYTES)")
        return bytes(body)

    def _check_host(self, url: str) -> None:
        parsed = httpx2.URL(url)
        if parsed.scheme not in ("http", "https"):
            raise CallRefused(f"only http and https URLs may be called, not {parsed.scheme!r}")
        if not parsed.host or (parsed.port is not None and not 0 < parsed.port < 65536):
            raise CallRefused(f"the URL is not valid: {url!r} has no host or a port out of range")
        allowed = [h.strip().lower() for h in self._settings.http_allowed_hosts]
        host = parsed.host.lower()
        if allowed and not any(host == h or (h.startswith("*.") and host.endswith(h[1:])) for h in allowed):
            raise CallRefused(f"host {host!r} is not in SESAME_HTTP_ALLOWED_HOSTS")


def _schema_of(config: dict[str, Any]) -> dict[str, Any]:
    """Without an input_schema: every placeholder in the URL, headers and body is a required string."""
    names = list(dict.fromkeys(_PLACEHOLDER.findall(json.dumps(
        [config.get("url", ""), config.get("headers", {}), config.get("body")]))))
    return {"type": "object", "properties": {n: {"type": "string"} for n in names}, "required": names}


def _build(spec: ToolNodeSpec, arguments: dict[str, Any]) -> _Request:
    config = config_of(spec)
    method = str(config.get("method", "GET")).upper()
    used: set[str] = set()

    def fill(text: str, encode: bool) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in arguments:
                raise CallRefused(f"argument {name!r} is missing (the URL, headers or body use {{{name}}})")
            used.add(name)
            value = arguments[name] if isinstance(arguments[name], str) else json.dumps(arguments[name])
            return quote(value, safe="") if encode else value
        return _PLACEHOLDER.sub(one, text)

    url = fill(str(config["url"]), encode=True)
    headers = {k: fill(v, encode=False) for k, v in (config.get("headers") or {}).items()}
    body: bytes | None = None
    if config.get("body") is not None:
        body = json.dumps(_fill_value(config["body"], arguments, used, fill)).encode()
        headers.setdefault("content-type", "application/json")
    rest = {k: v for k, v in arguments.items() if k not in used}
    if rest and method in ("GET", "HEAD", "DELETE"):
        url = str(httpx2.URL(url).copy_merge_params({k: v if isinstance(v, str) else json.dumps(v)
                                                     for k, v in rest.items()}))
    elif rest and body is None:
        body = json.dumps(rest).encode()
        headers.setdefault("content-type", "application/json")
    return _Request(method=method, url=url, headers=headers, body=body)


def _fill_value(value: Any, arguments: dict[str, Any], used: set[str], fill: Any) -> Any:
    """A body template: a string that is exactly "{name}" takes the argument's value (any JSON
    type); other strings have their placeholders filled in."""
    if isinstance(value, str):
        whole = _PLACEHOLDER.fullmatch(value)
        if whole and whole.group(1) in arguments:
            used.add(whole.group(1))
            return arguments[whole.group(1)]
        return fill(value, False)
    if isinstance(value, list):
        return [_fill_value(v, arguments, used, fill) for v in value]
    if isinstance(value, dict):
        return {k: _fill_value(v, arguments, used, fill) for k, v in value.items()}
    return value


def _redirected(request: _Request, status: int, url: str) -> _Request:
    if status == 303 or (status in (301, 302) and request.method == "POST"):
        headers = {k: v for k, v in request.headers.items() if k.lower() != "content-type"}
        return _Request(method="GET" if request.method != "HEAD" else "HEAD", url=url, headers=headers, body=None)
    return _Request(method=request.method, url=url, headers=request.headers, body=request.body)


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx2.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def _decoded(body: bytes, content_type: str) -> Any:
    text = body.decode("utf-8", "replace")
    if "json" in content_type:
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text
