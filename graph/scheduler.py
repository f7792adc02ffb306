"""The dependency-driven scheduler (DESIGN §3, §5).

A node starts the moment its last parent succeeds — no layers, no barriers; independent branches
run at once. A node whose parent did not succeed is `skipped` at once, with the reason, and so is
everything below it; other branches go on. A Tool child of an LLM runs only the calls the LLM
routed to it (none → `skipped`, which does not fail the run).

The scheduler renders each node's inputs here, in the caller's event loop, and hands a ready
`NodeTask` to a `NodeRunner`: where the work actually runs (Ray actors, or this process) is the
runner's business. If the run is cancelled, every node still in flight is cancelled with it.
Progress (a node started, a token, a node finished) goes to a `RunObserver` as it happens.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from dataclasses import dataclass
from typing import Any, Protocol

from graph.errors import PromptTooLarge
from graph.kinds import RunContext, Turn
from graph.schema import ErrorInfo, LLMNodeSpec, NodeId, NodeResult, ToolCall, ToolNodeSpec
from graph.templates import referenced_nodes, render, render_value, strings_in
from graph.worker import NodeRunner, NodeTask
from graph.workflow import Workflow

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


def as_text(output: Any) -> str:
    """A node's output as a child sees it: text as is, anything structured as JSON."""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


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
        in_flight: dict[asyncio.Task[NodeResult], NodeId] = {}
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
                    ready.extend(self._finish(task.result()))
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

    async def _start(self, node_id: NodeId) -> NodeResult:
        self._started_at[node_id] = time.time()
        self._observer.node_started(node_id)
        try:
            task = self._task_for(node_id)
        except PromptTooLarge as exc:  # over SESAME_MAX_RENDERED_CHARS: fail before building it
            return _failed(self._workflow, node_id, exc, self._started_at[node_id])
        if self._options.stream_tokens and isinstance(task.spec, LLMNodeSpec):
            return await self._runner.run(task, on_token=functools.partial(self._observer.token, node_id))
        return await self._runner.run(task)

    def _settle_without_running(self, node_id: NodeId) -> NodeResult | None:
        spec = self._workflow.nodes[node_id]
        if isinstance(spec, ToolNodeSpec) and self._workflow.llm_parents(node_id) \
                and not self._routed_calls(node_id):
            return _skipped(self._workflow, node_id, NO_TOOL_CALL)
        return None

    def _finish(self, result: NodeResult) -> list[NodeId]:
        """Record `result`; return the children that became ready."""
        self._results[result.id] = result
        self._observer.node_finished(result)
        if result.status != "succeeded":
            self._skip_below(result.id, f'upstream node "{result.id}" {result.status}')
            return []
        ready = []
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

    def _task_for(self, node_id: NodeId) -> NodeTask:
        spec = self._workflow.nodes[node_id]
        parents = self._workflow.parents[node_id]
        variables = {
            "input": "\n\n".join(as_text(self._results[p].output) for p in parents)
                     if parents else self._workflow.user_query,
            "user_query": self._workflow.user_query,
            "user_id": self._workflow.user_id,
            "conversation_id": self._workflow.conversation_id,
        }
        if isinstance(spec, LLMNodeSpec):
            template = spec.prompt_template if spec.prompt_template is not None else "{input}"
            outputs = self._outputs_for(template, spec.system_prompt or "")
            limit = self._workflow.limits.max_rendered_chars
            system = render(spec.system_prompt, variables, outputs, limit) if spec.system_prompt else None
            history = self._options.history if self._workflow.reads_memory(node_id) else ()
            return NodeTask(spec=spec, context=self._context, prompt=render(template, variables, outputs, limit),
                            system_prompt=system, tools=tuple(self._workflow.tool_children(node_id)),
                            history=history)
        if self._workflow.llm_parents(node_id):
            return NodeTask(spec=spec, context=self._context, calls=tuple(self._routed_calls(node_id)))
        outputs = self._outputs_for(*strings_in(spec.arguments or {}))
        call = ToolCall(id=f"{node_id}-call-1", action=spec.action or "", node_id=node_id,
                        arguments=render_value(spec.arguments or {}, variables, outputs,
                                               self._workflow.limits.max_rendered_chars))
        return NodeTask(spec=spec, context=self._context, calls=(call,))

    def _outputs_for(self, *templates: str) -> dict[NodeId, str]:
        """Texts of the ancestors that the templates name (validation made sure they are)."""
        return {ref: as_text(self._results[ref].output)
                for template in templates for ref in referenced_nodes(template)}


def _skipped(workflow: Workflow, node_id: NodeId, reason: str) -> NodeResult:
    spec = workflow.nodes[node_id]
    return NodeResult(id=node_id, name=spec.name, type=spec.type, status="skipped", skip_reason=reason)


def _failed(workflow: Workflow, node_id: NodeId, exc: PromptTooLarge, started: float) -> NodeResult:
    spec, now = workflow.nodes[node_id], time.time()
    return NodeResult(id=node_id, name=spec.name, type=spec.type, status="failed",
                      error=ErrorInfo(code=exc.error_code, message=exc.message, retryable=False),
                      started_at=started, finished_at=now, duration_ms=round((now - started) * 1000, 3))
