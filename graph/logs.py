"""Logging for Sesame's own modules, in every process (the driver, Serve replicas, node workers).

Ray configures only its own loggers in the processes it starts, so without this our INFO lines
never reach a log file. Structured fields given through `extra=` (run_id, node_id, request_id)
are appended as `key=value`. Prompts, outputs and keys are never passed to a logger.
"""

from __future__ import annotations

import logging
import sys
from typing import TextIO

OURS = ("graph", "nodes", "sesame")
FIELDS = ("request_id", "run_id", "node_id")


class _Fields(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = " ".join(f"{name}={getattr(record, name)}" for name in FIELDS
                          if getattr(record, name, None) is not None)
        return f"{text} {fields}" if fields else text


def process_stderr() -> TextIO:
    """The process's own stderr. In a Serve replica `sys.stderr` is Serve's `StreamToLogger`,
    which walks the whole call stack (`traceback.extract_stack`, a `stat` per frame's file) for
    every line written: it showed up in the ingress replica's event-loop stalls under load
    (bench/RESULTS.md). Writing to the stream it wraps skips that; Ray still keeps the lines in
    the process's `worker-*.err` file and forwards them to the driver's console."""
    return getattr(sys.stderr, "_original_object", sys.stderr)


def configure(level: int = logging.INFO) -> None:
    """Send our loggers to the process's stderr (which Ray keeps per process). Safe to call
    repeatedly."""
    for name in OURS:
        logger = logging.getLogger(name)
        logger.setLevel(level)
        logger.propagate = False
        if not any(getattr(h, "_sesame", False) for h in logger.handlers):
            handler = logging.StreamHandler(process_stderr())
            handler.setFormatter(_Fields("%(asctime)s %(levelname)s %(name)s %(message)s"))
            handler._sesame = True  # type: ignore[attr-defined]
            logger.addHandler(handler)
