"""A loopback OpenAI-compatible chat-completions server that records what it received.

The real `openai` SDK talks to it through `OPENAI_BASE_URL=http://127.0.0.1:PORT/v1`. A test
steers one call through a `"stub"` object in the request body, which a node sends by putting
it in its `parameters` (Sesame passes parameters through to the provider):

    {"stub": {"latency_ms": 300,            # sleep before answering
              "content": "hello",           # reply text (default: "echo: <last user message>")
              "tool_calls": [{"name": "GMAIL_SEND_EMAIL", "arguments": {...}}] | "none",
              "status": 400, "message": "...", "retry_after": 2,   # answer with an error
              "fail_first": 2, "key": "k",  # fail the first 2 calls with this key, then succeed
              "fail_rate": 0.05,            # fail this share of calls at random (429, 500, 503, 400)
              # only for `"stream": true` requests:
              "chunk_delay_ms": 50,         # sleep before each chunk (tokens arrive over time)
              "error_after": 3,             # after 3 chunks send an error event instead of the rest
              "drop_after": 3}}             # after 3 chunks close the connection mid-body

A tool call may be `{"type": "custom", "name": ..., "input": "..."}` (a non-function item).
Without directives a call that offers tools gets one call of the first tool, its arguments made
from the tool's JSON schema (an e-mail address found in the prompt for *email* fields).

A `"stream": true` request is answered as OpenAI does, as server-sent events over a chunked body:
`data: {chat.completion.chunk}` lines — the role, then the content word by word, then each tool
call as a first delta with its id and name followed by its arguments in three pieces, then the
finish reason — a usage chunk (empty `choices`) when `stream_options.include_usage`, and
`data: [DONE]`. The record's `response` is the equivalent whole `chat.completion`, `chunks` the
chunks sent and `chunk_times` when each was sent.
Built on `http.server` with Nagle off and a deep backlog (docs/facts.md: otherwise replies stall on
delayed ACK and bursts are dropped).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler

from tests.stubs.quiet_server import QuietHTTPServer
from typing import Any

_RANDOM_FAILURES = (429, 500, 503, 400)  # what "fail_rate" answers: mostly retryable, some not
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    started_at: float
    finished_at: float | None = None
    status: int | None = None
    response: dict[str, Any] | None = None
    chunks: list[dict[str, Any]] = field(default_factory=list)
    chunk_times: list[float] = field(default_factory=list)

    @property
    def user_message(self) -> str:
        users = [m for m in self.body.get("messages", []) if m.get("role") == "user"]
        return users[-1]["content"] if users else ""

    @property
    def system_message(self) -> str | None:
        systems = [m for m in self.body.get("messages", []) if m.get("role") == "system"]
        return systems[0]["content"] if systems else None

    @property
    def tool_names(self) -> list[str]:
        return [t["function"]["name"] for t in self.body.get("tools", [])]


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: list[Recorded] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    failures: Counter = field(default_factory=Counter)


class OpenAIStub:
    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self._state = _State()
        state = self._state

        class Handler(_Handler):
            stub_state = state

        self._server = QuietHTTPServer((host, port), Handler, bind_and_activate=False)
        self._server.request_queue_size = 1024
        self._server.daemon_threads = True
        self._server.server_bind()
        self._server.server_activate()
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def start(self) -> "OpenAIStub":
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @property
    def requests(self) -> list[Recorded]:
        with self._state.lock:
            return list(self._state.requests)

    @property
    def max_in_flight(self) -> int:
        return self._state.max_in_flight

    def reset(self) -> None:
        with self._state.lock:
            self._state.requests.clear()
            self._state.failures.clear()
            self._state.max_in_flight = self._state.in_flight


class _Handler(BaseHTTPRequestHandler):
    stub_state: _State
    disable_nagle_algorithm = True
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # keep test output quiet
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        record = Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, body,
                          time.time())
        state = self.stub_state
        with state.lock:
            state.requests.append(record)
            state.in_flight += 1
            state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            directive = body.get("stub") or {}
            time.sleep(float(directive.get("latency_ms", 0)) / 1000)
            if not self.path.endswith("/chat/completions"):
                status, reply, headers = 404, _error(f"no route {self.path}", "not_found"), {}
            else:
                status, reply, headers = _answer(body, directive, record, state)
            record.status, record.response = status, reply
            if status == 200 and body.get("stream"):
                self._stream(reply, body, directive, record)
            else:
                record.finished_at = time.time()  # before the reply leaves: a child call starts after
                self._send(status, reply, headers)
        finally:
            with state.lock:
                state.in_flight -= 1

    def _send(self, status: int, reply: dict[str, Any], headers: dict[str, str]) -> None:
        data = json.dumps(reply).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _stream(self, reply: dict[str, Any], body: dict[str, Any], directive: dict[str, Any],
                record: Recorded) -> None:
        """Send `reply` as chat.completion.chunk events over a chunked body, one write each."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        delay = float(directive.get("chunk_delay_ms", 0)) / 1000
        for index, chunk in enumerate(_chunks(reply, include_usage)):
            if index == directive.get("drop_after"):
                record.finished_at = time.time()
                self.close_connection = True
                self.wfile.write(b"5\r\ndata:")  # a torn chunk, then the connection closes
                return
            if index == directive.get("error_after"):
                error = _error(directive.get("message", "stub stream error"), "server_error")
                error["error"]["type"] = "server_error"
                self._event(error)
                break
            time.sleep(delay)
            record.chunks.append(chunk)
            record.chunk_times.append(time.time())
            self._event(chunk)
        record.finished_at = time.time()
        self._write(b"data: [DONE]\n\n")
        self.wfile.write(b"0\r\n\r\n")

    def _event(self, data: dict[str, Any]) -> None:
        self._write(b"data: " + json.dumps(data).encode() + b"\n\n")

    def _write(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")


def _chunks(reply: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The chat.completion.chunk sequence OpenAI streams for a whole `reply`."""
    [choice] = reply["choices"]
    message = choice["message"]

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        return {"id": reply["id"], "object": "chat.completion.chunk", "created": reply["created"],
                "model": reply["model"], "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                                      "finish_reason": finish_reason}]}

    chunks = [chunk({"role": "assistant", "content": ""})]
    chunks += [chunk({"content": word}) for word in re.findall(r"\S+\s*|\s+", message["content"] or "")]
    for index, call in enumerate(message.get("tool_calls", [])):
        if call["type"] != "function":
            chunks.append(chunk({"tool_calls": [{"index": index, **call}]}))
            continue
        arguments = call["function"]["arguments"]
        chunks.append(chunk({"tool_calls": [{"index": index, "id": call["id"], "type": "function",
                                              "function": {"name": call["function"]["name"], "arguments": ""}}]}))
        third = -(-len(arguments) // 3) or 1
        chunks += [chunk({"tool_calls": [{"index": index, "function": {"arguments": arguments[i:i + third]}}]})
                   for i in range(0, len(arguments), third)]
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**chunk({}), "choices": [], "usage": reply["usage"]})
    return chunks


def _error(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None,
                      "code": code}}


def _answer(body: dict[str, Any], directive: dict[str, Any], record: Recorded,
            state: _State) -> tuple[int, dict[str, Any], dict[str, str]]:
    if "status" in directive:
        key = directive.get("key", "")
        with state.lock:
            state.failures[key] += 1
            failing = state.failures[key] <= directive.get("fail_first", 10**9)
        if failing:
            headers = {"Retry-After": str(directive["retry_after"])} if "retry_after" in directive else {}
            message = directive.get("message", f"stub error {directive['status']}")
            return int(directive["status"]), _error(message, "stub_error"), headers
    if random.random() < float(directive.get("fail_rate", 0)):  # injected faults, for load tests
        status = random.choice(_RANDOM_FAILURES)
        return status, _error(f"stub injected failure {status}", "stub_fault"), \
            {"Retry-After": "0"} if status == 429 else {}
    if not record.headers.get("authorization", "").startswith("Bearer "):
        return 401, _error("missing API key", "invalid_api_key"), {}

    message: dict[str, Any] = {"role": "assistant",
                               "content": directive.get("content", f"echo: {record.user_message}")}
    calls = _tool_calls(body, directive, record.user_message)
    if calls:
        message["tool_calls"] = calls
    prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in body.get("messages", []))
    completion_tokens = len(str(message["content"]).split())
    return 200, {
        "id": f"chatcmpl-{len(state.requests)}", "object": "chat.completion",
        "created": int(time.time()), "model": body.get("model", "stub"),
        "choices": [{"index": 0, "message": message,
                     "finish_reason": "tool_calls" if calls else "stop"}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    }, {}


def _tool_calls(body: dict[str, Any], directive: dict[str, Any], prompt: str) -> list[dict[str, Any]]:
    wanted = directive.get("tool_calls")
    tools = body.get("tools") or []
    if wanted == "none" or (wanted is None and not tools):
        return []
    if wanted is None:
        function = tools[0]["function"]
        wanted = [{"name": function["name"],
                   "arguments": _arguments_for(function.get("parameters") or {}, prompt)}]
    return [{"id": f"call_{index}", "type": "custom",
             "custom": {"name": call["name"], "input": call.get("input", "")}}
            if call.get("type") == "custom" else
            {"id": f"call_{index}", "type": "function",
             "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])
                          if not isinstance(call["arguments"], str) else call["arguments"]}}
            for index, call in enumerate(wanted)]


def _arguments_for(schema: dict[str, Any], prompt: str) -> dict[str, Any]:
    found = _EMAIL.search(prompt)
    arguments: dict[str, Any] = {}
    for name, prop in (schema.get("properties") or {}).items():
        if name not in schema.get("required", []) and name not in ("subject", "body"):
            continue
        if prop.get("type", "string") != "string":
            continue
        arguments[name] = found.group(0) if "email" in name and found else f"{name} about: {prompt}"
    return arguments
