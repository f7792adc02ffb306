"""One run, start to finish: preflight, schedule, summarise (DESIGN §3, §4).

`run_workflow` is the engine's entry point for every caller — the HTTP ingress and Python code
alike. Preflight asks every node what must be fixed before a token is spent; if anything must,
the run ends `action_required` and nothing runs. Otherwise the scheduler runs the graph and the
results are folded into one `RunResponse`.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from graph.kinds import RunContext
from graph.scheduler import NO_TOOL_CALL, Scheduler
from graph.schema import NodeId, NodeResult, RunResponse, RunStatus, Usage
from graph.worker import NodeRunner
from graph.workflow import Workflow


def new_run_id() -> str:
    return f"run_{uuid.uuid4().hex}"


async def run_workflow(workflow: Workflow, runner: NodeRunner, run_id: str | None = None) -> RunResponse:
    context = RunContext(run_id=run_id or new_run_id(), user_id=workflow.user_id,
                         conversation_id=workflow.conversation_id)
    started = time.perf_counter()
    checks = await asyncio.gather(*(runner.preflight(spec, context) for spec in workflow.nodes.values()))
    action_required = [item for per_node in checks for item in per_node]
    if action_required:
        concerned = {item.node_id for item in action_required}
        nodes = {node_id: NodeResult(id=node_id, name=spec.name, type=spec.type,
                                     status="action_required" if node_id in concerned else "skipped",
                                     skip_reason=None if node_id in concerned else "action_required")
                 for node_id, spec in workflow.nodes.items()}
        return RunResponse(run_id=context.run_id, status="action_required", user_id=workflow.user_id,
                           conversation_id=workflow.conversation_id, nodes=nodes,
                           action_required=action_required, duration_ms=_ms_since(started))

    nodes = await Scheduler(workflow, runner, context).run()
    deciding = deciding_nodes(workflow, nodes)
    outputs = {node_id: nodes[node_id].output for node_id in deciding
               if nodes[node_id].status == "succeeded"}
    return RunResponse(
        run_id=context.run_id, status=_status(deciding, nodes), user_id=workflow.user_id,
        conversation_id=workflow.conversation_id,
        output=outputs.get(deciding[0]) if len(deciding) == 1 else outputs,
        outputs=outputs, nodes=nodes, usage=sum((n.usage for n in nodes.values() if n.usage), Usage()),
        duration_ms=_ms_since(started))


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


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
