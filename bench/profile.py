"""Where the CPU goes: py-spy samples an engine's processes while one extra load runs
(`scripts/bench --profile DIR`), and the samples are summed by area (Ray, the openai SDK,
pydantic, Sesame's own modules...) and by Sesame file, inclusive.

The profiled load is not one of the measured loads: sampling costs CPU on a 2-core machine.
Raw collapsed stacks are kept in DIR (`<engine>-<process>.txt`, flamegraph.pl / speedscope read
them).
"""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

# Leaf frame's file → area; the first pattern that matches wins.
AREAS = [
    ("Sesame graph/", r"^graph/"), ("Sesame nodes/", r"^nodes/"), ("Sesame serve_app", r"^serve_app\.py"),
    ("bench", r"^bench/"), ("Ray Serve", r"^ray/serve/"), ("Ray core", r"^ray/|_raylet"),
    ("openai SDK", r"^openai/"), ("HTTP client (httpx2/httpcore2/anyio/h11)", r"^(httpx2?|httpcore2?|anyio|h11)/"),
    ("composio SDK", r"^composio"), ("pydantic", r"^pydantic"),
    ("ASGI (uvicorn/starlette/fastapi)", r"^(uvicorn|starlette|fastapi)/"),
    ("LangGraph", r"^(langgraph|langchain_core)/"), ("asyncio", r"^asyncio/"), ("json", r"^json/"),
    ("threads (threading, concurrent.futures)", r"^(threading\.py|concurrent/|queue\.py)"),
    ("logging", r"^logging/"), ("copy / pickle", r"^(copy|pickle|copyreg)\.py"),
]
SESAME_FILES = r"\((graph/\w+\.py|nodes/\w+\.py|serve_app\.py):"
_FRAME = re.compile(r"\(([^():]+):\d+\)$")


def py_spy() -> str | None:
    found = Path(sys.executable).parent / "py-spy"
    return str(found) if found.exists() else shutil.which("py-spy")


class Profiler:
    """py-spy on each of `targets` ({label: pid}) from `with` entry to exit."""

    def __init__(self, out_dir: Path, prefix: str, targets: dict[str, int], rate: int = 100):
        self._out_dir = out_dir
        self._prefix = prefix
        self._targets = targets
        self._rate = rate
        self._running: dict[str, tuple[subprocess.Popen[bytes], Path]] = {}

    def __enter__(self) -> "Profiler":
        executable = py_spy()
        if executable is None:
            raise RuntimeError("py-spy is not installed: pip install -e '.[bench]'")
        self._out_dir.mkdir(parents=True, exist_ok=True)
        for label, pid in self._targets.items():
            path = self._out_dir / f"{self._prefix}-{re.sub(r'[^A-Za-z0-9_.-]+', '_', label)}.txt"
            process = subprocess.Popen([executable, "record", "--pid", str(pid), "--rate", str(self._rate),
                                        "--format", "raw", "--gil", "--nonblocking", "--output", str(path)],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self._running[label] = (process, path)
        time.sleep(1.0)  # let py-spy attach before the load starts
        return self

    def __exit__(self, *exc: object) -> None:
        for process, _ in self._running.values():
            process.send_signal(signal.SIGINT)
        for process, _ in self._running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def summaries(self) -> dict[str, Any]:
        return {label: summarise(path) for label, (_, path) in self._running.items() if path.exists()}


def summarise(path: Path, top: int = 12) -> dict[str, Any]:
    """Shares of samples: by the leaf frame's area (self time), and per Sesame file inclusive."""
    areas: Counter[str] = Counter()
    files: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        total += count
        leaf = frames[-1]
        areas[_area(leaf)] += count
        functions[leaf.split(" (")[0] + " " + _short(leaf)] += count
        for name in {m.group(1) for f in frames if (m := re.search(SESAME_FILES, f))}:
            files[name] += count
    share = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {"samples": total,
            "self_by_area_pct": {k: share(v) for k, v in areas.most_common()},
            "inclusive_by_sesame_file_pct": {k: share(v) for k, v in files.most_common()},
            "top_leaf_functions_pct": {k: share(v) for k, v in functions.most_common(top)}}


def _area(frame: str) -> str:
    match = _FRAME.search(frame)
    where = match.group(1) if match else frame
    return next((name for name, pattern in AREAS if re.search(pattern, where)), "other (stdlib, native)")


def _short(frame: str) -> str:
    match = _FRAME.search(frame)
    return match.group(1) if match else ""
