"""OpenAI embeddings (and any server that speaks the OpenAI embeddings API) through the ``openai`` SDK.

Install with ``pip install "bsc-backends[openai]"``. The SDK does the HTTP work: authentication,
``OPENAI_API_KEY``/``OPENAI_BASE_URL`` from the environment, timeouts, and retries with
exponential backoff on 429, 5xx, timeouts and dropped connections (honouring ``Retry-After``).
This module adds what the SDK leaves to the caller: a client-side requests/tokens-per-minute
budget, splitting long lists into requests the API accepts, cutting over-long inputs, token and
cost accounting, response checks, and errors from :mod:`bsc_backends.errors`. The SDK's own
retries are not counted against the requests-per-minute budget.
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


def truncate(text: str, limit: int = MAX_INPUT_BYTES) -> str:
    """``text`` cut to at most ``limit`` UTF-8 bytes, on a character boundary."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", errors="ignore")


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
            instead (then api_key, base_url, organization, max_retries and timeout are theirs;
            without ``async_client``, async calls use a client with ``client``'s settings).
            Clients passed in are not closed by :meth:`close`.

    Long inputs are cut to :data:`MAX_INPUT_BYTES` UTF-8 bytes (8191 tokens at 3 bytes per token);
    if the API still refuses an input as too long, the batch is sent again with every input cut
    to 8191 bytes, which can never exceed 8191 tokens. A request holds at most 300,000 UTF-8
    bytes, so it never exceeds the API's 300,000 tokens per request.
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
        self._stats = {
            "requests": 0,
            "texts": 0,
            "tokens": 0,
            "errors": 0,
            "throttled_responses": 0,
            "server_error_responses": 0,
        }
        # The sync client is made now so that a missing API key is reported at construction.
        self._owns_client = client is None
        if client is None:
            try:
                client = openai.OpenAI(
                    api_key=api_key,
                    base_url=base_url,
                    organization=organization,
                    max_retries=max_retries,
                    timeout=timeout,
                    http_client=openai.DefaultHttpxClient(event_hooks={"response": [self._count]}),
                )
            except openai.OpenAIError as exc:  # no API key given or in OPENAI_API_KEY
                raise EmbeddingError(f"cannot create the OpenAI client: {exc}") from None
        self._client: openai.OpenAI = client
        self._async_client = async_client

    # -- the Embedder protocol --------------------------------------------------------------

    @property
    def model_name(self) -> str:
        return self.model if self.dimensions is None else f"{self.model}@{self.dimensions}"

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Texts to a ``(len(texts), embedding_dim)`` float32 matrix, in as few requests as the API allows."""
        checked = [truncate(t) for t in check_texts(texts)]
        return self._join([self._embed_batch(batch) for batch in self._batches(checked)])

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        """Async :meth:`embed_texts` on ``openai.AsyncOpenAI``; rate-limit waits do not block the loop."""
        checked = [truncate(t) for t in check_texts(texts)]
        return self._join([await self._aembed_batch(batch) for batch in self._batches(checked)])

    def _embed_batch(self, batch: list[str]) -> npt.NDArray[np.float32]:
        estimate = sum(estimate_tokens(t) for t in batch)
        self.limiter.acquire(estimate)
        try:
            response = self._client.embeddings.create(**self._params(batch))
        except Exception as exc:
            shorter = self._shorter(exc, batch)
            if shorter is not None:
                return self._embed_batch(shorter)
            raise self._failure(exc) from exc
        return self._parse(response, batch, estimate)

    async def _aembed_batch(self, batch: list[str]) -> npt.NDArray[np.float32]:
        client = self._async_client or self._loop_client()
        estimate = sum(estimate_tokens(t) for t in batch)
        await self.limiter.aacquire(estimate)
        try:
            response = await client.embeddings.create(**self._params(batch))
        except Exception as exc:
            shorter = self._shorter(exc, batch)
            if shorter is not None:
                return await self._aembed_batch(shorter)
            raise self._failure(exc) from exc
        return self._parse(response, batch, estimate)

    def _shorter(self, exc: Exception, batch: list[str]) -> list[str] | None:
        """When the API refused an input as too long, the batch cut to the hard bound
        (:data:`MAX_TOKENS_PER_INPUT` bytes, never more tokens); ``None`` otherwise."""
        if not isinstance(exc, self._openai.BadRequestError):
            return None
        message = str(exc.message).lower()
        if "token" not in message or not any(w in message for w in ("maximum", "too long", "limit", "reduce")):
            return None
        shorter = [truncate(t, MAX_TOKENS_PER_INPUT) for t in batch]
        return shorter if shorter != batch else None

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
        """Close the sync client's connections (async clients: :meth:`aclose`). A client
        passed in as ``client=`` belongs to the caller and is left open."""
        if self._owns_client:
            self._client.close()

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = dict.fromkeys(self._stats, 0)

    # -- internals ----------------------------------------------------------------------------

    def _new_async_client(self) -> openai.AsyncOpenAI:
        # The same server, key and settings as the sync client, whether bsc made it or not.
        sdk, sync = self._openai, self._client
        client: openai.AsyncOpenAI = sdk.AsyncOpenAI(
            api_key=sync.api_key, organization=sync.organization, project=sync.project, base_url=sync.base_url,
            max_retries=sync.max_retries, timeout=sync.timeout,
            http_client=sdk.DefaultAsyncHttpxClient(event_hooks={"response": [self._acount]}),
        )  # fmt: skip
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

    def _batches(self, texts: list[str]) -> Iterator[list[str]]:
        """Requests of at most ``max_batch_size`` inputs and :data:`MAX_TOKENS_PER_REQUEST` UTF-8
        bytes: a token of a byte-level BPE is at least one byte, so bytes bound tokens from above."""
        batch: list[str] = []
        size = 0
        for text in texts:
            length = len(text.encode("utf-8"))
            if batch and (len(batch) >= self.max_batch_size or size + length > MAX_TOKENS_PER_REQUEST):
                yield batch
                batch, size = [], 0
            batch.append(text)
            size += length
        if batch:
            yield batch

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
        source = f"OpenAI embeddings (model {self.model!r})"
        try:
            items = list(response.data)
            usage = getattr(response, "usage", None)
            tokens = int(usage.prompt_tokens) if usage is not None and usage.prompt_tokens is not None else estimate
            indices = sorted(item.index for item in items)
            vectors = [item.embedding for item in sorted(items, key=lambda item: item.index)]
        except (AttributeError, TypeError, ValueError) as exc:
            raise self._failure(exc) from exc
        self.limiter.settle(estimate, tokens)
        with self._lock:
            self._stats["tokens"] += tokens  # billed whether or not the answer is usable
        try:
            if indices != list(range(len(items))):
                raise InvalidEmbeddingError(f"{source} answered with indices {indices[:10]} for {len(batch)} inputs")
            matrix = finish(vectors, len(batch), self._dim, source)
        except InvalidEmbeddingError:
            with self._lock:
                self._stats["errors"] += 1
            raise
        with self._lock:
            self._stats["requests"] += 1
            self._stats["texts"] += len(batch)
        return self._learn_dim(matrix)

    def __repr__(self) -> str:
        return f"OpenAIEmbeddingBackend(model={self.model!r}, base_url={str(self._client.base_url)!r})"
