"""One real local Ray + Serve for the whole session, real HTTP, real SDKs against loopback stubs.

Environment variables are set before `ray.init` so the workers and replicas inherit them
(docs/facts.md). Two Serve apps share the cluster: `/` is configured like a real deployment (keys,
Composio auth config), `/bare/` has no Composio key and no auth config, for the preflight cases.
"""

from __future__ import annotations

import json
import os
import socket

import httpx
import pytest

from tests.stubs.composio_stub import ComposioStub
from tests.stubs.openai_stub import OpenAIStub

OPENAI_KEY = "sk-env-canary-5d1f0e7b9a3c"  # also the canary of the secret test: it must never leak
COMPOSIO_KEY = "test-composio-key"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def openai_stub():
    stub = OpenAIStub().start()
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def composio_stub():
    stub = ComposioStub(api_key=COMPOSIO_KEY).start()
    yield stub
    stub.stop()


@pytest.fixture(scope="session")
def database_file(tmp_path_factory):
    return tmp_path_factory.mktemp("store") / "sesame.db"


@pytest.fixture(scope="session")
def sesame_url(openai_stub, composio_stub, database_file):
    import ray
    from ray import serve

    from launch import THROUGHPUT_ENVIRONMENT
    from serve_app import PROXY_ENVIRONMENT, app_builder

    # As scripts/serve runs it: Serve's throughput mode, each app's replica answering on a port of
    # its own (the main app's is `direct_url`); Serve's proxy routes the prefixes at `sesame_url`.
    window = _free_window(40)
    os.environ.update({"OPENAI_BASE_URL": openai_stub.base_url, "OPENAI_API_KEY": OPENAI_KEY,
                       "COMPOSIO_BASE_URL": composio_stub.base_url, "COMPOSIO_API_KEY": COMPOSIO_KEY,
                       **PROXY_ENVIRONMENT, **THROUGHPUT_ENVIRONMENT,
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "0.5",
                       "RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT": str(window),
                       "RAY_SERVE_DIRECT_INGRESS_MAX_HTTP_PORT": str(window + 40)})
    port = _free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    store = f"sqlite:///{database_file}"
    # Tests change who is connected in the Composio stub from one test to the next, so the main
    # app asks Composio every run (the cache itself is proven in tests/unit/test_tool_composio.py).
    serve.run(app_builder({"composio_auth_configs": {"gmail": "ac_gmail"}, "database_url": store,
                           "heartbeat_s": 0.5, "composio_connection_cache_s": 0}),
              name="main", route_prefix="/")
    serve.run(app_builder({"composio_api_key": None, "database_url": store, "heartbeat_s": 0.5}),
              name="bare", route_prefix="/bare")
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="session")
def direct_url(sesame_url):
    """The main app's replica itself (Serve's direct ingress): what a user of scripts/serve hits."""
    window = int(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_HTTP_PORT"])
    for port in range(window, window + 40):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200 and \
                    "agent_config" in httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=5).text:
                return f"http://127.0.0.1:{port}"
        except httpx.HTTPError:
            continue
    raise RuntimeError("no replica answers in the direct-ingress port window")


def _free_window(size: int) -> int:
    """The first port of `size` consecutive free loopback ports."""
    while True:
        start = _free_port()
        if start + size < 65000 and all(_port_free(p) for p in range(start, start + size)):
            return start


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture
def client(direct_url, openai_stub, composio_stub):
    """Talks to the main app as users do: straight to its replica."""
    openai_stub.reset()
    composio_stub.reset()
    with httpx.Client(base_url=direct_url, timeout=60) as http:
        yield http


def sse_events(response: httpx.Response, limit: int | None = None) -> list[dict]:
    """Parse a text/event-stream response into `{"id", "event", "data"}` dicts (keep-alive
    comments skipped); stops after `limit` events, leaving the rest of the stream unread."""
    events: list[dict] = []
    current: dict = {}
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if current:
                events.append(current)
                current = {}
                if limit is not None and len(events) >= limit:
                    break
            continue
        name, _, value = line.partition(": ")
        current[name] = int(value) if name == "id" else json.loads(value) if name == "data" else value
    return events
