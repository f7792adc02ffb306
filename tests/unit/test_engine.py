"""The scheduler and engine over fake kinds, in-process (no Ray): ordering, joins, failure,
tool routing, preflight, cancellation."""

from __future__ import annotations

import asyncio

import pytest

from graph.engine import run_workflow
from graph.settings import Settings
from graph.validation import validate_request
from graph.worker import LocalRunner
from tests.unit.fakes import FakeRegistry, llm, request, tool


def run(body, registry=None, **settings):
    registry = registry or FakeRegistry()
    workflow = validate_request(body, registry.known())
    runner = LocalRunner(registry, Settings(retry_base_delay_s=0.001, **settings))
    return asyncio.run(run_workflow(workflow, runner)), registry


def test_diamond_joins_once_after_all_parents_with_inputs_in_declaration_order():
    # B is declared before C but finishes last; the join must still see B's output first.
    body = request(llm("A", ["C", "B"]), llm("B", ["D"], delay=0.05), llm("C", ["D"], delay=0.01),
                   llm("D"), user_query="q")
    response, registry = run(body)
    assert response.status == "succeeded"
    assert registry.time_of("end", "C") < registry.time_of("end", "B")
    assert len(registry.requests("D")) == 1
    assert registry.requests("D")[0].prompt == "B(A(q))\n\nC(A(q))"
    assert registry.time_of("start", "D") >= max(registry.time_of("end", "B"), registry.time_of("end", "C"))
    assert response.output == "D(B(A(q))\n\nC(A(q)))"


def test_a_node_starts_when_its_own_parents_finish_not_when_a_layer_does():
    # A -> B (fast) -> E ; A -> C (slow). E must start before C ends: no layer barrier.
    body = request(llm("A", ["B", "C"]), llm("B", ["E"]), llm("C", delay=0.3), llm("E"))
    response, registry = run(body)
    assert registry.time_of("start", "E") < registry.time_of("end", "C")
    assert set(response.outputs) == {"C", "E"}


def test_uneven_join_waits_for_the_long_branch():
    body = request(llm("A", ["J", "B"]), llm("B", ["C"]), llm("C", ["J"], delay=0.05), llm("J"))
    response, registry = run(body, )
    assert len(registry.requests("J")) == 1
    assert registry.time_of("start", "J") >= registry.time_of("end", "C")
    assert registry.requests("J")[0].prompt == "A(hi)\n\nC(B(A(hi)))"


def test_failure_skips_descendants_and_independent_branch_finishes():
    body = request(llm("A", ["B"], fail="provider_error"), llm("B", ["C"]), llm("C"), llm("X"))
    response, registry = run(body)
    nodes = response.nodes
    assert nodes["A"].status == "failed" and nodes["A"].error.code == "provider_error"
    assert nodes["B"].status == "skipped" and nodes["C"].status == "skipped"
    assert 'upstream node "A" failed' in nodes["C"].skip_reason
    assert nodes["X"].status == "succeeded"
    assert response.status == "partial" and response.outputs == {"X": "X(hi)"}
    assert registry.requests("B") == []


def test_run_failed_when_no_sink_succeeded():
    response, _ = run(request(llm("A", fail="bad")))
    assert response.status == "failed" and response.outputs == {}


def test_retryable_errors_are_retried_and_counted_caller_errors_are_not():
    flaky = llm("A", fail="provider_error", retryable=True, fail_times=2)
    response, _ = run(request(flaky), retry_attempts=3)
    assert response.nodes["A"].status == "succeeded" and response.nodes["A"].attempts == 3
    response, registry = run(request(llm("A", fail="bad_request", retryable=False)), retry_attempts=3)
    assert response.nodes["A"].attempts == 1 and registry.attempts["A"] == 1


def test_llm_tool_calls_are_routed_to_the_tool_child_with_the_offered_version():
    body = request(llm("1", ["2"], calls=[{"action": "GMAIL_SEND", "arguments": {"to": "sam"}}]), tool("2"))
    response, registry = run(body)
    assert registry.requests("1")[0].functions[0].name == "GMAIL_SEND"
    assert response.nodes["1"].tool_calls[0].node_id == "2"
    assert response.nodes["2"].output == [{"action": "GMAIL_SEND", "arguments": {"to": "sam"}, "version": "v1"}]
    assert response.status == "succeeded" and response.output == response.nodes["2"].output


def test_a_tool_child_without_a_call_is_skipped_and_the_llm_text_is_the_answer():
    response, registry = run(request(llm("1", ["2"]), tool("2")))
    assert response.nodes["2"].status == "skipped" and response.nodes["2"].skip_reason == "no_tool_call"
    assert response.status == "succeeded" and response.output == "1(hi)"
    assert registry.requests("2") == []


def test_a_tool_without_llm_parent_runs_its_action_with_rendered_arguments():
    body = request(tool("T", action="GMAIL_SEND", arguments={"body": "{user_query} from {user_id}",
                                                            "n": 3, "raw": "{0} {input.__class__}"}))
    response, registry = run(body)
    call = registry.requests("T")[0].calls[0]
    assert call.arguments == {"body": "hi from u1", "n": 3, "raw": "{0} {input.__class__}"}
    assert response.status == "succeeded"


def test_templates_see_ancestor_outputs():
    body = request(llm("A", ["B"]), llm("B", ["C"]), llm("C", prompt="first={node.A} last={input}"))
    response, registry = run(body)
    assert registry.requests("C")[0].prompt == "first=A(hi) last=B(A(hi))"


def test_preflight_action_required_runs_nothing():
    response, registry = run(request(llm("A", ["B"], needs_key=True), llm("B"), llm("X")))
    assert response.status == "action_required"
    assert [a.env_var for a in response.action_required] == ["FAKE_KEY"]
    assert {n: r.status for n, r in response.nodes.items()} == {
        "A": "action_required", "B": "skipped", "X": "skipped"}
    assert registry.log == []


def test_a_check_that_could_not_be_made_fails_the_run_retryably_instead_of_asking_to_act():
    response, registry = run(request(llm("A", ["B"], unreachable=True), llm("B"), llm("X")))
    assert response.status == "failed" and response.action_required == []
    assert response.error.code == "preflight_unavailable" and response.error.retryable
    assert response.nodes["A"].status == "failed" and response.nodes["A"].error.code == "provider_unreachable"
    assert {response.nodes["B"].status, response.nodes["X"].status} == {"skipped"}
    assert registry.log == []  # nothing ran
    # a real missing piece next to it still asks the user to act
    response, _ = run(request(llm("A", unreachable=True), llm("K", needs_key=True)))
    assert response.status == "action_required"


def test_usage_is_summed_over_nodes():
    response, _ = run(request(llm("A", ["B"]), llm("B")))
    assert response.usage.total_tokens == 6


def test_cancelling_a_run_cancels_in_flight_nodes():
    registry = FakeRegistry()
    workflow = validate_request(request(llm("A", delay=5), llm("B", delay=5)), registry.known())

    async def scenario():
        task = asyncio.ensure_future(run_workflow(workflow, LocalRunner(registry, Settings())))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(asyncio.wait_for(scenario(), 2))
    assert sorted(n for e, n, _, _ in registry.log if e == "end") == ["A", "B"]


def test_node_timeout_fails_the_node():
    response, _ = run(request(llm("A", delay=1)), node_timeout_s=0.05)
    assert response.nodes["A"].status == "failed" and response.nodes["A"].error.code == "node_timeout"


class CountingRunner(LocalRunner):
    def __init__(self, registry, settings):
        super().__init__(registry, settings)
        self.trips = []

    async def run(self, task, on_token=None):
        self.trips.append([task.spec.id])
        return await super().run(task, on_token)

    async def run_chain(self, chain):
        self.trips.append([spec.id for spec in chain.specs])
        return await super().run_chain(chain)


def run_counting(body):
    registry = FakeRegistry()
    runner = CountingRunner(registry, Settings(retry_base_delay_s=0.001))
    return asyncio.run(run_workflow(validate_request(body, registry.known()), runner)), runner, registry


def test_a_chain_goes_to_a_worker_in_one_trip_and_renders_as_it_would_step_by_step():
    body = request(llm("A", ["B"]), llm("B", ["C"], prompt="B sees {input} and {user_query}"),
                   llm("C", ["T"], prompt="{node.A} then {input}",
                       calls=[{"action": "GMAIL_SEND", "arguments": {"to": "sam"}}]), tool("T"))
    response, runner, registry = run_counting(body)
    assert runner.trips == [["A", "B", "C", "T"]]
    assert registry.requests("B")[0].prompt == "B sees A(hi) and hi"
    assert registry.requests("C")[0].prompt == "A(hi) then B(B sees A(hi) and hi)"
    assert response.nodes["T"].output == [{"action": "GMAIL_SEND", "arguments": {"to": "sam"}, "version": "v1"}]
    assert response.status == "succeeded"


def test_a_chain_stops_where_a_node_fails_or_the_model_calls_nothing():
    response, runner, registry = run_counting(request(llm("A", ["B"], fail="bad"), llm("B", ["C"]), llm("C")))
    assert runner.trips == [["A", "B", "C"]] and registry.requests("B") == []
    assert [response.nodes[n].status for n in "ABC"] == ["failed", "skipped", "skipped"]
    response, runner, _ = run_counting(request(llm("A", ["T"]), tool("T")))
    assert response.nodes["T"].skip_reason == "no_tool_call" and response.status == "succeeded"


def test_no_chain_across_a_fan_out_or_a_join():
    _, runner, _ = run_counting(request(llm("A", ["B", "C"]), llm("B", ["D"]), llm("C", ["D"]), llm("D")))
    assert sorted(map(tuple, runner.trips)) == [("A",), ("B",), ("C",), ("D",)]


def test_a_routed_tools_own_arguments_are_ignored_in_a_chain_whatever_they_name():
    # Found in review: the chain gathered the `{node.<id>}` texts a routed Tool's arguments name
    # (which validation does not check: the model's calls are used) -> KeyError, a 500.
    calls = [{"action": "GMAIL_SEND", "arguments": {"to": "sam"}}]
    for named in ("ghost", "B"):  # no such node; a node in a branch that has not finished
        body = request(llm("A", ["T"], calls=calls), tool("T", arguments={"to": "{node.%s}" % named}),
                       llm("B", delay=0.05))
        response, runner, _ = run_counting(body)
        assert ["A", "T"] in runner.trips
        assert response.nodes["T"].output == [{"action": "GMAIL_SEND", "arguments": {"to": "sam"}, "version": "v1"}]
        assert response.status == "succeeded"
