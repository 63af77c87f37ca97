"""Input and output checks shared by every backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from bsc_backends.errors import InvalidEmbeddingError
from bsc_backends.protocol import normalize


def check_text(text: object) -> str:
    """The text itself if it can be embedded; ``TypeError``/``ValueError`` otherwise."""
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("text is empty or only whitespace: there is nothing to embed")
    return text


def check_texts(texts: object) -> list[str]:
    """A list of embeddable texts; a lone ``str`` is refused so it is not split into characters."""
    if isinstance(texts, (str, bytes)):
        raise TypeError("texts must be a list of str, not a single string: use embed_text for one text")
    if not isinstance(texts, Sequence):
        raise TypeError(f"texts must be a list of str, got {type(texts).__name__}")
    out = []
    for i, text in enumerate(texts):
        try:
            out.append(check_text(text))
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"texts[{i}]: {exc}") from None
    return out


def finish(raw: Any, count: int, dim: int | None, source: str) -> npt.NDArray[np.float32]:
    """Turn a backend's raw vectors into a checked, L2-normalised ``(count, dim)`` float32 matrix.

    ``dim=None`` accepts any dimension (the first answer of a model of unknown size).
    Raises :class:`InvalidEmbeddingError` naming ``source`` when the vectors are unusable.
    """
    try:
        array = np.asarray(raw)
    except (TypeError, ValueError) as exc:  # ragged rows
        raise InvalidEmbeddingError(f"{source} returned embeddings that are not numeric vectors: {exc}") from None
    if array.dtype.kind not in "fiu":
        # Strings, booleans, None or mixed rows: numpy would quietly convert some of them.
        raise InvalidEmbeddingError(f"{source} returned embeddings that are not numeric vectors (dtype {array.dtype})")
    matrix = array.astype(np.float64)
    if matrix.ndim != 2 or matrix.shape[0] != count:
        raise InvalidEmbeddingError(
            f"{source} returned {matrix.shape[0] if matrix.ndim else 0} embeddings of shape {matrix.shape[1:]} "
            f"for {count} inputs"
        )
    if matrix.shape[1] == 0 or (dim is not None and matrix.shape[1] != dim):
        raise InvalidEmbeddingError(f"{source} returned vectors of dimension {matrix.shape[1]}, expected {dim}")
    try:
        return normalize(matrix)
    except ValueError as exc:
        raise InvalidEmbeddingError(f"{source} returned an unusable embedding: {exc}") from None
