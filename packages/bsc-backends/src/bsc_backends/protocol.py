"""The embedder protocol every bsc embedding backend implements."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt


@runtime_checkable
class Embedder(Protocol):
    """Turns text into L2-normalised float32 vectors of a fixed dimension."""

    @property
    def embedding_dim(self) -> int:
        """Length of every vector this embedder returns."""
        ...

    @property
    def model_name(self) -> str:
        """Name of the model behind the embeddings (part of the cache's scope)."""
        ...

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        """One text to a vector of shape ``(embedding_dim,)``."""
        ...

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Texts to a matrix of shape ``(len(texts), embedding_dim)``."""
        ...

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        """Async twin of :meth:`embed_text`."""
        ...

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Async twin of :meth:`embed_texts`."""
        ...


def normalize(vectors: npt.ArrayLike) -> npt.NDArray[np.float32]:
    """L2-normalise a vector or each row of a matrix, as float32.

    Raises ``ValueError`` for NaN, infinite or all-zero input, which has no direction.
    """
    array = np.asarray(vectors, dtype=np.float64)
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise ValueError(f"expected a vector or a matrix of vectors, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError("embedding contains NaN or infinite values")
    scale = np.max(np.abs(array), axis=-1, keepdims=True)
    if np.any(scale == 0):
        raise ValueError("embedding is all zeros: it has no direction")
    # Dividing by the largest magnitude first keeps the norm from overflowing (1e200) or
    # underflowing (1e-200).
    scaled = array / scale
    return (scaled / np.linalg.norm(scaled, axis=-1, keepdims=True)).astype(np.float32)
