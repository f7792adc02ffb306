"""The store on SQLite and on a real PostgreSQL: what goes in comes out, races keep every write,
dead processes' runs become `interrupted`, and the schema migrates once."""

from __future__ import annotations

import threading
import time

import pytest
import sqlalchemy as sa

from graph.events import RunEvent
from graph.schema import NodeResult, RunResponse
from graph.store import (AcquireLease, AppendEvents, AppendTurn, CreateRun, Heartbeat, ReapDeadOwners,
                         ReleaseLease, RequestCancel, SaveNode, SaveRun, SqlStore)
from graph.store_schema import SCHEMA_VERSION


@pytest.fixture
def store(database_url):
    store = SqlStore(database_url)
    store.migrate()
    yield store
    store.close()


def a_run(run_id="run_1", user="u1", conversation="c1", status="queued", nodes=("a", "b")) -> RunResponse:
    return RunResponse(run_id=run_id, status=status, user_id=user, conversation_id=conversation,
                       nodes={n: NodeResult(id=n, name=f"node {n}", type="LLM", status="pending") for n in nodes},
                       duration_ms=0.0)


def test_a_run_round_trips_with_its_nodes_in_order(store):
    store.apply([CreateRun(a_run(nodes=("z", "a", "m")), "t1", "owner-1")])
    stored = store.get_run("run_1")
    assert stored.tenant == "t1" and stored.owner == "owner-1"
    assert list(stored.response.nodes) == ["z", "a", "m"]
    assert stored.response.status == "queued" and stored.response.user_id == "u1"
    assert store.get_run("run_unknown") is None


def test_progress_and_the_final_answer_are_kept(store):
    run = a_run()
    store.apply([CreateRun(run, "t1", "o")])
    done = NodeResult(id="a", type="LLM", status="succeeded", output="héllo \x00 wörld ✓", attempts=1)
    store.apply([SaveNode("run_1", done)])
    assert store.get_run("run_1").response.nodes["a"].output == "héllo \x00 wörld ✓"
    final = run.model_copy(update={"status": "succeeded", "output": {"b": [1, {"x": None}]},
                                   "nodes": {**run.nodes, "a": done}})
    store.apply([SaveRun(final, final=True)])
    stored = store.get_run("run_1").response
    assert stored.status == "succeeded" and stored.output == {"b": [1, {"x": None}]}
    assert stored.finished


def test_events_come_back_in_order_after_a_given_seq(store):
    events = tuple(RunEvent.of("run_1", seq, "token", time.time(), {"node_id": "a", "text": f"t{seq}"})
                   for seq in (1, 2, 3, 4))
    store.apply([AppendEvents(events[2:]), AppendEvents(events[:2])])
    store.apply([AppendEvents(events[:1])])  # a replayed write is ignored, not duplicated
    assert [e.seq for e in store.events_after("run_1", 0)] == [1, 2, 3, 4]
    assert [e.data["text"] for e in store.events_after("run_1", 2)] == ["t3", "t4"]


def test_an_idempotency_key_clash_returns_the_first_run(store):
    assert store.apply([CreateRun(a_run("run_1"), "t1", "o", "key-1", "hash-a")]) == [None]
    [clash] = store.apply([CreateRun(a_run("run_2"), "t1", "o", "key-1", "hash-b")])
    assert clash == ("run_1", "hash-a")
    assert store.get_run("run_2") is None
    # the same key for another user or tenant is another key
    assert store.apply([CreateRun(a_run("run_3", user="u2"), "t1", "o", "key-1", "h")]) == [None]
    assert store.apply([CreateRun(a_run("run_4"), "t2", "o", "key-1", "h")]) == [None]


def test_concurrent_turn_appends_from_many_writers_all_survive(store, database_url):
    stores = [SqlStore(database_url) for _ in range(4)]
    errors = []

    def append(store_, writer):
        try:
            for i in range(10):
                store_.apply([AppendTurn("t1", "u1", "c1", f"run_{writer}_{i}", f"q{writer}.{i}", "a")])
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(s, n)) for n, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for s in stores:
        s.close()
    assert errors == []
    turns = store.recent_turns("t1", "u1", "c1")
    assert [t.seq for t in turns] == list(range(1, 41))
    assert len({t.run_id for t in turns}) == 40
    assert [t.user for t in store.recent_turns("t1", "u1", "c1", limit=2)] == [turns[-2].user, turns[-1].user]
    assert store.recent_turns("t1", "u2", "c1") == [] and store.recent_turns("t2", "u1", "c1") == []


def test_a_conversation_lease_has_one_holder_at_a_time(store):
    take = lambda run_id: store.apply([AcquireLease("t", "u", "c", run_id, "o")])[0]  # noqa: E731
    assert take("run_1") is True
    assert take("run_2") is False
    assert take("run_1") is True  # the holder asking again still holds it
    store.apply([ReleaseLease("run_1")])
    assert take("run_2") is True


def test_runs_of_a_process_that_stopped_heartbeating_become_interrupted(store):
    store.apply([Heartbeat("dead"), Heartbeat("alive")])
    store.apply([CreateRun(a_run("run_dead"), "t", "dead"), CreateRun(a_run("run_alive"), "t", "alive"),
                 AcquireLease("t", "u1", "c1", "run_dead", "dead")])
    running = NodeResult(id="a", type="LLM", status="running", started_at=time.time())
    store.apply([SaveRun(a_run("run_dead", status="running")), SaveNode("run_dead", running),
                 AppendEvents((RunEvent.of("run_dead", 1, "run_started", 0.0, {}),))])
    time.sleep(0.3)
    store.apply([Heartbeat("alive")])
    [interrupted] = store.apply([ReapDeadOwners(stale_after_s=0.2, except_owner="alive")])
    assert interrupted == ["run_dead"]
    dead = store.get_run("run_dead").response
    assert dead.status == "interrupted" and dead.error.code == "interrupted"
    assert dead.nodes["a"].status == "cancelled" and dead.nodes["a"].error.code == "interrupted"
    assert dead.nodes["b"].status == "cancelled"
    [last] = store.events_after("run_dead", 1)
    assert last.type == "run_finished" and last.data["run"]["status"] == "interrupted"
    assert store.get_run("run_alive").response.status == "queued"
    assert store.apply([AcquireLease("t", "u1", "c1", "run_next", "alive")]) == [True]  # freed


def test_cancel_requests_are_seen_by_the_owner_only_while_the_run_is_active(store):
    store.apply([CreateRun(a_run("run_1"), "t", "owner-a"), CreateRun(a_run("run_2"), "t", "owner-b")])
    store.apply([RequestCancel("run_1"), RequestCancel("run_2")])
    assert store.cancel_requests("owner-a") == ["run_1"]
    store.apply([SaveRun(a_run("run_1", status="succeeded"), final=True)])
    assert store.cancel_requests("owner-a") == []


def test_migration_runs_once_and_refuses_a_newer_schema(store, database_url):
    assert store.migrate() == SCHEMA_VERSION  # already there: nothing to do
    engine = sa.create_engine(store.url)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE sesame_meta SET value = '999' WHERE key = 'schema_version'"))
    engine.dispose()
    with pytest.raises(RuntimeError, match="newer than this Sesame"):
        SqlStore(database_url).migrate()
