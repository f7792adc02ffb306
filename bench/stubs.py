"""The loopback stubs of tests/stubs, each run in a process of its own.

On a 2-core machine a stub that shares the engine's process (and GIL) would be part of what is
measured; in its own process it costs CPU the bench can account for (`StubProcess.cpu_s`). The
child prints one JSON line `{"base_url", "pid"}` once it listens, then serves until its stdin
closes — so it also dies with a parent that crashed.

    python -m bench.stubs openai
    python -m bench.stubs composio --execute-delay-ms 200 --active-user alex@example.com
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
COMPOSIO_KEY = "bench-composio-key"
_TRIM_EVERY_S = 5.0  # the stubs record every request; drop the records so memory stays flat


class StubProcess:
    def __init__(self, which: str, *args: str):
        self.which = which
        self._process = subprocess.Popen([sys.executable, "-m", "bench.stubs", which, *args], cwd=ROOT,
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        line = self._process.stdout.readline() if self._process.stdout else ""
        if not line:
            self.stop()
            raise RuntimeError(f"the {which} stub did not start (exit code {self._process.poll()})")
        ready = json.loads(line)
        self.base_url: str = ready["base_url"]
        self.pid: int = ready["pid"]
        self._ps = psutil.Process(self.pid)

    def cpu_s(self) -> float:
        times = self._ps.cpu_times()
        return times.user + times.system

    def stop(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("which", choices=["openai", "composio"])
    parser.add_argument("--execute-delay-ms", type=float, default=0.0)
    parser.add_argument("--active-user", action="append", default=[])
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    if args.which == "openai":
        from tests.stubs.openai_stub import OpenAIStub

        stub = OpenAIStub().start()
        trim = stub.reset
    else:
        from tests.stubs.composio_stub import ComposioStub

        stub = ComposioStub(api_key=COMPOSIO_KEY).start()
        stub.execute_delay_s = args.execute_delay_ms / 1000
        stub.active_users = {(user, "gmail") for user in args.active_user}
        trim = stub.requests.clear

    stop = threading.Event()

    def trimmer() -> None:
        while not stop.wait(_TRIM_EVERY_S):
            trim()

    threading.Thread(target=trimmer, daemon=True).start()
    print(json.dumps({"base_url": stub.base_url, "pid": psutil.Process().pid}), flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    stop.set()
    stub.stop()


if __name__ == "__main__":
    main()
