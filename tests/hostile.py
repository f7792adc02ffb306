"""A tally of the hostile inputs this test session tried and of the answers that were 5xx, kept
by the property tests, the HTTP list and schemathesis; printed at the end of the session (issue
5 asks for the count and for zero 5xx)."""

from __future__ import annotations

import os
from collections import Counter

TRIED: Counter[str] = Counter()
SERVER_ERRORS: list[str] = []


# `SESAME_HYPOTHESIS=long scripts/test ...` runs every property test and schemathesis with
# LONG_FACTOR times more examples, random (not derandomized), for a search on purpose.
PROFILE = os.environ.get("SESAME_HYPOTHESIS", "ci")
LONG_FACTOR = 50


def examples(count: int) -> int:
    """How many examples a property test tries: `count` in CI (seconds), many more in `long`."""
    return count * LONG_FACTOR if PROFILE == "long" else count


def tried(source: str, count: int = 1) -> None:
    TRIED[source] += count


def server_error(description: str) -> None:
    SERVER_ERRORS.append(description)
