"""A small MCP server of ours for the mcp tool kind's tests, built with the official `mcp` SDK.

    python tests/stubs/mcp_server.py stdio --log calls.jsonl
    python tests/stubs/mcp_server.py http --port 8123 --log calls.jsonl   # http://127.0.0.1:8123/mcp

Tools: `add(a, b)`, `echo(text)`, `fail(message)` (answers with `isError`), `slow(seconds)`.
Every tool call is appended to the log as a JSON line `{"tool", "arguments", "headers"}` (the
HTTP headers of the request, for the http transport; `{}` over stdio), so a test can assert
what the server received. It listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import contextvars
import json
import time
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

_headers: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("headers", default={})


def build(log_path: str) -> MCPServer:
    server = MCPServer("sesame-test-server")

    def record(tool: str, arguments: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as log:
            log.write(json.dumps({"tool": tool, "arguments": arguments, "headers": _headers.get()}) + "\n")

    @server.tool(description="Add two integers and return the sum.")
    def add(a: int, b: int) -> int:
        record("add", {"a": a, "b": b})
        return a + b

    @server.tool(description="Return the text unchanged.")
    def echo(text: str) -> str:
        record("echo", {"text": text})
        return text

    @server.tool(description="Always fails with the given message.")
    def fail(message: str) -> str:
        record("fail", {"message": message})
        raise ToolError(message)

    @server.tool(description="Sleep for some seconds, then answer.")
    def slow(seconds: float) -> str:
        record("slow", {"seconds": seconds})
        time.sleep(seconds)
        return "done"

    return server


def _with_headers(app: Any) -> Any:
    """ASGI middleware that makes the request headers visible to `record`."""

    async def wrapped(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            _headers.set({k.decode(): v.decode() for k, v in scope["headers"]})
        await app(scope, receive, send)

    return wrapped


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["stdio", "http"])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    server = build(args.log)
    if args.transport == "stdio":
        server.run("stdio")
        return
    import uvicorn

    app = server.streamable_http_app(streamable_http_path="/mcp", json_response=True)
    uvicorn.run(_with_headers(app), host="127.0.0.1", port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
