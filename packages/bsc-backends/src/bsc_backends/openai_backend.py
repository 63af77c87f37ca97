"""OpenAI embeddings (and any server that speaks the OpenAI embeddings API) through the ``openai`` SDK.

Install with ``pip install "bsc-backends[openai]"``. The SDK does the HTTP work: authentication,
``OPENAI_API_KEY``/``OPENAI_BASE_URL`` from the environment, timeouts, and retries with
exponential backoff on 429, 5xx, timeouts and dropped connections (honouring ``Retry-After``).
This module adds what the SDK leaves to the caller: a client-side requests/tokens-per-minute
budget, splitting long lists into requests the API accepts, token and cost accounting, response
checks, and errors from :mod:`bsc_backends.errors`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from bsc_backends._checks import check_texts, finish
from bsc_backends._remote import RemoteEmbedder
from bsc_backends.errors import (
    BackendUnavailableError,
    EmbeddingError,
    InvalidEmbeddingError,
    ModelNotFoundError,
    RateLimitError,
)
from bsc_backends.ratelimit import RateLimiter

if TYPE_CHECKING:
    import httpx
    import openai

__all__ = ["OpenAIEmbeddingBackend"]

INSTALL_HINT = 'pip install "bsc-backends[openai]"'
#: Output dimension of OpenAI's embedding models when ``dimensions`` is not set.
KNOWN_DIMENSIONS = {"text-embedding-3-small": 1536, "text-embedding-3-large": 3072, "text-embedding-ada-002": 1536}
#: US dollars per million input tokens (OpenAI's published prices; pass your own for other models).
PRICES_PER_MILLION_TOKENS = {
    "text-embedding-3-small": 0.02,
    "text-embedding-3-large": 0.13,
    "text-embedding-ada-002": 0.10,
}
#: The API's limits: inputs per request, tokens summed over one request, tokens per input.
MAX_INPUTS_PER_REQUEST = 2048
MAX_TOKENS_PER_REQUEST = 300_000
MAX_TOKENS_PER_INPUT = 8191
#: Without the model's tokenizer (tiktoken fetches its tables from the network), tokens are
#: estimated as UTF-8 bytes / 3, which over-counts English text (about 4 bytes per token).
BYTES_PER_TOKEN_ESTIMATE = 3
MAX_INPUT_BYTES = MAX_TOKENS_PER_INPUT * BYTES_PER_TOKEN_ESTIMATE


def estimate_tokens(text: str) -> int:
    """A token count estimate that is above the real one for typical text."""
    return max(1, math.ceil(len(text.encode("utf-8")) / BYTES_PER_TOKEN_ESTIMATE))


def truncate(text: str) -> str:
    """``text`` cut to at most :data:`MAX_INPUT_BYTES` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= MAX_INPUT_BYTES:
        return text
    return data[:MAX_INPUT_BYTES].decode("utf-8", errors="ignore")


class OpenAIEmbeddingBackend(RemoteEmbedder["openai.AsyncOpenAI"]):
    """Embeddings from OpenAI's ``/v1/embeddings`` (or a compatible server via ``base_url``).

    Args:
        model: the embedding model.
        api_key, base_url, organization: passed to ``openai.OpenAI``; ``None`` lets the SDK read
            ``OPENAI_API_KEY``, ``OPENAI_BASE_URL`` and ``OPENAI_ORG_ID``.
        dimensions: ask a ``text-embedding-3`` model for shorter vectors.
        embedding_dim: the vector length of a model not in :data:`KNOWN_DIMENSIONS` (otherwise
            learnt from the first answer).
        requests_per_minute, tokens_per_minute: the client-side budget; the defaults are OpenAI's
            Tier 1 limits for embedding models. ``None`` turns a limit off.
        max_retries: retries of one request on 429/5xx/timeouts, with the SDK's backoff.
        timeout: seconds per HTTP request.
        max_batch_size: inputs per request (at most 2048, the API's limit).
        price_per_million_tokens: US dollars, for cost tracking of models without a known price.
        client, async_client: ready ``openai.OpenAI``/``openai.AsyncOpenAI`` clients to use
            instead (then api_key, base_url, organization, max_retries and timeout are theirs).

    Long inputs are cut to :data:`MAX_INPUT_BYTES` UTF-8 bytes (8191 tokens at 3 bytes per token);
    text that still exceeds the model's 8192 tokens is refused by the API (``EmbeddingError``).
    """

    def __init__(
        self,
        model: str = "text-embedding-3-small",
        *,
        api_key: str | None = None,
        base_url: str | None = None,
        organization: str | None = None,
        dimensions: int | None = None,
        embedding_dim: int | None = None,
        requests_per_minute: float | None = 3000,
        tokens_per_minute: float | None = 1_000_000,
        max_retries: int = 5,
        timeout: float = 60.0,
        max_batch_size: int = MAX_INPUTS_PER_REQUEST,
        price_per_million_tokens: float | None = None,
        client: openai.OpenAI | None = None,
        async_client: openai.AsyncOpenAI | None = None,
    ) -> None:
        try:
            import openai
        except ImportError as exc:
            raise ImportError(f"OpenAIEmbeddingBackend needs the openai SDK: {INSTALL_HINT}") from exc
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be a non-empty str, got {model!r}")
        for name, value in (("dimensions", dimensions), ("embedding_dim", embedding_dim)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(max_batch_size, int) or not 1 <= max_batch_size <= MAX_INPUTS_PER_REQUEST:
            raise ValueError(f"max_batch_size must be an int in 1..{MAX_INPUTS_PER_REQUEST}, got {max_batch_size!r}")
        if not isinstance(max_retries, int) or isinstance(max_retries, bool) or max_retries < 0:
            raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
        super().__init__()
        self._openai = openai
        self.model = model
        self.dimensions = dimensions
        self._dim = dimensions or embedding_dim or KNOWN_DIMENSIONS.get(model)
        self.max_batch_size = max_batch_size
        self.price_per_million_tokens = (
            price_per_million_tokens if price_per_million_tokens is not None else PRICES_PER_MILLION_TOKENS.get(model)
        )
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self._client_args: dict[str, Any] = {
            "api_key": api_key,
            "base_url": base_url,
            "organization": organization,
            "max_retries": max_retries,
            "timeout": timeout,
        }
        self._stats = {
            "requests": 0,
            "texts": 0,
            "tokens": 0,
            "errors": 0,
            "throttled_responses": 0,
            "server_error_responses": 0,
        }
        # The sync client is made now so that a missing API key is reported at construction.
        self._client = client or openai.OpenAI(
            **self._client_args, http_client=openai.DefaultHttpxClient(event_hooks={"response": [self._count]})
        )
        self._async_client = async_client

    # -- the Embedder protocol --------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model if self.dimensions is None else f"{self.model}@{self.dimensions}"

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Texts to a ``(len(texts), embedding_dim)`` float32 matrix, in as few requests as the API allows."""
        checked = [truncate(t) for t in check_texts(texts)]
        parts = []
        for batch, estimate in self._batches(checked):
            self.limiter.acquire(estimate)
            parts.append(
                self._call(lambda batch=batch: self._client.embeddings.create(**self._params(batch)), batch, estimate)
            )
        return self._join(parts)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Async :meth:`embed_texts` on ``openai.AsyncOpenAI``; rate-limit waits do not block the loop."""
        checked = [truncate(t) for t in check_texts(texts)]
        client = self._async_client or self._loop_client()
        parts = []
        for batch, estimate in self._batches(checked):
            await self.limiter.aacquire(estimate)
            try:
                response = await client.embeddings.create(**self._params(batch))
            except Exception as exc:
                raise self._failure(exc) from exc
            parts.append(self._parse(response, batch, estimate))
        return self._join(parts)

    # -- accounting ---------------------------------------------------------------------------

    def get_stats(self) -> dict[str, Any]:
        """Requests, texts, tokens (as the API counted them), estimated cost and error counts."""
        with self._lock:
            stats: dict[str, Any] = dict(self._stats)
        stats["model"] = self.model
        price = self.price_per_million_tokens
        stats["cost_usd"] = None if price is None else stats["tokens"] * price / 1_000_000
        stats["rate_limit_wait_seconds"] = self.limiter.waited_seconds
        stats["requests_per_minute_limit"] = self.limiter.requests_per_minute
        stats["tokens_per_minute_limit"] = self.limiter.tokens_per_minute
        return stats

    def close(self) -> None:
        """Close the sync client's connections (async clients: :meth:`aclose`)."""
        self._client.close()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = dict.fromkeys(self._stats, 0)

    # -- internals ----------------------------------------------------------------------------

    def _new_async_client(self) -> openai.AsyncOpenAI:
        sdk = self._openai
        client: openai.AsyncOpenAI = sdk.AsyncOpenAI(
            **self._client_args, http_client=sdk.DefaultAsyncHttpxClient(event_hooks={"response": [self._acount]})
        )
        return client

    async def _close_async_client(self, client: openai.AsyncOpenAI) -> None:
        await client.close()

    def _count(self, response: httpx.Response) -> None:
        key = (
            "throttled_responses"
            if response.status_code == 429
            else "server_error_responses"
            if response.status_code >= 500
            else None
        )
        if key:
            with self._lock:
                self._stats[key] += 1

    async def _acount(self, response: httpx.Response) -> None:
        self._count(response)

    def _params(self, batch: list[str]) -> dict[str, Any]:
        params: dict[str, Any] = {"model": self.model, "input": batch}
        if self.dimensions is not None:
            params["dimensions"] = self.dimensions
        return params

    def _batches(self, texts: list[str]) -> Iterator[tuple[list[str], int]]:
        batch: list[str] = []
        tokens = 0
        for text in texts:
            estimate = estimate_tokens(text)
            if batch and (len(batch) >= self.max_batch_size or tokens + estimate > MAX_TOKENS_PER_REQUEST):
                yield batch, tokens
                batch, tokens = [], 0
            batch.append(text)
            tokens += estimate
        if batch:
            yield batch, tokens

    def _call(self, send: Any, batch: list[str], estimate: int) -> npt.NDArray[np.float32]:
        try:
            response = send()
        except Exception as exc:
            raise self._failure(exc) from exc
        return self._parse(response, batch, estimate)

    def _failure(self, exc: Exception) -> Exception:
        openai = self._openai
        with self._lock:
            self._stats["errors"] += 1
        where = f"OpenAI embeddings ({self._client.base_url}, model {self.model!r})"
        if isinstance(exc, openai.APITimeoutError):
            return BackendUnavailableError(f"{where}: request timed out after retries")
        if isinstance(exc, openai.APIConnectionError):
            return BackendUnavailableError(f"{where}: cannot connect: {exc}")
        if isinstance(exc, openai.RateLimitError):
            return RateLimitError(f"{where}: still rate limited (HTTP 429) after retries: {exc.message}")
        if isinstance(exc, openai.AuthenticationError):
            return EmbeddingError(f"{where}: HTTP 401, the API key was refused (check OPENAI_API_KEY): {exc.message}")
        if isinstance(exc, openai.NotFoundError):
            return ModelNotFoundError(f"{where}: HTTP 404, the model or endpoint does not exist: {exc.message}")
        if isinstance(exc, openai.APIStatusError):
            return EmbeddingError(f"{where}: HTTP {exc.status_code}: {exc.message}")
        if isinstance(exc, (openai.APIResponseValidationError, ValueError, TypeError, KeyError, AttributeError)):
            return InvalidEmbeddingError(f"{where}: malformed response: {exc}")
        if isinstance(exc, openai.OpenAIError):
            return EmbeddingError(f"{where}: {exc}")
        return exc

    def _parse(self, response: Any, batch: list[str], estimate: int) -> npt.NDArray[np.float32]:
        try:
            items = sorted(response.data, key=lambda item: item.index)
            vectors = [item.embedding for item in items]
            usage = getattr(response, "usage", None)
            tokens = int(usage.prompt_tokens) if usage is not None and usage.prompt_tokens is not None else estimate
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._failure(exc) from exc
        self.limiter.settle(estimate, tokens)
        with self._lock:
            self._stats["requests"] += 1
            self._stats["texts"] += len(batch)
            self._stats["tokens"] += tokens
        matrix = finish(vectors, len(batch), self._dim, f"OpenAI embeddings (model {self.model!r})")
        return self._learn_dim(matrix)

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingBackend(model={self.model!r}, base_url={str(self._client.base_url)!r})"
