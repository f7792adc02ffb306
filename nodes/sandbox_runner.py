"""The program a python tool call runs in its own process (started by `nodes.tool_python` as
`python -I -S sandbox_runner.py`, with an empty environment, in a fresh temporary directory,
usually inside new network and PID namespaces). Standard library only; imports nothing of Sesame.

Reads one JSON job from stdin — `{"code", "arguments", "limits": {"cpu_s", "memory_bytes",
"output_bytes"}, "uid", "gid", "block_sockets"}` — then, before the node's code runs: sets the
resource limits (CPU time, address space, file size, no core dumps), drops to `uid`/`gid` when
given (after importing the `PRELOADED` modules), and when asked blocks socket creation (the fallback where no network namespace could be
made). The code sees `arguments`; its result is `main(arguments)` if it defines `main`, else its
global `result`. Writes one JSON envelope to stdout: `{"ok": true, "result", "stdout"}` or
`{"ok": false, "kind": "cpu|memory|output|error", "error"}`. What the code prints is captured
(up to the output limit), never written to the real stdout.
"""

import io
import json
import os
import resource
import signal
import sys
import traceback

# Imported before the privileges are dropped: the interpreter's own library may not be readable
# by `nobody` (a Python installed under /root). The code can import these whatever the install.
PRELOADED = ("base64", "bisect", "calendar", "collections", "copy", "csv", "dataclasses",
             "datetime", "decimal", "difflib", "encodings.idna", "enum", "fractions", "functools", "hashlib", "heapq",
             "html", "itertools", "math", "operator", "pprint", "random", "re", "socket",
             "statistics", "string", "struct", "textwrap", "time", "typing", "unicodedata",
             "urllib.parse", "uuid", "zlib")


class CPULimit(BaseException):
    """Raised in the code by SIGXCPU at the soft CPU limit (the hard limit, a second later, kills)."""


class OutputLimit(BaseException):
    pass


class CappedText(io.TextIOBase):
    def __init__(self, limit):
        self.limit = limit
        self.parts = []
        self.size = 0

    def writable(self):
        return True

    def write(self, text):
        self.size += len(text.encode("utf-8", "replace"))
        if self.size > self.limit:
            raise OutputLimit()
        self.parts.append(text)
        return len(text)

    def value(self):
        return "".join(self.parts)


def limit(kind, value):
    resource.setrlimit(kind, (value, value))


def on_xcpu(signum, frame):
    raise CPULimit()


def block_sockets():
    import _socket
    import socket

    def refused(*args, **kwargs):
        raise PermissionError("network access is disabled in the python tool")

    class NoSocket:
        def __init__(self, *args, **kwargs):
            refused()

    for module in (socket, _socket):
        module.socket = NoSocket
        for name in ("create_connection", "getaddrinfo", "gethostbyname", "socketpair", "fromfd",
                     "create_server"):
            if hasattr(module, name):
                setattr(module, name, refused)


def run(job):
    for name in PRELOADED:
        __import__(name)
    limits = job["limits"]
    cpu = int(limits["cpu_s"])
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    signal.signal(signal.SIGXCPU, on_xcpu)
    limit(resource.RLIMIT_AS, int(limits["memory_bytes"]))
    limit(resource.RLIMIT_FSIZE, int(limits["output_bytes"]) * 16)
    limit(resource.RLIMIT_CORE, 0)
    if job.get("gid") is not None:
        os.setgroups([])
        os.setgid(job["gid"])
        limit(resource.RLIMIT_NPROC, 64)
    if job.get("uid") is not None:
        os.setuid(job["uid"])
    if job.get("block_sockets"):
        block_sockets()

    printed = CappedText(int(limits["output_bytes"]))
    sys.stdout = sys.stderr = printed
    namespace = {"__name__": "__sesame__", "arguments": job["arguments"]}
    try:
        exec(compile(job["code"], "<node code>", "exec"), namespace)
        main = namespace.get("main")
        value = main(job["arguments"]) if callable(main) else namespace.get("result")
        return {"ok": True, "result": value, "stdout": printed.value()}
    except CPULimit:
        return {"ok": False, "kind": "cpu", "error": f"CPU time limit of {cpu} s reached"}
    except MemoryError:
        return {"ok": False, "kind": "memory", "error": "memory limit reached (MemoryError)"}
    except OutputLimit:
        return {"ok": False, "kind": "output", "error": f"printed more than {limits['output_bytes']} bytes"}
    except BaseException as exc:  # the node's code failed: report it, whatever it raised
        lines = traceback.format_exception_only(type(exc), exc)
        return {"ok": False, "kind": "error", "error": "".join(lines).strip()[-2000:]}


def main():
    job = json.loads(sys.stdin.read())
    envelope = run(job)
    try:
        text = json.dumps(envelope)
    except (TypeError, ValueError) as exc:
        text = json.dumps({"ok": False, "kind": "error", "error": f"the result is not JSON: {exc}"})
    except MemoryError:
        text = json.dumps({"ok": False, "kind": "memory", "error": "memory limit reached (MemoryError)"})
    if len(text) > int(job["limits"]["output_bytes"]) + 1024:
        text = json.dumps({"ok": False, "kind": "output",
                           "error": f"the result is over {job['limits']['output_bytes']} bytes"})
    sys.__stdout__.write(text)
    sys.__stdout__.flush()


if __name__ == "__main__":
    main()
