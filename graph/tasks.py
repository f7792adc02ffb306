"""Building a node's `NodeTask` from what came before it: rendering its templates (DESIGN §3).

Pure functions shared by the scheduler (which builds a node's task when its parents are done)
and by a worker running a fused chain (`graph.worker.execute_chain`), which builds the tasks of
the chain's later nodes itself, without a round trip to the scheduler.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from graph.errors import PromptTooLarge
from graph.kinds import RunContext, Turn
from graph.schema import ErrorInfo, LLMNodeSpec, NodeId, NodeResult, NodeSpec, ToolCall, ToolNodeSpec
from graph.templates import referenced_nodes, render, render_value, strings_in
from graph.task import NodeTask


def as_text(output: Any) -> str:
    """A node's output as a child sees it: text as is, anything structured as JSON."""
    return output if isinstance(output, str) else json.dumps(output, ensure_ascii=False)


@dataclass(frozen=True)
class Inputs:
    """What a node's templates may use: the run's fields, `{input}` (the parents' outputs as
    text, joined) and the outputs of the ancestors its templates name."""

    user_query: str
    user_id: str
    conversation_id: str
    input: str
    outputs: Mapping[NodeId, str]
    limit: int  # SESAME_MAX_RENDERED_CHARS

    def variables(self) -> dict[str, str]:
        return {"input": self.input, "user_query": self.user_query, "user_id": self.user_id,
                "conversation_id": self.conversation_id}


def referenced(spec: NodeSpec) -> list[NodeId]:
    """The ancestors a node's templates name with `{node.<id>}`."""
    if isinstance(spec, LLMNodeSpec):
        templates = [spec.prompt_template or "{input}", spec.system_prompt or ""]
    else:
        templates = strings_in(spec.arguments or {})
    return [ref for template in templates for ref in referenced_nodes(template)]


def llm_task(spec: LLMNodeSpec, context: RunContext, inputs: Inputs, tools: tuple[ToolNodeSpec, ...],
             history: tuple[Turn, ...]) -> NodeTask:
    """Raises `PromptTooLarge` before building a prompt over the limit."""
    template = spec.prompt_template if spec.prompt_template is not None else "{input}"
    variables = inputs.variables()
    system = render(spec.system_prompt, variables, inputs.outputs, inputs.limit) if spec.system_prompt else None
    return NodeTask(spec=spec, context=context, prompt=render(template, variables, inputs.outputs, inputs.limit),
                    system_prompt=system, tools=tools, history=history)


def action_task(spec: ToolNodeSpec, context: RunContext, inputs: Inputs) -> NodeTask:
    """A Tool node without an LLM parent: its `action` with its `arguments` rendered."""
    call = ToolCall(id=f"{spec.id}-call-1", action=spec.action or "", node_id=spec.id,
                    arguments=render_value(spec.arguments or {}, inputs.variables(), inputs.outputs, inputs.limit))
    return NodeTask(spec=spec, context=context, calls=(call,))


def routed_task(spec: ToolNodeSpec, context: RunContext, calls: list[ToolCall]) -> NodeTask:
    """A Tool child of an LLM: the calls the model routed to it."""
    return NodeTask(spec=spec, context=context, calls=tuple(calls))


def too_large(spec: NodeSpec, exc: PromptTooLarge, started: float, finished: float) -> NodeResult:
    """The result of a node whose prompt would be over the limit: failed before it ran."""
    return NodeResult(id=spec.id, name=spec.name, type=spec.type, status="failed",
                      error=ErrorInfo(code=exc.error_code, message=exc.message, retryable=False),
                      started_at=started, finished_at=finished,
                      duration_ms=round((finished - started) * 1000, 3))
