"""A loopback Anthropic Messages API (`POST /v1/messages`) that records what it received.

The real `anthropic` SDK talks to it with `base_url=http://127.0.0.1:PORT`. Like the OpenAI stub,
a test steers one call through a `"stub"` object in the request body (a node's `parameters` are
passed through to the provider):

    {"stub": {"latency_ms": 300, "content": "hello",          # reply text (default "echo: <prompt>")
              "tool_calls": [{"name": "send_email", "arguments": {...}}] | "none",
              "status": 529, "error_type": "overloaded_error", "message": "...", "retry_after": 2,
              "chunk_delay_ms": 50,      # streaming: sleep before each event
              "error_after": 4,          # streaming: an `error` event (overloaded) after 4 events
              "drop_after": 4}}          # streaming: close the connection after 4 events

Without directives a call that offers tools gets one `tool_use` of the first tool (arguments from
its input schema, as the OpenAI stub makes them). A `"stream": true` request is answered with the
Messages streaming events: message_start, then per content block content_block_start, its
deltas (text word by word; tool input as `input_json_delta` pieces), content_block_stop, then
message_delta (stop reason, output tokens) and message_stop — with a `ping` after the start.
Requests without a key (`x-api-key`, or `Authorization: Bearer` as SDK 2.x sends it) get a 401
`authentication_error`.
"""

from __future__ import annotations

import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.stubs.quiet_server import QuietHTTPServer
from typing import Any

from tests.stubs.openai_stub import _arguments_for


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started_at: float
    status: int | None = None
    response: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    event_times: list[float] = field(default_factory=list)

    @property
    def tool_names(self) -> list[str]:
        return [t["name"] for t in self.body.get("tools", [])]

    @property
    def api_key(self) -> str | None:
        """The key as sent: `x-api-key`, or `Authorization: Bearer` (what SDK 2.x sends)."""
        bearer = self.headers.get("authorization", "")
        return self.headers.get("x-api-key") or (bearer[len("Bearer "):] if bearer.startswith("Bearer ") else None)


class AnthropicStub:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: list[Recorded] = []
        stub = self

        class Handler(_Handler):
            owner = stub

        self._server = QuietHTTPServer(("127.0.0.1", 0), Handler, bind_and_activate=False)
        self._server.request_queue_size = 256
        self._server.daemon_threads = True
        self._server.server_bind()
        self._server.server_activate()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "AnthropicStub":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def requests(self) -> list[Recorded]:
        with self._lock:
            return list(self._requests)

    def reset(self) -> None:
        with self._lock:
            self._requests.clear()

    def _record(self, record: Recorded) -> None:
        with self._lock:
            self._requests.append(record)


class _Handler(BaseHTTPRequestHandler):
    owner: AnthropicStub
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        record = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time())
        self.owner._record(record)
        directive = body.get("stub") or {}
        time.sleep(float(directive.get("latency_ms", 0)) / 1000)
        status, reply, headers = _answer(self.path, record, directive)
        record.status, record.response = status, reply
        if status == 200 and body.get("stream"):
            self._stream(reply, directive, record)
        else:
            self._send(status, reply, headers)

    def _send(self, status: int, reply: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: dict[str, Any], directive: dict[str, Any], record: Recorded) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        delay = float(directive.get("chunk_delay_ms", 0)) / 1000
        for index, event in enumerate(_events(reply)):
            if index == directive.get("drop_after"):
                self.close_connection = True
                self.wfile.write(b"9\r\nevent: co")  # a torn chunk, then the connection closes
                return
            if index == directive.get("error_after"):
                self._write("error", _error("overloaded_error", directive.get("message", "Overloaded")))
                break
            time.sleep(delay)
            record.events.append(event)
            record.event_times.append(time.time())
            self._write(event["type"], event)
        self.wfile.write(b"0\r\n\r\n")

    def _write(self, name: str, data: dict[str, Any]) -> None:
        event = f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
        self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")


def _error(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


def _answer(path: str, record: Recorded, directive: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, str]]:
    if path != "/v1/messages":
        return 404, _error("not_found_error", f"no route {path}"), {}
    if "status" in directive:
        headers = {"retry-after": str(directive["retry_after"])} if "retry_after" in directive else {}
        return (int(directive["status"]), _error(directive.get("error_type", "api_error"),
                                                 directive.get("message", f"stub error {directive['status']}")), headers)
    if not record.api_key:
        return 401, _error("authentication_error", "no API key (x-api-key or Authorization: Bearer)"), {}
    body = record.body
    prompt = _text(body["messages"][-1]["content"]) if body.get("messages") else ""
    content: list[dict[str, Any]] = []
    text = directive.get("content", f"echo: {prompt}")
    if text:
        content.append({"type": "text", "text": text})
    wanted = directive.get("tool_calls")
    tools = body.get("tools") or []
    if wanted is None and tools:
        wanted = [{"name": tools[0]["name"], "arguments": _arguments_for(tools[0].get("input_schema") or {}, prompt)}]
    for index, call in enumerate(wanted if isinstance(wanted, list) else []):
        content.append({"type": "tool_use", "id": f"toolu_{index}", "name": call["name"], "input": call["arguments"]})
    input_tokens = sum(len(_text(m["content"]).split()) for m in body.get("messages", [])) + len(str(body.get("system", "")).split())
    return 200, {"id": f"msg_{int(time.time() * 1000)}", "type": "message", "role": "assistant",
                 "model": body.get("model", "stub"), "content": content,
                 "stop_reason": "tool_use" if any(c["type"] == "tool_use" for c in content) else "end_turn",
                 "stop_sequence": None,
                 "usage": {"input_tokens": input_tokens, "output_tokens": len(text.split()) if text else 1}}, {}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return " ".join(block.get("text", "") for block in content if isinstance(block, dict))


def _events(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The Messages streaming events for a whole `reply`."""
    start = {**reply, "content": [], "stop_reason": None,
             "usage": {"input_tokens": reply["usage"]["input_tokens"], "output_tokens": 1}}
    events: list[dict[str, Any]] = [{"type": "message_start", "message": start}, {"type": "ping"}]
    for index, block in enumerate(reply["content"]):
        if block["type"] == "text":
            events.append({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})
            events += [{"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": word}}
                       for word in re.findall(r"\S+\s*|\s+", block["text"])]
        else:
            events.append({"type": "content_block_start", "index": index,
                           "content_block": {**block, "input": {}}})
            partial = json.dumps(block["input"])
            third = -(-len(partial) // 3) or 1
            events += [{"type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": partial[i:i + third]}}
                       for i in range(0, len(partial), third)]
        events.append({"type": "content_block_stop", "index": index})
    events.append({"type": "message_delta", "delta": {"stop_reason": reply["stop_reason"], "stop_sequence": None},
                   "usage": {"output_tokens": reply["usage"]["output_tokens"]}})
    events.append({"type": "message_stop"})
    return events
