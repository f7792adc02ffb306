"""The mcp tool kind: the tools of an MCP server, through the official `mcp` SDK, offered to a
parent LLM as functions (their own names, descriptions and input schemas) and called when the
model asks. A node names its server in `config`:

- `{"server": "files"}`: a server the operator configured in `SESAME_MCP_SERVERS` — a stdio
  command (started per session, with only the SDK's safe environment plus the configured `env`)
  or a streamable-HTTP URL with headers. Commands come only from settings, never from a request.
- `{"url": "https://host/mcp"}`: a streamable-HTTP server named by the request, reached through
  the SSRF guard (`nodes.netguard`) like the http tool.
`auth_params` are sent as HTTP headers (secrets: redacted from outputs and errors);
`config.tools` optionally narrows the tools offered.

Every session (listing or calling) is opened and closed within the call, bounded by
`SESAME_MCP_TIMEOUT_S`; tool lists are cached per server for `SESAME_MCP_TOOL_CACHE_S`. A result
with `isError` fails its call with the server's message. A call that may have reached the server
is never retried. The SDK is imported on first use.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import httpx2

from graph.errors import NodeError, NodeTimeout, ProviderError, redact
from graph.kinds import NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, NodeSpec, ToolNodeSpec
from graph.settings import Settings
from nodes.netguard import AddressPolicy, guarded_client, refused_cause
from nodes.tool_calls import check_actions, config_of, finished, redacted, result

_Tool = tuple[str, str, dict[str, Any]]  # name, description, input schema


class MCPToolKind:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._policy = AddressPolicy.from_settings(settings.http_allowed_networks)
        self._cache: dict[Any, tuple[float, list[_Tool]]] = {}

    def warm_up(self) -> None:
        import mcp.client.client  # noqa: F401

    @staticmethod
    def check(spec: NodeSpec) -> list[tuple[str, str]]:
        assert isinstance(spec, ToolNodeSpec)
        config = config_of(spec)
        url, server = config.get("url"), config.get("server")
        if (url is None) == (server is None):
            return [("config", 'an mcp tool needs config.server (a name from SESAME_MCP_SERVERS) or '
                               'config.url (a streamable-HTTP MCP endpoint), exactly one')]
        if url is not None and not (isinstance(url, str) and url.startswith(("http://", "https://"))):
            return [("config.url", f"config.url must be an http:// or https:// URL, got {url!r}")]
        tools = config.get("tools")
        if tools is not None and not (isinstance(tools, list) and all(isinstance(t, str) for t in tools)):
            return [("config.tools", "config.tools must be a list of tool names")]
        return []

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        assert isinstance(spec, ToolNodeSpec)
        server = config_of(spec).get("server")
        if server is None or server in self._settings.mcp_servers:
            return []
        known = ", ".join(sorted(self._settings.mcp_servers)) or "none"
        return [ActionRequired(node_id=spec.id, kind="unknown_mcp_server", env_var="SESAME_MCP_SERVERS",
                               message=f'node "{spec.id}" uses MCP server {server!r}, which this server does '
                                       f"not configure (known: {known}): add it to SESAME_MCP_SERVERS")]

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        return [ToolFunction(name=name, description=description, parameters=schema, node_id=spec.id)
                for name, description, schema in await self._tools(spec)]

    async def run(self, request: ToolRequest) -> NodeOutput:
        spec = request.spec
        check_actions(spec, request.calls, [name for name, _, _ in await self._tools(spec)])
        results: list[dict[str, Any]] = []
        timeout = self._settings.mcp_timeout_s
        try:
            async with asyncio.timeout(timeout * (len(request.calls) + 1)):
                async with self._session(spec) as client:
                    for call in request.calls:
                        answer = await client.call_tool(call.action, dict(call.arguments), read_timeout_seconds=timeout)
                        data = self._redacted(spec, _data(answer))
                        error = self._redacted(spec, _text(answer) or "the tool reported an error")
                        results.append(result(call, True, data) if not answer.is_error
                                       else result(call, False, error=str(error)))
        except Exception as exc:
            raise self._converted(spec, exc, sending=True, earlier=bool(results)) from None
        return finished(spec, request.calls, results)

    # ---- sessions and tool lists -----------------------------------------------------------

    async def _tools(self, spec: ToolNodeSpec) -> list[_Tool]:
        key = self._identity(spec)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > time.monotonic():
            tools = cached[1]
        else:
            try:
                async with asyncio.timeout(self._settings.mcp_timeout_s):
                    async with self._session(spec) as client:
                        tools, cursor = [], None
                        for _ in range(100):  # pages; a server that never ends its listing is cut off
                            page = await client.list_tools(cursor=cursor)
                            tools += [(t.name, t.description or "", dict(t.input_schema)) for t in page.tools]
                            cursor = page.next_cursor
                            if not cursor:
                                break
            except Exception as exc:
                raise self._converted(spec, exc, sending=False, earlier=False) from None
            if self._settings.mcp_tool_cache_s > 0:
                self._cache[key] = (time.monotonic() + self._settings.mcp_tool_cache_s, tools)
        wanted = config_of(spec).get("tools")
        return [t for t in tools if wanted is None or t[0] in wanted]

    def _identity(self, spec: ToolNodeSpec) -> Any:
        config = config_of(spec)
        return (config.get("server"), config.get("url"), tuple(sorted((spec.auth_params or {}).items())))

    @asynccontextmanager
    async def _session(self, spec: ToolNodeSpec) -> AsyncIterator[Any]:
        from mcp.client.client import Client
        from mcp.client.stdio import StdioServerParameters, stdio_client
        from mcp.client.streamable_http import streamable_http_client

        config = config_of(spec)
        headers = {str(k): str(v) for k, v in (spec.auth_params or {}).items()}
        async with AsyncExitStack() as stack:
            if config.get("server") is not None:
                entry = self._server(spec)
                if entry.get("command"):
                    transport: Any = stdio_client(StdioServerParameters(
                        command=str(entry["command"]), args=[str(a) for a in entry.get("args", [])],
                        env={str(k): str(v) for k, v in entry.get("env", {}).items()}, cwd=entry.get("cwd")))
                else:
                    http = httpx2.AsyncClient(headers={**entry.get("headers", {}), **headers}, trust_env=False,
                                              timeout=self._settings.mcp_timeout_s)
                    transport = streamable_http_client(str(entry["url"]), http_client=await stack.enter_async_context(http))
            else:
                http = guarded_client(self._policy, headers=headers, timeout=self._settings.mcp_timeout_s)
                transport = streamable_http_client(str(config["url"]), http_client=await stack.enter_async_context(http))
            yield await stack.enter_async_context(Client(transport, read_timeout_seconds=self._settings.mcp_timeout_s))

    def _server(self, spec: ToolNodeSpec) -> dict[str, Any]:
        name = config_of(spec)["server"]
        entry = self._settings.mcp_servers.get(name)
        if entry is None:
            raise ProviderError(f'node "{spec.id}": MCP server {name!r} is not in SESAME_MCP_SERVERS',
                                "unknown_mcp_server", False)
        return entry

    # ---- the edge ---------------------------------------------------------------------------

    def _secrets(self, spec: ToolNodeSpec) -> list[str]:
        secrets = [str(v) for v in (spec.auth_params or {}).values()]
        server = config_of(spec).get("server")
        entry = self._settings.mcp_servers.get(server, {}) if server is not None else {}
        for group in ("env", "headers"):
            secrets += [str(v) for v in (entry.get(group) or {}).values()]
        return secrets

    def _redacted(self, spec: ToolNodeSpec, value: Any) -> Any:
        return redacted(value, self._secrets(spec))

    def _converted(self, spec: ToolNodeSpec, exc: BaseException, sending: bool, earlier: bool) -> NodeError:
        """`sending`: tool calls were being made (one may have reached the server)."""
        from mcp.shared.exceptions import MCPError
        from mcp_types.jsonrpc import REQUEST_TIMEOUT

        config = config_of(spec)
        where = f'node "{spec.id}" (mcp {config.get("server") or config.get("url")})'
        if isinstance(exc, NodeError):
            return exc
        refused = refused_cause(exc)
        if refused is not None:
            return ProviderError(f"{where}: {refused.message}", "address_refused", False, earlier)
        mcp_error = _find(exc, MCPError)
        # Our deadline and the HTTP client's read timeout are the same setting: either may fire first.
        timed_out = isinstance(exc, TimeoutError) or _find(exc, httpx2.TimeoutException) is not None
        if timed_out or (mcp_error is not None and mcp_error.code == REQUEST_TIMEOUT):
            return NodeTimeout(f"{where}: no answer within {self._settings.mcp_timeout_s:g} s "
                               "(SESAME_MCP_TIMEOUT_S)", "tool_timeout", True, sending or earlier)
        if mcp_error is not None:
            return ProviderError(redact(f"{where}: the server answered an error: {mcp_error.message}",
                                        self._secrets(spec)), "mcp_error", False, sending or earlier)
        cause = _leaf(exc)
        return ProviderError(redact(f"{where}: could not talk to the MCP server ({type(cause).__name__}: {cause})",
                                    self._secrets(spec))[:500], "mcp_unreachable", True, sending or earlier)


def _data(answer: Any) -> Any:
    if answer.structured_content is not None:
        return answer.structured_content
    others = [{"type": block.type} for block in answer.content if block.type != "text"]
    return {"text": _text(answer), "other_content": others} if others else _text(answer)


def _text(answer: Any) -> str:
    return "\n".join(block.text for block in answer.content if block.type == "text")


def _find(exc: BaseException, kind: type[BaseException]) -> Any:
    """The first `kind` in an exception, its causes, or its exception group."""
    stack = [exc]
    while stack:
        current = stack.pop()
        if isinstance(current, kind):
            return current
        stack += list(getattr(current, "exceptions", ())) + [e for e in (current.__cause__,) if e is not None]
    return None


def _leaf(exc: BaseException) -> BaseException:
    while getattr(exc, "exceptions", None):
        exc = exc.exceptions[0]  # type: ignore[attr-defined]
    return exc
