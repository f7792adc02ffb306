"""A node-worker process that dies mid-run (SIGKILL, as the OOM killer would) on the session's real
Ray, with the real OpenAI and Composio SDKs against the loopback stubs: the LLM nodes it was
running are sent to another worker and the run succeeds; a Tool node it was running fails with
`worker_died` and its call is never repeated; the pool is whole again afterwards (Ray restarts
the worker). The same over a real two-node cluster: tests/integration/test_cluster.py."""

from __future__ import annotations

import asyncio
import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest

from graph.engine import run_workflow
from graph.runtime import RayRunner
from graph.settings import Settings
from graph.validation import validate_request
from nodes.registry import build_registry
from tests.integration.test_run_lifecycle import body_of, llm

pytestmark = pytest.mark.integration
SEED = json.loads((Path(__file__).parents[2] / "examples" / "seed_request.json").read_text())


@pytest.fixture
def runner(sesame_url, openai_stub, composio_stub):
    """A pool of two workers of our own (the session's `ray.init` is done by `sesame_url`)."""
    openai_stub.reset()
    composio_stub.reset()
    settings = Settings(workers=2)  # stub URLs and keys come from the environment (conftest)
    runner = RayRunner(settings, build_registry)
    asyncio.run(runner.placements(timeout_s=60))  # both workers are up
    yield runner, settings
    del runner  # the handles go out of scope: Ray stops the actors (no restart)


def _run_killing_workers(runner, settings, body, in_flight, victims):
    """Run `body`; once `in_flight()` holds, SIGKILL the worker processes `victims(placements)`
    picks. Answers the run and the placements before and after."""
    workflow = validate_request(body, build_registry(settings).known())

    async def scenario():
        before = await runner.placements()
        run = asyncio.ensure_future(run_workflow(workflow, runner))
        deadline = time.monotonic() + 20
        while not in_flight():
            assert time.monotonic() < deadline and not run.done(), "the calls never got in flight"
            await asyncio.sleep(0.02)
        for placement in victims(before):
            os.kill(placement.pid, signal.SIGKILL)
        result = await asyncio.wait_for(run, 60)
        return result, before, await runner.placements(timeout_s=60)

    return asyncio.run(scenario())


def test_llm_nodes_of_a_dead_worker_are_sent_to_another_and_the_run_succeeds(runner, openai_stub):
    runner, settings = runner
    branches = [f"b{i}" for i in range(6)]
    body = body_of(llm("root", branches), *(llm(b, ["join"], latency_ms=2000) for b in branches), llm("join"))

    result, before, after = _run_killing_workers(
        runner, settings, body, in_flight=lambda: len(openai_stub.requests) == 7,
        victims=lambda placements: placements[:1])

    assert result.status == "succeeded", result
    dead_pid = before[0].pid
    resent = [result.nodes[b] for b in branches if result.nodes[b].attempts == 2]
    assert resent, "no branch was running on the killed worker"
    assert all(n.placement.pid != dead_pid and n.status == "succeeded" for n in resent)
    assert all(result.nodes[b].attempts == 1 for b in branches if result.nodes[b] not in resent)
    assert len(openai_stub.requests) == 1 + len(branches) + len(resent) + 1  # each resend asked again
    assert result.nodes["join"].status == "succeeded"
    # Ray restarted the dead worker in a new process; the pool answers in full
    assert len(after) == 2 and after[0].pid != dead_pid and after[1].pid == before[1].pid


def test_a_tool_node_whose_worker_dies_fails_with_worker_died_and_is_not_repeated(runner, openai_stub,
                                                                                   composio_stub):
    runner, settings = runner
    composio_stub.active_users.add((SEED["user_id"], "gmail"))
    composio_stub.execute_delay_s = 2.0
    mail = copy.deepcopy(SEED["agent_config"]["2"]) | {
        "id": "mail", "action": "GMAIL_SEND_EMAIL",
        "arguments": {"recipient_email": "sam@example.com", "subject": "Hi", "body": "{user_query}"}}
    body = body_of(mail, llm("note", latency_ms=2000), user=SEED["user_id"])

    result, before, after = _run_killing_workers(
        runner, settings, body,
        in_flight=lambda: len(composio_stub.executions()) == 1 and len(openai_stub.requests) == 1,
        victims=lambda placements: placements)  # both: whichever ran the tool is gone

    assert result.status == "partial", result
    tool = result.nodes["mail"]
    assert tool.status == "failed" and tool.error.code == "worker_died" and not tool.error.retryable
    assert "not repeated" in tool.error.message
    time.sleep(2.5)  # longer than the stub's execute delay: a repeat would have arrived by now
    assert len(composio_stub.executions()) == 1
    note = result.nodes["note"]  # resent; maybe twice, if first to the other dying worker
    assert note.status == "succeeded" and 2 <= len(openai_stub.requests) <= note.attempts <= 3
    assert {p.pid for p in after}.isdisjoint({p.pid for p in before})


def test_a_worker_dying_under_a_fused_llm_to_tool_trip_resends_the_llm_and_never_the_tool(
        runner, openai_stub, composio_stub):
    # The reference workflow goes to one worker in one trip (LLM -> Gmail). Found in review: its
    # worker dying mid-execute answered "the LLM's worker died; run again" (retryable), and the
    # Gmail node `skipped`, though the e-mail may have gone: a rerun would send it twice.
    runner, settings = runner
    composio_stub.active_users.add((SEED["user_id"], "gmail"))
    composio_stub.execute_delay_s = 2.0

    result, before, after = _run_killing_workers(
        runner, settings, copy.deepcopy(SEED), in_flight=lambda: len(composio_stub.executions()) == 1,
        victims=lambda placements: placements)

    llm_node, mail = result.nodes["1"], result.nodes["2"]
    assert llm_node.status == "succeeded" and llm_node.attempts >= 2, llm_node
    assert mail.status == "failed" and mail.error.code == "worker_died" and not mail.error.retryable, mail
    assert "not repeated" in mail.error.message and result.status == "failed"
    time.sleep(2.5)  # longer than the stub's execute delay: a repeat would have arrived by now
    assert len(composio_stub.executions()) == 1
    assert len(openai_stub.requests) >= 2  # the model was asked again, on a live worker
