"""Ollama embeddings over its HTTP API (``POST /api/embed``), with ``httpx``.

Install with ``pip install "bsc-backends[ollama]"``. The host is, in order: the ``host``
argument, the ``OLLAMA_HOST`` environment variable, ``http://127.0.0.1:11434`` — read the way the
official ``ollama`` client reads it (a bare ``host``, ``host:port``, ``:port`` or a full URL).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
import urllib.parse
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bsc_backends._checks import check_texts, finish
from bsc_backends._remote import RemoteEmbedder
from bsc_backends.errors import (
    BackendUnavailableError,
    EmbeddingError,
    InvalidEmbeddingError,
    ModelCannotEmbedError,
    ModelNotFoundError,
    RateLimitError,
)

if TYPE_CHECKING:
    import httpx

__all__ = ["OllamaEmbedder", "parse_host"]

INSTALL_HINT = 'pip install "bsc-backends[ollama]"'
DEFAULT_PORT = 11434
#: Vector length of common Ollama embedding models (others are learnt from the first answer).
KNOWN_DIMENSIONS = {
    "nomic-embed-text": 768,
    "mxbai-embed-large": 1024,
    "all-minilm": 384,
    "snowflake-arctic-embed": 1024,
    "bge-m3": 1024,
    "bge-large": 1024,
}
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def parse_host(host: str | None) -> str:
    """Normalise an Ollama host as the official client does.

    >>> parse_host(None)
    'http://127.0.0.1:11434'
    >>> parse_host("example.com")
    'http://example.com:11434'
    >>> parse_host(":5000")
    'http://127.0.0.1:5000'
    >>> parse_host("https://example.com/ollama/")
    'https://example.com:443/ollama'
    """
    host = (host or "").strip()
    port = DEFAULT_PORT
    scheme, _, hostport = host.partition("://")
    if not hostport:
        scheme, hostport = "http", host
    elif scheme == "http":
        port = 80
    elif scheme == "https":
        port = 443
    else:
        raise ValueError(f"Ollama host must use http or https, got {host!r}")
    split = urllib.parse.urlsplit(f"{scheme}://{hostport}")
    try:
        port = split.port or port
    except ValueError as exc:
        raise ValueError(f"invalid Ollama host {host!r}: {exc}") from None
    name = split.hostname or "127.0.0.1"
    if ":" in name:  # IPv6 literal
        name = f"[{name}]"
    path = split.path.strip("/")
    return f"{scheme}://{name}:{port}" + (f"/{path}" if path else "")


def _known_dim(model: str) -> int | None:
    """The vector length of an untagged or ``:latest`` model in :data:`KNOWN_DIMENSIONS`; other
    tags can differ in size (``snowflake-arctic-embed:22m`` is 384, not 1024) and are learnt."""
    return KNOWN_DIMENSIONS.get(model.removesuffix(":latest"))


class OllamaEmbedder(RemoteEmbedder["httpx.AsyncClient"]):
    """Embeddings from a running Ollama server.

    Args:
        model_name: an embedding model pulled on the server (``ollama pull nomic-embed-text``).
        host: server address; default ``OLLAMA_HOST``, then ``127.0.0.1:11434``.
        embedding_dim: vector length for a model not in :data:`KNOWN_DIMENSIONS` (otherwise learnt
            from the first answer).
        timeout: seconds per HTTP request (the first call may load the model into memory).
        batch_size: texts per request.
        max_retries: retries on 429/5xx answers, with exponential backoff from ``retry_backoff``
            seconds (``Retry-After`` is honoured). Refused connections and timeouts are not retried.
        truncate: let the server cut inputs longer than the model's context (Ollama's default);
            ``False`` makes an over-long input an error.
        keep_alive: how long the server keeps the model loaded (Ollama's duration syntax, e.g. ``"5m"``).
    """

    def __init__(
        self,
        model_name: str = "nomic-embed-text",
        host: str | None = None,
        *,
        embedding_dim: int | None = None,
        timeout: float = 60.0,
        batch_size: int = 64,
        max_retries: int = 2,
        retry_backoff: float = 0.5,
        truncate: bool = True,
        keep_alive: str | None = None,
    ) -> None:
        try:
            import httpx
        except ImportError as exc:
            raise ImportError(f"OllamaEmbedder needs httpx: {INSTALL_HINT}") from exc
        if not isinstance(model_name, str) or not model_name:
            raise ValueError(f"model_name must be a non-empty str, got {model_name!r}")
        if embedding_dim is not None and (not isinstance(embedding_dim, int) or embedding_dim < 1):
            raise ValueError(f"embedding_dim must be a positive int or None, got {embedding_dim!r}")
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        super().__init__()
        self._httpx = httpx
        self._model = model_name
        self.host = parse_host(host if host is not None else os.environ.get("OLLAMA_HOST"))
        self._dim = embedding_dim or _known_dim(model_name)
        self.timeout = timeout
        self.batch_size = batch_size
        self.max_retries = max_retries
        self.retry_backoff = retry_backoff
        self.truncate = truncate
        self.keep_alive = keep_alive
        self._client = httpx.Client(base_url=self.host, timeout=timeout)
        self._stats = {"requests": 0, "texts": 0, "tokens": 0, "errors": 0, "retries": 0}

    @property
    def model_name(self) -> str:
        return self._model

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Texts to a ``(len(texts), embedding_dim)`` float32 matrix, ``batch_size`` per request."""
        checked = check_texts(texts)
        parts = [self._send_sync(checked[i : i + self.batch_size]) for i in range(0, len(checked), self.batch_size)]
        return self._join(parts)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Async :meth:`embed_texts` on ``httpx.AsyncClient``."""
        checked = check_texts(texts)
        parts = [
            await self._send_async(checked[i : i + self.batch_size]) for i in range(0, len(checked), self.batch_size)
        ]
        return self._join(parts)

    def get_stats(self) -> dict[str, Any]:
        """Requests, texts, tokens (as the server counted them), retries and errors."""
        with self._lock:
            return {"model": self._model, "host": self.host, **self._stats}

    def close(self) -> None:
        """Close the sync client's connections (the embedder still works; it reconnects)."""
        self._client.close()

    def _new_async_client(self) -> httpx.AsyncClient:
        return self._httpx.AsyncClient(base_url=self.host, timeout=self.timeout)

    async def _close_async_client(self, client: httpx.AsyncClient) -> None:
        await client.aclose()

    # -- internals ----------------------------------------------------------------------------

    def _body(self, batch: list[str]) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self._model, "input": batch, "truncate": self.truncate}
        if self.keep_alive is not None:
            body["keep_alive"] = self.keep_alive
        return body

    def _send_sync(self, batch: list[str]) -> npt.NDArray[np.float32]:
        for attempt in range(self.max_retries + 1):
            try:
                response = self._client.post("/api/embed", json=self._body(batch))
            except self._httpx.HTTPError as exc:
                raise self._fail(self._transport_error(exc)) from exc
            delay = self._retry_delay(response, attempt)
            if delay is None:
                return self._parse(response, batch)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _send_async(self, batch: list[str]) -> npt.NDArray[np.float32]:
        client = self._loop_client()
        for attempt in range(self.max_retries + 1):
            try:
                response = await client.post("/api/embed", json=self._body(batch))
            except self._httpx.HTTPError as exc:
                raise self._fail(self._transport_error(exc)) from exc
            delay = self._retry_delay(response, attempt)
            if delay is None:
                return self._parse(response, batch)
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _where(self) -> str:
        return f"Ollama at {self.host} (model {self._model!r})"

    def _transport_error(self, exc: Exception) -> EmbeddingError:
        if isinstance(exc, self._httpx.TimeoutException):
            return BackendUnavailableError(f"{self._where()}: no answer within {self.timeout} s")
        if isinstance(exc, self._httpx.ConnectError):
            return BackendUnavailableError(f"cannot connect to {self._where()}: is the server running (ollama serve)?")
        return BackendUnavailableError(f"{self._where()}: {type(exc).__name__}: {exc}")

    def _fail(self, exc: EmbeddingError) -> EmbeddingError:
        with self._lock:
            self._stats["errors"] += 1
        return exc

    def _retry_delay(self, response: httpx.Response, attempt: int) -> float | None:
        """Seconds to wait before retrying, or ``None`` when the answer is final."""
        if response.status_code not in RETRY_STATUSES or attempt >= self.max_retries:
            return None
        message = _error_text(response)
        if "support" in message and "embed" in message:
            return None  # a model that cannot embed will not learn to by retrying
        delay = self.retry_backoff * 2**attempt
        with contextlib.suppress(ValueError):
            delay = max(delay, float(response.headers.get("retry-after", 0)))
        with self._lock:
            self._stats["retries"] += 1
        return float(min(delay, 60.0))

    def _parse(self, response: httpx.Response, batch: list[str]) -> npt.NDArray[np.float32]:
        if response.status_code != 200:
            raise self._fail(self._status_error(response))
        try:
            body = response.json()
            vectors = body["embeddings"]
            tokens = body.get("prompt_eval_count") or 0
        except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
            raise self._fail(InvalidEmbeddingError(f"{self._where()}: malformed response body ({exc!r})")) from None
        with self._lock:
            self._stats["tokens"] += int(tokens) if isinstance(tokens, int) else 0
        try:
            matrix = finish(vectors, len(batch), self._dim, self._where())
        except InvalidEmbeddingError as exc:
            raise self._fail(exc) from None
        self._learn_dim(matrix)
        with self._lock:
            self._stats["requests"] += 1
            self._stats["texts"] += len(batch)
        return matrix

    def _status_error(self, response: httpx.Response) -> EmbeddingError:
        message = _error_text(response)
        status = response.status_code
        if status == 404 and "model" not in message:
            return EmbeddingError(
                f"{self._where()}: HTTP 404 for /api/embed ({message}): the server is not Ollama, or is older "
                "than Ollama 0.3, which added /api/embed"
            )
        if status == 404 or ("not found" in message and "model" in message):
            return ModelNotFoundError(
                f"{self._where()}: model not found ({message or 'HTTP 404'}); pull it with: ollama pull {self._model}"
            )
        if "support" in message and "embed" in message:
            return ModelCannotEmbedError(f"{self._where()}: this model cannot produce embeddings ({message})")
        if status == 429:
            return RateLimitError(f"{self._where()}: HTTP 429 after {self.max_retries} retries ({message})")
        return EmbeddingError(f"{self._where()}: HTTP {status}: {message or response.reason_phrase}")

    def __repr__(self) -> str:
        return f"OllamaEmbedder(model_name={self._model!r}, host={self.host!r})"


def _error_text(response: httpx.Response) -> str:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return response.text[:200].strip()
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(body)[:200]
