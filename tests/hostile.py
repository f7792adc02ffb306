"""A tally of the hostile inputs this test session tried and of the answers that were 5xx, kept
by the property tests, the HTTP list and schemathesis; printed at the end of the session (issue
5 asks for the count and for zero 5xx)."""

from __future__ import annotations

from collections import Counter

TRIED: Counter[str] = Counter()
SERVER_ERRORS: list[str] = []


def tried(source: str, count: int = 1) -> None:
    TRIED[source] += count


def server_error(description: str) -> None:
    SERVER_ERRORS.append(description)
