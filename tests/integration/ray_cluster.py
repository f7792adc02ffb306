"""A real multi-node Ray cluster on this machine, started with the `ray` CLI as an operator would:
`ray start --head`, then `ray start --address` for each further node (Ray supports several
raylets on one machine for testing). Used by tests/integration/test_cluster.py.

Every node gets free ports, its own resources and a private `--temp-dir`, so it never meets the
test session's Ray or anyone else's on the machine. Ray's token auth stays on, with a token of
the cluster's own in `RAY_AUTH_TOKEN` (each Ray process reads it from its environment; on real
machines it is `~/.ray/auth_token` or the same variable). Ray rewrites 127.0.0.1 to the
machine's own address for its internal traffic; nothing leaves the machine.

Each process started here carries a marker in its environment, inherited by everything Ray
spawns from it, so `stop_node`/`crash_node`/`close` find and stop exactly these processes —
never `ray stop`, which stops every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

MARKER = "SESAME_TEST_PROCESS"
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def processes_marked(value: str) -> list[int]:
    """Pids of the processes whose environment has MARKER=value."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:  # gone, or not ours
            continue
        if needle in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def kill_marked(value: str) -> None:
    for pid in processes_marked(value):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class Node:
    name: str
    marker: str
    process: subprocess.Popen
    log: Path


class LocalRayCluster:
    def __init__(self, env: dict[str, str] | None = None):
        self.id = secrets.token_hex(4)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="sesame-ray-", dir="/tmp"))  # sockets: keep it short
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.token = secrets.token_hex(16)
        self.nodes: dict[str, Node] = {}
        base = {k: v for k, v in os.environ.items()  # nothing of the session's Ray or Sesame
                if not k.startswith(("RAY_", "SESAME_", "OPENAI_", "COMPOSIO_"))}
        self.env = {**base, **(env or {}), "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def marker(self, name: str) -> str:
        return f"{self.id}/{name}"

    def start_head(self, num_cpus: int, resources: dict[str, float]) -> None:
        self._wait_started(self._start("head", [
            "--head", "--port", str(self.port), "--include-dashboard", "false",
            "--ray-client-server-port", str(free_port())], num_cpus, resources))

    def add_node(self, name: str, num_cpus: int, resources: dict[str, float]) -> None:
        """One at a time: nodes that join at once collide in the shared session directory."""
        self._wait_started(self._start(name, ["--address", self.address], num_cpus, resources))

    def _start(self, name: str, role: list[str], num_cpus: int, resources: dict[str, float]) -> Node:
        ports = {option: str(free_port()) for option in (
            "--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
            "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port")}
        command = [RAY, "start", "--block", *role, "--node-ip-address", "127.0.0.1",
                   "--num-cpus", str(num_cpus), "--resources", json.dumps(resources),
                   "--temp-dir", str(self.temp_dir), "--disable-usage-stats",
                   "--min-worker-port", "0", "--max-worker-port", "0",
                   *(item for pair in ports.items() for item in pair)]
        log = self.temp_dir / f"{name}.out"
        with log.open("wb") as out:
            process = subprocess.Popen(command, env={**self.env, MARKER: self.marker(name)},
                                       stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes[name] = Node(name, self.marker(name), process, log)
        return self.nodes[name]

    def _wait_started(self, node: Node, timeout_s: float = 90.0) -> None:
        """`ray start` says so once the node has registered with the cluster."""
        deadline = time.monotonic() + timeout_s
        while b"Ray runtime started" not in node.log.read_bytes():
            if node.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray node {node.name} did not start:\n{self.tail(node)}")
            time.sleep(0.1)

    def tail(self, node: Node, lines: int = 30) -> str:
        return "\n".join(node.log.read_text(errors="replace").splitlines()[-lines:])

    def stop_node(self, name: str) -> None:
        """What Kubernetes does to a Ray pod: SIGTERM to `ray start --block`, which drains the
        node (for up to RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S) and then ends its processes."""
        self.nodes[name].process.send_signal(signal.SIGTERM)

    def crash_node(self, name: str) -> None:
        """The machine is gone: every process of the node is killed at once."""
        kill_marked(self.nodes[name].marker)

    def session_logs(self) -> list[Path]:
        return [p for p in self.temp_dir.glob("session_*/logs/**/*") if p.is_file()]

    def close(self) -> None:
        """Kill every process of the cluster (and of anything started with `process_env`)."""
        for _ in range(3):  # a dying raylet may still be starting workers
            pids = processes_marked(self.id) + [
                pid for node in self.nodes.values() for pid in processes_marked(node.marker)]
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            time.sleep(0.5)
        for node in self.nodes.values():
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                pass  # killed above; nothing more to do
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def process_env(self, **extra: str) -> dict[str, str]:
        """The environment for a further process of ours that joins the cluster (marked)."""
        return {**self.env, MARKER: self.id, **extra}
