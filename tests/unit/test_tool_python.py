"""The python tool kind: real subprocesses with real limits. Each limit is proven by code that
breaks it; the network is proven closed by a real listener on loopback that gets no connection."""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

import nodes.tool_python as tool_python
from graph.errors import ProviderError
from graph.kinds import RunContext, ToolRequest
from graph.schema import ToolCall, ToolNodeSpec
from graph.settings import Settings
from nodes.tool_python import PythonToolKind

CONTEXT = RunContext(run_id="run-1", user_id="u1", conversation_id="c1")
LIMITS = {"python_enabled": True, "python_cpu_s": 1, "python_wall_s": 4.0, "python_memory_mb": 128,
          "python_output_bytes": 4096}


def spec(code: str) -> ToolNodeSpec:
    return ToolNodeSpec(id="py", tool_name="calc", tool_type="python", code=code)


def run(code: str, arguments: dict[str, Any] | None = None, kind: PythonToolKind | None = None, **settings: Any):  # type: ignore[no-untyped-def]
    kind = kind or PythonToolKind(Settings(**{**LIMITS, **settings}))
    request = ToolRequest(spec=spec(code), context=CONTEXT,
                          calls=[ToolCall(id="c1", action="calc", arguments=arguments or {})])
    output = asyncio.run(kind.run(request))
    [result] = output.output
    return result, output


def failed(code: str, **settings: Any) -> str:
    result, output = run(code, **settings)
    assert not result["successful"] and output.error.code == "tool_call_failed"
    return result["error"]


def test_arguments_in_and_the_result_out_as_json() -> None:
    result, output = run("def main(arguments):\n    print('working')\n    return {'sum': arguments['a'] + arguments['b']}",
                         {"a": 2, "b": 3})
    assert result["successful"] and result["data"] == {"result": {"sum": 5}, "stdout": "working\n"}
    assert output.error is None
    result, _ = run("import math\nresult = math.sqrt(arguments['n'])", {"n": 16})
    assert result["data"]["result"] == 4.0


def test_off_by_default_preflight_names_the_setting_and_nothing_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = PythonToolKind(Settings())
    [item] = asyncio.run(kind.preflight(spec("result = 1"), CONTEXT))
    assert item.kind == "kind_disabled" and item.env_var == "SESAME_PYTHON_ENABLED"

    async def no_process(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a process was started")

    monkeypatch.setattr(asyncio, "create_subprocess_exec", no_process)
    with pytest.raises(ProviderError) as caught:
        run("result = 1", kind=kind)
    assert caught.value.error_code == "kind_disabled"


def test_code_is_required_by_the_static_check() -> None:
    assert PythonToolKind.check(ToolNodeSpec(id="py", tool_name="t", tool_type="python"))[0][0] == "code"
    assert PythonToolKind.check(spec("result = 1")) == []


def test_the_environment_is_empty_and_the_directory_is_a_fresh_temporary_one(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SESAME_TEST_CANARY_SECRET", "do-not-leak")
    result, _ = run("import os\nresult = {'env': dict(os.environ), 'cwd': os.getcwd(), 'files': os.listdir('.')}")
    data = result["data"]["result"]
    # Python itself may set LC_CTYPE when the locale is C (PEP 538); nothing is inherited.
    assert set(data["env"]) <= {"LC_CTYPE"}
    assert data["files"] == [] and "sesame-python-" in data["cwd"]
    assert not os.path.exists(data["cwd"])  # removed afterwards


def test_an_infinite_loop_hits_the_cpu_limit() -> None:
    started = time.monotonic()
    assert "cpu" in failed("while True:\n    pass")
    assert time.monotonic() - started < 4  # well before the wall-time limit


def test_a_sleeping_program_hits_the_wall_time_limit() -> None:
    started = time.monotonic()
    assert "wall-time limit of 1 s" in failed("import time\ntime.sleep(60)", python_wall_s=1.0)
    assert time.monotonic() - started < 3


def test_a_memory_bomb_hits_the_memory_limit() -> None:
    assert "memory" in failed("block = bytearray(512 * 1024 * 1024)")


def test_huge_printed_output_is_refused() -> None:
    assert "printed more than 4096 bytes" in failed("while True:\n    print('x' * 1000)")


def test_a_huge_result_is_refused() -> None:
    assert "over 4096 bytes" in failed("result = 'y' * 100000")


def test_output_written_around_the_capture_is_capped_by_the_parent() -> None:
    message = failed("import os\nos.write(1, b'z' * 200000)")
    assert "output" in message


def test_output_over_the_cap_never_hangs_the_node() -> None:
    """A bug kept as a test: the parent stopped reading at the cap, asyncio paused the pipe, and
    waiting for the killed child never returned — now and then (3 runs in 60 hung before the fix).
    A hundred tries, each bounded, so a hang fails the test instead of stalling the suite."""
    kind = PythonToolKind(Settings(**LIMITS))
    request = ToolRequest(spec=spec("import os\nos.write(1, b'z' * 2000000)"), context=CONTEXT,
                          calls=[ToolCall(id="c1", action="calc", arguments={})])

    async def a_hundred_times() -> list[str]:
        return [(await asyncio.wait_for(kind.run(request), timeout=20)).output[0]["error"] for _ in range(100)]

    assert all("output" in error for error in asyncio.run(a_hundred_times()))


def test_a_socket_cannot_reach_a_listener_on_loopback() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        message = failed(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)")
        assert "Network is unreachable" in message or "network access is disabled" in message
        with pytest.raises(socket.timeout):
            listener.accept()  # nothing came through


def test_without_a_network_namespace_sockets_are_blocked_inside_the_child(monkeypatch: pytest.MonkeyPatch) -> None:
    kind = PythonToolKind(Settings(**LIMITS))
    monkeypatch.setattr(tool_python.shutil, "which", lambda name: None)  # as if unshare were missing
    message = failed_with(kind, "import socket\nsocket.socket()")
    assert "network access is disabled in the python tool" in message


def failed_with(kind: PythonToolKind, code: str) -> str:
    result, _ = run(code, kind=kind)
    assert not result["successful"]
    return result["error"]


def test_an_exception_fails_the_call_with_its_message() -> None:
    assert failed("raise ValueError('bad input')") == "error: ValueError: bad input"


def test_a_result_that_is_not_json_fails_the_call() -> None:
    assert "not JSON" in failed("result = object()")


@pytest.mark.skipif(os.geteuid() != 0, reason="privileges are dropped only when Sesame runs as root")
def test_as_root_the_code_runs_as_nobody_and_cannot_read_other_processes_environments() -> None:
    result, _ = run("import os\nresult = os.getuid()")
    assert result["data"]["result"] == 65534
    # Our own process: invisible in a new PID namespace, unreadable to nobody otherwise.
    message = failed(f"result = open('/proc/{os.getpid()}/environ').read()")
    assert "Permission denied" in message or "No such file" in message
