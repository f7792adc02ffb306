"""One engine in a process of its own, measured step by step on bench.run's command.

    python -m bench.engine_process ENGINE PLAN.json REPLY_FD

Reads one JSON command a line on stdin — `{"op": "start"}`, then
`{"op": "prepare"|"time"|"finish", "graph": i}`,
`{"op": "load", "index": i}`, `{"op": "profile"}`, `{"op": "close"}` — and answers each with
one JSON line on REPLY_FD (`{"ok": true, "value": ...}` or `{"ok": false, "error": ...}`);
"close" answers with the engine's raw results. Own processes keep engines apart (threads, a Ray
cluster, garbage); the Sesame engines start their own local Ray (and Serve, for HTTP) here,
after the environment (stub URLs, keys) is set, and stop it at the end. Stdin closing stops it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

from bench import sesame_adapter
from bench.engines import Engine, LangGraph, PlainAsyncio
from bench.measure import Session

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


async def serve_commands(session: Session, replies: Any) -> None:
    loop = asyncio.get_running_loop()
    steps = {"start": lambda c: session.start(), "prepare": lambda c: session.prepare(c["graph"]), "time": lambda c: session.time_graph(c["graph"]),
             "load": lambda c: session.load(c["index"]), "profile": lambda c: session.profile()}
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        try:
            if command["op"] == "close":
                value: Any = await session.close()
            elif command["op"] == "finish":
                value = session.finish_graph(command["graph"])
            else:
                value = await steps[command["op"]](command)
            reply = {"ok": True, "value": value}
        except Exception as exc:  # reported to bench.run, which drops this engine
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
        if command["op"] == "close" or not reply["ok"]:
            return


def main() -> None:
    name, plan_path, reply_fd = sys.argv[1:4]
    plan: dict[str, Any] = json.loads(Path(plan_path).read_text())
    uses_ray = name in ("sesame-ray", "sesame-http")
    replies = os.fdopen(int(reply_fd), "w")
    direct_port = _free_port() if name == "sesame-http" else None
    if uses_ray:
        sesame_adapter.start_ray(direct_port)
    try:
        serve_url = sesame_adapter.start_serve(_free_port(), direct_port) if direct_port else None
        session = Session(build_engine(name, serve_url), {**plan, "threads": in_process_threads()},
                          plan["stub_pids"])
        asyncio.run(serve_commands(session, replies))
    finally:
        if name == "sesame-http":
            sesame_adapter.stop_serve()
        if uses_ray:
            sesame_adapter.stop_ray()


if __name__ == "__main__":
    main()
