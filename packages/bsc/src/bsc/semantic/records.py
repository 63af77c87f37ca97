"""Records: what ``SemanticCache`` stores in each engine entry, and the :class:`Hit` it serves.

One record is a version byte, a u32 header length, the header as JSON (prompt, tags, tokens,
cost and, in version 2, the length of the int8 embedding that follows), then the encoded
response (:mod:`bsc._codec`). Records are plain bytes: nothing in them is ever executed.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from bsc._codec import decode_response
from bsc.engine import EntryTuple
from bsc.semantic.keys import namespace_of
from bsc_native import CorruptFileError

__all__ = ["Hit", "Record", "check_cost", "make_hit", "pack", "quantize", "tokens_of", "unpack"]

_RECORD_VERSION = 1
# Version 2 records carry an int8 copy of the embedding (for rescoring) after the header.
_RECORD_VERSION_VECTOR = 2


def tokens_of(usage: Any) -> int:
    """Total tokens from an int, a mapping or an object with ``total_tokens`` (or
    ``prompt_tokens`` + ``completion_tokens``), as the OpenAI SDK and Ollama report them."""
    if usage is None:
        return 0
    if isinstance(usage, bool):
        raise TypeError("usage must be an int, a mapping or a usage object, got bool")
    if isinstance(usage, int):
        total = usage
    else:

        def get(name: str) -> Any:
            return usage.get(name) if isinstance(usage, Mapping) else getattr(usage, name, None)

        total = get("total_tokens")
        if total is None:
            parts = [get("prompt_tokens"), get("completion_tokens")]
            if all(p is None for p in parts):
                raise TypeError(f"usage {usage!r} has no total_tokens, prompt_tokens or completion_tokens")
            total = sum(int(p) for p in parts if p is not None)
    if isinstance(total, bool) or not isinstance(total, int) or total < 0:
        raise ValueError(f"usage must count a non-negative whole number of tokens, got {total!r}")
    return total


def check_cost(cost: Any) -> float:
    if cost is None:
        return 0.0
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        raise ValueError(f"cost must be a finite number >= 0 (e.g. US dollars), got {cost!r}")
    return float(cost)


def pack(prompt: str, tags: tuple[str, ...], tokens: int, cost: float, response: bytes, vector: bytes = b"") -> bytes:
    """One record: version byte, u32 header length, the header as JSON, then (version 2) the
    int8 embedding whose length the header's ``v`` gives, then the encoded response."""
    header: dict[str, Any] = {"p": prompt, "t": list(tags), "u": tokens, "c": cost}
    if vector:
        header["v"] = len(vector)
    raw = json.dumps(header, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")
    version = _RECORD_VERSION_VECTOR if vector else _RECORD_VERSION
    return struct.pack("<BI", version, len(raw)) + raw + vector + response


def quantize(embedding: Any) -> bytes:
    """The int8 copy of an embedding kept for rescoring: scaled so that its largest component is
    ±127 (cosine similarity does not depend on the scale, so none is stored)."""
    vector = np.asarray(embedding, dtype=np.float32)
    peak = float(np.max(np.abs(vector))) if vector.size else 0.0
    if not peak > 0 or not math.isfinite(peak):
        return bytes(vector.size)
    return np.rint(vector * (127.0 / peak)).astype(np.int8).tobytes()


@dataclass(frozen=True, slots=True)
class Record:
    prompt: str
    tags: tuple[str, ...]
    tokens: int
    cost: float
    response: bytes
    vector: bytes = b""


def unpack(payload: bytes) -> Record:
    try:
        version, length = struct.unpack_from("<BI", payload)
        if version not in (_RECORD_VERSION, _RECORD_VERSION_VECTOR):
            raise ValueError(f"record version {version}")
        end = 5 + length
        header = json.loads(payload[5:end].decode("utf-8", "surrogatepass"))
        prompt, tags, tokens, cost = header["p"], header["t"], header["u"], header["c"]
        size = header["v"] if version == _RECORD_VERSION_VECTOR else 0
        if not isinstance(prompt, str) or not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise ValueError("prompt or tags of the wrong type")
        if type(tokens) is not int or tokens < 0 or type(size) is not int or not 0 <= size <= len(payload) - end:
            raise ValueError("a bad token count or embedding size")
        if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 <= cost < math.inf:
            raise ValueError(f"cost {cost!r}")
        return Record(prompt, tuple(tags), tokens, float(cost), payload[end + size :], payload[end : end + size])
    except (struct.error, ValueError, KeyError, TypeError, OverflowError, RecursionError) as err:
        raise CorruptFileError(f"a cache record is not a SemanticCache record ({err})") from None


@dataclass(frozen=True, slots=True)
class Hit:
    """A cached answer.

    ``similarity`` is 1.0 for an exact hit (the same normalised prompt) and otherwise the cosine
    similarity estimated from the binary codes (with rescoring, the exact cosine of the stored
    int8 copy and the prompt's embedding); ``prompt`` is the stored prompt that answered.
    Pass a wrong one to :meth:`SemanticCache.mark_wrong`."""

    response: Any
    similarity: float
    exact: bool
    prompt: str
    id: int
    namespace: str
    tags: tuple[str, ...]
    created_at: float
    access_count: int


def make_hit(found: EntryTuple, record: Record, partition: str, similarity: float, exact: bool) -> Hit:
    """The :class:`Hit` for an engine entry and its record."""
    entry_id, _, _, created_at, _, access_count = found
    return Hit(
        response=decode_response(record.response),
        similarity=similarity,
        exact=exact,
        prompt=record.prompt,
        id=entry_id,
        namespace=namespace_of(partition),
        tags=record.tags,
        created_at=created_at,
        access_count=access_count,
    )
