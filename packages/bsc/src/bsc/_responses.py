"""The OpenAI Responses API wire format (``POST /v1/responses``), as plain dicts: what the proxy
(``bsc serve``) needs to cache Responses requests with the same policy as chat completions.

A cache entry holds one completed ``response`` object. A streamed answer is taken from the
``response.completed`` event that ends its stream (:func:`response_from_events`), and a cached
answer is replayed as the stream of events the API would send for it
(:func:`events_from_response`, serialised by :func:`sse`), so streamed and non-streamed requests
share entries. :func:`responses_scope` splits a request into the prompt matched semantically and
the scope matched exactly, as :func:`bsc.semantic.chat_scope` does for chat requests.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from bsc.semantic.keys import NEUTRAL_PARAMETERS, RESERVED_SCOPE_NAMES, canonical, digest

__all__ = [
    "CHUNK_CHARS",
    "events_from_response",
    "fresh",
    "output_text",
    "response_from_events",
    "responses_scope",
    "sse",
]

# Characters of text per replayed delta event (as for chat chunks).
CHUNK_CHARS = 64

# Request keys that refer to state kept by the server, with the reason a request using them is
# not cached: the answer depends on more than the request says.
_SERVER_STATE = {
    "previous_response_id": "previous_response_id refers to server-side state",
    "conversation": "conversation refers to server-side state",
    "prompt": "prompt refers to a stored prompt template",
}
# Request keys that are not scope values: the prompt's source, the model and the instructions
# (both in the scope in their own way), and ``background`` (refused when true, neutral when false).
_NOT_PARAMETERS = frozenset({"input", "model", "instructions", "background"})
# Scope names this module sets itself.
_OWN_SCOPE_NAMES = frozenset({"api", "context"})
# Stream events after which no ``response.completed`` follows.
_FAILED_EVENTS = frozenset({"response.failed", "response.incomplete", "error"})


def responses_scope(body: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Split a Responses request body into the text matched semantically and the scope matched
    exactly.

    Returns ``(prompt, scope)``. ``prompt`` is the text of the last user input: ``input`` when it
    is a str, else the last item of the ``input`` list, which must be a user message
    (``{"role": "user", "content": str | [input_text parts]}``, with or without
    ``"type": "message"``; its text parts are joined with newlines). ``scope`` holds
    ``"api": "responses"`` (so chat and Responses entries never answer each other), the model, a
    ``"context"`` hash of every earlier input item, of ``instructions`` and of the last item's
    other keys, and every other parameter of the body except those of
    :data:`~bsc.semantic.NEUTRAL_PARAMETERS` and those given as ``None``.

    Raises :class:`ValueError`, with a short reason, for a request that cannot be cached: no
    model, no input, a last input that is not a user message or holds a non-text part, or a
    request that depends on server-side state (``previous_response_id``, ``conversation``, a
    stored ``prompt``, ``background``, an ``item_reference`` or a non-text part in any input
    item, a tool other than function, custom and web search tools). Raises :class:`TypeError` for
    a parameter named like a scope name the cache or this function sets, or a scope that is not
    JSON values.
    """
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise ValueError("no model")
    for name, reason in _SERVER_STATE.items():
        if body.get(name) is not None:
            raise ValueError(reason)
    if body.get("background"):
        raise ValueError("background responses are not cached")
    if "input" not in body or body["input"] is None:
        raise ValueError("no input")
    prompt, earlier, rest = _split_input(body["input"])
    _check_stateless(earlier, body.get("tools"))
    context = canonical([earlier, body.get("instructions"), rest], "responses input")
    scope: dict[str, Any] = {"api": "responses", "model": model, "context": digest(context, 16).hex()}
    for name, value in body.items():
        if name in _OWN_SCOPE_NAMES or name in RESERVED_SCOPE_NAMES:
            raise TypeError(f"{name!r} cannot be a responses parameter here")
        if name not in _NOT_PARAMETERS and name not in NEUTRAL_PARAMETERS and value is not None:
            scope[name] = value
    canonical(scope, "responses parameters")
    return prompt, scope


#: Content parts of earlier input items that are plain values (matched exactly, through the scope).
_TEXT_PARTS = frozenset({"input_text", "output_text", "refusal", "text", "summary_text", "reasoning_text"})
#: Tool types whose answers depend only on the request (and, for web search, the web).
_STATELESS_TOOLS = frozenset({"function", "custom", "web_search", "web_search_preview", "web_search_2025_08_26"})


def _check_stateless(earlier: list[Any], tools: Any) -> None:
    """Refuses (``ValueError``) earlier input that names server-side state or holds non-text
    parts (an ``item_reference``, an image, a file, audio: the cache cannot see what they hold),
    and tools that read server-side state (file search over a vector store, code interpreter
    containers, MCP servers, ...)."""
    for item in earlier:
        if not isinstance(item, Mapping):
            continue
        if item.get("type") == "item_reference":
            raise ValueError("an input item refers to server-side state (item_reference)")
        content = item.get("content")
        if isinstance(content, Sequence) and not isinstance(content, (str, bytes, bytearray)):
            for part in content:
                kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
                if kind not in _TEXT_PARTS:
                    raise ValueError(f"an earlier input holds a non-text part ({kind})")
    if isinstance(tools, Sequence) and not isinstance(tools, (str, bytes, bytearray)):
        for tool in tools:
            kind = tool.get("type") if isinstance(tool, Mapping) else type(tool).__name__
            if kind not in _STATELESS_TOOLS:
                raise ValueError(f"a tool reads server-side state ({kind})")


def _split_input(value: Any) -> tuple[str, list[Any], dict[str, Any]]:
    """``(prompt, earlier items, the last item's other keys)`` of a request's ``input``."""
    if isinstance(value, str):
        return value, [], {}
    if not isinstance(value, Sequence) or isinstance(value, (bytes, bytearray)):
        raise ValueError("input must be a str or a list of input items")
    if not value:
        raise ValueError("empty input")
    last = value[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user" or last.get("type", "message") != "message":
        raise ValueError("the last input item is not a user message")
    content = last.get("content")
    extras: list[dict[str, Any]] = []
    if isinstance(content, str):
        prompt = content
    elif isinstance(content, Sequence) and not isinstance(content, (bytes, bytearray)):
        texts = []
        for part in content:
            kind = part.get("type") if isinstance(part, Mapping) else type(part).__name__
            if kind != "input_text":
                raise ValueError(f"the last input holds a non-text part ({kind})")
            if not isinstance(part.get("text"), str):
                raise ValueError("an input_text part of the last input has no text")
            texts.append(part["text"])
            extra = {k: v for k, v in part.items() if k not in ("type", "text")}
            if extra:
                extras.append(extra)
        prompt = "\n".join(texts)
    else:
        raise ValueError("the last input's content must be a str or a list of input_text parts")
    # ``"type": "message"`` is the default: a message with or without it is the same request.
    rest = {k: v for k, v in last.items() if k not in ("content", "role") and not (k == "type" and v == "message")}
    if extras:
        rest["parts"] = extras
    return prompt, list(value[:-1]), rest


def fresh(response: Mapping[str, Any]) -> dict[str, Any]:
    """A cached response object as a new one: a new id (``resp_bsc_...``) and creation time (and
    completion time, if it has one)."""
    out = dict(response)
    now = int(time.time())
    out["id"] = f"resp_bsc_{uuid.uuid4().hex}"
    out["created_at"] = now
    if out.get("completed_at") is not None:
        out["completed_at"] = now
    return out


def response_from_events(events: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The completed response object a streamed Responses answer delivered: the ``response`` of
    its ``response.completed`` event, or ``None`` if the stream did not complete (no such event,
    or a ``response.failed``, ``response.incomplete`` or ``error`` event) or the response's
    status is not ``completed``.

    A ``response.completed`` event without ``output`` gets the items of the stream's
    ``response.output_item.done`` events.
    """
    completed: Mapping[str, Any] | None = None
    done_items: dict[int, Any] = {}
    for event in events:
        kind = event.get("type")
        if kind in _FAILED_EVENTS:
            return None
        if kind == "response.output_item.done" and isinstance(event.get("output_index"), int):
            done_items[event["output_index"]] = event.get("item")
        elif kind == "response.completed" and isinstance(event.get("response"), Mapping):
            completed = event["response"]
    if completed is None or completed.get("status") != "completed":
        return None
    out = dict(completed)
    if out.get("output") is None:
        out["output"] = [done_items[i] for i in sorted(done_items)]
    return out


def _pieces(text: str) -> list[str]:
    return [text[start : start + CHUNK_CHARS] for start in range(0, len(text), CHUNK_CHARS)]


def events_from_response(response: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stream events that deliver a completed response object, as the API streams them.

    ``response.created`` and ``response.in_progress`` (the response in progress: no output, no
    usage); then per output item ``response.output_item.added`` (the item in progress: a message
    without content, a function call without arguments), its content, and
    ``response.output_item.done`` (the whole item); finally ``response.completed`` (the whole
    response). A message's content is, per part: ``response.content_part.added`` (the part
    without text), ``response.output_text.delta`` events of up to :data:`CHUNK_CHARS` characters
    and ``response.output_text.done`` (or ``response.refusal.delta``/``.done`` for a refusal),
    and ``response.content_part.done``. A function call's arguments come in
    ``response.function_call_arguments.delta``/``.done`` events, a custom tool call's input in
    ``response.custom_tool_call_input.delta``/``.done``; other items (reasoning, web searches,
    ...) have no events between added and done. Every event has a ``type`` and a
    ``sequence_number`` counting from 0.
    """
    out: list[dict[str, Any]] = []

    def emit(kind: str, **fields: Any) -> None:
        out.append({"type": kind, "sequence_number": len(out), **fields})

    pending = {**response, "status": "in_progress", "output": []}
    for name in ("usage", "completed_at"):
        if name in pending:
            pending[name] = None
    emit("response.created", response=pending)
    emit("response.in_progress", response=dict(pending))
    for output_index, item in enumerate(response.get("output") or []):
        item_id = str(item.get("id") or "")
        at = {"item_id": item_id, "output_index": output_index}
        kind = item.get("type")
        added = dict(item)
        if "status" in added or kind == "message":
            added["status"] = "in_progress"
        if kind == "message":
            added["content"] = []
        elif kind == "function_call":
            added["arguments"] = ""
        elif kind == "custom_tool_call":
            added["input"] = ""
        emit("response.output_item.added", output_index=output_index, item=added)
        if kind == "message":
            for content_index, part in enumerate(item.get("content") or []):
                part_at = {**at, "content_index": content_index}
                part_kind = part.get("type")
                if part_kind == "output_text":
                    text = part.get("text") or ""
                    pending_part = {**part, "text": "", "annotations": []}
                    if "logprobs" in part:
                        pending_part["logprobs"] = []
                    emit("response.content_part.added", **part_at, part=pending_part)
                    for piece in _pieces(text):
                        emit("response.output_text.delta", **part_at, delta=piece, logprobs=[])
                    emit("response.output_text.done", **part_at, text=text, logprobs=[])
                elif part_kind == "refusal":
                    refusal = part.get("refusal") or ""
                    emit("response.content_part.added", **part_at, part={**part, "refusal": ""})
                    for piece in _pieces(refusal):
                        emit("response.refusal.delta", **part_at, delta=piece)
                    emit("response.refusal.done", **part_at, refusal=refusal)
                else:
                    emit("response.content_part.added", **part_at, part=dict(part))
                emit("response.content_part.done", **part_at, part=dict(part))
        elif kind == "function_call":
            arguments = item.get("arguments") or ""
            for piece in _pieces(arguments):
                emit("response.function_call_arguments.delta", **at, delta=piece)
            emit("response.function_call_arguments.done", **at, arguments=arguments)
        elif kind == "custom_tool_call":
            tool_input = item.get("input") or ""
            for piece in _pieces(tool_input):
                emit("response.custom_tool_call_input.delta", **at, delta=piece)
            emit("response.custom_tool_call_input.done", **at, input=tool_input)
        emit("response.output_item.done", output_index=output_index, item=dict(item))
    emit("response.completed", response=dict(response))
    return out


def sse(events: Iterable[Mapping[str, Any]]) -> bytes:
    """The server-sent-events body of a stream of events: ``event: <type>`` and
    ``data: <compact JSON>`` per event. (No ``data: [DONE]``: the Responses API does not send
    one.)"""
    out = []
    for event in events:
        data = json.dumps(event, separators=(",", ":"), ensure_ascii=False)
        out.append(f"event: {event.get('type')}\ndata: {data}\n\n".encode())
    return b"".join(out)


def output_text(response: Mapping[str, Any]) -> str | None:
    """The text of a response object's answer: its message items' ``output_text`` parts, joined;
    ``None`` if it has none (a tool call, a refusal, no output)."""
    texts: list[str] = []
    found = False
    for item in response.get("output") or []:
        if not isinstance(item, Mapping) or item.get("type") != "message":
            continue
        for part in item.get("content") or []:
            if isinstance(part, Mapping) and part.get("type") == "output_text" and isinstance(part.get("text"), str):
                found = True
                texts.append(part["text"])
    return "".join(texts) if found else None
