"""Chat requests: the ``*_chat`` methods of :class:`~bsc.SemanticCache`, on its public API.

The last user message is matched semantically; the model, the answer-changing parameters and
every earlier message must be equal (:func:`bsc.semantic.keys.chat_scope`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Protocol

from bsc.semantic.keys import DEFAULT_NAMESPACE, chat_scope
from bsc.semantic.records import Hit

__all__ = ["ChatMethods"]


class _Cache(Protocol):
    """What the chat methods use of the cache they are mixed into."""

    def lookup(self, prompt: str, **scope: Any) -> Hit | None: ...

    async def alookup(self, prompt: str, **scope: Any) -> Hit | None: ...

    def store(self, prompt: str, response: Any, **options: Any) -> int | None: ...

    async def astore(self, prompt: str, response: Any, **options: Any) -> int | None: ...


class ChatMethods:
    """Mixed into :class:`~bsc.SemanticCache`: chat requests through its ``lookup``/``store``."""

    def lookup_chat(
        self: _Cache,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        namespace: str = DEFAULT_NAMESPACE,
        **params: Any,
    ) -> Hit | None:
        """:meth:`lookup` for a chat request: the last user message is matched semantically; the
        model, the answer-changing parameters and every earlier message must be equal
        (:func:`chat_scope`)."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return self.lookup(prompt, namespace=namespace, **scope)

    def store_chat(
        self: _Cache,
        messages: Sequence[Mapping[str, Any]],
        response: Any,
        *,
        model: str,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **params: Any,
    ) -> int | None:
        """:meth:`store` for a chat request (see :meth:`lookup_chat`)."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return self.store(prompt, response, namespace=namespace, ttl=ttl, tags=tags, usage=usage, cost=cost, **scope)

    async def alookup_chat(
        self: _Cache,
        messages: Sequence[Mapping[str, Any]],
        *,
        model: str,
        namespace: str = DEFAULT_NAMESPACE,
        **params: Any,
    ) -> Hit | None:
        """Async :meth:`lookup_chat`."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return await self.alookup(prompt, namespace=namespace, **scope)

    async def astore_chat(
        self: _Cache,
        messages: Sequence[Mapping[str, Any]],
        response: Any,
        *,
        model: str,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **params: Any,
    ) -> int | None:
        """Async :meth:`store_chat`."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return await self.astore(
            prompt, response, namespace=namespace, ttl=ttl, tags=tags, usage=usage, cost=cost, **scope
        )
