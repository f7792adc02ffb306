"""A loopback stub of the Composio v3.1 HTTP API, for tests that drive the real `composio` SDK.

Point the SDK at it with `Composio(api_key=stub.api_key, base_url=stub.base_url, ...)`. It serves
the paths the SDK calls for listing and fetching tool schemas, executing a tool, listing
connected accounts and creating a connect link, answers errors in Composio's envelope
(`{"error": {"message", "code", "slug", "status", "request_id"}}`) and records every request so
a test can assert what the SDK actually sent. Tests steer it through plain attributes
(`active_users`, `execute_results`, `execute_status`, ...); `reset()` restores the defaults.

It binds to loopback only and never talks to anything else.
"""

from __future__ import annotations

import copy
import itertools
import json
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.stubs.quiet_server import QuietHTTPServer
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

API = "/api/v3.1"
LATEST = "latest"


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: Any  # parsed JSON, or None


def _tool(toolkit: str, slug: str, name: str, description: str, properties: dict[str, Any],
          required: list[str], versions: list[str], no_auth: bool = False) -> dict[str, Any]:
    return {
        "slug": slug,
        "name": name,
        "description": description,
        "human_description": description,
        "input_parameters": {"type": "object", "properties": properties, "required": required,
                             "title": f"{name}Request"},
        "output_parameters": {"type": "object", "properties": {"data": {"type": "object"}},
                              "required": ["data"]},
        "toolkit": {"slug": toolkit, "name": toolkit.capitalize(), "logo": f"https://logos.invalid/{toolkit}"},
        "available_versions": versions,
        "version": versions[-1],
        "deprecated": {"available_versions": versions, "displayName": name, "is_deprecated": False,
                       "toolkit": {"logo": f"https://logos.invalid/{toolkit}"}, "version": versions[-1]},
        "is_deprecated": False,
        "no_auth": no_auth,
        "scopes": [] if no_auth else ["https://www.googleapis.com/auth/gmail.modify"],
        "scope_requirements": None,
        "tags": ["important"],
    }


GMAIL_VERSIONS = ["20250901_00", "20250909_00"]
HACKERNEWS_VERSIONS = ["20250905_00"]

TOOLS: dict[str, dict[str, Any]] = {t["slug"]: t for t in [
    _tool("gmail", "GMAIL_SEND_EMAIL", "Send Email", "Sends an email via the Gmail API.",
          {"recipient_email": {"type": "string", "description": "Email address of the recipient."},
           "subject": {"type": "string", "description": "Subject line of the email."},
           "body": {"type": "string", "description": "Plain-text body of the email."}},
          ["recipient_email", "body"], GMAIL_VERSIONS),
    _tool("gmail", "GMAIL_FETCH_EMAILS", "Fetch Emails", "Fetches emails from the user's Gmail inbox.",
          {"query": {"type": "string", "description": "Gmail search query, e.g. 'is:unread'."},
           "max_results": {"type": "integer", "description": "Largest number of emails to return.",
                           "default": 10}},
          [], GMAIL_VERSIONS),
    _tool("hackernews", "HACKERNEWS_GET_USER", "Get User", "Gets a Hacker News user by name.",
          {"username": {"type": "string", "description": "The user's name."}},
          ["username"], HACKERNEWS_VERSIONS, no_auth=True),
]}


class ComposioStub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, api_key: str = "test-composio-key"):
        self.api_key = api_key
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.requests: list[Recorded] = []
        self._server = _Server((host, port), _handler_for(self))
        self._thread: threading.Thread | None = None
        self.base_url = f"http://{host}:{self._server.server_address[1]}"
        self.reset()

    # ---- life cycle -------------------------------------------------------------------------

    def start(self) -> "ComposioStub":
        self._thread = threading.Thread(target=self._server.serve_forever, name="composio-stub",
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and drop open keep-alive connections (as a dying server would)."""
        self._server.shutdown()
        self._server.server_close()
        self._server.drop_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
        self.active_users: set[tuple[str, str]] = set()  # (user_id, toolkit slug lower)
        self.execute_results: dict[str, dict[str, Any]] = {}  # slug -> {"data","error","successful"}
        self.execute_status: int | None = None  # force this HTTP error on execute
        self.execute_delay_s: float = 0.0  # sleep before answering execute
        self.execute_requires_connection = False  # real Composio: 400 / code 1803 without one
        self.link_status: int | None = None  # force this HTTP error on connect-link creation
        self.fail_paths: dict[str, int] = {}  # path -> force this HTTP error on any request to it
        self.fail_times: dict[str, int] = {}  # path -> fail this many more requests to it with a 503

    # ---- what tests read --------------------------------------------------------------------

    def executions(self) -> list[Recorded]:
        with self._lock:
            return [r for r in self.requests
                    if r.method == "POST" and r.path.startswith(f"{API}/tools/execute/")]

    def _record(self, request: Recorded) -> None:
        with self._lock:
            self.requests.append(request)

    # ---- routes: each returns (status, json body) -------------------------------------------

    def route(self, method: str, path: str, query: dict[str, str], body: Any,
              headers: dict[str, str]) -> tuple[int, Any]:
        if path.startswith("/connect/"):
            return 200, {"message": "stub connect page", "path": path}
        if not path.startswith(API + "/"):
            return self._not_found(method, path)
        if path in self.fail_paths:
            status = self.fail_paths[path]
            return _error(status, status, "StubForcedError", f"stub forced HTTP {status} on {method} {path}")
        with self._lock:
            failing = self.fail_times.get(path, 0) > 0
            if failing:
                self.fail_times[path] -= 1
        if failing:
            return _error(503, 503, "StubTransientError", f"stub transient HTTP 503 on {method} {path}")
        if headers.get("x-api-key") != self.api_key:
            return _error(401, 10401, "InvalidApiKey",
                          "Invalid or missing API key (send it in the x-api-key header)")
        rest = path[len(API):]
        if method == "GET" and rest == "/tools":
            return self._list_tools(query)
        if method == "POST" and rest.startswith("/tools/execute/"):
            return self._execute(unquote(rest[len("/tools/execute/"):]), body or {})
        if method == "GET" and rest.startswith("/tools/") and rest.count("/") == 2:
            return self._get_tool(unquote(rest[len("/tools/"):]), query)
        if method == "GET" and rest == "/connected_accounts":
            return self._list_accounts(query)
        if method == "POST" and rest == "/connected_accounts/link":
            return self._link(body or {})
        return self._not_found(method, path)

    def _not_found(self, method: str, path: str) -> tuple[int, Any]:
        known = ("GET /api/v3.1/tools, GET /api/v3.1/tools/{slug}, POST /api/v3.1/tools/execute/{slug}, "
                 "GET /api/v3.1/connected_accounts, POST /api/v3.1/connected_accounts/link")
        return _error(404, 404, "NotFound", f"composio stub has no route {method} {path} (known: {known})")

    def _list_tools(self, query: dict[str, str]) -> tuple[int, Any]:
        toolkits = _csv(query.get("toolkit_slug", "").lower())
        slugs = _csv(query.get("tool_slugs", ""))
        if not toolkits and not slugs:
            return _error(400, 400, "BadRequest", "pass toolkit_slug or tool_slugs")
        items = [t for t in TOOLS.values()
                 if (not toolkits or t["toolkit"]["slug"] in toolkits) and (not slugs or t["slug"] in slugs)]
        try:
            items = [_at_version(t, query) for t in items]
        except ValueError as exc:
            return _error(400, 400, "InvalidToolkitVersion", str(exc))
        limit = int(float(query.get("limit") or 20))
        start = int(query.get("cursor") or 0)
        page = items[start:start + limit]
        more = start + limit < len(items)
        return 200, {"items": page, "next_cursor": str(start + limit) if more else None,
                     "total_items": len(items), "current_page": start // max(limit, 1) + 1,
                     "total_pages": max(1, -(-len(items) // max(limit, 1)))}

    def _get_tool(self, slug: str, query: dict[str, str]) -> tuple[int, Any]:
        tool = TOOLS.get(slug)
        if tool is None:
            return _error(404, 1400, "ToolNotFound", f"tool {slug!r} not found (known: {', '.join(TOOLS)})")
        try:
            return 200, _at_version(tool, query)
        except ValueError as exc:
            return _error(400, 400, "InvalidToolkitVersion", str(exc))

    def _execute(self, slug: str, body: dict[str, Any]) -> tuple[int, Any]:
        if self.execute_delay_s:
            time.sleep(self.execute_delay_s)
        if self.execute_status is not None:
            return _error(self.execute_status, self.execute_status, "StubForcedError",
                          f"stub forced HTTP {self.execute_status} on execute of {slug}")
        tool = TOOLS.get(slug)
        if tool is None:
            return _error(404, 1400, "ToolNotFound", f"tool {slug!r} not found (known: {', '.join(TOOLS)})")
        version = body.get("version")
        if version not in (None, LATEST, *tool["available_versions"]):
            return _error(400, 1401, "InvalidToolkitVersion",
                          f"version {version!r} of {slug} does not exist (known: "
                          f"{', '.join(tool['available_versions'])})")
        toolkit = tool["toolkit"]["slug"]
        user_id = body.get("user_id")
        if (self.execute_requires_connection and not tool["no_auth"]
                and (user_id, toolkit) not in self.active_users):
            return _error(400, 1803, "ConnectedAccountNotFound",
                          f"no connected account found for user {user_id!r} and toolkit {toolkit!r}")
        arguments = body.get("arguments") or {}
        result = self.execute_results.get(slug, {"data": dict(arguments), "error": None, "successful": True})
        return 200, {"data": {}, "error": None, "successful": True, **copy.deepcopy(result),
                     "log_id": f"log_{next(self._ids)}"}

    def _list_accounts(self, query: dict[str, str]) -> tuple[int, Any]:
        users = _csv(query.get("user_ids", ""))
        toolkits = [t.lower() for t in _csv(query.get("toolkit_slugs", ""))]
        statuses = _csv(query.get("statuses", ""))
        auth_configs = _csv(query.get("auth_config_ids", ""))
        items = [_account(user, toolkit) for user, toolkit in sorted(self.active_users)
                 if (not users or user in users) and (not toolkits or toolkit in toolkits)
                 and (not statuses or "ACTIVE" in statuses)
                 and (not auth_configs or f"ac_{toolkit}" in auth_configs)]
        return 200, {"items": items, "next_cursor": None, "total_items": len(items),
                     "current_page": 1, "total_pages": 1}

    def _link(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.link_status is not None:
            return _error(self.link_status, self.link_status, "StubForcedError",
                          f"stub forced HTTP {self.link_status} on connect link")
        auth_config_id, user_id = body.get("auth_config_id"), body.get("user_id")
        if not auth_config_id or not user_id:
            return _error(400, 400, "BadRequest", "auth_config_id and user_id are required")
        n = next(self._ids)
        return 201, {"connected_account_id": f"ca_{n}", "link_token": f"lt_{n}",
                     "expires_at": "2099-01-01T00:00:00.000Z",
                     "redirect_url": f"{self.base_url}/connect/{quote(auth_config_id, safe='')}"
                                     f"/{quote(user_id, safe='')}"}


def _csv(value: str) -> list[str]:
    return [part for part in value.split(",") if part]


def _at_version(tool: dict[str, Any], query: dict[str, str]) -> dict[str, Any]:
    """The tool as served for the requested `toolkit_versions` (a global string such as
    "latest", or `toolkit_versions[<toolkit>]=<version>` per toolkit)."""
    toolkit = tool["toolkit"]["slug"]
    wanted = query.get(f"toolkit_versions[{toolkit}]") or query.get("toolkit_versions") or LATEST
    if wanted == LATEST:
        return tool
    if wanted not in tool["available_versions"]:
        raise ValueError(f"toolkit {toolkit} has no version {wanted!r} "
                         f"(known: {', '.join(tool['available_versions'])})")
    return {**tool, "version": wanted}


def _account(user_id: str, toolkit: str) -> dict[str, Any]:
    return {
        "id": f"ca_{toolkit}_{user_id}", "user_id": user_id, "status": "ACTIVE", "status_reason": None,
        "toolkit": {"slug": toolkit}, "is_disabled": False, "alias": None, "word_id": None,
        "auth_config": {"id": f"ac_{toolkit}", "auth_scheme": "OAUTH2", "is_composio_managed": True,
                        "is_disabled": False},
        "state": {"authScheme": "OAUTH2", "val": {"status": "ACTIVE", "access_token": "stub-token"}},
        "data": {}, "created_at": "2025-09-09T00:00:00.000Z", "updated_at": "2025-09-09T00:00:00.000Z",
    }


def _error(status: int, code: int, slug: str, message: str) -> tuple[int, Any]:
    return status, {"error": {"message": message, "code": code, "slug": slug, "status": status,
                              "request_id": f"req_stub_{time.monotonic_ns()}"}}


def _handler_for(stub: ComposioStub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # else each reply stalls ~40 ms on delayed ACK
        protocol_version = "HTTP/1.1"

        def _handle(self) -> None:
            url = urlsplit(self.path)
            query = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
            length = int(self.headers.get("content-length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = None
            headers = {k.lower(): v for k, v in self.headers.items()}
            stub._record(Recorded(self.command, url.path, query, headers, body))
            if (raw and body is None) or not isinstance(body, (dict, type(None))):
                status, payload = _error(400, 400, "BadRequest", "request body is not a JSON object")
            else:
                try:
                    status, payload = stub.route(self.command, url.path, query, body, headers)
                except Exception as exc:  # a stub bug must answer, not drop the connection
                    status, payload = _error(500, 500, "StubCrashed", f"{type(exc).__name__}: {exc}")
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

    return Handler


class _Server(QuietHTTPServer):
    request_queue_size = 1024  # the default backlog of 5 drops bursts
    daemon_threads = True

    def __init__(self, *args: Any, **kwargs: Any):
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(*args, **kwargs)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def drop_connections(self) -> None:
        with self._open_lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
