"""Fake node kinds at the protocol of `graph.kinds` — for unit tests of the engine without Ray
or network. A node's behaviour is scripted in its `parameters["fake"]`:

    {"delay": 0.05, "fail": "code", "retryable": true, "calls": [{"action": "SEND", "arguments": {}}],
     "output": "text", "tokens": ["te", "xt"], "token_delay": 0.01}

Every call is recorded in `FakeRegistry.log` as (event, node_id, monotonic time, payload).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from graph.errors import ProviderError
from graph.kinds import KindKey, LLMRequest, NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, NodeSpec, ToolCall, ToolNodeSpec, Usage


class FakeLLM:
    def __init__(self, registry: "FakeRegistry"):
        self._registry = registry

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        script = spec.parameters.get("fake", {})
        if script.get("needs_key"):
            return [ActionRequired(node_id=spec.id, kind="missing_api_key", env_var="FAKE_KEY",
                                   message="set FAKE_KEY")]
        if script.get("unreachable"):
            return [ActionRequired(node_id=spec.id, kind="provider_unreachable",
                                   message="could not reach the fake provider")]
        return []

    async def run(self, request: LLMRequest) -> NodeOutput:
        script = request.spec.parameters.get("fake", {})
        self._registry.record("start", request.spec.id, request)
        try:
            await asyncio.sleep(script.get("delay", 0))
            if "fail" in script:
                self._registry.attempts[request.spec.id] = self._registry.attempts.get(request.spec.id, 0) + 1
                if self._registry.attempts[request.spec.id] <= script.get("fail_times", 10**9):
                    raise ProviderError(f"fake failure of {request.spec.id}", script["fail"],
                                        script.get("retryable", False))
            calls = [ToolCall(id=f"c{i}", action=c["action"], arguments=c.get("arguments", {}))
                     for i, c in enumerate(script.get("calls", []))]
            output = script.get("output", f"{request.spec.id}({request.prompt})")
            if request.on_token is not None:
                for piece in script.get("tokens", [output]):
                    request.on_token(piece)
                    await asyncio.sleep(script.get("token_delay", 0))
            return NodeOutput(output=output,
                              tool_calls=calls, usage=Usage(prompt_tokens=1, completion_tokens=2,
                                                             total_tokens=3))
        finally:
            self._registry.record("end", request.spec.id, None)


class FakeTool:
    def __init__(self, registry: "FakeRegistry"):
        self._registry = registry

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        return []

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        return [ToolFunction(name=f"{spec.tool_name.upper()}_SEND", description="send",
                             parameters={"type": "object"}, node_id=spec.id, version="v1")]

    async def run(self, request: ToolRequest) -> NodeOutput:
        self._registry.record("start", request.spec.id, request)
        self._registry.record("end", request.spec.id, None)
        return NodeOutput(output=[{"action": c.action, "arguments": c.arguments, "version": c.version}
                                  for c in request.calls])


class FakeRegistry:
    def __init__(self) -> None:
        self.log: list[tuple[str, str, float, Any]] = []
        self.attempts: dict[str, int] = {}
        self._kinds = {("llm", "openai"): FakeLLM(self), ("tool", "fake"): FakeTool(self)}

    def record(self, event: str, node_id: str, payload: Any) -> None:
        self.log.append((event, node_id, time.monotonic(), payload))

    def known(self) -> list[KindKey]:
        return list(self._kinds)

    def kind(self, key: KindKey) -> Any:
        return self._kinds[key]

    def requests(self, node_id: str) -> list[Any]:
        return [payload for event, nid, _, payload in self.log if event == "start" and nid == node_id]

    def time_of(self, event: str, node_id: str) -> float:
        return next(t for e, nid, t, _ in self.log if e == event and nid == node_id)


def llm(node_id: str, children: list[str] = (), prompt: str = "{input}", **fake: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "LLM", "name": f"llm {node_id}", "provider_name": "OpenAI",
            "model_name": "fake", "prompt_template": prompt, "parameters": {"fake": fake} if fake else {},
            "children": list(children)}


def tool(node_id: str, children: list[str] = (), **fields: Any) -> dict[str, Any]:
    return {"id": node_id, "type": "Tool", "name": f"tool {node_id}", "tool_name": "gmail",
            "tool_type": "fake", "children": list(children), **fields}


def request(*nodes: dict[str, Any], user_query: str = "hi") -> dict[str, Any]:
    return {"agent_config": {n["id"]: n for n in nodes}, "user_query": user_query,
            "user_id": "u1", "conversation_id": "c1"}
