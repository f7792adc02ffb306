"""Sesame's HTTP face on Ray Serve: routes only, thin.

Maps HTTP to the engine (`graph.engine.run_workflow`) and errors to status codes in the one
error shape of DESIGN §4. It must not hold engine logic: parsing and validation are
`graph.validation`, running is `graph.engine` on a `graph.runtime.RayRunner`.

    serve run serve_app:app                      # on a running Ray / started by Serve
    python serve_app.py                          # local Ray + Serve on SESAME_HOST:SESAME_PORT
"""

# No `from __future__ import annotations` here: FastAPI must see real types on the routes
# (with string annotations, `request: Request` inside the Serve class became a query field).
import functools
import logging
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from ray import serve
from starlette.exceptions import HTTPException

from graph.engine import run_workflow
from graph.errors import BodyTooLarge, InvalidRequest, SesameError
from graph.loop_monitor import LoopMonitor
from graph.runtime import RayRunner
from graph.schema import ErrorResponse, RunRequest, RunResponse
from graph.settings import Settings
from graph.validation import parse_body, validate_request
from nodes.registry import build_registry

log = logging.getLogger("sesame.http")

api = FastAPI(title="Sesame", version="0.1.0",
              description="Runs graphs of LLM and tool nodes on Ray. See README.md.")


def _error(request: Request, status: int, code: str, message: str,
           details: dict[str, Any] | None = None) -> JSONResponse:
    request_id = getattr(request.state, "request_id", None) or uuid.uuid4().hex
    body = {"error": {"code": code, "message": message, "details": details or {}},
            "request_id": request_id}
    return JSONResponse(body, status_code=status, headers={"X-Request-ID": request_id})


@api.middleware("http")
async def _request_id(request: Request, call_next):  # noqa: ANN001, ANN202
    request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
    response = await call_next(request)
    response.headers["X-Request-ID"] = request.state.request_id
    return response


@api.exception_handler(SesameError)
async def _sesame_error(request: Request, exc: SesameError) -> JSONResponse:
    details = {"problems": exc.problems} if isinstance(exc, InvalidRequest) else {}
    if exc.http_status >= 500:
        log.error("internal error: %s", exc.message, extra={"request_id": request.state.request_id})
    return _error(request, exc.http_status, exc.code, exc.message, details)


@api.exception_handler(HTTPException)
async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(request, exc.status_code, code, f"{request.method} {request.url.path}: {exc.detail}")


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return _error(request, 422, "invalid_request", "the request is invalid",
                  {"problems": [{"field": ".".join(map(str, e["loc"])), "message": e["msg"]}
                                for e in exc.errors()]})


@api.exception_handler(Exception)
async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error", extra={"request_id": getattr(request.state, "request_id", None)})
    return _error(request, 500, "internal_error", "an internal error occurred; it is logged with "
                  "this request_id")


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"the body is {declared} bytes; the limit is {limit} (SESAME_MAX_BODY_BYTES)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise BodyTooLarge(f"the body is over the limit of {limit} bytes (SESAME_MAX_BODY_BYTES)")
    return bytes(body)


_ERRORS = {status: {"model": ErrorResponse} for status in (400, 413, 422)}
_RUN_BODY = {"requestBody": {"required": True, "content": {"application/json": {
    "schema": {"$ref": "#/components/schemas/RunRequest"}}}}}


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


# Set before `serve.ingress`, which pickles a copy of the app; the partial travels with it.
api.openapi = functools.partial(_openapi, api)  # type: ignore[method-assign]


@serve.deployment(ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
@serve.ingress(api)
class SesameIngress:
    def __init__(self, settings_overrides: dict[str, Any] | None = None):
        self._settings = Settings(**(settings_overrides or {}))
        self._known_kinds = build_registry(self._settings).known()
        self._runner = RayRunner(self._settings, build_registry)
        self._loop_monitor = LoopMonitor().start()  # its figures are in GET /healthz

    @api.post("/", response_model=RunResponse, responses=_ERRORS, openapi_extra=_RUN_BODY,
              summary="Run a workflow and answer with every node's output")
    async def run(self, request: Request) -> JSONResponse:
        body, hygiene = parse_body(await _read_body(request, self._settings.max_body_bytes))
        workflow = validate_request(body, self._known_kinds, hygiene)
        response = await run_workflow(workflow, self._runner)
        log.info("run %s %s in %.1f ms", response.run_id, response.status, response.duration_ms,
                 extra={"run_id": response.run_id, "request_id": request.state.request_id})
        return JSONResponse(response.model_dump(mode="json"))

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


def main() -> None:
    import ray

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings = Settings()
    ray.init(address=settings.ray_address, include_dashboard=False)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(app, blocking=True)


if __name__ == "__main__":
    main()
