"""A loopback HTTP server for the http tool's tests: it records every request and answers by path.

    /echo...                 200 JSON {"method", "path", "query", "headers", "body"} of the request
    /redirect?to=URL&status=302   a redirect to URL
    /big?n=5000              n bytes of text
    /slow?s=2                answers after s seconds
    /status/404              that status, with a JSON body
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler

from tests.stubs.quiet_server import QuietHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes


class HttpTarget:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        target = self

        class Handler(_Handler):
            owner = target

        self._server = QuietHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "HttpTarget":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: HttpTarget
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        self.owner.requests.append(Recorded(self.command, parts.path, query, headers, body))
        if parts.path == "/redirect":
            self._reply(int(query.get("status", 302)), b"", {"Location": query["to"]})
        elif parts.path == "/big":
            self._reply(200, b"x" * int(query["n"]), {"Content-Type": "text/plain"})
        elif parts.path == "/slow":
            time.sleep(float(query["s"]))
            self._reply(200, b"late", {"Content-Type": "text/plain"})
        elif parts.path.startswith("/status/"):
            self._reply(int(parts.path.rsplit("/", 1)[1]), b'{"error": "as asked"}', {"Content-Type": "application/json"})
        else:
            echo = {"method": self.command, "path": parts.path, "query": query, "headers": headers,
                    "body": body.decode("utf-8", "replace")}
            self._reply(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

    def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)
