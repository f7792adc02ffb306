"""The engines under test that are not Sesame: a plain asyncio executor (the reference for the
limit) and LangGraph. Both run in this process and call the same node code as Sesame's workers
(`bench.sesame_adapter.NodeCode`); Sesame's own engines live in the adapter.

Every engine has one shape: `start()` once, `prepare(graph)` once per graph (LangGraph compiles
here), then `run(prepared, conversation_id)` per workflow — it returns when the workflow is done
and raises `RunFailed` unless every node succeeded.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Any, Protocol, TypedDict

from bench.graphs import BenchGraph

if TYPE_CHECKING:
    from bench.sesame_adapter import NodeCode


class RunFailed(Exception):
    """A benchmark workflow did not succeed: its figure would be meaningless."""


class Engine(Protocol):
    name: str

    async def start(self) -> None: ...

    async def prepare(self, graph: BenchGraph) -> Any: ...

    async def run(self, prepared: Any, conversation_id: str) -> None: ...

    async def loop_snapshot(self) -> dict[str, Any] | None:
        """The event-loop figures of where the engine schedules, if not this process's loop."""
        ...

    async def close(self) -> None: ...


class _InProcess:
    def __init__(self, code: NodeCode):
        self._code = code

    async def start(self) -> None:
        pass

    async def loop_snapshot(self) -> dict[str, Any] | None:
        return None

    async def close(self) -> None:
        pass


class PlainAsyncio(_InProcess):
    """One task per node, awaiting its parents' tasks: nothing an engine could do with less."""

    name = "asyncio"

    async def prepare(self, graph: BenchGraph) -> tuple[Any, dict[str, list[str]]]:
        return self._code.workflow(graph), graph.parents

    async def run(self, prepared: tuple[Any, dict[str, list[str]]], conversation_id: str) -> None:
        workflow, parents = prepared
        context = self._code.context(workflow, conversation_id)
        tasks: dict[str, asyncio.Future[Any]] = {}

        async def node(node_id: str) -> Any:
            inputs = {parent: await tasks[parent] for parent in parents[node_id]}
            return await self._code.run(workflow, context, node_id, inputs)

        for node_id in parents:  # declaration order; a task first awaits after all exist
            tasks[node_id] = asyncio.ensure_future(node(node_id))
        try:
            await asyncio.gather(*tasks.values())
        finally:
            for task in tasks.values():
                task.cancel()


def _merge(left: dict[str, Any], right: dict[str, Any]) -> dict[str, Any]:
    return {**left, **right}


class _State(TypedDict):
    context: Any
    results: Annotated[dict[str, Any], _merge]


class LangGraph(_InProcess):
    """The graph as a LangGraph `StateGraph`: a node per node, an edge per edge, joins as
    waiting edges (`add_edge([parents...], node)`); results gathered in the state."""

    name = "langgraph"

    async def prepare(self, graph: BenchGraph) -> tuple[Any, Any]:
        from langgraph.graph import END, START, StateGraph

        workflow = self._code.workflow(graph)
        builder = StateGraph(_State)
        parents = graph.parents
        for node_id in parents:
            builder.add_node(node_id, self._node(workflow, node_id, parents[node_id]))
        for node_id, above in parents.items():
            if not above:
                builder.add_edge(START, node_id)
            else:
                builder.add_edge(above[0] if len(above) == 1 else above, node_id)
            if not graph.nodes[node_id]["children"]:
                builder.add_edge(node_id, END)
        return workflow, builder.compile()

    def _node(self, workflow: Any, node_id: str, parents: list[str]) -> Any:
        async def node(state: _State) -> dict[str, Any]:
            inputs = {parent: state["results"][parent] for parent in parents}
            result = await self._code.run(workflow, state["context"], node_id, inputs)
            return {"results": {node_id: result}}

        return node

    async def run(self, prepared: tuple[Any, Any], conversation_id: str) -> None:
        workflow, compiled = prepared
        state = {"context": self._code.context(workflow, conversation_id), "results": {}}
        final = await compiled.ainvoke(state, config={"recursion_limit": 100_000})
        if len(final["results"]) != len(workflow.nodes):
            raise RunFailed(f"LangGraph ran {len(final['results'])} of {len(workflow.nodes)} nodes")
