"""What every tool kind does the same way with the calls routed to it (the same contract as the
Composio kind, docs/design.md §7): one result per call, in call order —
`{call_id, action, arguments, successful, data, error}` — and a node that is `failed`
(`tool_call_failed`, not retryable) while still showing every call when any call failed.
"""

from __future__ import annotations

import re
from typing import Any

from graph.errors import ProviderError, redact
from graph.kinds import NodeOutput
from graph.schema import ErrorInfo, ToolCall, ToolNodeSpec

_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_-]+")


def function_name(spec: ToolNodeSpec) -> str:
    """The one action of a single-action tool node: its `action` if set, else its `tool_name`
    made into a function name (OpenAI and Anthropic allow `[A-Za-z0-9_-]{1,64}`)."""
    if spec.action:
        return spec.action
    return (_NOT_A_NAME.sub("_", spec.tool_name.strip()).strip("_") or "tool")[:64]


def check_actions(spec: ToolNodeSpec, calls: list[ToolCall], known: list[str]) -> None:
    """Refuse the whole batch before anything runs if one call names an action this node lacks."""
    for call in calls:
        if call.action not in known:
            raise ProviderError(f'node "{spec.id}": action {call.action!r} is not offered by this '
                                f'{spec.tool_type} tool (known: {", ".join(sorted(known))})',
                                "unknown_action", False)


def result(call: ToolCall, successful: bool, data: Any = None, error: str | None = None) -> dict[str, Any]:
    return {"call_id": call.id, "action": call.action, "arguments": call.arguments,
            "successful": successful, "data": data, "error": error}


def finished(spec: ToolNodeSpec, calls: list[ToolCall], results: list[dict[str, Any]]) -> NodeOutput:
    failed = [r for r in results if not r["successful"]]
    if not failed:
        return NodeOutput(output=results, tool_calls=list(calls))
    reasons = "; ".join(f'{r["action"]}: {(r["error"] or "no error message")[:300]}' for r in failed)
    return NodeOutput(output=results, tool_calls=list(calls), error=ErrorInfo(
        code="tool_call_failed", retryable=False,
        message=f'node "{spec.id}": {len(failed)} of {len(results)} tool calls failed: {reasons}'))


def config_of(spec: ToolNodeSpec) -> dict[str, Any]:
    return spec.config or {}


def redacted(value: Any, secrets: list[str]) -> Any:
    """`value` (JSON-like) with every secret removed from every string in it."""
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, list):
        return [redacted(v, secrets) for v in value]
    if isinstance(value, dict):
        return {k: redacted(v, secrets) for k, v in value.items()}
    return value
