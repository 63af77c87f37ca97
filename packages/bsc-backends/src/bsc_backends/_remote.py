"""What the HTTP backends (OpenAI, Ollama) share: the single-text calls, joining batches, the
vector length learnt from the first answer, and one async client per event loop."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Generic, TypeVar

import numpy as np
import numpy.typing as npt

from bsc_backends._checks import check_text
from bsc_backends.errors import EmbeddingError

AsyncClient = TypeVar("AsyncClient")
Self = TypeVar("Self", bound="RemoteEmbedder[Any]")


class RemoteEmbedder(Generic[AsyncClient]):
    """Base of the HTTP backends. Subclasses set ``_dim`` and implement ``embed_texts``,
    ``aembed_texts``, ``close``, ``_new_async_client`` and ``_close_async_client``."""

    _dim: int | None

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # An async client's connections belong to the event loop that opened them. Clients of
        # loops that have closed are dropped on the next async call, so they do not pile up.
        self._loop_clients: dict[asyncio.AbstractEventLoop, AsyncClient] = {}

    @property
    def model_name(self) -> str:
        raise NotImplementedError

    @property
    def embedding_dim(self) -> int:
        if self._dim is None:
            raise EmbeddingError(
                f"the vector length of model {self.model_name!r} is not known until the first embedding: "
                "pass embedding_dim= or embed a text first"
            )
        return self._dim

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        raise NotImplementedError

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        """One text to a float32 unit vector."""
        row: npt.NDArray[np.float32] = self.embed_texts([check_text(text)])[0]
        return row

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        """Async :meth:`embed_text`."""
        row: npt.NDArray[np.float32] = (await self.aembed_texts([check_text(text)]))[0]
        return row

    def close(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the async client of the running event loop; call it before the loop ends."""
        client = self._loop_clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await self._close_async_client(client)

    def __enter__(self: Self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _loop_client(self) -> AsyncClient:
        """The async client of the running event loop, made on first use in that loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            for old in [old for old in self._loop_clients if old.is_closed()]:
                del self._loop_clients[old]
            client = self._loop_clients.get(loop)
            if client is None:
                client = self._loop_clients[loop] = self._new_async_client()
            return client

    def _new_async_client(self) -> AsyncClient:
        raise NotImplementedError

    async def _close_async_client(self, client: AsyncClient) -> None:
        raise NotImplementedError

    def _learn_dim(self, matrix: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        if self._dim is None:
            self._dim = int(matrix.shape[1])
        return matrix

    def _join(self, parts: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
        if not parts:
            return np.empty((0, self._dim or 0), dtype=np.float32)
        joined: npt.NDArray[np.float32] = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return joined
