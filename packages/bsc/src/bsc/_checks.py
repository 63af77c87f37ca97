"""Argument checks shared by the caches: TTLs, thresholds and text that must be valid Unicode."""

from __future__ import annotations

import re
from typing import Any

import numpy as np

__all__ = ["MAX_TTL", "check_no_surrogate", "check_threshold", "check_ttl"]

#: The longest TTL (and ``default_ttl``) accepted, in seconds: 10 years. Anything longer is
#: refused with ``ValueError`` (use ``None`` for "never expires"); the engine keeps TTLs as
#: tenths of a second in 32 bits, which would otherwise cut them silently at about 13.6 years.
MAX_TTL = 315_360_000


def check_ttl(value: Any, name: str = "default_ttl") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not 0 < value <= MAX_TTL:  # also refuses nan and inf
        raise ValueError(
            f"{name} must be a positive number of seconds, at most MAX_TTL = {MAX_TTL:,} (10 years; "
            f"None never expires), got {value!r}"
        )
    return float(value)


# Code points U+D800..U+DFFF: in a Python str they stand alone (a "lone surrogate") and have no
# UTF-8 encoding.
_SURROGATE = re.compile("[\ud800-\udfff]")


def check_no_surrogate(text: str, what: str) -> None:
    """``ValueError`` naming the first lone surrogate of ``text`` (O(1) for ASCII text)."""
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is not None:
        raise ValueError(
            f"{what} holds a lone surrogate U+{ord(found.group()):04X} at index {found.start()}: it is not "
            "valid Unicode text and cannot be encoded as UTF-8 (decode its bytes with errors='replace')"
        )


def check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"similarity_threshold must be a number in [-1, 1], got {type(value).__name__}")
    threshold = float(value)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"similarity_threshold must be in [-1, 1], got {value!r}")
    return threshold
