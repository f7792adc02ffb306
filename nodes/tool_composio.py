"""The Composio tool kind: a Tool node whose actions are a Composio toolkit (`tool_name`, e.g.
"gmail"), run through the real `composio` SDK.

- `preflight`: the API key is configured, and the run's user has an ACTIVE connected account
  for the toolkit (else a fresh connect link, or the node's `url`). Never raises.
- `functions`: the toolkit's actions as OpenAI functions with their toolkit version, cached per
  toolkit for `composio_tool_cache_s` (one fetch at a time per toolkit).
- `run`: executes each routed call as the run's user, with the version the model was offered
  (or the schema's own version), and returns one result per call.

It must not: let the SDK read a key, URL or tracking choice from the environment or phone home
(telemetry is off in every worker thread), block the event loop (the SDK is sync: every call goes
through `asyncio.to_thread`), retry (the worker owns retries; the SDK's own are off), log
arguments, outputs or keys, or let an SDK exception escape (they become `graph.errors` types
here, redacted, with `may_have_reached_provider` set whenever an execution may have happened).
The SDK is imported on first use: it takes seconds to import and nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from graph.errors import NodeError, NodeTimeout, ProviderError, redact
from graph.kinds import NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, ErrorInfo, NodeSpec, ToolNodeSpec
from graph.settings import Settings
from nodes.provider_http import retry_after_s, retryable_status

log = logging.getLogger(__name__)
T = TypeVar("T")

ENV_VAR = "COMPOSIO_API_KEY"
_TOOLS_PAGE = 1000                   # the API's largest page: the SDK does not follow next_cursor
_MISSING_CONNECTION = 1803           # Composio's error code for "no connected account"
_CONNECTIONS_KEPT = 10_000           # positive connection checks remembered per worker


@dataclass(frozen=True)
class _Action:
    slug: str
    description: str
    parameters: dict[str, Any]
    version: str | None
    no_auth: bool


class ComposioToolKind:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._sdk: Any = None
        self._sdk_lock = threading.Lock()
        self._cache: dict[str, tuple[float, dict[str, _Action]]] = {}  # toolkit -> (expiry, actions)
        self._pending: dict[str, asyncio.Task[dict[str, _Action]]] = {}
        # (user, toolkit) -> when a positive connection check stops counting; newest last
        self._connected: OrderedDict[tuple[str, str], float] = OrderedDict()

    def warm_up(self) -> None:
        """Import the SDK ahead of the first run (it takes seconds); called in a thread."""
        import composio  # noqa: F401
        import composio_client  # noqa: F401

    # ---- the ToolKind protocol -------------------------------------------------------------

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        assert isinstance(spec, ToolNodeSpec)
        toolkit = _toolkit(spec)
        if self._key() is None:
            return [ActionRequired(
                node_id=spec.id, kind="missing_api_key", env_var=ENV_VAR,
                message=f'node "{spec.id}" uses Composio ({toolkit}), but no Composio API key is set: '
                        f"set the environment variable {ENV_VAR} on the Sesame server and restart it")]
        if self._known_connected(context.user_id, toolkit):
            return []
        where = f'node "{spec.id}" (composio {toolkit}): checking the connection'
        try:
            accounts = await self._retrying(lambda: self._call(where, lambda sdk: sdk.connected_accounts.list(
                user_ids=[context.user_id], toolkit_slugs=[toolkit], statuses=["ACTIVE"], limit=1)))
            if accounts.items:
                self._remember_connected(context.user_id, toolkit)
                return []
            if await self._needs_no_connection(spec):
                return []
        except NodeError as exc:
            kind = "provider_unreachable" if exc.retryable else {
                "provider_auth_failed": "invalid_api_key", "provider_forbidden": "invalid_api_key",
            }.get(exc.error_code, exc.error_code)
            return [ActionRequired(node_id=spec.id, kind=kind, message=exc.message,
                                   env_var=ENV_VAR if kind == "invalid_api_key" else None)]
        return [ActionRequired(
            node_id=spec.id, kind="connection_required", url=await self._connect_url(spec, context),
            message=f'user "{context.user_id}" has no active Composio connection for {toolkit} '
                    f'(node "{spec.id}"): open the link to connect the account, then run again')]

    def _known_connected(self, user_id: str, toolkit: str) -> bool:
        expiry = self._connected.get((user_id, toolkit))
        return expiry is not None and expiry > time.monotonic()

    def _remember_connected(self, user_id: str, toolkit: str) -> None:
        """Cache a positive check for `composio_connection_cache_s`: one Composio call per run
        is most of a tool node's preflight. A connection revoked meanwhile shows up as the
        execution's own `connection_required` error, which forgets the entry."""
        if self._settings.composio_connection_cache_s <= 0:
            return
        self._connected[(user_id, toolkit)] = time.monotonic() + self._settings.composio_connection_cache_s
        self._connected.move_to_end((user_id, toolkit))
        while len(self._connected) > _CONNECTIONS_KEPT:
            self._connected.popitem(last=False)

    async def _retrying(self, call: Callable[[], Awaitable[T]]) -> T:
        """A read (never an execution) tried again on retryable errors, with the server's retry
        settings: a blip must not tell the user to act."""
        for attempt in range(1, self._settings.retry_attempts + 1):
            try:
                return await call()
            except NodeError as exc:
                if not exc.retryable or attempt == self._settings.retry_attempts:
                    raise
                delay = exc.retry_after_s if exc.retry_after_s is not None else \
                    self._settings.retry_base_delay_s * 2 ** (attempt - 1)
                await asyncio.sleep(min(delay, self._settings.retry_max_delay_s))
        raise AssertionError("unreachable")

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        actions = await self._actions(spec)
        chosen = [_pick(spec, actions, spec.action)] if spec.action else list(actions.values())
        return [ToolFunction(name=a.slug, description=a.description, parameters=copy.deepcopy(a.parameters),
                             node_id=spec.id, version=a.version) for a in chosen]

    async def run(self, request: ToolRequest) -> NodeOutput:
        spec, user_id = request.spec, request.context.user_id
        actions = await self._actions(spec)
        # Check every action before executing any, so a bad call leaves nothing half-done.
        versions = [call.version if call.version is not None else _pick(spec, actions, call.action).version
                    for call in request.calls]
        results: list[dict[str, Any]] = []
        for call, version in zip(request.calls, versions):
            where = f'node "{spec.id}" (composio {_toolkit(spec)}): {call.action}'
            try:
                response = await self._call(
                    where, lambda sdk, call=call, version=version: sdk.tools.execute(
                        call.action, dict(call.arguments), user_id=user_id, version=version),
                    execute=True, earlier=bool(results))
            except NodeError as exc:
                if exc.error_code == "connection_required":  # revoked since it was checked
                    self._connected.pop((user_id, _toolkit(spec)), None)
                raise
            error = response.get("error")
            results.append({"call_id": call.id, "action": call.action, "arguments": call.arguments,
                            "successful": bool(response.get("successful")), "data": response.get("data"),
                            "error": self._redact(str(error)) if error else None})
            log.debug("composio %s executed (successful=%s)", call.action, results[-1]["successful"],
                      extra={"run_id": request.context.run_id, "node_id": spec.id})
        failed = [r for r in results if not r["successful"]]
        if not failed:
            return NodeOutput(output=results, tool_calls=list(request.calls))
        reasons = "; ".join(f'{r["action"]}: {(r["error"] or "no error message")[:300]}' for r in failed)
        return NodeOutput(output=results, tool_calls=list(request.calls), error=ErrorInfo(
            code="tool_call_failed", retryable=False,
            message=f'node "{spec.id}": {len(failed)} of {len(results)} tool calls failed: {reasons}'))

    # ---- schemas ---------------------------------------------------------------------------

    async def _actions(self, spec: ToolNodeSpec) -> dict[str, _Action]:
        """The toolkit's actions by slug: cached, and fetched once at a time per toolkit so a
        burst of runs after expiry makes one request, not hundreds."""
        toolkit = _toolkit(spec)
        cached = self._cache.get(toolkit)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        task = self._pending.get(toolkit)
        if task is None or task.get_loop() is not asyncio.get_running_loop():
            task = asyncio.ensure_future(self._fetch(toolkit))
            self._pending[toolkit] = task
            task.add_done_callback(functools.partial(self._forget, toolkit))
        return await asyncio.shield(task)  # one caller's cancellation must not cancel the others'

    async def _fetch(self, toolkit: str) -> dict[str, _Action]:
        tools = await self._call(f"composio {toolkit}: fetching the tool schemas", lambda sdk:
                                 sdk.tools.get_raw_composio_tools(toolkits=[toolkit], limit=_TOOLS_PAGE))
        actions = {t.slug: _Action(slug=t.slug, description=getattr(t, "description", None) or "",
                                   parameters=dict(getattr(t, "input_parameters", None) or {}),
                                   version=getattr(t, "version", None),
                                   no_auth=bool(getattr(t, "no_auth", False))) for t in tools}
        if not actions:
            raise ProviderError(f"Composio has no actions for toolkit {toolkit!r}: check the node's "
                                "tool_name", "unknown_toolkit", False)
        if self._settings.composio_tool_cache_s > 0:
            self._cache[toolkit] = (time.monotonic() + self._settings.composio_tool_cache_s, actions)
        return actions

    def _forget(self, toolkit: str, task: asyncio.Task[dict[str, _Action]]) -> None:
        if self._pending.get(toolkit) is task:
            del self._pending[toolkit]
        if not task.cancelled():
            task.exception()  # its waiters got it; mark it retrieved so asyncio does not warn

    async def _needs_no_connection(self, spec: ToolNodeSpec) -> bool:
        """A toolkit whose actions (or whose one chosen action) need no auth runs without one."""
        actions = await self._actions(spec)
        chosen = [_pick(spec, actions, spec.action)] if spec.action else list(actions.values())
        return all(a.no_auth for a in chosen)

    async def _connect_url(self, spec: ToolNodeSpec, context: RunContext) -> str | None:
        configs = {k.lower(): v for k, v in self._settings.composio_auth_configs.items()}
        auth_config = configs.get(_toolkit(spec))
        if auth_config is None:
            return spec.url
        try:
            link = await self._call(f'node "{spec.id}": creating a connect link',
                                    lambda sdk: sdk.connected_accounts.link(context.user_id, auth_config))
        except NodeError as exc:
            log.warning("no Composio connect link for node %s, using its url: %s", spec.id, exc.message,
                        extra={"run_id": context.run_id, "node_id": spec.id})
            return spec.url
        return getattr(link, "redirect_url", None) or spec.url

    # ---- the SDK edge ----------------------------------------------------------------------

    def _key(self) -> str | None:
        key = self._settings.composio_api_key
        return (key.get_secret_value() or None) if key is not None else None

    def _base_url(self) -> str:
        from composio_client import ENVIRONMENTS

        url = self._settings.composio_base_url
        return url if url is not None else ENVIRONMENTS["production"]

    def _redact(self, text: str) -> str:
        return redact(text, [self._key()])

    def _client(self) -> Any:
        """The one SDK client of this kind, built on first use (in a worker thread)."""
        with self._sdk_lock:
            if self._sdk is None:
                key = self._key()
                if key is None:
                    raise ProviderError(f"Composio is not configured: set {ENV_VAR}", "missing_api_key", False)
                from composio import Composio

                # Everything explicit: the SDK would fall back to COMPOSIO_* variables, has no
                # timeout by default, and retries reads (the worker owns retries).
                # "latest" when nothing is pinned: the SDK would read COMPOSIO_TOOLKIT_VERSION_*.
                pins = {k.lower(): v for k, v in self._settings.composio_toolkit_versions.items()}
                self._sdk = Composio(api_key=key, base_url=self._base_url(),
                                     timeout=self._settings.tool_timeout_s, max_retries=0,
                                     allow_tracking=False, toolkit_versions=pins or "latest")
            return self._sdk

    def _in_thread(self, fn: Callable[[Any], T]) -> T:
        # The SDK's tracking switch is a ContextVar set only in the context that built the client;
        # to_thread runs us in a copy of the caller's context, so set it here on every call.
        from composio.core.models.base import allow_tracking

        allow_tracking.set(False)
        return fn(self._client())

    async def _call(self, where: str, fn: Callable[[Any], T], *, execute: bool = False,
                    earlier: bool = False) -> T:
        """Run `fn(sdk)` in a thread; `execute` marks a tool execution, `earlier` that this run
        already executed calls (so a retry would repeat them)."""
        try:
            return await asyncio.to_thread(self._in_thread, fn)
        except NodeError:
            raise
        except Exception as exc:
            raise self._converted(exc, where, earlier or (execute and _may_have_sent(exc))) from None

    def _converted(self, exc: Exception, where: str, reached: bool) -> NodeError:
        import composio_client as cc

        if isinstance(exc, cc.APITimeoutError):  # subclasses APIConnectionError: check it first
            return NodeTimeout(f"{where}: Composio did not answer within {self._settings.tool_timeout_s:g} s",
                               "provider_timeout", True, reached)
        if isinstance(exc, cc.APIConnectionError):
            return ProviderError(f"{where}: could not reach Composio at {self._base_url()} "
                                 f"({type(exc.__cause__ or exc).__name__})", "provider_unreachable", True, reached)
        if isinstance(exc, cc.APIStatusError):
            status, details = exc.status_code, exc.details or {}
            code = {401: "provider_auth_failed", 403: "provider_forbidden", 404: "provider_not_found",
                    429: "provider_rate_limited"}.get(status, "provider_error")
            if details.get("code") == _MISSING_CONNECTION:
                code = "connection_required"
            message = self._redact(f"{where}: Composio answered {status}: {details.get('message') or exc.message}")
            return ProviderError(message, code, retryable_status(status), reached,
                                 retry_after_s(exc.response.headers))
        return ProviderError(self._redact(f"{where}: {type(exc).__name__}: {exc}"), "provider_error", False, reached)


def _toolkit(spec: ToolNodeSpec) -> str:
    return spec.tool_name.strip().lower()


def _pick(spec: ToolNodeSpec, actions: dict[str, _Action], slug: str | None) -> _Action:
    action = actions.get(slug or "")
    if action is None:
        raise ProviderError(f'node "{spec.id}": action {slug!r} is not in Composio toolkit '
                            f'{_toolkit(spec)!r} (known: {", ".join(sorted(actions))})', "unknown_action", False)
    return action


def _may_have_sent(exc: Exception) -> bool:
    """False only when the execute request certainly never left: the connection was refused or
    never made, or the SDK failed on its schema lookup before executing."""
    request = getattr(exc, "request", None)
    if isinstance(request, httpx.Request) and "/tools/execute/" not in request.url.path:
        return False
    return not isinstance(exc.__cause__, (httpx.ConnectError, httpx.ConnectTimeout))
