"""Where Ray lives: a pool of async node-worker actors and the runner that sends nodes to them.

Why actors and not one Ray task per node (measured, see docs/execution.md and docs/facts.md): a plain
task reserves a CPU (20 parallel 0.5 s calls took 5 s on 2 CPUs), and with `num_cpus=0` every
in-flight task needs its own ~100 MB worker process. LLM and tool calls are I/O-bound, so a few
async actors (`num_cpus=0`, high `max_concurrency`), spread over the cluster, hold thousands of
in-flight nodes as coroutines for ~1–2 ms a hop.

Each actor builds its own node kinds from the settings and the registry factory it is handed, so
`graph/` never imports `nodes/`. Ray has no per-call timeout: the runner bounds every call with
`asyncio.wait_for` and `ray.cancel`s what it stops waiting for, including on cancellation.

A node whose tokens are wanted runs through `NodeWorker.run_streaming`, a Ray streaming
generator: text arrives in chunks gathered for up to `_TOKEN_FLUSH_S` (each chunk is an object
in Ray's store, ~0.7 ms), then the `NodeResult`. A streamed call costs ~2 ms against ~1 ms for
a plain one (measured), so runs nobody watches use the plain call.

Workers are spread over the cluster with Ray's `SPREAD` strategy, which needs the actor to ask
for *some* resource: with none at all Ray puts it on a random node whatever the strategy
(measured, 6 actors on 3 nodes: 4/1/1 with `num_cpus=0` alone, 2/2/2 with one byte of `memory`
as well; 4 actors on 2 nodes landed 2/2, 3/1, 1/3 and 0/4 in four tries without it).

Workers die (their process crashes, their machine is stopped). Ray restarts a dead worker
(`max_restarts=-1`; on another node if its node is gone), and the runner sends
the node that was on it to another worker when that is safe: an LLM node or a preflight check
(a repeated model call has no effect outside), never a Tool node, whose call may already have
reached the provider — that node fails with `worker_died` (in a chain, the LLM nodes before the
Tool are resent on their own; `run_chain`). A worker that just failed is passed
over for `_SUSPECT_S`: after a machine crash its actors look alive until Ray notices (~15 s).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import ray
from ray.exceptions import RayActorError, RayError

from graph import logs
from graph.kinds import RegistryFactory, RunContext
from graph.schema import ActionRequired, ErrorInfo, LLMNodeSpec, NodeResult, NodeSpec, Placement
from graph.settings import Settings
from graph.task import Chain, NodeTask
from graph.worker import TokenCallback, execute_chain, execute_task, node_timeout_s, preflight_nodes

log = logging.getLogger(__name__)

# Time on top of the node timeout for the actor itself to answer (queueing, serialization).
_GRACE_S = 5.0
# How long a worker gathers tokens before sending them on as one chunk.
_TOKEN_FLUSH_S = 0.03
# How many workers a node (or a preflight check) is sent to before worker deaths fail it.
_WORKER_ATTEMPTS = 3
# How long a worker whose call failed on Ray is passed over (while it restarts, or until Ray
# notices that its machine is gone).
_SUSPECT_S = 30.0


@dataclass(frozen=True)
class TokenChunk:
    """Text generated since the last chunk, as `(attempt, text)` pieces in order."""

    pieces: tuple[tuple[int, str], ...]


class NodeWorker:
    """The actor body (wrapped with `ray.remote` by `RayRunner`)."""

    def __init__(self, settings: Settings, registry_factory: RegistryFactory):
        logs.configure()
        self._settings = settings
        self._registry = registry_factory(settings)
        self._threads: ThreadPoolExecutor | None = None
        threading.Thread(target=self._registry.warm_up, name="warm-up", daemon=True).start()
        context = ray.get_runtime_context()
        self._placement = Placement(ray_node_id=context.get_node_id(),
                                    actor_id=context.get_actor_id() or "", pid=os.getpid())

    def _use_own_threads(self) -> None:
        """Blocking SDKs run via `asyncio.to_thread`, whose default pool has min(32, cpus + 4)
        threads: 6 on two cores, which would cap a worker at 6 concurrent Composio calls."""
        if self._threads is None:
            self._threads = ThreadPoolExecutor(self._settings.worker_threads, thread_name_prefix="sdk")
            asyncio.get_running_loop().set_default_executor(self._threads)

    # Task events off: Ray would record every node call for its state API and keep them in the
    # GCS (~3 KB each, up to 100,000) — measured as the GCS's growth under load (bench/RESULTS.md).
    @ray.method(enable_task_events=False)
    async def run(self, task: NodeTask) -> NodeResult:
        self._use_own_threads()
        return await execute_task(self._registry, self._settings, task, self._placement)

    @ray.method(enable_task_events=False)
    async def run_chain(self, chain: Chain) -> list[NodeResult]:
        self._use_own_threads()
        return await execute_chain(self._registry, self._settings, chain, self._placement)

    @ray.method(enable_task_events=False)
    async def run_streaming(self, task: NodeTask) -> AsyncIterator[TokenChunk | NodeResult]:
        """Yields `TokenChunk`s while the node runs, then its `NodeResult`."""
        self._use_own_threads()
        pieces: list[tuple[int, str]] = []
        arrived = asyncio.Event()

        def on_token(text: str, attempt: int) -> None:
            pieces.append((attempt, text))
            arrived.set()

        job = asyncio.ensure_future(execute_task(self._registry, self._settings, task,
                                                 self._placement, on_token))
        try:
            while not job.done():
                waiter = asyncio.ensure_future(arrived.wait())
                await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                if not job.done():
                    await asyncio.wait({job}, timeout=_TOKEN_FLUSH_S)  # gather a few more
                arrived.clear()
                if pieces:
                    chunk = TokenChunk(tuple(pieces))
                    pieces.clear()  # before yielding: tokens may arrive while the chunk is sent
                    yield chunk
            yield job.result()
        finally:
            job.cancel()

    @ray.method(enable_task_events=False)
    async def preflight(self, specs: list[NodeSpec], context: RunContext) -> list[ActionRequired]:
        self._use_own_threads()
        return await preflight_nodes(self._registry, specs, context)

    async def placement(self) -> Placement:
        return self._placement


class RayRunner:
    """Sends nodes to a pool of `settings.workers` actors, round robin. Needs `ray.init` done."""

    def __init__(self, settings: Settings, registry_factory: RegistryFactory):
        self._settings = settings
        actor = ray.remote(NodeWorker).options(
            num_cpus=0, memory=1, max_concurrency=settings.worker_concurrency, max_restarts=-1,
            scheduling_strategy="SPREAD")
        self._workers = [actor.remote(settings, registry_factory) for _ in range(settings.workers)]
        self._failed_at = [float("-inf")] * len(self._workers)
        self._turn = itertools.count()

    def _next_worker(self) -> int:
        """The next worker round robin, passing over those that failed lately (unless all did)."""
        now = time.monotonic()
        for _ in range(len(self._workers)):
            index = next(self._turn) % len(self._workers)
            if now - self._failed_at[index] >= _SUSPECT_S:
                break
        return index

    async def placements(self, timeout_s: float = 10.0) -> list[Placement]:
        """Where each worker lives; raises TimeoutError if one does not answer in time."""
        refs = [worker.placement.remote() for worker in self._workers]
        return list(await asyncio.wait_for(asyncio.gather(*refs), timeout_s))

    async def preflight(self, specs: list[NodeSpec], context: RunContext) -> list[ActionRequired]:
        """All of a run's checks in one actor call (one hop per run, not one per node)."""
        timeout_s = self._settings.tool_timeout_s + _GRACE_S
        for _ in range(_WORKER_ATTEMPTS):
            index = self._next_worker()
            try:
                return await self._bounded(self._workers[index].preflight.remote(specs, context), timeout_s)
            except RayActorError as exc:  # a check has no effect outside: ask another worker
                self._failed_at[index] = time.monotonic()
                failure: Exception = exc
            except (TimeoutError, RayError) as exc:
                failure = exc
                break
        return [ActionRequired(node_id=spec.id, kind="preflight_failed",
                               message=f"checking node {spec.id!r} did not complete "
                                       f"({type(failure).__name__}); try again") for spec in specs]

    async def run(self, task: NodeTask, on_token: TokenCallback | None = None) -> NodeResult:
        timeout_s = node_timeout_s(task.spec, self._settings) + _GRACE_S

        async def send(index: int, lost: int) -> list[NodeResult]:
            if on_token is None:
                return [await self._bounded(self._workers[index].run.remote(task), timeout_s)]
            return [await self._streamed(index, task, on_token, lost, timeout_s)]

        [result] = await self._send(task, [task.spec], timeout_s, send)
        return result

    async def run_chain(self, chain: Chain) -> list[NodeResult]:
        """A node and the nodes after it in one actor call (graph.worker's `execute_chain`).

        A chain holding a Tool node whose worker dies is not sent again whole: the Tool's call
        may have reached its provider. The LLM nodes before it are (a repeated model call has no
        effect outside), and the Tool fails with `worker_died`, not retryable — as when the two
        go in separate trips and the worker dies under the Tool."""
        timeout_s = sum(node_timeout_s(spec, self._settings) for spec in chain.specs) + _GRACE_S

        async def send(index: int, lost: int) -> list[NodeResult]:
            return await self._bounded(self._workers[index].run_chain.remote(chain), timeout_s)

        async def salvage(lost: int) -> list[NodeResult]:
            tool_at = next(i for i, spec in enumerate(chain.specs) if not isinstance(spec, LLMNodeSpec))
            before: list[NodeResult] = []
            if tool_at == 1:
                before = [await self.run(chain.first)]
            elif tool_at > 1:
                before = await self.run_chain(replace(chain, steps=chain.steps[:tool_at - 1]))
            if before:
                before[0] = before[0].model_copy(update={"attempts": before[0].attempts + lost})
            if tool_at and (len(before) < tool_at or before[-1].status != "succeeded"):
                return before  # the chain stops there anyway: the Tool would not have run
            tool = chain.specs[tool_at]
            return [*before, NodeResult(
                id=tool.id, name=tool.name, type=tool.type, status="failed", attempts=lost,
                error=ErrorInfo(code="worker_died", retryable=False, message=(
                    f"the worker running tool node {tool.id!r} died (it went in one trip from node "
                    f"{chain.first.spec.id!r}); its calls may have reached the provider, so they were not repeated")))]

        return await self._send(chain.first, chain.specs, timeout_s, send, salvage)

    async def _send(self, first: NodeTask, specs: list[NodeSpec], timeout_s: float,
                    send: Callable[[int, int], Awaitable[list[NodeResult]]],
                    salvage: Callable[[int], Awaitable[list[NodeResult]]] | None = None) -> list[NodeResult]:
        """`send(worker, lost)` to a worker; if the worker dies, to another one — as long as
        every node sent is an LLM node (a tool call may already have reached its provider);
        otherwise `salvage(lost)`, when given, answers. A trip that times out or fails on Ray
        with a Tool node among several is not retryable: the Tool may have run."""
        started = time.time()
        lost = 0  # attempts lost with workers that died under the node
        tools = [spec.id for spec in specs if not isinstance(spec, LLMNodeSpec)]  # calls may have gone out
        while True:
            index = self._next_worker()
            try:
                results = await send(index, lost)
                if lost:
                    results = [_with_lost_attempts(results[0], lost, started), *results[1:]]
                return results
            except TimeoutError:
                error = ErrorInfo(code="node_timeout", retryable=True,
                                  message=f"node {first.spec.id!r} got no answer from its worker within "
                                          f"{timeout_s:g} s")
            except RayActorError as exc:
                self._failed_at[index] = time.monotonic()
                lost += 1
                resend = not tools and lost < _WORKER_ATTEMPTS
                log.warning("node %s: its worker died (%s)%s", first.spec.id, type(exc).__name__,
                            "; sending it to another worker" if resend else "",
                            extra={"run_id": first.context.run_id})
                if resend:
                    continue
                if salvage is not None and tools:
                    return await salvage(lost)
                error = _worker_died(first, lost)
            except RayError as exc:
                log.exception("node %s: Ray error", first.spec.id, extra={"run_id": first.context.run_id})
                error = ErrorInfo(code="runtime_error", retryable=True,
                                  message=f"node {first.spec.id!r} could not be run on Ray ({type(exc).__name__})")
            break
        along = [tool for tool in tools if tool != first.spec.id]  # tools in the trip after `first`
        if along and error.code != "worker_died":
            error = error.model_copy(update={"retryable": False, "message": (
                f"{error.message}; tool node {along[0]!r} went in the same trip and may have reached "
                "its provider, so nothing was repeated")})
        finished = time.time()
        spec = first.spec
        return [NodeResult(id=spec.id, name=spec.name, type=spec.type, status="failed", error=error,
                           started_at=started, finished_at=finished, attempts=max(lost, 1),
                           duration_ms=round((finished - started) * 1000, 3))]

    async def _streamed(self, index: int, task: NodeTask, on_token: TokenCallback, lost: int,
                        timeout_s: float) -> NodeResult:
        chunks = self._workers[index].run_streaming.options(num_returns="streaming").remote(task)
        try:
            async with asyncio.timeout(timeout_s):
                async for ref in chunks:
                    item = await ref
                    if isinstance(item, NodeResult):
                        return item
                    for attempt, text in item.pieces:
                        on_token(text, attempt + lost)  # a resent node streams as a later attempt
        except BaseException:
            ray.cancel(chunks)
            raise
        raise RayError(f"the worker streaming node {task.spec.id!r} ended without a result")

    @staticmethod
    async def _bounded(ref: ray.ObjectRef, timeout_s: float):  # noqa: ANN205
        """Await an actor call for at most `timeout_s`; cancel it on Ray if we stop waiting."""
        try:
            return await asyncio.wait_for(ref, timeout_s)
        except BaseException:
            ray.cancel(ref)
            raise


def _with_lost_attempts(result: NodeResult, lost: int, started: float) -> NodeResult:
    """A node resent after its worker died: it started on the first worker, and counts the
    attempts lost with the dead ones."""
    duration = None if result.finished_at is None else round((result.finished_at - started) * 1000, 3)
    return result.model_copy(update={"attempts": result.attempts + lost, "started_at": started,
                                     "duration_ms": duration})


def _worker_died(task: NodeTask, lost: int) -> ErrorInfo:
    node_id = task.spec.id
    if isinstance(task.spec, LLMNodeSpec):
        return ErrorInfo(code="worker_died", retryable=True,
                         message=f"the workers running node {node_id!r} died {lost} times; run again")
    return ErrorInfo(code="worker_died", retryable=False,
                     message=f"the worker running tool node {node_id!r} died mid-call; its calls may "
                             "have reached the provider, so they were not repeated")
