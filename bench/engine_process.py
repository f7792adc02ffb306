"""One engine, measured in a process of its own (started by bench.run).

    python -m bench.engine_process ENGINE PLAN.json OUT.json

Each engine gets a fresh process so that nothing one engine left behind (threads, a Ray
cluster, garbage) weighs on the next. The Sesame engines start their own local Ray cluster (and
Serve, for HTTP) here, after the environment (stub URLs, keys) is set, and stop it at the end.
"""

from __future__ import annotations

import asyncio
import json
import socket
import sys
from pathlib import Path
from typing import Any

from bench import sesame_adapter
from bench.engines import Engine, LangGraph, PlainAsyncio
from bench.measure import measure

ENGINES = ("asyncio", "langgraph", "sesame-local", "sesame-ray", "sesame-http")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def build_engine(name: str, serve_url: str | None = None) -> Engine:
    """The engine called `name`; the Sesame ones need Ray started (and Serve, for HTTP)."""
    config = sesame_adapter.settings()
    if name == "asyncio":
        return PlainAsyncio(sesame_adapter.NodeCode(config))
    if name == "langgraph":
        return LangGraph(sesame_adapter.NodeCode(config))
    if name == "sesame-local":
        return sesame_adapter.SesameLocal(config)
    if name == "sesame-ray":
        return sesame_adapter.SesameRay(config)
    if name == "sesame-http":
        assert serve_url is not None
        return sesame_adapter.SesameHTTP(serve_url)
    raise ValueError(f"unknown engine {name!r} (known: {', '.join(ENGINES)})")


def in_process_threads() -> int:
    """Threads for blocking SDK calls in an in-process engine: as many as Sesame's whole pool."""
    config = sesame_adapter.settings()
    return config.workers * config.worker_threads


def main() -> None:
    name, plan_path, out_path = sys.argv[1:4]
    plan: dict[str, Any] = json.loads(Path(plan_path).read_text())
    uses_ray = name in ("sesame-ray", "sesame-http")
    if uses_ray:
        sesame_adapter.start_ray()
    try:
        serve_url = sesame_adapter.start_serve(_free_port()) if name == "sesame-http" else None
        engine = build_engine(name, serve_url)
        result = asyncio.run(measure(engine, {**plan, "threads": in_process_threads()}, plan["stub_pids"]))
    finally:
        if name == "sesame-http":
            sesame_adapter.stop_serve()
        if uses_ray:
            sesame_adapter.stop_ray()
    Path(out_path).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
