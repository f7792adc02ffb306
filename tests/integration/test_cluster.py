"""Sesame on a real multi-node Ray cluster started with the `ray` CLI (`ray start --head`, then
`ray start --address` for a second and a third node, each with resources of its own), driven
over real HTTP:

- a wide fan-out runs on every Ray node (from the placement each node records);
- stopping a Ray node mid-run (what `ray stop` does there) loses nothing: Ray drains the node,
  letting the calls in flight finish, then restarts its workers elsewhere;
- a Ray node that crashes mid-run (every process killed at once) loses no run either: the LLM
  nodes that were on it are sent to the surviving workers and the run succeeds.

Sesame is started against the cluster the way the README says (`SESAME_RAY_ADDRESS=...
python serve_app.py`, which is what `scripts/serve` runs) in a process of its own: this pytest
process already has the session's Ray. Model keys live in the environment of `ray start`, as on
real machines. Select these tests with `-m cluster`; they take about a minute.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import sse_events
from tests.integration.ray_cluster import LocalRayCluster, free_port
from tests.integration.test_run_lifecycle import USER, body_of, llm
from tests.stubs.openai_stub import OpenAIStub

pytestmark = [pytest.mark.integration, pytest.mark.cluster]
ROOT = Path(__file__).parents[2]
SEED = json.loads((ROOT / "examples" / "seed_request.json").read_text())
OPENAI_KEY = "sk-cluster-canary-3b9d7f1e2a"     # in the Ray nodes' environment only
COMPOSIO_KEY = "cmp-cluster-canary-8c4e6a0d5f"  # given to `scripts/serve`, travels in Settings
FAN_OUT = 40
WORKERS = 6  # two per Ray node


@dataclass
class Deployment:
    http: httpx.Client
    cluster: LocalRayCluster
    sesame: subprocess.Popen
    stub: OpenAIStub
    log: Path


@pytest.fixture(scope="module")
def deployment():
    stub = OpenAIStub().start()
    # A stopped node drains for at most this long (Ray's default is 30 s) before its processes end.
    cluster = LocalRayCluster(env={"OPENAI_API_KEY": OPENAI_KEY, "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "4"})
    sesame = None
    try:
        cluster.start_head(num_cpus=1, resources={"head_machine": 1})
        cluster.add_node("second", num_cpus=1, resources={"second_machine": 1})
        port = free_port()
        log = cluster.temp_dir / "sesame.out"
        env = cluster.process_env(
            SESAME_RAY_ADDRESS=cluster.address, SESAME_HOST="127.0.0.1", SESAME_PORT=str(port),
            SESAME_WORKERS=str(WORKERS), SESAME_DATABASE_URL=f"sqlite:///{cluster.temp_dir / 'sesame.db'}",
            OPENAI_BASE_URL=stub.base_url, COMPOSIO_API_KEY=COMPOSIO_KEY)
        with log.open("wb") as out:
            sesame = subprocess.Popen([sys.executable, "serve_app.py", "--wait-for-nodes", "3"], cwd=ROOT,
                                      env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        cluster.add_node("third", num_cpus=1, resources={"third_machine": 1})  # Sesame waits for it
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as http:
            deployed = Deployment(http, cluster, sesame, stub, log)
            _wait_healthy(deployed, ray_nodes=3)
            yield deployed
    finally:
        if sesame is not None:
            sesame.terminate()  # Serve shuts down; runs in flight would end `interrupted`
            try:
                sesame.wait(15)
            except subprocess.TimeoutExpired:
                sesame.kill()
        cluster.close()  # kills whatever is left, found by the marker in its environment
        stub.stop()


def _wait_healthy(deployment: Deployment, ray_nodes: int, timeout_s: float = 90.0, workers: int = WORKERS) -> float:
    """Wait until all workers answer, spread over `ray_nodes` Ray nodes; answers the wait."""
    started, health = time.monotonic(), None
    while True:
        try:
            health = deployment.http.get("/healthz", timeout=10).json()
            if (health.get("status"), health.get("workers"), health.get("ray_nodes")) == ("ok", workers, ray_nodes):
                return time.monotonic() - started
        except (httpx.HTTPError, ValueError):
            pass
        if deployment.sesame.poll() is not None or time.monotonic() - started > timeout_s:
            raise AssertionError(f"Sesame did not become healthy on {ray_nodes} Ray nodes (last "
                                 f"answer {health}):\n" + deployment.log.read_text(errors="replace")[-3000:])
        time.sleep(0.25)


def fan_out(latency_ms: int, width: int = FAN_OUT) -> dict:
    branches = [f"b{i}" for i in range(width)]
    return body_of(llm("root", branches), *(llm(b, ["join"], latency_ms=latency_ms) for b in branches),
                   llm("join"))


def _start_wide_run(deployment: Deployment, latency_ms: int) -> str:
    """Start a fan-out in the background; answers once every branch is in flight."""
    deployment.stub.reset()
    accepted = deployment.http.post("/runs", json=fan_out(latency_ms))
    assert accepted.status_code == 202, accepted.text
    deadline = time.monotonic() + 30
    while len(deployment.stub.requests) < FAN_OUT + 1:  # the root answered, the branches asked
        assert time.monotonic() < deadline, f"only {len(deployment.stub.requests)} calls got in flight"
        time.sleep(0.02)
    return accepted.json()["run_id"]


def _follow(deployment: Deployment, run_id: str, timeout_s: float = 60.0) -> tuple[dict, set[int]]:
    """Read the run until it ends; answers it and the HTTP statuses seen on the way."""
    statuses, deadline = set(), time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        response = deployment.http.get(f"/runs/{run_id}", params={"user_id": USER})
        statuses.add(response.status_code)
        run = response.json()
        if run["status"] not in ("queued", "running"):
            return run, statuses
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} did not end within {timeout_s} s")


def _ray_nodes(run: dict) -> set[str]:
    return {node["placement"]["ray_node_id"] for node in run["nodes"].values()}


def test_a_wide_fan_out_runs_on_every_ray_node(deployment):
    deployment.stub.reset()
    response = deployment.http.post("/", json=fan_out(latency_ms=1000))

    assert response.status_code == 200, response.text
    run = response.json()
    assert run["status"] == "succeeded"
    assert len(_ray_nodes(run)) == 3, "the nodes did not run on all three Ray nodes"
    workers = {(n["placement"]["ray_node_id"], n["placement"]["pid"]) for n in run["nodes"].values()}
    assert len(workers) == WORKERS
    # side by side (the machine is shared, so not a wall-clock bound): most branches in flight at once
    assert deployment.stub.max_in_flight >= FAN_OUT * 3 // 4, deployment.stub.max_in_flight
    requests = deployment.stub.requests
    assert len(requests) == FAN_OUT + 2
    assert all(r.headers["authorization"] == f"Bearer {OPENAI_KEY}" for r in requests)

    time.sleep(1.0)  # the cluster's log files catch up
    logs = deployment.cluster.session_logs() + [deployment.log]
    for secret in (OPENAI_KEY, COMPOSIO_KEY):
        leaks = [str(p) for p in logs if secret.encode() in p.read_bytes()]
        assert leaks == [], f"{secret[:12]}… found in {leaks}"


def test_stopping_a_ray_node_mid_run_loses_nothing(deployment):
    """Ray drains a stopped node: its workers go on serving until the drain ends, then Ray
    restarts them elsewhere."""
    run_id = _start_wide_run(deployment, latency_ms=2000)
    stopped = time.monotonic()
    deployment.cluster.stop_node("second")  # `ray stop` there: Ray drains the node first
    run, statuses = _follow(deployment, run_id)
    ended = time.monotonic() - stopped

    assert statuses == {200}
    assert run["status"] == "succeeded", {n: v["error"] for n, v in run["nodes"].items() if v["error"]}
    assert len(_ray_nodes(run)) == 3  # the calls on the stopping node finished there
    assert len(deployment.stub.requests) == FAN_OUT + 2  # nothing was asked twice
    healed = _wait_healthy(deployment, ray_nodes=2)  # its workers were restarted elsewhere
    print(f"\nstopped a node: the run ended {run['status']} {ended:.1f} s later; "
          f"all workers answered again {healed:.1f} s after that")


def test_a_ray_node_that_crashes_mid_run_loses_no_run(deployment):
    run_id = _start_wide_run(deployment, latency_ms=2000)
    crashed, crashed_at = time.monotonic(), time.time()
    deployment.cluster.crash_node("third")
    run, statuses = _follow(deployment, run_id)
    ended = time.monotonic() - crashed

    assert statuses == {200}
    assert run["status"] == "succeeded", {n: v["error"] for n, v in run["nodes"].items() if v["error"]}
    branches = [run["nodes"][f"b{i}"] for i in range(FAN_OUT)]
    resent = [b for b in branches if b["attempts"] > 1]  # twice if it met a second dying worker
    assert resent, "no branch was running on the crashed node"
    resends = sum(b["attempts"] - 1 for b in branches)  # a resend to a worker already dead asks nobody
    assert 1 + FAN_OUT + len(resent) + 1 <= len(deployment.stub.requests) <= 1 + FAN_OUT + resends + 1

    with deployment.http.stream("GET", f"/runs/{run_id}/events", params={"user_id": USER}) as events:
        tokens = [e["data"] for e in sse_events(events) if e["event"] == "token"]
    for branch in resent:  # it streamed as a later attempt (the lost one sent no token yet)
        assert {t["attempt"] for t in tokens if t["node_id"] == branch["id"]} == {branch["attempts"]}

    healed = _wait_healthy(deployment, ray_nodes=1)  # Ray noticed, and restarted the workers
    after = deployment.http.post("/", json=fan_out(latency_ms=100, width=8)).json()
    assert after["status"] == "succeeded"
    assert {b["placement"]["ray_node_id"] for b in resent} <= _ray_nodes(after)  # resent to survivors
    first_resend = min(r.started_at for r in deployment.stub.requests[FAN_OUT + 1:]) - crashed_at
    print(f"\ncrashed a node with {len(resent)} of {FAN_OUT} branches on it ({resends} resends, the first "
          f"{first_resend:.1f} s after the crash): the run ended {run['status']} {ended:.1f} s later; "
          f"all workers answered again {healed:.1f} s after that")


def test_scripts_serve_without_sesame_ray_address_starts_its_own_ray_even_beside_a_cluster(deployment):
    # Found in review: with RAY_ADDRESS set (or a `ray start` cluster on the machine) plain
    # `ray.init()` joined that cluster, without the settings Serve's direct ingress needs, and
    # nothing answered on SESAME_PORT though the log said "ready". Last in this file: before the
    # fix it would have redeployed Serve on the module's cluster.
    cluster = deployment.cluster
    port = free_port()
    env = cluster.process_env(RAY_ADDRESS=cluster.address, SESAME_HOST="127.0.0.1", SESAME_PORT=str(port),
                              SESAME_WORKERS="2", SESAME_DATABASE_URL=f"sqlite:///{cluster.temp_dir / 'own.db'}")
    for secret in ("OPENAI_API_KEY", "COMPOSIO_API_KEY", "SESAME_RAY_ADDRESS"):
        env.pop(secret, None)
    log = cluster.temp_dir / "own-sesame.out"
    with log.open("wb") as out:
        sesame = subprocess.Popen(["scripts/serve"], cwd=ROOT, env=env, stdout=out,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            own = Deployment(http, cluster, sesame, deployment.stub, log)
            _wait_healthy(own, ray_nodes=1, workers=2)  # its own Ray, not the cluster's nodes
            seed = http.post("/", json=SEED).json()  # the README's first request, without keys
        assert seed["status"] == "action_required"
        assert {item["env_var"] for item in seed["action_required"]} == {"OPENAI_API_KEY", "COMPOSIO_API_KEY"}
        _wait_healthy(deployment, ray_nodes=1)  # and the cluster's own Sesame still answers in full
    finally:
        sesame.terminate()
        try:
            sesame.wait(30)
        except subprocess.TimeoutExpired:
            sesame.kill()
