"""RunService over fake kinds, in-process (no Ray), on SQLite and PostgreSQL: events, storage,
cancellation, conversation memory, idempotency, isolation, restarts."""

from __future__ import annotations

import asyncio
import time

import pytest

from graph.errors import IdempotencyKeyReused, NotFound
from graph.runs import RunService
from graph.settings import Settings
from graph.store import SqlStore
from graph.validation import validate_request
from graph.worker import LocalRunner
from tests.unit.fakes import FakeRegistry, llm, request

T = "tenant-1"


def service_for(database_url, registry=None, **settings):
    registry = registry or FakeRegistry()
    settings = Settings(database_url=database_url, retry_base_delay_s=0.001, **settings)
    return RunService(settings, LocalRunner(registry, settings), SqlStore(database_url)), registry


def workflow_of(*nodes, user_query="hi", user="u1", conversation="c1"):
    body = request(*nodes, user_query=user_query)
    body.update(user_id=user, conversation_id=conversation)
    return validate_request(body, FakeRegistry().known())


async def collect(service, run_id, user="u1", after=0):
    return [e async for e in service.events(run_id, T, user, after) if e is not None]


def scenario(database_url, body, registry=None, **settings):
    """Run `body(service)` inside a started service; returns its result and the registry."""
    async def main():
        service, reg = service_for(database_url, registry, **settings)
        await service.start()
        try:
            return await asyncio.wait_for(body(service), 20), reg
        finally:
            await service.close()
    return asyncio.run(main())


def test_a_run_is_stored_and_its_events_are_in_order(database_url):
    async def body(service):
        run_id, started = await service.start_run(
            workflow_of(llm("A", ["B", "C"]), llm("B", ["D"]), llm("C", ["D"]), llm("D")), T)
        result = await service.result(run_id)
        live = await collect(service, run_id)  # the run is over: this replays from the store
        return run_id, started, result, live, await service.get(run_id, T, "u1")

    (run_id, started, result, events, stored), _ = scenario(database_url, body)
    assert started and result.status == "succeeded" and stored == result
    types = [e.type for e in events]
    assert types[0] == "run_started" and types[-1] == "run_finished"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    started_at = {e.data["node_id"]: e.seq for e in events if e.type == "node_started"}
    finished_at = {e.data["node"]["id"]: e.seq for e in events if e.type == "node_finished"}
    assert set(started_at) == set(finished_at) == {"A", "B", "C", "D"}
    assert all(started_at[n] < finished_at[n] for n in started_at)
    assert started_at["D"] > max(finished_at["B"], finished_at["C"])  # a node starts after its parents
    assert events[-1].data["run"]["status"] == "succeeded"


def test_tokens_stream_as_events_when_asked(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A", output="hello world",
                                                            tokens=["hel", "lo ", "world"])), T,
                                            stream_tokens=True)
        await service.result(run_id)
        return await collect(service, run_id)

    events, _ = scenario(database_url, body)
    tokens = [e.data for e in events if e.type == "token"]
    assert [t["text"] for t in tokens] == ["hel", "lo ", "world"]
    assert {t["node_id"] for t in tokens} == {"A"} and {t["attempt"] for t in tokens} == {1}


def test_a_follower_that_resumes_after_an_event_gets_the_rest_once(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A", ["B"], delay=0.2), llm("B")), T,
                                            stream_tokens=True)
        first = []
        async for event in service.events(run_id, T, "u1"):
            first.append(event)
            if len(first) == 3:
                break  # the client drops after three events...
        rest = await collect(service, run_id, after=first[-1].seq)  # ...and reconnects
        return first, rest, await collect(service, run_id)

    (first, rest, everything), _ = scenario(database_url, body)
    assert [e.seq for e in first + rest] == [e.seq for e in everything]
    assert everything[-1].type == "run_finished"


def test_cancelling_stops_the_nodes_in_flight_and_runs_nothing_after(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A", ["B"], delay=5), llm("B"), llm("X", delay=5)), T)
        while len(registry.requests("A") + registry.requests("X")) < 2:  # both are in flight
            await asyncio.sleep(0.01)
        cancelled = await service.cancel(run_id, T, "u1")
        return cancelled, await service.get(run_id, T, "u1"), await collect(service, run_id)

    registry = FakeRegistry()
    (cancelled, stored, events), _ = scenario(database_url, body, registry)
    assert cancelled.status == stored.status == "cancelled"
    assert {n: r.status for n, r in stored.nodes.items()} == {"A": "cancelled", "B": "cancelled", "X": "cancelled"}
    assert stored.nodes["A"].error.code == "cancelled" and stored.nodes["A"].started_at
    assert registry.requests("B") == []
    assert events[-1].type == "run_finished" and events[-1].data["run"]["status"] == "cancelled"
    assert sorted(n for e, n, _, _ in registry.log if e == "end") == ["A", "X"]  # the fakes saw the cancel


def test_a_second_run_of_a_conversation_gets_the_first_turn(database_url):
    async def body(service):
        first, _ = await service.start_run(workflow_of(llm("A", output="first answer"), user_query="first q"), T)
        await service.result(first)
        second, _ = await service.start_run(workflow_of(llm("A", ["B"]), llm("B"), user_query="second q"), T)
        await service.result(second)
        other, _ = await service.start_run(workflow_of(llm("A"), user="u2"), T)
        await service.result(other)
        return await service.conversation(T, "u1", "c1")

    conversation, registry = scenario(database_url, body)
    [_, second_root, other_user] = registry.requests("A")
    assert [(t.user, t.assistant) for t in second_root.history] == [("first q", "first answer")]
    assert registry.requests("B")[0].history == ()  # only roots read memory by default
    assert other_user.history == ()  # another user's conversation of the same id is another one
    assert [(t.user_query, t.output) for t in conversation.turns] == [
        ("first q", "first answer"), ("second q", "B(A(second q))")]


def test_memory_can_be_switched_on_and_off_per_node_and_is_capped(database_url):
    async def body(service):
        for i in range(4):
            run_id, _ = await service.start_run(workflow_of(llm("A", output=f"answer {i}"), user_query=f"q{i}"), T)
            await service.result(run_id)
        run_id, _ = await service.start_run(workflow_of(
            {**llm("R", ["N"]), "parameters": {"memory": False}},
            {**llm("N"), "parameters": {"memory": True}}), T)
        await service.result(run_id)

    _, registry = scenario(database_url, body, memory_max_turns=3, memory_max_chars=20)
    assert registry.requests("R")[0].history == ()
    # the newest 3 turns, then only as many as fit in 20 characters (each is 10)
    assert [t.user for t in registry.requests("N")[0].history] == ["q2", "q3"]


def test_runs_of_one_conversation_that_read_memory_go_one_at_a_time(database_url):
    async def body(service):
        first, _ = await service.start_run(workflow_of(llm("A", delay=0.3, output="one"), user_query="q1"), T)
        second, _ = await service.start_run(workflow_of(llm("A", output="two"), user_query="q2"), T)
        await asyncio.gather(service.result(first), service.result(second))
        return await collect(service, second), await service.conversation(T, "u1", "c1")

    (events, conversation), registry = scenario(database_url, body)
    assert events[0].type == "run_queued"
    [_, second] = registry.requests("A")
    assert [(t.user, t.assistant) for t in second.history] == [("q1", "one")]
    assert [t.user_query for t in conversation.turns] == ["q1", "q2"]


def test_a_run_that_waits_too_long_for_its_conversation_fails_clearly(database_url):
    async def body(service):
        first, _ = await service.start_run(workflow_of(llm("A", delay=1)), T)
        second, _ = await service.start_run(workflow_of(llm("A")), T)
        return await service.result(second)

    result, _ = scenario(database_url, body, conversation_wait_s=0.2)
    assert result.status == "failed" and result.error.code == "conversation_busy"
    assert "SESAME_CONVERSATION_WAIT_S" in result.error.message
    assert result.nodes["A"].status == "skipped"


def test_an_idempotency_key_returns_the_first_run_and_refuses_another_body(database_url):
    async def body(service):
        flow = workflow_of(llm("A"))
        first, started_first = await service.start_run(flow, T, idempotency_key="k1", request_hash="h1")
        again, started_again = await service.start_run(flow, T, idempotency_key="k1", request_hash="h1")
        with pytest.raises(IdempotencyKeyReused, match='"k1"'):
            await service.start_run(flow, T, idempotency_key="k1", request_hash="h2")
        await service.result(first)
        return first, started_first, again, started_again

    (first, started_first, again, started_again), registry = scenario(database_url, body)
    assert started_first and not started_again and again == first
    assert len(registry.requests("A")) == 1


def test_another_user_or_tenant_cannot_see_a_run_or_conversation(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A")), T)
        await service.result(run_id)
        for call in (service.get(run_id, T, "u2"), service.get(run_id, "other-tenant", "u1"),
                     service.cancel(run_id, T, "u2"), collect(service, run_id, user="u2"),
                     service.conversation(T, "u2", "c1"), service.conversation("other-tenant", "u1", "c1"),
                     service.get("run_nope", T, "u1")):
            with pytest.raises(NotFound):
                await call
        return await service.get(run_id, T, "u1")

    run, _ = scenario(database_url, body)
    assert run.status == "succeeded"


def test_stopping_the_service_marks_runs_in_flight_interrupted(database_url):
    async def main():
        service, _ = service_for(database_url)
        await service.start()
        run_id, _ = await service.start_run(workflow_of(llm("A", delay=10)), T)
        await asyncio.sleep(0.1)
        await service.close()
        later, _ = service_for(database_url)
        await later.start()
        try:
            return await later.get(run_id, T, "u1"), [e.type for e in await collect(later, run_id)]
        finally:
            await later.close()

    run, events = asyncio.run(asyncio.wait_for(main(), 20))
    assert run.status == "interrupted" and run.nodes["A"].status == "cancelled"
    assert events[-1] == "run_finished"


def test_runs_of_a_crashed_process_become_interrupted_after_missed_heartbeats(database_url):
    async def main():
        crashed, _ = service_for(database_url, heartbeat_s=0.1)
        await crashed.start()
        run_id, _ = await crashed.start_run(workflow_of(llm("A", delay=10)), T)
        await asyncio.sleep(0.1)
        crashed._upkeep.cancel()  # the process "dies": no more heartbeats, no clean stop
        await asyncio.sleep(0.4)
        survivor, _ = service_for(database_url, heartbeat_s=0.1)
        await survivor.start()
        try:
            for _ in range(100):  # the survivor reaps at start and on every heartbeat after
                run = await survivor.get(run_id, T, "u1")
                if run.finished:
                    return run
                await asyncio.sleep(0.05)
            return run
        finally:
            await survivor.close()
            crashed._local.clear()

    run = asyncio.run(asyncio.wait_for(main(), 20))
    assert run.status == "interrupted" and run.error.code == "interrupted"


def test_a_run_owned_by_another_process_is_cancelled_through_the_store(database_url):
    async def main():
        owner, registry = service_for(database_url)
        other, _ = service_for(database_url)
        await owner.start()
        await other.start()
        try:
            run_id, _ = await owner.start_run(workflow_of(llm("A", delay=10)), T)
            await asyncio.sleep(0.1)
            started = time.monotonic()
            cancelled = await other.cancel(run_id, T, "u1")
            return cancelled, time.monotonic() - started, [e async for e in other.events(run_id, T, "u1")]
        finally:
            await other.close()
            await owner.close()

    cancelled, took, events = asyncio.run(asyncio.wait_for(main(), 20))
    assert cancelled.status == "cancelled" and took < 5
    assert events[-1].type == "run_finished"


def test_provider_text_with_a_lone_surrogate_is_stored_and_streamed_not_a_crash(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A", output="bad \ud800 text",
                                                            tokens=["bad \ud800", " text"])), T,
                                            stream_tokens=True)
        result = await service.result(run_id)
        events = await collect(service, run_id)
        return result, [e.as_sse().encode() for e in events], await service.get(run_id, T, "u1")

    (result, streamed, stored), _ = scenario(database_url, body)
    assert result.status == "succeeded" and result.output == "bad \ufffd text"
    assert stored.output == "bad \ufffd text" and len(streamed) >= 5


def test_a_chain_run_in_one_trip_still_tells_each_node_in_order(database_url):
    async def body(service):
        run_id, _ = await service.start_run(workflow_of(llm("A", ["B"]), llm("B", ["C"]), llm("C")), T)
        await service.result(run_id)
        return [(e.type, e.data.get("node_id") or e.data.get("node", {}).get("id")) for e in await collect(service, run_id)]

    events, _ = scenario(database_url, body)
    assert events == [("run_started", None),
                      ("node_started", "A"), ("node_finished", "A"), ("node_started", "B"),
                      ("node_finished", "B"), ("node_started", "C"), ("node_finished", "C"),
                      ("run_finished", None)]


def test_a_bug_inside_the_engine_ends_the_run_stored_and_answered_not_left_running(database_url):
    # The KeyError of a routed Tool's arguments in a chain (fixed in graph/scheduler.py) escaped
    # the run: `result()` raised (HTTP 500) and the stored run stayed `running`. Whatever goes
    # wrong inside, the run now ends with `internal_error`, stored as answered.
    class BrokenChains(LocalRunner):
        async def run_chain(self, chain):
            raise KeyError("ghost")

    async def main():
        settings = Settings(database_url=database_url)
        service = RunService(settings, BrokenChains(FakeRegistry(), settings), SqlStore(database_url))
        await service.start()
        try:
            run_id, _ = await service.start_run(workflow_of(llm("A", ["B"]), llm("B"), llm("C", delay=5)), T)
            result = await asyncio.wait_for(service.result(run_id), 20)
            return result, await service.get(run_id, T, "u1")
        finally:
            await service.close()

    result, stored = asyncio.run(main())
    assert result.status == "failed" and result.error.code == "internal_error" and "bug" in result.error.message
    assert [result.nodes[n].status for n in "ABC"] == ["cancelled"] * 3  # C was cut short, not left running
    assert stored == result
