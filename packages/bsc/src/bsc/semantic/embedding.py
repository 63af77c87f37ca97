"""Embedding: the prompts a cache embeds, with a small memory of the latest ones.

A store that follows the lookup that missed (the usual pattern, and the proxy's) does not embed
the prompt again; a prompt longer than the embedder's window is not embedded at all (it is
answered by the exact path only). A backend's failure is raised as the matching
:class:`bsc.errors.EmbeddingFailedError` (a :class:`~bsc.BscError`).
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import bsc_backends
from bsc.errors import embedding_failed
from bsc_backends import Embedder, EmbeddingError

__all__ = ["RECENT_EMBEDDINGS", "Embeddings", "default_embedder", "embedder_dim"]

#: Embeddings kept of the latest texts embedded (about 1.5 KB each at 384 dimensions).
RECENT_EMBEDDINGS = 256

T = TypeVar("T")


def default_embedder() -> Embedder:
    """The offline default embedder (``bsc_backends.default_embedder``); a backend that cannot
    start raises the matching :class:`~bsc.errors.EmbeddingFailedError`."""
    try:
        return bsc_backends.default_embedder()
    except EmbeddingError as err:
        raise embedding_failed(err) from err


def embedder_dim(embedder: Any) -> int:
    """``embedder.embedding_dim``, checked (a remote backend may ask its server for it: its
    failure is raised as the matching :class:`~bsc.errors.EmbeddingFailedError`)."""
    try:
        for name in ("embedding_dim", "model_name", "embed_text", "embed_texts"):
            if not hasattr(embedder, name):
                raise TypeError(
                    f"embedder must implement bsc.embeddings.Embedder; {type(embedder).__name__} has no {name}"
                )
        dim = embedder.embedding_dim
    except EmbeddingError as err:
        raise embedding_failed(err) from err
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TypeError(f"embedder.embedding_dim must be a positive int, got {dim!r}")
    return dim


class Embeddings:
    """Embeds prompts with ``embedder``, remembering the latest :data:`RECENT_EMBEDDINGS`."""

    def __init__(self, embedder: Embedder) -> None:
        self._embedder = embedder
        self._recent: OrderedDict[str, Any] = OrderedDict()
        self._recent_lock = threading.Lock()

    @staticmethod
    def _call(method: Callable[[Any], T], argument: Any) -> T:
        try:
            return method(argument)
        except EmbeddingError as err:
            raise embedding_failed(err) from err

    @staticmethod
    async def _acall(method: Callable[[Any], Awaitable[T]], argument: Any) -> T:
        try:
            return await method(argument)
        except EmbeddingError as err:
            raise embedding_failed(err) from err

    def fits(self, text: str) -> bool:
        """Whether the embedder sees the whole text. A text cut to the model's window would be
        matched by its beginning alone, so such prompts are answered by the exact path only.
        (Counted every time: one character can be several word pieces.)"""
        try:
            limit = getattr(self._embedder, "max_tokens", None)
            count = getattr(self._embedder, "token_count", None)
            if not isinstance(limit, int) or count is None:
                return True
            return bool(count(text) < limit)
        except EmbeddingError as err:
            raise embedding_failed(err) from err

    def one(self, prompt: str) -> Any:
        if not self.fits(prompt):
            return None
        vector = self.recall(prompt)
        if vector is None:
            vector = self.remember(prompt, self._call(self._embedder.embed_text, prompt))
        return vector

    async def aone(self, prompt: str) -> Any:
        if not await asyncio.to_thread(self.fits, prompt):  # tokenizing a long prompt takes a while
            return None
        vector = self.recall(prompt)
        if vector is None:
            vector = self.remember(prompt, await self._acall(self._embedder.aembed_text, prompt))
        return vector

    def recall(self, text: str) -> Any:
        """The embedding of ``text`` if it was computed lately: a store that follows the lookup
        that missed (the usual pattern, and the proxy's) does not embed the prompt again."""
        with self._recent_lock:
            vector = self._recent.get(text)
            if vector is not None:
                self._recent.move_to_end(text)
            return vector

    def remember(self, text: str, vector: Any) -> Any:
        with self._recent_lock:
            self._recent[text] = vector
            if len(self._recent) > RECENT_EMBEDDINGS:
                self._recent.popitem(last=False)
        return vector

    def batch(self, prompts: list[str]) -> list[Any]:
        fits = [self.fits(p) for p in prompts]
        known = [self.recall(p) for p in prompts]
        wanted = [p for p, ok, v in zip(prompts, fits, known, strict=True) if ok and v is None]
        vectors: Iterator[Any] = iter(self._call(self._embedder.embed_texts, wanted) if wanted else [])
        out = []
        for p, ok, v in zip(prompts, fits, known, strict=True):
            out.append(None if not ok else v if v is not None else self.remember(p, next(vectors)))
        return out
