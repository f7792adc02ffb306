"""What one node-worker does with one node: look up its kind, run it with retries and a timeout,
and describe the outcome as a `NodeResult` — or with a chain of nodes (`execute_chain`): a node
and the nodes after it that wait for nothing else, run one after another in one trip, the
worker building each next task from the result before it (`graph.tasks`). Measured ~1.6–3 ms
saved per hop on this project's machines (docs/execution.md). A chain stops early — and the
scheduler carries on from there as usual — when a node does not succeed, or an LLM routed no
call to the Tool after it.

This is the code that runs *inside* a Ray worker actor (`graph.runtime`) — or in-process through
`LocalRunner` for unit tests and embedding. It never raises: every failure becomes a `failed`
result with a `{code, message, retryable}` error, so nothing but our own types crosses Ray.
Concurrency between nodes is the scheduler's business, not this module's.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from graph.errors import NodeError, PromptTooLarge, redact
from graph.kinds import LLMRequest, NodeOutput, Registry, RunContext, ToolFunction, ToolRequest
from graph.limits import output_chars
from graph.schema import (ActionRequired, ErrorInfo, LLMNodeSpec, NodeId, NodeResult, NodeSpec, Placement,
                          ToolNodeSpec)
from graph.settings import Settings
from graph.task import Chain, ChainStep, NodeTask
from graph.tasks import Inputs, action_task, as_text, llm_task, routed_task, too_large
from graph.text import valid_text

log = logging.getLogger(__name__)


# Called with each piece of generated text and the attempt (1, 2, ...) that produced it: a
# retried model call streams again from the start.
TokenCallback = Callable[[str, int], None]


class NodeRunner(Protocol):
    """Where nodes run: in a Ray actor pool (`graph.runtime.RayRunner`) or in-process."""

    async def preflight(self, specs: list[NodeSpec], context: RunContext) -> list[ActionRequired]:
        """What must be fixed before any of `specs` runs (all of a run's nodes at once)."""
        ...

    async def run(self, task: NodeTask, on_token: TokenCallback | None = None) -> NodeResult: ...

    async def run_chain(self, chain: Chain) -> list[NodeResult]:
        """The results of the chain's nodes that ran, in order (see `execute_chain`)."""
        ...


async def preflight_nodes(registry: Registry, specs: list[NodeSpec],
                          context: RunContext) -> list[ActionRequired]:
    """Every node's preflight at once, in node order."""
    checks = await asyncio.gather(*(preflight_node(registry, spec, context) for spec in specs))
    return [item for per_node in checks for item in per_node]


async def preflight_node(registry: Registry, spec: NodeSpec,
                         context: RunContext) -> list[ActionRequired]:
    try:
        return await registry.kind(spec.kind).preflight(spec, context)
    except Exception as exc:  # a kind's bug must not take the run down with a 500
        log.exception("preflight of node %s failed", spec.id, extra={"run_id": context.run_id})
        return [ActionRequired(node_id=spec.id, kind="preflight_failed",
                               message=f"checking node {spec.id!r} failed ({type(exc).__name__}); "
                                       "see the server log")]


async def execute_task(registry: Registry, settings: Settings, task: NodeTask,
                       placement: Placement | None = None,
                       on_token: TokenCallback | None = None) -> NodeResult:
    spec = task.spec
    policy = retry_policy(spec, settings)
    started = time.time()
    attempts = 0
    output: NodeOutput | None = None
    error: ErrorInfo | None = None
    try:
        async with asyncio.timeout(node_timeout_s(spec, settings)):
            while True:
                attempts += 1
                try:
                    tokens = functools.partial(on_token, attempt=attempts) if on_token else None
                    output = await _run_once(registry, task, tokens)
                    break
                except NodeError as exc:
                    if not _should_retry(exc, attempts, policy):
                        raise
                    await asyncio.sleep(_backoff(attempts, exc.retry_after_s, policy))
    except NodeError as exc:
        error = ErrorInfo(code=exc.error_code, message=exc.message, retryable=exc.retryable)
    except TimeoutError:
        error = ErrorInfo(code="node_timeout", retryable=True,
                          message=f"node {spec.id!r} did not finish within {node_timeout_s(spec, settings):g} s")
    except Exception as exc:
        log.exception("node %s crashed", spec.id, extra={"run_id": task.context.run_id})
        secret = spec.api_key_value.get_secret_value() if isinstance(spec, LLMNodeSpec) and spec.api_key_value else None
        error = ErrorInfo(code="internal_error", retryable=False,
                          message=redact(f"node {spec.id!r} crashed: {type(exc).__name__}: {exc}", [secret]))
    finished = time.time()
    if output is not None and output.error is not None:
        error = output.error
    if output is not None and (size := output_chars(output.output)) > settings.max_output_chars:
        error = error or ErrorInfo(code="output_too_large", retryable=False, message=(
            f"node {spec.id!r} returned {size:,} characters; at most {settings.max_output_chars:,} "
            "are kept (SESAME_MAX_OUTPUT_CHARS)"))
        output = replace(output, output=None)
    return NodeResult(
        id=spec.id, name=spec.name, type=spec.type, status="failed" if error else "succeeded",
        output=valid_text(output.output) if output else None,
        error=error.model_copy(update={"message": valid_text(error.message)}) if error else None,
        tool_calls=[c.model_copy(update={"arguments": valid_text(c.arguments)}) for c in output.tool_calls]
        if output else [], usage=output.usage if output else None,
        attempts=attempts, started_at=started, finished_at=finished,
        duration_ms=round((finished - started) * 1000, 3), placement=placement)


async def _run_once(registry: Registry, task: NodeTask,
                    on_token: Callable[[str], None] | None) -> NodeOutput:
    spec = task.spec
    kind = registry.kind(spec.kind)
    if isinstance(spec, ToolNodeSpec):
        return await kind.run(ToolRequest(spec=spec, context=task.context, calls=list(task.calls)))
    offered = await asyncio.gather(*(registry.kind(tool.kind).functions(tool, task.context)  # type: ignore[attr-defined]
                                     for tool in task.tools))
    functions = [f for per_tool in offered for f in per_tool]
    output = await kind.run(LLMRequest(spec=spec, context=task.context, system_prompt=task.system_prompt,
                                       prompt=task.prompt, functions=functions, history=task.history,
                                       on_token=on_token))
    return _route_calls(output, functions)


def _route_calls(output: NodeOutput, functions: list[ToolFunction]) -> NodeOutput:
    """Name each tool call's owner node and toolkit version: the first tool child that offered
    the action. A call of an action nobody offered keeps `node_id=None` and runs nowhere."""
    owners: dict[str, ToolFunction] = {}
    for function in functions:
        owners.setdefault(function.name, function)
    calls = [call.model_copy(update={"node_id": owners[call.action].node_id,
                                     "version": owners[call.action].version})
             if call.action in owners else call for call in output.tool_calls]
    return NodeOutput(output=output.output, tool_calls=calls, usage=output.usage, error=output.error)


@dataclass(frozen=True)
class _Retry:
    attempts: int
    base_delay_s: float
    max_delay_s: float


def retry_policy(spec: NodeSpec, settings: Settings) -> _Retry:
    """The node's `retry` fields where given, else the server's."""
    own = spec.retry
    pick = lambda mine, default: mine if mine is not None else default  # noqa: E731 - 0 is real
    return _Retry(attempts=pick(own and own.attempts, settings.retry_attempts),
                  base_delay_s=pick(own and own.base_delay_s, settings.retry_base_delay_s),
                  max_delay_s=pick(own and own.max_delay_s, settings.retry_max_delay_s))


def node_timeout_s(spec: NodeSpec, settings: Settings) -> float:
    return spec.timeout_s if spec.timeout_s is not None else settings.node_timeout_s


def _should_retry(exc: NodeError, attempts: int, policy: _Retry) -> bool:
    return exc.retryable and not exc.may_have_reached_provider and attempts < policy.attempts


def _backoff(attempts: int, retry_after_s: float | None, policy: _Retry) -> float:
    """Exponential backoff with full jitter; a provider's Retry-After wins, up to the cap."""
    if retry_after_s is not None:
        return min(max(retry_after_s, 0.0), policy.max_delay_s)
    ceiling = min(policy.base_delay_s * 2 ** (attempts - 1), policy.max_delay_s)
    return random.uniform(ceiling / 2, ceiling)


async def execute_chain(registry: Registry, settings: Settings, chain: Chain,
                        placement: Placement | None = None) -> list[NodeResult]:
    """Run the chain's nodes one after another; the results of those that ran, in order."""
    results = [await execute_task(registry, settings, chain.first, placement)]
    texts = dict(chain.outputs)
    for step in chain.steps:
        previous = results[-1]
        if previous.status != "succeeded":
            break
        texts[previous.id] = as_text(previous.output)
        task = _chain_task(chain, step, previous, texts)
        if task is None:  # the model called nothing here: the scheduler marks it skipped
            break
        if isinstance(task, NodeResult):
            results.append(task)
            continue
        results.append(await execute_task(registry, settings, task, placement))
    return results


def _chain_task(chain: Chain, step: ChainStep, previous: NodeResult,
                texts: dict[NodeId, str]) -> NodeTask | NodeResult | None:
    spec, context = step.spec, chain.first.context
    if isinstance(spec, ToolNodeSpec) and isinstance(_spec_of(chain, previous.id), LLMNodeSpec):
        calls = [call for call in previous.tool_calls if call.node_id == spec.id]
        return routed_task(spec, context, calls) if calls else None
    inputs = Inputs(user_query=chain.user_query, user_id=context.user_id,
                    conversation_id=context.conversation_id, input=texts[previous.id],
                    outputs=texts, limit=chain.limit)
    started = time.time()
    try:
        if isinstance(spec, LLMNodeSpec):
            return llm_task(spec, context, inputs, step.tools, step.history)
        return action_task(spec, context, inputs)
    except PromptTooLarge as exc:
        return too_large(spec, exc, started, time.time())


def _spec_of(chain: Chain, node_id: NodeId) -> NodeSpec:
    return next(spec for spec in chain.specs if spec.id == node_id)


class LocalRunner:
    """Runs nodes in this process: for unit tests and embedding without Ray."""

    def __init__(self, registry: Registry, settings: Settings):
        self._registry = registry
        self._settings = settings

    async def preflight(self, specs: list[NodeSpec], context: RunContext) -> list[ActionRequired]:
        return await preflight_nodes(self._registry, specs, context)

    async def run(self, task: NodeTask, on_token: TokenCallback | None = None) -> NodeResult:
        return await execute_task(self._registry, self._settings, task, on_token=on_token)

    async def run_chain(self, chain: Chain) -> list[NodeResult]:
        return await execute_chain(self._registry, self._settings, chain)
