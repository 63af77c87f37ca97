"""The OpenAI chat-completions wire format, as plain dicts: shared by the client wrapper
(``bsc.openai``) and the proxy (``bsc.server``).

A cache entry holds one completed ``chat.completion`` object. A streamed answer is assembled
into one when its stream completes (:func:`completion_from_chunks`), and a cached answer is
replayed as a stream by cutting it into ``chat.completion.chunk`` objects
(:func:`chunks_from_completion`), so streamed and non-streamed requests share entries.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

# Characters of content per replayed chunk: small enough to look like a stream, large enough
# that a long answer is not thousands of events.
CHUNK_CHARS = 64


def fresh(completion: Mapping[str, Any]) -> dict[str, Any]:
    """A cached completion as a new response: a new id (``chatcmpl-bsc-...``) and creation time."""
    out = dict(completion)
    out["id"] = f"chatcmpl-bsc-{uuid.uuid4().hex[:24]}"
    out["created"] = int(time.time())
    return out


def chunks_from_completion(completion: Mapping[str, Any], *, include_usage: bool = False) -> list[dict[str, Any]]:
    """The stream of ``chat.completion.chunk`` objects that delivers ``completion``: per choice,
    the role, the content in pieces, the tool calls and the finish reason; then, if
    ``include_usage``, a last chunk with the usage and no choices (as ``stream_options`` asks)."""
    base = {
        "id": completion.get("id"),
        "object": "chat.completion.chunk",
        "created": completion.get("created"),
        "model": completion.get("model"),
        "system_fingerprint": completion.get("system_fingerprint"),
        "service_tier": completion.get("service_tier"),
    }

    def chunk(choices: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
        return {**base, "choices": choices, **extra}

    out = []
    for choice in completion.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        out.append(chunk([{"index": index, "delta": {"role": message.get("role", "assistant"), "content": ""}}]))
        content = message.get("content") or ""
        for start in range(0, len(content), CHUNK_CHARS):
            piece = content[start : start + CHUNK_CHARS]
            out.append(chunk([{"index": index, "delta": {"content": piece}}]))
        if message.get("refusal"):
            out.append(chunk([{"index": index, "delta": {"refusal": message["refusal"]}}]))
        calls = message.get("tool_calls")
        if calls:
            deltas = [{"index": i, **call} for i, call in enumerate(calls)]
            out.append(chunk([{"index": index, "delta": {"tool_calls": deltas}}]))
        if message.get("function_call"):  # the legacy form of a tool call
            out.append(chunk([{"index": index, "delta": {"function_call": message["function_call"]}}]))
        out.append(
            chunk(
                [
                    {
                        "index": index,
                        "delta": {},
                        "finish_reason": choice.get("finish_reason"),
                        "logprobs": choice.get("logprobs"),
                    }
                ]
            )
        )
    if include_usage:
        out.append(chunk([], usage=completion.get("usage")))
    return out


def completion_from_chunks(chunks: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The ``chat.completion`` a complete stream of chunks delivered, or ``None`` if the stream
    did not finish (a choice without a finish reason) or held no choice."""
    first: Mapping[str, Any] | None = None
    usage = None
    choices: dict[int, dict[str, Any]] = {}
    for item in chunks:
        if first is None:
            first = item
        if item.get("usage"):
            usage = item["usage"]
        for delta_choice in item.get("choices") or []:
            index = delta_choice.get("index", 0)
            state = choices.setdefault(
                index,
                {
                    "role": "assistant",
                    "content": [],
                    "refusal": [],
                    "tool_calls": {},
                    "function_call": None,
                    "logprobs": None,
                    "finish_reason": None,
                },
            )
            delta = delta_choice.get("delta") or {}
            if delta.get("role"):
                state["role"] = delta["role"]
            if delta.get("content"):
                state["content"].append(delta["content"])
            if delta.get("refusal"):
                state["refusal"].append(delta["refusal"])
            for call in delta.get("tool_calls") or []:
                slot = state["tool_calls"].setdefault(
                    call.get("index", 0), {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
                )
                if call.get("id"):
                    slot["id"] = call["id"]
                if call.get("type"):
                    slot["type"] = call["type"]
                function = call.get("function") or {}
                slot["function"]["name"] += function.get("name") or ""
                slot["function"]["arguments"] += function.get("arguments") or ""
            legacy = delta.get("function_call")
            if legacy:
                call = state["function_call"] = state["function_call"] or {"name": "", "arguments": ""}
                call["name"] += legacy.get("name") or ""
                call["arguments"] += legacy.get("arguments") or ""
            logprobs = delta_choice.get("logprobs")
            if logprobs:
                kept = state["logprobs"] = state["logprobs"] or {}
                for part, items in logprobs.items():
                    if isinstance(items, list):
                        kept.setdefault(part, []).extend(items)
            if delta_choice.get("finish_reason"):
                state["finish_reason"] = delta_choice["finish_reason"]
    if first is None or not choices or any(s["finish_reason"] is None for s in choices.values()):
        return None
    out_choices = []
    for index in sorted(choices):
        state = choices[index]
        message: dict[str, Any] = {"role": state["role"], "content": "".join(state["content"]) or None}
        if state["refusal"]:
            message["refusal"] = "".join(state["refusal"])
        if state["tool_calls"]:
            message["tool_calls"] = [state["tool_calls"][i] for i in sorted(state["tool_calls"])]
        if state["function_call"]:
            message["function_call"] = state["function_call"]
        out_choices.append(
            {"index": index, "message": message, "finish_reason": state["finish_reason"], "logprobs": state["logprobs"]}
        )
    return {
        "id": first.get("id"),
        "object": "chat.completion",
        "created": first.get("created"),
        "model": first.get("model"),
        "system_fingerprint": first.get("system_fingerprint"),
        "service_tier": first.get("service_tier"),
        "choices": out_choices,
        "usage": usage,
    }


def usable_usage(usage: Any) -> Any:
    """``usage`` if the cache can count its tokens, else ``None``: an answer with odd usage
    data is still cached, only without its token count."""
    from bsc.semantic.records import tokens_of

    try:
        tokens_of(usage)
    except (TypeError, ValueError):
        return None
    return usage


def split_request(body: Mapping[str, Any]) -> tuple[Any, Any, dict[str, Any]]:
    """``(messages, model, other parameters)`` of a chat request body."""
    params = {k: v for k, v in body.items() if k not in ("messages", "model")}
    return body.get("messages"), body.get("model"), params
