"""Conversions between cosine similarity and Hamming distance of sign-projection codes.

For two vectors at angle ``theta``, each random hyperplane separates them with probability
``theta / pi``, so a ``bits``-bit code differs in ``bits * theta / pi`` bits in expectation.
The cosine estimated from a distance ``d`` is therefore ``cos(pi * d / bits)``.
"""

from __future__ import annotations

import math
from typing import overload

import numpy as np
import numpy.typing as npt


def _check_bits(code_bits: int) -> None:
    if isinstance(code_bits, bool) or not isinstance(code_bits, (int, np.integer)) or code_bits <= 0:
        raise ValueError(f"code_bits must be a positive integer, got {code_bits!r}")


def _check_similarity(similarity: float, name: str) -> float:
    if isinstance(similarity, bool) or not isinstance(similarity, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a number in [-1, 1], got {type(similarity).__name__}")
    value = float(similarity)
    if not -1.0 <= value <= 1.0:  # also rejects NaN
        raise ValueError(f"{name} must be in [-1, 1], got {similarity!r}")
    return value


@overload
def hamming_to_cosine(distance: int, code_bits: int) -> float: ...
@overload
def hamming_to_cosine(distance: npt.ArrayLike, code_bits: int) -> npt.NDArray[np.float64]: ...
def hamming_to_cosine(distance: npt.ArrayLike, code_bits: int) -> float | npt.NDArray[np.float64]:
    """The cosine similarity estimated from a Hamming distance: ``cos(pi * distance / bits)``."""
    _check_bits(code_bits)
    if isinstance(distance, (int, np.integer)) and not isinstance(distance, bool):
        if not 0 <= distance <= code_bits:
            raise ValueError(f"distance must be in [0, {code_bits}], got {distance}")
        return math.cos(math.pi * int(distance) / code_bits)
    d = np.asarray(distance, dtype=np.float64)
    if np.any((d < 0) | (d > code_bits)):
        raise ValueError(f"distances must be in [0, {code_bits}]")
    return np.cos(np.pi * d / code_bits)


def cosine_to_hamming(similarity: float, code_bits: int) -> float:
    """The expected Hamming distance between codes of vectors with this cosine similarity:
    ``bits * acos(similarity) / pi``."""
    _check_bits(code_bits)
    value = _check_similarity(similarity, "similarity")
    return code_bits * math.acos(value) / math.pi


def hamming_radius(threshold: float, code_bits: int) -> int:
    """The largest distance ``d`` whose estimated cosine ``cos(pi * d / bits)`` is at least
    ``threshold``: a code within this radius is a hit at that threshold.

    Computed with the same float expression as :func:`hamming_to_cosine`, so
    ``hamming_to_cosine(d) >= threshold`` holds exactly for ``d <= radius`` and fails above it.
    """
    _check_bits(code_bits)
    value = _check_similarity(threshold, "threshold")
    radius = min(code_bits, max(0, math.floor(code_bits * math.acos(value) / math.pi)))
    while radius > 0 and math.cos(math.pi * radius / code_bits) < value:
        radius -= 1
    while radius < code_bits and math.cos(math.pi * (radius + 1) / code_bits) >= value:
        radius += 1
    return radius


def hamming_distance(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Hamming distances between packed ``uint64`` codes, broadcast over leading axes."""
    x = np.bitwise_xor(np.asarray(a, dtype=np.uint64), np.asarray(b, dtype=np.uint64))
    bits = np.unpackbits(np.ascontiguousarray(x).view(np.uint8), axis=-1)
    return bits.sum(axis=-1, dtype=np.int64)
