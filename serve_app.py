"""Sesame's HTTP face on Ray Serve: routes only, thin.

Maps HTTP to the engine and errors to status codes in the one error shape of DESIGN §4. It must
not hold engine logic: parsing and validation are `graph.validation`, runs are
`graph.runs.RunService` (store, events, memory) over `graph.runtime.RayRunner`.

    serve run serve_app:app                      # on a running Ray / started by Serve
    python serve_app.py                          # scripts/serve: see launch.py
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the routes
# (with string annotations, `request: Request` inside the Serve class became a query field).
import asyncio
import functools
import hashlib
import json
import logging
import re
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Any, get_args

from fastapi import FastAPI, Header, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from graph import logs
from graph.auth import Authenticator
from graph.batch import read_items
from graph.batch_jobs import BatchJobs
from graph.errors import BodyTooLarge, InvalidRequest, MalformedJSON, SesameError
from graph.events import EventType
from graph.loop_monitor import LoopMonitor
from graph.runs import RunService
from graph.runtime import RayRunner
from graph.schema import (ConversationResponse, ErrorResponse, RunAccepted, RunRequest,
                          RunResponse)
from graph.settings import Settings
from graph.store import SqlStore, describe_url
from graph.validation import parse_body, validate_request
from graph.workflow import Workflow
from nodes.registry import build_registry

log = logging.getLogger("sesame.http")
HEAD_NODE = "node:__internal_head__"  # a resource only Ray's head node has

api = FastAPI(title="Sesame", version="0.1.0",
              description="Runs graphs of LLM and tool nodes on Ray. See README.md.")


def _request_id(request: Request) -> str:
    # Serve's proxy puts one on every request (the caller's X-Request-ID, or a new one) and
    # echoes it in the response headers.
    return request.headers.get("x-request-id") or uuid.uuid4().hex


def _error(request: Request, status: int, code: str, message: str,
           details: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or {}},
            "request_id": _request_id(request)}
    return JSONResponse(body, status_code=status, headers=headers)


@api.exception_handler(SesameError)
async def _sesame_error(request: Request, exc: SesameError) -> JSONResponse:
    details = {"problems": exc.problems} if isinstance(exc, InvalidRequest) else {}
    if exc.http_status >= 500:
        log.error("internal error: %s", exc.message, extra={"request_id": _request_id(request)})
    return _error(request, exc.http_status, exc.code, exc.message, details, exc.headers)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(request, exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    problems = [{"node_id": None, "field": ".".join(map(str, e["loc"])), "message": e["msg"]}
                for e in exc.errors()]
    first = problems[0]
    return _error(request, 422, "invalid_request", f"{first['field']}: {first['message']}",
                  {"problems": problems})


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"request_id": _request_id(request)})
    return _error(request, 500, "internal_error", "an internal error occurred; it is logged with "
                  "this request_id")


async def _read_body(request: Request, limit: int, setting: str = "SESAME_MAX_BODY_BYTES") -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit} ({setting})")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes ({setting})")
    return bytes(body)


def _run_answer(run: RunResponse, headers: dict[str, str] | None = None) -> Response:
    """A run as JSON, encoded by pydantic-core (json.dumps of the dumped dict was a visible
    share of the ingress loop's time under load)."""
    return Response(run.model_dump_json(), media_type="application/json", headers=headers)


def _idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= 256 or not value.isascii() or not value.isprintable():
        raise InvalidRequest("the Idempotency-Key header is invalid", [{
            "node_id": None, "field": "Idempotency-Key",
            "message": "Idempotency-Key must be 1 to 256 printable ASCII characters"}])
    return value


def _body_hash(body: Any) -> str:
    canonical = json.dumps(body, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _last_event_id(header: str | None, after: int | None) -> int:
    if header is None:
        return after or 0
    if not re.fullmatch(r"[0-9]{1,18}", header.strip()):  # an event number the store can hold
        raise InvalidRequest("the Last-Event-ID header is invalid", [{
            "node_id": None, "field": "Last-Event-ID",
            "message": f"Last-Event-ID must be the id of an event (a whole number), got {header[:40]!r}"}])
    return int(header)


def _run_urls(run_id: str, user_id: str) -> dict[str, str]:
    query = f"?user_id={_quoted(user_id)}"
    return {"run": f"/runs/{run_id}{query}", "events": f"/runs/{run_id}/events{query}",
            "cancel": f"/runs/{run_id}/cancel{query}"}


def _quoted(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 413, 422)}
_EVENTS = {"text/event-stream": {"schema": {  # one event, as an SSE parser reads it
    "type": "object", "required": ["id", "event", "data"], "properties": {
        "id": {"type": "string", "description": "the event's number in its run: 1, 2, 3, ..."},
        "event": {"type": "string", "enum": list(get_args(EventType))},
        "data": {"type": "string", "description": "JSON: run_id, seq, at and the event's fields"}}}}}
_RUN_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/RunRequest"}}}}}
# Ids in URLs obey the rules of ids in bodies (graph.validation.identifier_problem): short, no
# control characters (PostgreSQL refuses a NUL in a query parameter: that was a 500).
_ID = r"^[^\x00-\x1f\x7f-\x9f]+$"
UserId = Annotated[str, Query(min_length=1, max_length=256, pattern=_ID,
                              description="The user the run or conversation belongs to.")]
RunId = Annotated[str, Path(max_length=256, pattern=_ID)]
ConversationId = Annotated[str, Path(max_length=256, pattern=_ID)]
MAX_EVENT_SEQ = 10**18 - 1  # `after` beyond what the store's integers hold was a 500


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the request model (the body is parsed by us, not by FastAPI, so
    that duplicate keys and lone surrogates are caught before pydantic sees the JSON)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        request_schema = RunRequest.model_json_schema(ref_template="#/components/schemas/{model}")
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.update(request_schema.pop("$defs", {}))
        components["RunRequest"] = request_schema
        app.openapi_schema = schema
    return app.openapi_schema


class _HeadersServeCanRead:
    """ASGI middleware for Ray Serve's HTTP proxy, which decodes X-Request-ID, X-Session-ID and
    serve_multiplexed_model_id as UTF-8 before our app sees the request and answers a bare 500
    when one is not (Ray 2.60). Such a header is dropped (Serve makes a request id of its own)."""

    _DECODED = {b"x_request_id", b"x_session_id", b"serve_multiplexed_model_id"}

    def __init__(self, app: Any):
        self._app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            scope = {**scope, "headers": [(k, v) for k, v in scope["headers"] if self._readable(k, v)]}
        await self._app(scope, receive, send)

    def _readable(self, key: bytes, value: bytes) -> bool:
        if key.lower().replace(b"-", b"_") not in self._DECODED:
            return True
        try:
            value.decode()
        except UnicodeDecodeError:
            return False
        return True


def proxy_middlewares() -> list[Any]:
    """Loaded by Serve's HTTP proxy through `PROXY_ENVIRONMENT`."""
    from starlette.middleware import Middleware

    return [Middleware(_HeadersServeCanRead)]


# Set in the environment of the process that starts Ray (the proxy inherits it).
PROXY_ENVIRONMENT = {"RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH": "serve_app:proxy_middlewares"}


# Set before `serve.ingress`, which pickles a copy of the app; the partial travels with it.
api.openapi = functools.partial(_openapi, api)  # type: ignore[method-assign]


# The ingress owns its runs (their scheduler runs in it), so it lives on the head node: losing
# another machine then never loses a run, only the node calls in flight there (see
# graph/runtime.py). The head is where Ray's own state lives anyway.
@serve.deployment(ray_actor_options={"num_cpus": 0, "resources": {HEAD_NODE: 0.001}},
                  max_ongoing_requests=1000)
@serve.ingress(api)
class SesameIngress:
    async def __init__(self, settings_overrides: dict[str, Any] | None = None):
        logs.configure()
        self._settings = Settings(**(settings_overrides or {}))
        self._auth = Authenticator(self._settings)  # refuses to serve an open non-loopback port
        self._known_kinds = build_registry(self._settings).known()
        self._runner = RayRunner(self._settings, build_registry)
        self._runs = RunService(self._settings, self._runner, SqlStore(self._settings.database_url))
        self._batches = BatchJobs(self._runs)
        self._loop_monitor = LoopMonitor().start()  # its figures are in GET /healthz
        await self._runs.start()
        log.info("ingress ready; store %s", describe_url(self._settings.database_url))

    async def __del__(self) -> None:
        """Serve calls this on a graceful stop: runs in flight end `interrupted`, stored."""
        await self._runs.close()

    async def _workflow(self, request: Request) -> tuple[Workflow, Any]:
        limits = self._settings.limits
        body, hygiene = parse_body(await _read_body(request, self._settings.max_body_bytes), limits)
        return validate_request(body, self._known_kinds, hygiene, limits), body

    def _tenant(self, request: Request) -> str:
        return self._auth.tenant(request.headers.get("authorization"))

    async def _start(self, request: Request, idempotency_key: str | None,
                     stream_tokens: bool) -> tuple[str, Workflow, str, bool]:
        tenant = self._tenant(request)
        workflow, body = await self._workflow(request)
        key = _idempotency_key(idempotency_key)
        run_id, started = await self._runs.start_run(
            workflow, tenant, stream_tokens=stream_tokens, idempotency_key=key,
            request_hash=_body_hash(body) if key else None)
        return tenant, workflow, run_id, started

    @api.post("/", response_model=RunResponse, responses={**_ERRORS, 200: {"content": _EVENTS}},
              openapi_extra=_RUN_BODY,
              summary="Run a workflow and answer with every node's output (or stream its events)")
    async def run(self, request: Request,
                  idempotency_key: Annotated[str | None, Header()] = None) -> Any:
        streaming = "text/event-stream" in request.headers.get("accept", "")
        tenant, workflow, run_id, started = await self._start(request, idempotency_key, streaming)
        replayed = {} if started else {"Idempotent-Replayed": "true"}
        if streaming:
            return self._event_stream(tenant, run_id, workflow.user_id, 0, cancel_on_disconnect=started,
                                      headers=replayed)
        try:
            response = await self._runs.result(run_id)
        except asyncio.CancelledError:  # the client went away: so does its run
            if started:
                self._runs.cancel_on_disconnect(run_id)
            raise
        log.info("run %s %s in %.1f ms", run_id, response.status, response.duration_ms,
                 extra={"run_id": run_id, "request_id": _request_id(request)})
        return _run_answer(response, replayed)

    @api.post("/runs", status_code=202, response_model=RunAccepted, responses=_ERRORS,
              openapi_extra=_RUN_BODY, summary="Start a workflow in the background")
    async def start_run(self, request: Request,
                        idempotency_key: Annotated[str | None, Header()] = None) -> JSONResponse:
        tenant, workflow, run_id, started = await self._start(request, idempotency_key, True)
        urls = _run_urls(run_id, workflow.user_id)
        accepted = RunAccepted(run_id=run_id, status=(await self._runs.get(
            run_id, tenant, workflow.user_id)).status, urls=urls)
        headers = {"Location": urls["run"], **({} if started else {"Idempotent-Replayed": "true"})}
        return JSONResponse(accepted.model_dump(mode="json"), status_code=202, headers=headers)

    @api.get("/runs/{run_id}", response_model=RunResponse, responses=_ERRORS,
             summary="A run as it stands (the same shape as POST /)")
    async def get_run(self, request: Request, run_id: RunId, user_id: UserId) -> Response:
        run = await self._runs.get(run_id, self._tenant(request), user_id)
        return _run_answer(run)

    @api.get("/runs/{run_id}/events", responses={**_ERRORS, 200: {"content": _EVENTS}},
             response_class=StreamingResponse,
             summary="The run's events as Server-Sent Events (resumable with Last-Event-ID)")
    async def run_events(self, request: Request, run_id: RunId, user_id: UserId,
                         last_event_id: Annotated[str | None, Header()] = None,
                         after: Annotated[int | None, Query(ge=0, le=MAX_EVENT_SEQ)] = None) -> StreamingResponse:
        tenant = self._tenant(request)
        after_seq = _last_event_id(last_event_id, after)
        await self._runs.get(run_id, tenant, user_id)  # a 404 before the stream starts
        return self._event_stream(tenant, run_id, user_id, after_seq, cancel_on_disconnect=False)

    @api.post("/runs/{run_id}/cancel", response_model=RunResponse, responses=_ERRORS,
              summary="Cancel a run; answers with the run once it stopped")
    async def cancel_run(self, request: Request, run_id: RunId, user_id: UserId) -> Response:
        run = await self._runs.cancel(run_id, self._tenant(request), user_id)
        return _run_answer(run)

    @api.post("/batch", status_code=202, responses=_ERRORS,
              openapi_extra={"requestBody": {"required": True, "content": {"application/x-ndjson": {
                  "schema": {"type": "string", "description": "JSON Lines: one POST / body per line"}}}}},
              summary="Run many workflows (JSON Lines, one request per line) in the background")
    async def start_batch(self, request: Request,
                          concurrency: Annotated[int, Query(ge=1, le=1000)] = 16) -> JSONResponse:
        tenant = self._tenant(request)
        raw = await _read_body(request, self._settings.max_batch_bytes, "SESAME_MAX_BATCH_BYTES")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedJSON(f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 JSON Lines") from None
        items = list(read_items(text.splitlines(), self._known_kinds, limits=self._settings.limits))
        if not items:
            raise InvalidRequest("the batch is empty", [{"node_id": None, "field": "(body)",
                                                        "message": "send one request (a POST / body) per line"}])
        job = self._batches.start(items, tenant, min(concurrency, self._settings.max_runs_per_user))
        return JSONResponse({"batch_id": job.batch_id, "total": len(items),
                             "invalid": self._batches.invalid(items),
                             "urls": {"batch": f"/batch/{job.batch_id}"}}, status_code=202,
                            headers={"Location": f"/batch/{job.batch_id}"})

    @api.get("/batch/{batch_id}", responses=_ERRORS, summary="A batch's progress and its runs")
    async def get_batch(self, request: Request, batch_id: str) -> JSONResponse:
        return JSONResponse(self._batches.get(batch_id, self._tenant(request)).view())

    @api.get("/conversations/{conversation_id}", response_model=ConversationResponse,
             responses=_ERRORS, summary="The turns of a conversation, oldest first")
    async def conversation(self, request: Request, conversation_id: ConversationId, user_id: UserId) -> JSONResponse:
        turns = await self._runs.conversation(self._tenant(request), user_id, conversation_id)
        return JSONResponse(turns.model_dump(mode="json"))

    def _event_stream(self, tenant: str, run_id: str, user_id: str, after_seq: int, *,
                      cancel_on_disconnect: bool, headers: dict[str, str] | None = None) -> StreamingResponse:
        async def stream() -> AsyncIterator[str]:
            finished = False
            try:
                async for event in self._runs.events(run_id, tenant, user_id, after_seq,
                                                     self._settings.sse_keepalive_s):
                    if event is None:
                        yield ": keep-alive\n\n"
                        continue
                    finished = event.type == "run_finished"
                    yield event.as_sse()
            finally:
                if cancel_on_disconnect and not finished:
                    self._runs.cancel_on_disconnect(run_id)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={
            "Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})

    @api.get("/healthz", summary="Liveness: the ingress and every node worker answer")
    async def healthz(self, request: Request) -> JSONResponse:
        try:
            placements = await self._runner.placements(timeout_s=5.0)
        except Exception as exc:  # a dead or hung worker is a 503, not a 500
            return _error(request, 503, "workers_unavailable", f"node workers did not answer ({type(exc).__name__})")
        return JSONResponse({"status": "ok", "workers": len(placements),
                             "ray_nodes": len({p.ray_node_id for p in placements}),
                             "event_loop": self._loop_monitor.snapshot()})


def app_builder(args: dict[str, Any]) -> serve.Application:
    """`serve run serve_app:app_builder key=value ...` sets Settings fields for this app."""
    return SesameIngress.bind(dict(args))


app = SesameIngress.bind()


if __name__ == "__main__":  # what scripts/serve runs; the launcher is its own module
    from launch import main

    main()
