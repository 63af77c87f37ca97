"""``CachedOpenAI``: an ``openai`` client whose chat completions go through a ``SemanticCache``.

    from openai import OpenAI
    from bsc.openai import CachedOpenAI

    client = CachedOpenAI(OpenAI())          # or AsyncOpenAI(): the same, with await
    reply = client.chat.completions.create(model="gpt-4o-mini", messages=[...])

``chat.completions.create`` looks the request up (the last user message semantically; the
model, the parameters that change the answer and every earlier message exactly; see
``bsc.chat_scope``) and returns the cached ``ChatCompletion`` on a hit. On a miss it calls the
wrapped client and stores the answer. With ``stream=True`` a hit is replayed as an
``openai.Stream`` of ``ChatCompletionChunk`` objects, and a miss returns the SDK's own stream,
whose answer is stored once the stream has been read to the end. Streamed and non-streamed
requests share entries. Every other attribute is the wrapped client's.

Requests the cache cannot key (the last message is not the user's, a parameter that is not a
JSON value such as a pydantic ``response_format``) and requests whose temperature is above the
cache's ``max_temperature`` go straight to the client.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

try:
    import openai
    from openai.types.chat import ChatCompletion, ChatCompletionChunk
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        'bsc.openai needs the openai SDK: pip install "bsc[openai]" (with uv: uv add "bsc[openai]"; in a '
        "checkout of bsc: uv sync --all-packages --extra openai)"
    ) from exc

from bsc import policy
from bsc.semantic import DEFAULT_NAMESPACE, SemanticCache
from bsc.shared.config import Shared

logger = logging.getLogger("bsc")

__all__ = ["AsyncCachedOpenAI", "CachedOpenAI"]


class _ReplayStream(openai.Stream[ChatCompletionChunk]):
    """A cached answer as the SDK's ``Stream``: iterable, a context manager, ``close()``."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:  # no super(): there is no upstream
        self.response = _cache_response()
        self._iterator = iter([ChatCompletionChunk.model_validate(c) for c in chunks])

    def close(self) -> None:
        self._iterator = iter(())


async def _nothing() -> AsyncIterator[ChatCompletionChunk]:
    return
    yield


class _AsyncReplayStream(openai.AsyncStream[ChatCompletionChunk]):
    """A cached answer as the SDK's ``AsyncStream``."""

    def __init__(self, chunks: list[dict[str, Any]]) -> None:
        self.response = _cache_response()

        async def replay() -> AsyncIterator[ChatCompletionChunk]:
            for c in chunks:
                yield ChatCompletionChunk.model_validate(c)

        self._iterator = replay()

    async def close(self) -> None:
        self._iterator = _nothing()


def _cache_response() -> Any:
    """A stand-in for the HTTP response of a replayed stream (``stream.response``): status 200,
    ``x-bsc-cache: hit``, built with the HTTP library this SDK version uses."""
    try:
        http: Any = importlib.import_module("httpx2")
    except ImportError:
        http = importlib.import_module("httpx")
    request = http.Request("POST", "http://bsc.cache/chat/completions")
    return http.Response(200, headers={"x-bsc-cache": "hit", "content-type": "text/event-stream"}, request=request)


class _Request:
    """One ``create`` call: its cache lookup, or why it is not cached (:mod:`bsc.policy`)."""

    def __init__(self, owner: _Base, kwargs: dict[str, Any]) -> None:
        self.request = policy.parse_request("chat", kwargs)
        self.stream = self.request.stream
        prepared = policy.prepare(owner._cache, self.request, owner._namespace)
        if isinstance(prepared, str):
            logger.debug("bsc: request not cached: %s", prepared)
            self.prepared: policy.Prepared | None = None
        else:
            self.prepared = prepared

    def reply(self, stored: Mapping[str, Any]) -> Any:
        answer = policy.replay("chat", stored, stream=self.stream, include_usage=self.request.include_usage)
        return answer if self.stream else ChatCompletion.model_validate(answer)


class _Base:
    def __init__(
        self, client: Any, cache: SemanticCache | None, namespace: str, ttl: float | None, shared: Any = None
    ) -> None:
        if cache is not None and shared is not None:
            raise ValueError("pass shared= to the SemanticCache you give as cache=, not to both")
        self._client = client
        self._cache = cache if cache is not None else SemanticCache(shared=shared)
        self._namespace = namespace
        self._ttl = ttl

    @property
    def cache(self) -> SemanticCache:
        return self._cache

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def _store(self, prepared: policy.Prepared, completion: Mapping[str, Any]) -> None:
        try:
            policy.store(self._cache, prepared, completion, ttl=self._ttl)
        except Exception as err:  # an answer the cache cannot hold is still returned
            logger.warning("bsc: answer not cached: %s", err)

    async def _astore(self, prepared: policy.Prepared, completion: Mapping[str, Any]) -> None:
        try:
            await policy.astore(self._cache, prepared, completion, ttl=self._ttl)
        except Exception as err:
            logger.warning("bsc: answer not cached: %s", err)


class CachedOpenAI(_Base):
    """``openai.OpenAI`` (or, via :class:`AsyncCachedOpenAI`, ``AsyncOpenAI``) with a semantic
    cache in front of ``chat.completions.create``.

    Args:
        client: the SDK client to wrap. An ``AsyncOpenAI`` gives an :class:`AsyncCachedOpenAI`.
        cache: the :class:`~bsc.SemanticCache` (default: a new one with the local embedder).
        namespace: the cache namespace of every request (e.g. one per tenant).
        ttl: seconds a stored answer lives (default: the cache's ``default_ttl``).
        shared: with no ``cache``, a ``redis://`` URL or :class:`bsc.Shared`: the new cache is
            shared by every process naming the same Redis (docs/SHARED.md).
    """

    def __new__(cls, client: Any, *args: Any, **kwargs: Any) -> Any:
        if cls is CachedOpenAI and isinstance(client, openai.AsyncOpenAI):
            return AsyncCachedOpenAI(client, *args, **kwargs)
        return super().__new__(cls)

    def __init__(
        self,
        client: openai.OpenAI,
        cache: SemanticCache | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        shared: str | Shared | None = None,
    ) -> None:
        if not isinstance(client, openai.OpenAI):
            raise TypeError(f"client must be an openai.OpenAI or openai.AsyncOpenAI, got {type(client).__name__}")
        super().__init__(client, cache, namespace, ttl, shared)
        self.chat = _Chat(self)


class _Chat:
    def __init__(self, owner: CachedOpenAI) -> None:
        self._owner = owner
        self.completions = _Completions(owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.chat, name)


class _Completions:
    def __init__(self, owner: CachedOpenAI) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.chat.completions, name)

    def create(self, **kwargs: Any) -> Any:
        owner = self._owner
        request = _Request(owner, kwargs)
        prepared = request.prepared
        if prepared is not None:
            hit = owner.cache.lookup_prepared(prepared.key)
            if hit is not None:
                reply = request.reply(hit.response)
                return _ReplayStream(reply) if request.stream else reply
        result = owner._client.chat.completions.create(**kwargs)
        if prepared is None:
            return result
        if not request.stream:
            answer = policy.storable("chat", result.model_dump(mode="json"))
            if answer is not None:
                owner._store(prepared, answer)
            return result
        result._iterator = self._tap(result._iterator, prepared)
        return result

    def _tap(self, chunks: Iterator[ChatCompletionChunk], prepared: policy.Prepared) -> Iterator[ChatCompletionChunk]:
        """Passes the stream through and stores its answer once it has been read to the end."""
        seen = []
        for chunk in chunks:
            seen.append(chunk.model_dump(mode="json"))
            yield chunk
        completion = policy.stored_from_events("chat", seen)
        if completion is not None:
            self._owner._store(prepared, completion)


class AsyncCachedOpenAI(_Base):
    """:class:`CachedOpenAI` for ``openai.AsyncOpenAI``: ``await client.chat.completions.create(...)``."""

    def __init__(
        self,
        client: openai.AsyncOpenAI,
        cache: SemanticCache | None = None,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        shared: str | Shared | None = None,
    ) -> None:
        if not isinstance(client, openai.AsyncOpenAI):
            raise TypeError(f"client must be an openai.AsyncOpenAI, got {type(client).__name__}")
        super().__init__(client, cache, namespace, ttl, shared)
        self.chat = _AsyncChat(self)


class _AsyncChat:
    def __init__(self, owner: AsyncCachedOpenAI) -> None:
        self._owner = owner
        self.completions = _AsyncCompletions(owner)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.chat, name)


class _AsyncCompletions:
    def __init__(self, owner: AsyncCachedOpenAI) -> None:
        self._owner = owner

    def __getattr__(self, name: str) -> Any:
        return getattr(self._owner._client.chat.completions, name)

    async def create(self, **kwargs: Any) -> Any:
        owner = self._owner
        request = _Request(owner, kwargs)
        prepared = request.prepared
        if prepared is not None:
            hit = await owner.cache.alookup_prepared(prepared.key)
            if hit is not None:
                reply = request.reply(hit.response)
                return _AsyncReplayStream(reply) if request.stream else reply
        result = await owner._client.chat.completions.create(**kwargs)
        if prepared is None:
            return result
        if not request.stream:
            answer = policy.storable("chat", result.model_dump(mode="json"))
            if answer is not None:
                await owner._astore(prepared, answer)
            return result
        result._iterator = self._tap(result._iterator, prepared)
        return result

    async def _tap(
        self, chunks: AsyncIterator[ChatCompletionChunk], prepared: policy.Prepared
    ) -> AsyncIterator[ChatCompletionChunk]:
        seen = []
        async for chunk in chunks:
            seen.append(chunk.model_dump(mode="json"))
            yield chunk
        completion = policy.stored_from_events("chat", seen)
        if completion is not None:
            await self._owner._astore(prepared, completion)
