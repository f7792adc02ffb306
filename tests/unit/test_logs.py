"""Sesame's own log lines (graph/logs.py) in a Serve replica, whose stderr Serve wraps."""

from __future__ import annotations

import io
import logging
import sys

import pytest
from ray.serve._private.logging_utils import StreamToLogger

from graph import logs


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_in_a_serve_replica_our_lines_skip_serves_stream_to_logger(monkeypatch: pytest.MonkeyPatch) -> None:
    # Serve's wrapper walks the whole stack for every line; it stalled the replica's loop.
    original = io.StringIO()
    through_serve = Kept()
    serve_logger = logging.getLogger("test.serve-replica")
    serve_logger.propagate = False
    serve_logger.addHandler(through_serve)
    monkeypatch.setattr(sys, "stderr", StreamToLogger(serve_logger, logging.INFO, original))
    ours = logging.getLogger("sesame.test-logs")
    for name in logs.OURS:
        monkeypatch.setattr(logging.getLogger(name), "handlers", [])

    logs.configure()
    ours.info("run finished", extra={"run_id": "run_1"})

    assert "INFO sesame.test-logs run finished run_id=run_1" in original.getvalue()
    assert through_serve.records == []
