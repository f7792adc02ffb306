"""The dependency-driven scheduler (DESIGN §3, §5).

A node starts the moment its last parent succeeds — no layers, no barriers; independent branches
run at once. A node whose parent did not succeed is `skipped` at once, with the reason, and so is
everything below it; other branches go on. A Tool child of an LLM runs only the calls the LLM
routed to it (none → `skipped`, which does not fail the run).

The scheduler renders each node's inputs here, in the caller's event loop, and hands a ready
`NodeTask` to a `NodeRunner`: where the work actually runs (Ray actors, or this process) is the
runner's business. A node followed by nodes that wait for nothing else goes as one `Chain`
(`graph.worker.execute_chain`): one trip for all of them, unless the run streams tokens to a watcher. If the
run is cancelled, every node still in flight is cancelled with it. Progress (a node started, a
token, a node finished) goes to a `RunObserver` as it happens.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Protocol

from graph.errors import PromptTooLarge
from graph.kinds import RunContext, Turn
from graph.schema import ErrorInfo, LLMNodeSpec, NodeId, NodeResult, ToolCall, ToolNodeSpec
from graph.task import Chain, ChainStep, NodeTask
from graph.tasks import Inputs, action_task, as_text, llm_task, referenced, routed_task, too_large
from graph.worker import NodeRunner
from graph.workflow import Workflow

__all__ = ["NO_TOOL_CALL", "RunObserver", "RunOptions", "Scheduler", "SilentObserver", "as_text"]

NO_TOOL_CALL = "no_tool_call"


class RunObserver(Protocol):
    """Hears a run's progress. Called from the scheduler's event loop; must not block."""

    def node_started(self, node_id: NodeId) -> None: ...

    def token(self, node_id: NodeId, text: str, attempt: int) -> None: ...

    def node_finished(self, result: NodeResult) -> None: ...


class SilentObserver:
    def node_started(self, node_id: NodeId) -> None:
        pass

    def token(self, node_id: NodeId, text: str, attempt: int) -> None:
        pass

    def node_finished(self, result: NodeResult) -> None:
        pass


@dataclass(frozen=True)
class RunOptions:
    """How to run: `history` is the conversation's earlier turns, given to the LLM nodes that
    read memory; `stream_tokens` streams model output to the observer as it is generated."""

    history: tuple[Turn, ...] = ()
    stream_tokens: bool = False


class Scheduler:
    def __init__(self, workflow: Workflow, runner: NodeRunner, context: RunContext,
                 observer: RunObserver | None = None, options: RunOptions = RunOptions()):
        self._workflow = workflow
        self._runner = runner
        self._context = context
        self._observer = observer or SilentObserver()
        self._options = options
        self._results: dict[NodeId, NodeResult] = {}
        self._started_at: dict[NodeId, float] = {}
        self._waiting_on = {node_id: len(parents) for node_id, parents in workflow.parents.items()}

    async def run(self) -> dict[NodeId, NodeResult]:
        """Run every node; returns each node's result in agent_config order."""
        in_flight: dict[asyncio.Task[list[NodeResult]], NodeId] = {}
        ready = [node_id for node_id, count in self._waiting_on.items() if count == 0]
        try:
            while ready or in_flight:
                for node_id in ready:
                    result = self._settle_without_running(node_id)
                    if result is not None:
                        ready.extend(self._finish(result))
                        continue
                    task = asyncio.ensure_future(self._start(node_id))
                    in_flight[task] = node_id
                ready = []
                if not in_flight:
                    continue
                done, _ = await asyncio.wait(in_flight, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    in_flight.pop(task)
                    ready.extend(self._finish(*task.result()))
        finally:
            for task in in_flight:
                task.cancel()
            if in_flight:
                await asyncio.gather(*in_flight, return_exceptions=True)
        return {node_id: self._results[node_id] for node_id in self._workflow.order}

    def stopped_results(self, error: ErrorInfo) -> dict[NodeId, NodeResult]:
        """Every node's result for a run stopped before the end: what finished as it finished,
        the rest `cancelled` with `error` (nodes that were running keep when they started)."""
        now = time.time()
        results = {}
        for node_id, spec in self._workflow.nodes.items():
            result = self._results.get(node_id)
            if result is None:
                started = self._started_at.get(node_id)
                result = NodeResult(
                    id=node_id, name=spec.name, type=spec.type, status="cancelled", error=error,
                    started_at=started, finished_at=now if started else None,
                    duration_ms=round((now - started) * 1000, 3) if started else None)
            results[node_id] = result
        return results

    async def _start(self, node_id: NodeId) -> list[NodeResult]:
        """Run `node_id` (and the chain after it, when it can go in one trip); its results."""
        started = self._started_at[node_id] = time.time()
        self._observer.node_started(node_id)
        try:
            task = self._task_for(node_id)
        except PromptTooLarge as exc:  # over SESAME_MAX_RENDERED_CHARS: fail before building it
            return [too_large(self._workflow.nodes[node_id], exc, started, time.time())]
        if self._options.stream_tokens:
            on_token = functools.partial(self._observer.token, node_id)
            return [await self._runner.run(task, on_token=on_token if isinstance(task.spec, LLMNodeSpec) else None)]
        after = self._workflow.chain_after(node_id)
        if not after:
            return [await self._runner.run(task)]
        return await self._runner.run_chain(self._chain(task, after))

    def _chain(self, first: NodeTask, after: list[NodeId]) -> Chain:
        steps = tuple(ChainStep(spec=self._workflow.nodes[n], tools=tuple(self._workflow.tool_children(n)),
                                history=self._history(n)) for n in after)
        inside = {first.spec.id, *after}
        # A routed Tool's `arguments` are not its (the model's calls are), nor checked by validation.
        named = {ref for n in after if not self._is_routed(n)
                 for ref in referenced(self._workflow.nodes[n]) if ref not in inside}
        return Chain(first=first, steps=steps, user_query=self._workflow.user_query,
                     outputs={ref: as_text(self._results[ref].output) for ref in named},
                     limit=self._workflow.limits.max_rendered_chars)

    def _history(self, node_id: NodeId) -> tuple[Turn, ...]:
        return self._options.history if self._workflow.reads_memory(node_id) else ()

    def _settle_without_running(self, node_id: NodeId) -> NodeResult | None:
        spec = self._workflow.nodes[node_id]
        if isinstance(spec, ToolNodeSpec) and self._workflow.llm_parents(node_id) \
                and not self._routed_calls(node_id):
            return _skipped(self._workflow, node_id, NO_TOOL_CALL)
        return None

    def _finish(self, *results: NodeResult) -> list[NodeId]:
        """Record `results` (one node's, or a chain's in order); return the children that
        became ready. All are recorded first: a chain's later nodes are not ready, they ran."""
        for result in results:
            if result.id not in self._started_at and result.started_at is not None:
                self._started_at[result.id] = result.started_at  # ran in a chain: told now
                self._observer.node_started(result.id)
            self._results[result.id] = result
            self._observer.node_finished(result)
        ready = []
        for result in results:
            if result.status != "succeeded":
                self._skip_below(result.id, f'upstream node "{result.id}" {result.status}')
                continue
            for child in dict.fromkeys(self._workflow.nodes[result.id].children):
                self._waiting_on[child] -= 1
                if self._waiting_on[child] == 0 and child not in self._results:
                    ready.append(child)
        return ready

    def _skip_below(self, node_id: NodeId, reason: str) -> None:
        stack = list(self._workflow.nodes[node_id].children)
        while stack:
            child = stack.pop()
            if child not in self._results:
                self._results[child] = _skipped(self._workflow, child, reason)
                self._observer.node_finished(self._results[child])
                stack.extend(self._workflow.nodes[child].children)

    def _routed_calls(self, node_id: NodeId) -> list[ToolCall]:
        return [call for parent in self._workflow.llm_parents(node_id)
                for call in self._results[parent.id].tool_calls if call.node_id == node_id]

    def _is_routed(self, node_id: NodeId) -> bool:
        """A Tool child of an LLM: it runs the calls the model routed to it."""
        return isinstance(self._workflow.nodes[node_id], ToolNodeSpec) and bool(self._workflow.llm_parents(node_id))

    def _task_for(self, node_id: NodeId) -> NodeTask:
        spec = self._workflow.nodes[node_id]
        if isinstance(spec, ToolNodeSpec) and self._is_routed(node_id):
            return routed_task(spec, self._context, self._routed_calls(node_id))
        parents = self._workflow.parents[node_id]
        inputs = Inputs(
            user_query=self._workflow.user_query, user_id=self._workflow.user_id,
            conversation_id=self._workflow.conversation_id,
            input="\n\n".join(as_text(self._results[p].output) for p in parents) if parents
            else self._workflow.user_query,
            outputs={ref: as_text(self._results[ref].output) for ref in referenced(spec)},
            limit=self._workflow.limits.max_rendered_chars)
        if isinstance(spec, LLMNodeSpec):
            return llm_task(spec, self._context, inputs, tuple(self._workflow.tool_children(node_id)),
                            self._history(node_id))
        return action_task(spec, self._context, inputs)


def _skipped(workflow: Workflow, node_id: NodeId, reason: str) -> NodeResult:
    spec = workflow.nodes[node_id]
    return NodeResult(id=node_id, name=spec.name, type=spec.type, status="skipped", skip_reason=reason)
