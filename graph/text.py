"""Text that can be encoded: what providers send back may hold lone surrogates (a JSON string
may escape one, and Python decodes it as is), which no UTF-8 encoder — the store's, pydantic's,
an SSE stream's — will write. They are replaced (U+FFFD) where provider output enters the engine.
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")  # in a Python str, every one of these is alone


def valid_text(value: Any) -> Any:
    """`value` with every string in it (keys too) made encodable; other values as they are."""
    if isinstance(value, str):
        if value.isascii():
            return value
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return _SURROGATE.sub("\ufffd", value)
        return value
    if isinstance(value, list):
        return [valid_text(item) for item in value]
    if isinstance(value, dict):
        return {valid_text(key): valid_text(item) for key, item in value.items()}
    return value
