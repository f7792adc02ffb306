"""Everything the bench knows about Sesame's insides, in one place — the engine is changing
(run store, events, cancellation), so this is the one file to update when its API moves.

- `NodeCode`: the work a Sesame worker actor does for one node (`graph.worker.execute_task`
  over the `nodes/` kinds), callable in-process. The plain-asyncio and LangGraph engines call
  it, so every engine runs the same node code and only the engines differ.
- `SesameLocal`, `SesameRay`, `SesameHTTP`: Sesame through `graph.engine.run_workflow` on an
  in-process runner, on the Ray actor pool (the Python/batch entry point), and over HTTP (Serve).
- `start_ray`, `start_serve`: a local Ray cluster and the Serve app, for the engine process.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engines import RunFailed
from bench.graphs import CONVERSATION_MARK, BenchGraph, with_conversation
from graph.engine import run_workflow
from graph.kinds import RunContext
from graph.scheduler import as_text
from graph.schema import NodeResult, RunResponse, ToolNodeSpec
from graph.settings import Settings
from graph.validation import validate_request
from graph.worker import LocalRunner, NodeTask, execute_task
from graph.workflow import Workflow
from nodes.registry import build_registry


def settings(**overrides: Any) -> Settings:
    """Settings as the server would read them (env), plus overrides."""
    return Settings(**overrides)


class NodeCode:
    """One node's work, exactly as a worker actor does it; inputs joined as the scheduler does."""

    def __init__(self, config: Settings):
        self.settings = config
        self._registry = build_registry(config)
        self._registry.warm_up()

    def workflow(self, graph: BenchGraph) -> Workflow:
        return validate_request(graph.body, self._registry.known())

    @staticmethod
    def context(workflow: Workflow, conversation_id: str) -> RunContext:
        return RunContext(run_id=f"run_{conversation_id}", user_id=workflow.user_id,
                          conversation_id=conversation_id)

    async def run(self, workflow: Workflow, context: RunContext, node_id: str,
                  parents: dict[str, NodeResult]) -> NodeResult:
        spec = workflow.nodes[node_id]
        if isinstance(spec, ToolNodeSpec):
            calls = tuple(call for result in parents.values() for call in result.tool_calls
                          if call.node_id == node_id)
            task = NodeTask(spec=spec, context=context, calls=calls)
        else:
            prompt = ("\n\n".join(as_text(parents[p].output) for p in workflow.parents[node_id])
                      if workflow.parents[node_id] else workflow.user_query)
            task = NodeTask(spec=spec, context=context, prompt=prompt, system_prompt=spec.system_prompt or None,
                            tools=tuple(workflow.tool_children(node_id)))
        result = await execute_task(self._registry, self.settings, task)
        if result.status != "succeeded":
            raise RunFailed(f"node {node_id} {result.status}: {result.error}")
        return result


def _check(response: RunResponse) -> None:
    if response.status != "succeeded":
        failed = {k: (n.status, n.error) for k, n in response.nodes.items() if n.status != "succeeded"}
        raise RunFailed(f"run {response.status}: {dict(list(failed.items())[:3])}")


class SesameLocal:
    """Sesame's scheduler with the nodes run in this process (`LocalRunner`): no Ray."""

    name = "sesame-local"

    def __init__(self, config: Settings):
        self._registry = build_registry(config)
        self._registry.warm_up()
        self._runner = LocalRunner(self._registry, config)

    async def start(self) -> None:
        pass

    async def prepare(self, graph: BenchGraph) -> BenchGraph:
        return graph

    async def run(self, graph: BenchGraph, conversation_id: str) -> None:
        workflow = validate_request(with_conversation(graph.body, conversation_id), self._registry.known())
        _check(await run_workflow(workflow, self._runner))

    async def loop_snapshot(self) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        pass


class SesameRay(SesameLocal):
    """The Python/batch entry point: validate, then `run_workflow` on the Ray actor pool.
    Needs `ray.init` done."""

    name = "sesame-ray"

    def __init__(self, config: Settings):
        from graph.runtime import RayRunner

        self._registry = build_registry(config)
        self._runner = RayRunner(config, build_registry)

    async def start(self) -> None:
        await self._runner.placements(timeout_s=120)  # the actors are up


class SesameHTTP:
    """`POST /` on the Serve endpoint, one request per run. The client is aiohttp (its parser is
    C): with httpx the load generator itself took ~16 ms of CPU per workflow on the same two
    cores as the cluster it was measuring."""

    name = "sesame-http"

    def __init__(self, url: str):
        self._url = url
        self._http: Any = None

    async def start(self) -> None:
        import aiohttp

        self._http = aiohttp.ClientSession(
            self._url, connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None),
            timeout=aiohttp.ClientTimeout(total=300))
        deadline = time.monotonic() + 120
        while True:
            try:
                async with self._http.get("/healthz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the Serve endpoint did not become healthy within 120 s")
            await asyncio.sleep(0.5)

    async def prepare(self, graph: BenchGraph) -> bytes:
        return json.dumps(graph.body).encode()

    async def run(self, body: bytes, conversation_id: str) -> None:
        data = body.replace(json.dumps(CONVERSATION_MARK).encode(), json.dumps(conversation_id).encode())
        async with self._http.post("/", data=data, headers={"content-type": "application/json"}) as response:
            content = await response.read()
        if response.status != 200:
            raise RunFailed(f"HTTP {response.status}: {content[:300]!r}")
        answer = json.loads(content)
        if answer["status"] != "succeeded":
            raise RunFailed(f"run {answer['status']}: {content[:300]!r}")

    async def loop_snapshot(self) -> dict[str, Any] | None:
        """The ingress replica's event-loop figures (graph.loop_monitor, in GET /healthz)."""
        async with self._http.get("/healthz") as response:
            return (await response.json()).get("event_loop")

    async def close(self) -> None:
        await self._http.close()


def start_ray(direct_port: int | None = None) -> None:
    """A local Ray; with `direct_port`, set up as `scripts/serve` sets it up (launch.py): Serve's
    throughput mode with the ingress replica answering on that port itself."""
    import os

    import ray

    from launch import direct_environment

    if direct_port is not None:
        os.environ.update(direct_environment(direct_port))
    # "local": never join another Ray instance that happens to run on this machine.
    ray.init(address="local", include_dashboard=False, log_to_driver=False)


def stop_ray() -> None:
    import ray

    ray.shutdown()


def start_serve(proxy_port: int, direct_port: int) -> str:
    """The app as `scripts/serve` deploys it; answers the URL users would call (the replica's
    own port)."""
    from ray import serve

    from serve_app import app_builder

    serve.start(http_options={"host": "127.0.0.1", "port": proxy_port})
    # Every bench run is one user's: the per-user cap (a fairness limit) must not shape the load.
    # The store is a fresh SQLite file, as `scripts/serve` uses by default.
    store = Path(tempfile.mkdtemp(prefix="sesame-bench-store-")) / "sesame.db"
    serve.run(app_builder({"database_url": f"sqlite:///{store}", "max_runs_per_user": 1_000_000}),
              name="sesame", route_prefix="/")
    return f"http://127.0.0.1:{direct_port}"


def stop_serve() -> None:
    from ray import serve

    serve.shutdown()
