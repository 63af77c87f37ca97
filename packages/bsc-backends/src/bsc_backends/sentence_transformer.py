"""Any sentence-transformers model, for users who have installed that library (and torch).

Install with ``pip install "bsc-backends[sentence-transformers]"``. Nothing here imports torch
until a :class:`SentenceTransformerEmbedder` is made; the default local embedder never does.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import numpy.typing as npt

from bsc_backends._checks import check_text, check_texts, finish

__all__ = ["SentenceTransformerEmbedder"]

INSTALL_HINT = 'pip install "bsc-backends[sentence-transformers]"'


class SentenceTransformerEmbedder:
    """Wraps ``sentence_transformers.SentenceTransformer``.

    Args:
        model: a model name or a local path, as ``SentenceTransformer`` takes it, or a ready
            ``SentenceTransformer`` instance (then ``name=`` is required).
        batch_size: texts per forward pass.
        **kwargs: passed to ``SentenceTransformer`` when ``model`` is a name (e.g. ``device="cpu"``).

    Inputs longer than the model's ``max_seq_length`` are truncated by the model.
    """

    def __init__(
        self,
        model: Any = "sentence-transformers/all-MiniLM-L6-v2",
        *,
        batch_size: int = 32,
        name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, str):
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError as exc:
                raise ImportError(f"SentenceTransformerEmbedder needs sentence-transformers: {INSTALL_HINT}") from exc
            self._name = name or model
            model = SentenceTransformer(model, **kwargs)
        else:
            if not name:
                raise ValueError("pass name= with a ready model: the name is part of what a cache entry means")
            self._name = name
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        self._model = model
        self.batch_size = batch_size
        dim = model.get_sentence_embedding_dimension()
        if not isinstance(dim, int) or dim < 1:
            raise ValueError(f"the model does not report a fixed embedding dimension (got {dim!r})")
        self._dim = dim

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def model_name(self) -> str:
        return self._name

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        row: npt.NDArray[np.float32] = self.embed_texts([check_text(text)])[0]
        return row

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        checked = check_texts(texts)
        if not checked:
            return np.empty((0, self._dim), dtype=np.float32)
        raw = self._model.encode(
            checked,
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return finish(raw, len(checked), self._dim, f"sentence-transformers model {self._name!r}")

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.embed_text, text)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return await asyncio.to_thread(self.embed_texts, texts)

    def __repr__(self) -> str:
        return f"SentenceTransformerEmbedder(model={self._name!r})"
