"""One run of a workflow, start to finish: preflight, schedule, summarise (DESIGN §3, §4).

`Execution` is the engine's entry point for every caller — the HTTP ingress (through
`graph.runs.RunService`, which adds storage, events and memory) and Python code alike
(`run_workflow`). Preflight asks every node what must be fixed before a token is spent; if
anything must, the run ends `action_required` and nothing runs. Otherwise the scheduler runs the
graph and the results are folded into one `RunResponse`. A run stopped from outside (cancelled,
the process stopping) is summarised by `stopped`, from what had finished by then.
"""

from __future__ import annotations

import time
import uuid

from graph.kinds import RunContext
from graph.scheduler import NO_TOOL_CALL, RunObserver, RunOptions, Scheduler
from graph.schema import ActionRequired, ErrorInfo, NodeId, NodeResult, RunResponse, RunStatus, Usage
from graph.worker import NodeRunner
from graph.workflow import Workflow


# Preflight findings that are not the user's or the server's to fix: the check itself failed.
TRANSIENT_PREFLIGHT = ("provider_unreachable", "preflight_failed")


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


class Execution:
    def __init__(self, workflow: Workflow, runner: NodeRunner, run_id: str | None = None,
                 observer: RunObserver | None = None, options: RunOptions = RunOptions()):
        self.workflow = workflow
        self.context = RunContext(run_id=run_id or new_run_id(), user_id=workflow.user_id,
                                  conversation_id=workflow.conversation_id)
        self._runner = runner
        self._scheduler = Scheduler(workflow, runner, self.context, observer, options)
        self._started = time.perf_counter()

    async def run(self) -> RunResponse:
        self._started = time.perf_counter()
        found = await self._runner.preflight(list(self.workflow.nodes.values()), self.context)
        if any(item.kind not in TRANSIENT_PREFLIGHT for item in found):
            return self._blocked("action_required", found)
        if found:
            return self._blocked("failed", found)
        nodes = await self._scheduler.run()
        return self._response(None, nodes)

    def _blocked(self, status: RunStatus, found: list[ActionRequired]) -> RunResponse:
        """Nothing runs. `action_required`: something is the server's or the user's to fix.
        `failed`: the checks themselves could not be made (a provider down, after retries) —
        nothing to fix, so a retryable error instead of a request to act."""
        concerned = {item.node_id: item for item in found}
        nodes = {}
        for node_id, spec in self.workflow.nodes.items():
            item = concerned.get(node_id)
            if item is None:
                nodes[node_id] = NodeResult(id=node_id, name=spec.name, type=spec.type, status="skipped",
                                            skip_reason=status)
            elif status == "action_required":
                nodes[node_id] = NodeResult(id=node_id, name=spec.name, type=spec.type, status=status)
            else:
                nodes[node_id] = NodeResult(id=node_id, name=spec.name, type=spec.type, status="failed",
                                            error=ErrorInfo(code=item.kind, message=item.message, retryable=True))
        if status == "action_required":
            return self._response(status, nodes).model_copy(update={"action_required": found})
        return self._response(status, nodes, ErrorInfo(
            code="preflight_unavailable", retryable=True,
            message=f"{found[0].message}; nothing ran and no model was called: try again"))

    def stopped(self, status: RunStatus | None, error: ErrorInfo) -> RunResponse:
        """The run as it stands when stopped from outside: finished nodes as they finished, the
        rest `cancelled` with `error`. Without a `status`, the sinks that finished decide it
        (`partial` or `failed`)."""
        return self._response(status, self._scheduler.stopped_results(error), error)

    def _response(self, status: RunStatus | None, nodes: dict[NodeId, NodeResult],
                  error: ErrorInfo | None = None) -> RunResponse:
        deciding = deciding_nodes(self.workflow, nodes)
        outputs = {node_id: nodes[node_id].output for node_id in deciding
                   if nodes[node_id].status == "succeeded"}
        return RunResponse(
            run_id=self.context.run_id, status=status or _status(deciding, nodes),
            user_id=self.workflow.user_id, conversation_id=self.workflow.conversation_id,
            output=outputs.get(deciding[0]) if len(deciding) == 1 else outputs, outputs=outputs,
            nodes=nodes, usage=sum((n.usage for n in nodes.values() if n.usage), Usage()),
            duration_ms=round((time.perf_counter() - self._started) * 1000, 3), error=error)


async def run_workflow(workflow: Workflow, runner: NodeRunner, run_id: str | None = None,
                       observer: RunObserver | None = None,
                       options: RunOptions = RunOptions()) -> RunResponse:
    """Run `workflow` to the end and answer with every node's result (no store, no events
    unless an observer is given). Cancelling the awaiting task cancels every node in flight."""
    return await Execution(workflow, runner, run_id, observer, options).run()


def deciding_nodes(workflow: Workflow, nodes: dict[NodeId, NodeResult]) -> list[NodeId]:
    """The nodes whose results are the run's answer: its sinks — except that a Tool sink the
    model chose not to call gives way to its LLM parents, whose text then is the answer."""
    deciding: dict[NodeId, None] = {}
    for sink in workflow.sinks:
        if nodes[sink].skip_reason == NO_TOOL_CALL:
            deciding.update(dict.fromkeys(p.id for p in workflow.llm_parents(sink)))
        else:
            deciding[sink] = None
    return list(deciding)


def _status(deciding: list[NodeId], nodes: dict[NodeId, NodeResult]) -> RunStatus:
    succeeded = sum(nodes[node_id].status == "succeeded" for node_id in deciding)
    if succeeded == len(deciding):
        return "succeeded"
    return "partial" if succeeded else "failed"
