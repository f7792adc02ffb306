"""The python tool kind: runs the node's `code` once per call, in a separate, limited process.
OFF unless `SESAME_PYTHON_ENABLED=true`: a disabled server answers `action_required` naming that
setting (the request is valid; the operator must act), and never starts a process.

Each call: `python -I -S nodes/sandbox_runner.py` (isolated mode, no site-packages) with
- an empty environment (no inherited variables, so no keys) and a fresh temporary working
  directory, removed afterwards;
- CPU time (`SESAME_PYTHON_CPU_S`), address space (`SESAME_PYTHON_MEMORY_MB`, RLIMIT_AS), file
  size and printed-output (`SESAME_PYTHON_OUTPUT_BYTES`) limits set by the runner before the code
  runs, and the wall time (`SESAME_PYTHON_WALL_S`) enforced here by killing the process group;
- no network: new network and PID namespaces via `unshare` (no interface but a downed loopback;
  only its own processes visible) when the machine allows it — else socket creation is blocked
  inside the child, which is weaker (best effort) and is logged once at warning level;
- when Sesame runs as root, the code runs as `nobody` (it cannot read root's files or other
  processes' environments).
The arguments go in as JSON and the result comes back as JSON (`{"result", "stdout"}`). A limit
reached, an exception or a non-JSON result fails the call (not retried: it would fail again).
This is not a full filesystem jail: world-readable files stay readable.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

from graph.errors import ProviderError
from graph.kinds import NodeOutput, RunContext, ToolFunction, ToolRequest
from graph.schema import ActionRequired, NodeSpec, ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_calls import check_actions, finished, function_name, result

log = logging.getLogger(__name__)

RUNNER = Path(__file__).with_name("sandbox_runner.py")
NOBODY = 65534
_NAMESPACES = ["--net", "--pid", "--fork", "--mount-proc", "--kill-child"]
_ROOTLESS = ["--user", "--map-root-user", *_NAMESPACES]
_REAP_S = 5.0  # how long a killed child's pipes may take to close


class PythonToolKind:
    def __init__(self, settings: Settings):
        self._settings = settings
        self._isolation: list[str] | None = None  # the command prefix, found on first use

    @staticmethod
    def check(spec: NodeSpec) -> list[tuple[str, str]]:
        assert isinstance(spec, ToolNodeSpec)
        if not isinstance(spec.code, str) or not spec.code.strip():
            return [("code", "a python tool needs code: a string, a program that sets `result` or "
                             "defines main(arguments)")]
        return []

    async def preflight(self, spec: NodeSpec, context: RunContext) -> list[ActionRequired]:
        if self._settings.python_enabled:
            return []
        return [ActionRequired(node_id=spec.id, kind="kind_disabled", env_var="SESAME_PYTHON_ENABLED",
                               message=f'node "{spec.id}" runs Python code, which this server does not '
                                       "allow: set SESAME_PYTHON_ENABLED=true on the Sesame server "
                                       "(then restart it) to enable the python tool")]

    async def functions(self, spec: ToolNodeSpec, context: RunContext) -> list[ToolFunction]:
        return [ToolFunction(name=function_name(spec), node_id=spec.id,
                             description=spec.tool_description or "Run this node's Python code on the arguments",
                             parameters=spec.input_schema or {"type": "object", "additionalProperties": True})]

    async def run(self, request: ToolRequest) -> NodeOutput:
        spec = request.spec
        if not self._settings.python_enabled:
            raise ProviderError(f'node "{spec.id}": the python tool is disabled (SESAME_PYTHON_ENABLED)',
                                "kind_disabled", False)
        check_actions(spec, request.calls, [function_name(spec)])
        results = [await self._run_call(spec, call) for call in request.calls]
        return finished(spec, request.calls, results)

    async def _run_call(self, spec: ToolNodeSpec, call: ToolCall) -> dict[str, Any]:
        s = self._settings
        prefix = await self._prefix()
        drop = os.geteuid() == 0 and "--user" not in prefix
        job = {"code": spec.code or "", "arguments": call.arguments, "block_sockets": not prefix,
               "uid": NOBODY if drop else None, "gid": NOBODY if drop else None,
               "limits": {"cpu_s": s.python_cpu_s, "memory_bytes": s.python_memory_mb * 2**20,
                          "output_bytes": s.python_output_bytes}}
        workdir = tempfile.mkdtemp(prefix="sesame-python-")
        try:
            if drop:
                os.chown(workdir, NOBODY, NOBODY)
            envelope = await self._execute(prefix, job, workdir)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if envelope.get("ok"):
            return result(call, True, {"result": envelope.get("result"), "stdout": envelope.get("stdout", "")})
        return result(call, False, error=f'{envelope.get("kind", "error")}: {envelope.get("error")}')

    async def _execute(self, prefix: list[str], job: dict[str, Any], workdir: str) -> dict[str, Any]:
        s = self._settings
        process = await asyncio.create_subprocess_exec(
            *prefix, sys.executable, "-I", "-S", str(RUNNER), cwd=workdir, env={},
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL, start_new_session=True)
        cap = s.python_output_bytes * 2 + 4096  # the runner enforces the limit; this is the backstop
        try:
            async with asyncio.timeout(s.python_wall_s):
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(json.dumps(job).encode())
                await process.stdin.drain()
                process.stdin.close()
                output = await _read_capped(process.stdout, cap)
                await process.wait()
        except TimeoutError:
            return {"ok": False, "kind": "timeout", "error": f"wall-time limit of {s.python_wall_s:g} s reached"}
        except _TooMuch:
            return {"ok": False, "kind": "output", "error": f"the output is over {cap} bytes"}
        finally:
            _kill_group(process)
            await _reap(process)
        try:
            envelope = json.loads(output)
        except (json.JSONDecodeError, UnicodeDecodeError):
            envelope = None
        if not isinstance(envelope, dict):
            return {"ok": False, "kind": "killed", "error": "the process ended without a result (exit status "
                    f"{process.returncode}): a CPU-time or memory limit, or the code wrote to the real stdout"}
        return envelope

    async def _prefix(self) -> list[str]:
        """`unshare` with new network and PID namespaces if this machine allows it (as root, or
        through a user namespace); else [] and sockets are blocked inside the child."""
        if self._isolation is None:
            unshare = shutil.which("unshare")
            self._isolation = []
            for options in ([_NAMESPACES, _ROOTLESS] if unshare else []):
                probe = await asyncio.create_subprocess_exec(
                    unshare, *options, "--", sys.executable, "-I", "-S", "-c", "pass", env={},
                    stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
                if await probe.wait() == 0:
                    self._isolation = [unshare, *options, "--"]
                    break
            if not self._isolation:
                log.warning("python tool: no network namespace available (unshare failed); sockets "
                            "are blocked inside the child process instead, which is weaker")
        return self._isolation


class _TooMuch(Exception):
    pass


async def _read_capped(stream: asyncio.StreamReader, cap: int) -> bytes:
    data = bytearray()
    while chunk := await stream.read(65536):
        data += chunk
        if len(data) > cap:
            raise _TooMuch()
    return bytes(data)


async def _reap(process: asyncio.subprocess.Process) -> None:
    """Wait for a killed child. asyncio's `wait()` returns only once the child's pipes are closed,
    and a stdout left unread (output over the cap) stays paused and never closes: read it to its
    end first. Bounded, so a descendant that kept the pipe open cannot hang the node."""
    assert process.stdout is not None
    try:
        async with asyncio.timeout(_REAP_S):
            while await process.stdout.read(65536):
                pass
            await process.wait()
    except TimeoutError:
        log.warning("python tool: a child's output pipe stayed open %g s after it was killed", _REAP_S)


def _kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
