"""The request policy: the one place that decides what an OpenAI request means to the cache.

Both surfaces in front of the LLM, the client wrapper (``bsc.openai``) and the proxy
(``bsc.server``), turn a request body into a :class:`CacheRequest` here: the text matched
semantically, the scope matched exactly, or the reason the request is not cached; and they
turn an upstream answer into what is stored, and a stored answer into what is replayed, with
the functions below. Two APIs are understood:

- ``chat``: ``POST /chat/completions``. The last user message is the prompt; the model, the
  parameters that change the answer, the system prompt and every earlier turn are the scope
  (:func:`bsc.chat_scope`). A stored answer is one ``chat.completion`` object; streamed
  requests are replayed as ``chat.completion.chunk`` events.
- ``responses``: ``POST /responses`` (the Responses API). The last user input is the prompt;
  the model, ``instructions``, earlier input items, tools and every parameter that changes the
  answer are the scope; ``previous_response_id``, ``conversation``, ``prompt`` templates,
  ``background`` and non-text inputs bypass (the answer depends on state the cache cannot
  see). A stored answer is one completed ``response`` object; streamed requests are replayed
  as the API's event stream.

The two APIs' entries never answer each other: the scope of a Responses request holds
``api="responses"``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from bsc import _responses
from bsc._chat import chunks_from_completion, completion_from_chunks, fresh, split_request, usable_usage
from bsc.semantic import PromptKey, SemanticCache, chat_scope

__all__ = [
    "API",
    "CacheRequest",
    "Prepared",
    "answer_text",
    "astore",
    "parse_request",
    "prepare",
    "replay",
    "sse",
    "storable",
    "store",
    "stored_from_events",
    "usage_of",
]

API = Literal["chat", "responses"]


@dataclass(frozen=True)
class CacheRequest:
    """One request as the cache sees it.

    ``prompt`` and ``scope`` are set when the request can be cached; otherwise ``bypass`` says
    why not (a short phrase for logs and the ``X-Bsc-Bypass`` header)."""

    api: API
    stream: bool
    include_usage: bool
    prompt: str | None = None
    scope: dict[str, Any] | None = None
    bypass: str | None = None


@dataclass(frozen=True)
class Prepared:
    """A request the cache checked and will look up: ``key`` is the cache's own prepared form,
    ``prompt`` and ``scope`` are what a store of its answer takes."""

    key: PromptKey
    prompt: str
    scope: dict[str, Any]
    namespace: str


def _given(body: Mapping[str, Any]) -> dict[str, Any]:
    """The request without the SDK's "not given" markers (``NOT_GIVEN``, ``omit``)."""
    return {k: v for k, v in body.items() if type(v).__name__ not in ("NotGiven", "Omit")}


def parse_request(api: API, body: Mapping[str, Any]) -> CacheRequest:
    """What ``body`` (a request's JSON object, or the SDK's keyword arguments) means to the cache."""
    body = _given(body)
    stream = bool(body.get("stream"))
    options = body.get("stream_options")
    include_usage = isinstance(options, Mapping) and bool(options.get("include_usage"))
    try:
        if api == "chat":
            messages, model, params = split_request(body)
            prompt, scope = chat_scope(messages, model=model, **params)
        elif api == "responses":
            prompt, scope = _responses.responses_scope(body)
        else:
            raise ValueError(f"unknown API {api!r}")
    except (TypeError, ValueError) as err:
        return CacheRequest(api, stream, include_usage, bypass=str(err))
    return CacheRequest(api, stream, include_usage, prompt=prompt, scope=scope)


def prepare(cache: SemanticCache, request: CacheRequest, namespace: str) -> Prepared | str:
    """The request checked by ``cache`` (prompt, namespace, scope, temperature): a
    :class:`Prepared` lookup, or the reason it bypasses the cache (an empty or over-long
    prompt, a temperature above the cache's ``max_temperature``, ...)."""
    if request.bypass is not None:
        return request.bypass
    assert request.prompt is not None and request.scope is not None
    try:
        key = cache.prepare(request.prompt, namespace=namespace, scope=request.scope)
    except (TypeError, ValueError) as err:
        return str(err)
    if key is None:
        return f"temperature above max_temperature={cache.max_temperature}"
    return Prepared(key, request.prompt, request.scope, namespace)


def storable(api: API, answer: Any) -> dict[str, Any] | None:
    """The answer to store from an upstream's JSON answer, or ``None`` when it is not a complete,
    successful one (a chat completion with choices; a response whose status is completed)."""
    if not isinstance(answer, Mapping):
        return None
    if api == "chat":
        choices = answer.get("choices")
        if not isinstance(choices, list) or not choices:
            return None
        for choice in choices:
            if not isinstance(choice, Mapping) or not isinstance(choice.get("message"), Mapping):
                return None
            content = choice["message"].get("content")
            if content is not None and not isinstance(content, str):
                return None
        return dict(answer)
    output = answer.get("output")
    if answer.get("object") != "response" or answer.get("status") != "completed" or not isinstance(output, list):
        return None
    if not all(isinstance(item, Mapping) for item in output):
        return None
    return dict(answer)


def stored_from_events(api: API, events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The answer a complete stream delivered (``None``: it did not complete)."""
    try:
        if api == "chat":
            return storable(api, completion_from_chunks(events))
        return storable(api, _responses.response_from_events(events))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError):
        return None  # events of a shape the API does not send: nothing to store


def usage_of(answer: Mapping[str, Any]) -> Any:
    """The usage to count for a stored answer (``None`` when the cache cannot count it)."""
    usage = answer.get("usage")
    if isinstance(usage, Mapping) and "total_tokens" not in usage and "input_tokens" in usage:
        usage = {"prompt_tokens": usage.get("input_tokens"), "completion_tokens": usage.get("output_tokens")}
    return usable_usage(usage)


def store(
    cache: SemanticCache,
    prepared: Prepared,
    answer: Mapping[str, Any],
    *,
    ttl: float | None = None,
    tags: tuple[str, ...] = (),
) -> int | None:
    """Stores ``answer`` for the request ``prepared`` was made from (its usage counted when it
    can be), under the key its lookup used: a request's own parameters (a body key named
    ``namespace``, say) never choose where the answer goes."""
    return cache.store_prepared(
        prepared.key, prepared.prompt, dict(answer), ttl=ttl, tags=tags or None, usage=usage_of(answer)
    )


async def astore(
    cache: SemanticCache,
    prepared: Prepared,
    answer: Mapping[str, Any],
    *,
    ttl: float | None = None,
    tags: tuple[str, ...] = (),
) -> int | None:
    """Async :func:`store`."""
    return await cache.astore_prepared(
        prepared.key, prepared.prompt, dict(answer), ttl=ttl, tags=tags or None, usage=usage_of(answer)
    )


def replay(api: API, stored: Mapping[str, Any], *, stream: bool, include_usage: bool = False) -> Any:
    """A stored answer as a new answer: for ``chat`` a completion with a new id and creation
    time, or its ``chat.completion.chunk`` events when ``stream``; for ``responses`` the stored
    response (its id kept, so a later ``previous_response_id`` can name it upstream), or its
    event stream when ``stream``."""
    if api == "chat":
        completion = fresh(stored)
        return chunks_from_completion(completion, include_usage=include_usage) if stream else completion
    return _responses.events_from_response(stored) if stream else dict(stored)


def sse(api: API, events: list[dict[str, Any]]) -> bytes:
    """The server-sent-events body of a replayed stream."""
    if api == "responses":
        return _responses.sse(events)
    lines = [f"data: {json.dumps(event, separators=(',', ':'))}\n\n" for event in events]
    return ("".join(lines) + "data: [DONE]\n\n").encode()


def answer_text(stored: Any) -> str | None:
    """The text of a stored answer (the assistant message of a completion, the output text of
    a response), or ``None`` when it is neither."""
    if not isinstance(stored, Mapping):
        return None
    if stored.get("object") == "response":
        return _responses.output_text(stored)
    choices = stored.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping):
            content = message.get("content")
            if isinstance(content, str):
                return content
            calls = message.get("tool_calls")
            if isinstance(calls, list) and calls:
                names = [c.get("function", {}).get("name", "?") for c in calls if isinstance(c, Mapping)]
                return "tool calls: " + ", ".join(str(n) for n in names)
    return None
