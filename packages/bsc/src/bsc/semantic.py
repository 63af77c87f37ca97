"""``SemanticCache``: the text-level cache (prompts in, responses out).

One lookup, in order (docs/SEMANTICS.md states the rule in full):

1. the prompt, namespace and scope are checked; a request whose ``temperature`` is above
   ``max_temperature`` bypasses the cache;
2. the **exact path**: a 64-bit hash of the normalised prompt and its partition (namespace +
   scope hash) is looked up in the native key table, O(1), before any embedding is computed;
   the stored prompt is compared with the query, so a hash collision can never answer;
3. the **semantic path**: the prompt is embedded, encoded to a binary code and the nearest entry
   *of the same partition* is found inside the native scan; it answers if its estimated cosine
   similarity reaches ``similarity_threshold``. With ``rescore`` on, the best few binary
   candidates are re-scored with the exact cosine of an int8 copy of their embeddings kept in
   their records; with ``content_gate`` on, a candidate whose numbers, dates, negation, ... differ
   from the prompt's is vetoed (:mod:`bsc.gate`).

Every entry is stored with its prompt, tags and usage in one record (``_pack``); the native
engine keeps the partition, the TTL and the exact-match key beside it.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import struct
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import numpy as np

from bsc._codec import decode_response, encode_response
from bsc.cache import BinarySemanticCache, _check_no_surrogate, _check_threshold, _check_ttl
from bsc.gate import ContentGate, gate_arg
from bsc_backends import Embedder
from bsc_encoder import BinaryEncoder, hamming_radius, hamming_to_cosine
from bsc_native import CorruptFileError, EncoderMismatchError, NotACacheFileError

logger = logging.getLogger("bsc")

__all__ = [
    "NEUTRAL_PARAMETERS",
    "Hit",
    "SemanticCache",
    "SemanticStats",
    "chat_scope",
    "normalize_prompt",
    "semantic_cache",
]

#: Namespaces: 1 to 128 characters, letters, digits and ``_ . : @ / + = -``, starting with a
#: letter or digit. ``#`` and ``!`` are kept out: they separate the namespace from the scope
#: hash in the engine's partition name.
NAMESPACE_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=\-]{0,127}")
#: Tags: 1 to 128 printable characters without whitespace.
TAG_PATTERN = re.compile(r"[^\s\x00-\x1f\x7f]{1,128}")
MAX_TAGS = 32
DEFAULT_NAMESPACE = "default"
#: Chat request parameters that do not change the answer, left out of a chat request's scope:
#: streaming, attribution, transport and storage options. Every other parameter (temperature,
#: top_p, max_tokens, tools, response_format, seed, an Ollama ``format`` or ``options``, an
#: Anthropic-style ``system``, ...) is part of the scope, so an unknown one is never ignored.
NEUTRAL_PARAMETERS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "safety_identifier",
        "metadata",
        "store",
        "service_tier",
        "prompt_cache_key",
        "prompt_cache_options",
        "prompt_cache_retention",
        "timeout",
        "extra_headers",
        "extra_query",
        "keep_alive",
    }
)
#: Keyword names ``store`` takes for itself, so they cannot be scope values.
RESERVED_SCOPE_NAMES = frozenset({"ttl", "tags", "usage", "cost"})
#: Embeddings kept of the latest texts embedded (about 1.5 KB each at 384 dimensions).
RECENT_EMBEDDINGS = 256
_RECORD_VERSION = 1
# Version 2 records carry an int8 copy of the embedding (for rescoring) after the header.
_RECORD_VERSION_VECTOR = 2
_META_VERSION = 1
# Histogram of the best candidate's similarity: 40 bins of 0.05 over [-1, 1].
_BINS = 40

F = TypeVar("F", bound=Callable[..., Any])
# A checked store: text, partition, normalised prompt, the record packer (given the int8
# embedding or nothing), ttl, tags.
_Item = tuple[str, str, str, Callable[..., bytes], "float | None", tuple[str, ...]]


def normalize_prompt(prompt: str) -> str:
    """The form the exact path compares: Unicode NFKC, runs of whitespace as one space, no
    leading or trailing whitespace. Case and punctuation are kept (they can change an answer)."""
    return " ".join(unicodedata.normalize("NFKC", prompt).split())


def _plain(value: Any) -> Any:
    """``value`` with integral floats as ints (so ``temperature=1`` and ``1.0`` are one scope)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _canonical(value: Any, what: str) -> str:
    try:
        text = json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{what} must be JSON values (str, number, bool, None, lists, dicts): {err}") from None
    if not text.isascii():
        _check_strings(value, what)  # ValueError naming a lone surrogate, if any
    return text


def _check_strings(value: Any, what: str) -> None:
    """``ValueError`` for the first str (key or value) in ``value`` holding a lone surrogate."""
    if isinstance(value, str):
        _check_no_surrogate(value, f"{what}: the string {value!r}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            _check_strings(key, what)
            _check_strings(item, what)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _check_strings(item, what)


def _digest(text: str, size: int) -> bytes:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size, person=b"bsc-scope").digest()


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not NAMESPACE_PATTERN.fullmatch(namespace):
        raise ValueError(
            f"namespace {namespace!r} is invalid: use 1 to 128 letters, digits and _ . : @ / + = -, "
            "starting with a letter or digit"
        )
    return namespace


def _check_prompt(prompt: Any, limit: int) -> str:
    if not isinstance(prompt, str):
        raise TypeError(f"prompt must be a str, got {type(prompt).__name__}")
    if not prompt.strip():
        raise ValueError("prompt is empty (or only whitespace): there is nothing to match")
    if len(prompt) > limit:
        raise ValueError(f"prompt has {len(prompt):,} characters, more than max_prompt_chars={limit:,}")
    _check_no_surrogate(prompt, "prompt")
    return prompt


def _check_tags(tags: Any) -> tuple[str, ...]:
    if tags is None:
        return ()
    if isinstance(tags, str):
        tags = (tags,)
    if not isinstance(tags, Iterable):
        raise TypeError(f"tags must be an iterable of str, got {type(tags).__name__}")
    out = tuple(dict.fromkeys(tags))
    for tag in out:
        if not isinstance(tag, str):
            raise TypeError(f"tags must be str, got {type(tag).__name__}")
        if not TAG_PATTERN.fullmatch(tag):
            raise ValueError(f"tag {tag!r} is invalid: use 1 to 128 printable characters without whitespace")
        _check_no_surrogate(tag, f"tag {tag!r}")
    if len(out) > MAX_TAGS:
        raise ValueError(f"at most {MAX_TAGS} tags per entry, got {len(out)}")
    return out


def _check_entry_ttl(ttl: Any) -> float | None:
    try:
        return _check_ttl(ttl)
    except (TypeError, ValueError) as err:
        raise type(err)(str(err).replace("default_ttl", "ttl")) from None


def _tokens_of(usage: Any) -> int:
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


def _check_cost(cost: Any) -> float:
    if cost is None:
        return 0.0
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not math.isfinite(cost) or cost < 0:
        raise ValueError(f"cost must be a finite number >= 0 (e.g. US dollars), got {cost!r}")
    return float(cost)


def _pack(prompt: str, tags: tuple[str, ...], tokens: int, cost: float, response: bytes, vector: bytes = b"") -> bytes:
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
class _Record:
    prompt: str
    tags: tuple[str, ...]
    tokens: int
    cost: float
    response: bytes
    vector: bytes = b""


def _unpack(payload: bytes) -> _Record:
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
        return _Record(prompt, tuple(tags), tokens, float(cost), payload[end + size :], payload[end : end + size])
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


@dataclass(frozen=True, slots=True)
class SemanticStats:
    """What a :class:`SemanticCache` has done.

    ``hits = exact_hits + semantic_hits``; ``lookups = hits + misses + bypassed``; ``hit_rate``
    is ``hits / lookups``. ``near_misses`` are misses whose best candidate was within
    ``near_miss_margin`` under the threshold (a threshold set too high shows up here).
    ``gate_vetoes`` counts candidates the content gate vetoed (a lookup may veto several).
    ``similarity_histogram`` counts the best candidate's similarity on the semantic path in bins
    of 0.05, keyed by each bin's lower edge (``"0.80"`` is [0.80, 0.85)). ``tokens_saved`` and
    ``cost_saved`` add up the usage stored with each entry that answered. ``save_errors`` counts
    failed background and final saves of ``persist_path`` (this process only; not saved)."""

    size: int
    max_size: int
    lookups: int
    hits: int
    exact_hits: int
    semantic_hits: int
    misses: int
    near_misses: int
    bypassed: int
    hit_rate: float
    false_hit_reports: int
    gate_vetoes: int
    evictions: int
    expirations: int
    namespaces: int
    tokens_saved: int
    cost_saved: float
    memory_bytes: int
    response_bytes: int
    similarity_histogram: dict[str, int] = field(default_factory=dict)
    save_errors: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


_COUNTERS = (
    "exact_hits",
    "semantic_hits",
    "misses",
    "near_misses",
    "bypassed",
    "false_hit_reports",
    "gate_vetoes",
    "tokens_saved",
    "cost_saved",
)


class _Metrics:
    """The Python-side counters (the engine keeps size, evictions and expirations)."""

    def __init__(self, saved: Mapping[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self.histogram = [0] * _BINS
        if saved:
            for name in _COUNTERS:
                value = saved.get(name, 0)
                if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                    raise ValueError(f"counter {name} is {value!r}")
                self.values[name] = value
            histogram = saved.get("histogram", [0] * _BINS)
            if (
                not isinstance(histogram, list)
                or len(histogram) != _BINS
                or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in histogram)
            ):
                raise ValueError("the similarity histogram is malformed")
            self.histogram = histogram

    def add(self, name: str, amount: float = 1) -> None:
        with self.lock:
            self.values[name] += amount

    def observe(self, similarity: float) -> None:
        slot = min(_BINS - 1, max(0, int((similarity + 1.0) * _BINS / 2.0)))
        with self.lock:
            self.histogram[slot] += 1

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {**self.values, "histogram": list(self.histogram)}


def chat_scope(messages: Sequence[Mapping[str, Any]], *, model: str, **params: Any) -> tuple[str, dict[str, Any]]:
    """Split a chat request into the text matched semantically and the scope matched exactly.

    Returns ``(prompt, scope)``: ``prompt`` is the text of the last message, which must be the
    user's; ``scope`` holds the model, every parameter in ``params`` except those of
    :data:`NEUTRAL_PARAMETERS` (``stream``, ``user``, timeouts, ...: they do not change the
    answer) and those given as ``None``, and a hash of every earlier message (the system prompt
    and all earlier turns) and of any non-text part of the last one. Two requests can share an
    answer only if their scopes are equal: the same model, parameters, system prompt and
    conversation so far.
    """
    if not isinstance(model, str) or not model:
        raise ValueError("model must be a non-empty str")
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)) or not messages:  # type: ignore[unreachable]
        raise ValueError("messages must be a non-empty list of chat messages")
    last = messages[-1]
    if not isinstance(last, Mapping) or last.get("role") != "user":
        raise ValueError("the last message must be the user's ({'role': 'user', 'content': ...})")
    content = last.get("content")
    other_parts: list[Any] = []
    if isinstance(content, str):
        prompt = content
    elif isinstance(content, Sequence) and not isinstance(content, (str, bytes)):
        texts = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            else:
                other_parts.append(part)  # images, audio, files: matched exactly, through the scope
        prompt = "\n".join(texts)
    else:
        raise ValueError("the last message's content must be a str or a list of content parts")
    earlier = [dict(m) for m in messages[:-1]]
    rest = {k: v for k, v in last.items() if k not in ("content", "role")}
    context = _canonical([earlier, other_parts, rest], "chat messages")
    scope: dict[str, Any] = {"model": model, "context": _digest(context, 16).hex()}
    for name, value in params.items():
        if name in ("model", "context") or name in RESERVED_SCOPE_NAMES:
            raise TypeError(f"{name!r} cannot be a chat parameter here")
        if name not in NEUTRAL_PARAMETERS and value is not None:
            scope[name] = value
    _canonical(scope, "chat parameters")
    return prompt, scope


class SemanticCache:
    """A semantic cache keyed by prompt text.

    ``lookup(prompt)`` answers from an earlier ``store``d response when the prompt is the same
    after normalisation (the exact path, no embedding computed) or means the same (the semantic
    path: estimated cosine similarity of the embeddings at least ``similarity_threshold``).
    ``namespace`` and keyword ``scope`` values partition the cache: a lookup only ever sees
    entries stored with the same namespace and the same scope.

    Args:
        embedder: any :class:`bsc.embeddings.Embedder`; default the offline
            :class:`~bsc.embeddings.LocalEmbedder` (all-MiniLM-L6-v2).
        similarity_threshold: minimum estimated cosine similarity for a semantic hit.
        max_entries: entries kept; the least recently used one is evicted beyond it.
        code_bits, seed: the binary encoder's code length and projection seed.
        default_ttl: seconds an entry lives when ``store`` gives no ``ttl`` (``None``: forever; at
            most :data:`bsc.MAX_TTL`, 10 years, as is ``ttl``).
        max_temperature: requests with a ``temperature`` scope value above it bypass the cache
            (``lookup`` returns ``None``, ``store`` stores nothing).
        near_miss_margin: a miss whose best candidate is within this much under the threshold
            counts as a near miss.
        max_prompt_chars: longer prompts are refused with ``ValueError``.
        rescore: keep an int8 copy of each embedding in its record (the embedder's dimension in
            bytes, 384 for the local model) and re-score the ``rescore_candidates`` nearest
            binary candidates whose estimated similarity is at least ``similarity_threshold -
            rescore_margin`` with the exact cosine; the best that reaches the threshold answers.
            Precision then matches exact float cosine (docs/QUALITY.md); the scan stays binary.
        content_gate: ``True`` (every rule) or a :class:`~bsc.gate.ContentGate`: a semantic
            candidate whose numbers, dates, quantities, negation, quoted strings, opposite words or
            names differ from the prompt's is vetoed, and the next candidate is tried.
        persist_path, persist_every, persist_interval: as for :class:`BinarySemanticCache`.
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        similarity_threshold: float = 0.80,
        *,
        max_entries: int = 10_000,
        code_bits: int = 256,
        seed: int = 42,
        default_ttl: float | None = None,
        max_temperature: float = 1.0,
        near_miss_margin: float = 0.05,
        max_prompt_chars: int = 100_000,
        rescore: bool = False,
        rescore_candidates: int = 4,
        rescore_margin: float = 0.1,
        content_gate: bool | ContentGate = False,
        persist_path: str | os.PathLike[str] | None = None,
        persist_every: int | None = 1000,
        persist_interval: float | None = 60.0,
    ) -> None:
        if embedder is None:
            from bsc_backends import default_embedder

            embedder = default_embedder()
        dim = _embedder_dim(embedder)
        _check_settings(max_temperature, near_miss_margin, max_prompt_chars)
        options = _Options.checked(rescore, rescore_candidates, rescore_margin, content_gate)
        encoder = BinaryEncoder(dim, code_bits, seed)
        cache = BinarySemanticCache(
            encoder,
            max_entries=max_entries,
            similarity_threshold=similarity_threshold,
            default_ttl=default_ttl,
            persist_path=persist_path,
            persist_every=persist_every,
            persist_interval=persist_interval,
        )
        self._setup(embedder, cache, max_temperature, near_miss_margin, max_prompt_chars, options)

    def _setup(
        self,
        embedder: Embedder,
        cache: BinarySemanticCache,
        max_temperature: float,
        near_miss_margin: float,
        max_prompt_chars: int,
        options: _Options,
    ) -> None:
        try:
            self._setup_checked(embedder, cache, max_temperature, near_miss_margin, max_prompt_chars, options)
        except BaseException:
            cache.close()  # stops its background saver (nothing has changed, so nothing is saved)
            raise

    def _setup_checked(
        self,
        embedder: Embedder,
        cache: BinarySemanticCache,
        max_temperature: float,
        near_miss_margin: float,
        max_prompt_chars: int,
        options: _Options,
    ) -> None:
        _check_settings(max_temperature, near_miss_margin, max_prompt_chars)
        saved = cache._file_meta.get("semantic")
        if cache._file_meta and saved is None and len(cache):
            raise NotACacheFileError(
                "the file holds a BinarySemanticCache (embedding-level entries): open it with "
                "BinarySemanticCache.load, or use another path"
            )
        if saved is not None and not isinstance(saved, dict):
            raise CorruptFileError("the file's SemanticCache settings are not a JSON object")
        saved = saved or {}
        model = saved.get("embedder")
        if model is not None and model != embedder.model_name:
            raise EncoderMismatchError(
                f"the file's entries were embedded by {model!r}, this cache's embedder is {embedder.model_name!r}: "
                "their embeddings are not comparable"
            )
        try:
            self._metrics = _Metrics(saved.get("metrics"))
        except ValueError as err:
            raise CorruptFileError(f"the file's SemanticCache metrics are malformed: {err}") from None
        self._embedder = embedder
        self._cache = cache
        self._store = cache._store
        self._max_temperature = float(max_temperature)
        self._near_miss_margin = float(near_miss_margin)
        self._max_prompt_chars = max_prompt_chars
        self._options = options
        self._tags: dict[str, set[int]] | None = None if len(cache) else {}
        # While the tag index is rebuilt from the records, stores also note their tags here, so
        # that none made during the scan is lost.
        self._tags_stored_meanwhile: list[tuple[int, tuple[str, ...]]] | None = None
        # Tag memberships in the index now and right after the last rebuild (see _tags_stale).
        self._tag_members = self._tag_baseline = 0
        self._tag_rebuild_started = False
        self._tag_lock = threading.Lock()
        self._recent: OrderedDict[str, Any] = OrderedDict()
        self._recent_lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._delete_tag_lock = threading.Lock()
        cache._meta_extra = self._meta

    # -- settings ----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def binary(self) -> BinarySemanticCache:
        """The embedding-level cache underneath (its entries hold SemanticCache records)."""
        return self._cache

    @property
    def similarity_threshold(self) -> float:
        return self._cache.similarity_threshold

    @similarity_threshold.setter
    def similarity_threshold(self, value: float) -> None:
        self._cache.similarity_threshold = value

    @property
    def max_entries(self) -> int:
        return self._cache.max_entries

    @property
    def rescore(self) -> bool:
        return self._options.rescore

    @property
    def content_gate(self) -> ContentGate | None:
        return self._options.gate

    @property
    def max_temperature(self) -> float:
        return self._max_temperature

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._cache

    def __repr__(self) -> str:
        return (
            f"SemanticCache(embedder={self._embedder.model_name!r}, similarity_threshold={self.similarity_threshold}, "
            f"max_entries={self.max_entries}, len={len(self)})"
        )

    # -- keys --------------------------------------------------------------------------------

    def _bypass(self, scope: Mapping[str, Any]) -> bool:
        temperature = scope.get("temperature")
        options = scope.get("options")
        if temperature is None and isinstance(options, Mapping):
            temperature = options.get("temperature")  # Ollama puts it there
        if temperature is None:
            return False
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not math.isfinite(temperature):
            raise ValueError(f"temperature must be a finite number, got {temperature!r}")
        return temperature > self._max_temperature

    @staticmethod
    def _partition(namespace: str, scope: Mapping[str, Any]) -> str:
        """The engine's partition name: the namespace, ``#`` and a hash of the scope."""
        given = {name: value for name, value in scope.items() if value is not None}
        scope_hash = _digest(_canonical(given, "scope values"), 12).hex() if given else ""
        return f"{namespace}#{scope_hash}"

    @staticmethod
    def _key(partition: str, normalized: str) -> int:
        key = int.from_bytes(_digest(f"{partition}\x00{normalized}", 8), "little")
        return key or 1

    def _fits(self, text: str) -> bool:
        """Whether the embedder sees the whole text. A text cut to the model's window would be
        matched by its beginning alone, so such prompts are answered by the exact path only.
        (Counted every time: one character can be several word pieces.)"""
        limit = getattr(self._embedder, "max_tokens", None)
        count = getattr(self._embedder, "token_count", None)
        if not isinstance(limit, int) or count is None:
            return True
        return bool(count(text) < limit)

    def _prepare(self, prompt: Any, namespace: Any, scope: Mapping[str, Any]) -> tuple[str, str, str] | None:
        """Checks; ``(text to embed, partition, normalised prompt)``, or ``None`` to bypass. The
        text embedded is the normalised prompt, so prompts the exact path treats as equal are
        also embedded, and sorted into partitions, alike."""
        prompt = _check_prompt(prompt, self._max_prompt_chars)
        namespace = _check_namespace(namespace)
        reserved = RESERVED_SCOPE_NAMES.intersection(scope)
        if reserved:
            raise TypeError(
                f"{', '.join(sorted(reserved))} cannot be scope values: they are store() arguments "
                "(a lookup does not take them)"
            )
        partition = self._partition(namespace, scope)
        if self._bypass(scope):
            return None
        normalized = normalize_prompt(prompt)
        return normalized, partition, normalized

    # -- lookup ------------------------------------------------------------------------------

    def _hit(self, found: tuple[Any, ...], record: _Record, partition: str, similarity: float, exact: bool) -> Hit:
        entry_id, _, _, created_at, _, access_count = found
        return Hit(
            response=decode_response(record.response),
            similarity=similarity,
            exact=exact,
            prompt=record.prompt,
            id=entry_id,
            namespace=partition.split("#", 1)[0],
            tags=record.tags,
            created_at=created_at,
            access_count=access_count,
        )

    def _exact(self, partition: str, normalized: str, oldest: float | None = None) -> Hit | None:
        for part in (partition, partition + "!"):
            found = self._store.lookup_key(self._key(part, normalized), namespace=part)
            if found is None:
                continue
            record = _unpack(found[2])
            if normalize_prompt(record.prompt) != normalized:
                continue  # a 64-bit hash collision: never answers
            if oldest is not None and found[3] < oldest:
                continue  # older than the request's max_age: the semantic path decides (and misses it)
            hit = self._hit(found, record, partition, 1.0, exact=True)
            self._metrics.add("exact_hits")
            logger.debug("bsc: exact hit in %s (entry %d)", partition, hit.id)
            self._served(record)
            return hit
        return None

    def _served(self, record: _Record) -> None:
        if record.tokens:
            self._metrics.add("tokens_saved", record.tokens)
        if record.cost:
            self._metrics.add("cost_saved", record.cost)
        persister = self._cache._persister
        if persister is not None:
            persister.changed()

    def _semantic(
        self,
        prompt: str,
        partition: str,
        embedding: Any,
        threshold: float | None = None,
        oldest: float | None = None,
    ) -> Hit | None:
        """The semantic path; ``threshold``: this lookup's instead of the cache's; ``oldest``:
        entries created before this time (``time.time()``) do not answer."""
        if embedding is None:  # the prompt is longer than the embedder's window
            self._metrics.add("misses")
            logger.debug("bsc: miss in %s (prompt longer than the embedder's window: exact match only)", partition)
            return None
        code = self._cache._code(embedding)
        bits = self._cache.code_bits
        if threshold is None:
            threshold, radius = self._cache._rule
        else:
            radius = hamming_radius(threshold, bits)
        if self._options.rescore or self._options.gate is not None or oldest is not None:
            return self._semantic_checked(prompt, partition, embedding, code, threshold, radius, oldest)
        found, nearest = self._store.lookup_nearest(code, radius, namespace=partition)
        best = None if nearest is None else float(hamming_to_cosine(nearest, bits))
        if best is not None:
            self._metrics.observe(best)
        if found is None:
            self._metrics.add("misses")
            if best is not None and best >= threshold - self._near_miss_margin:
                self._metrics.add("near_misses")
            logger.debug("bsc: miss in %s (best similarity %s)", partition, best)
            return None
        record = _unpack(found[2])
        hit = self._hit(found, record, partition, float(hamming_to_cosine(found[1], bits)), exact=False)
        self._metrics.add("semantic_hits")
        self._served(record)
        logger.debug("bsc: semantic hit in %s (similarity %.3f, entry %d)", partition, hit.similarity, hit.id)
        return hit

    def _semantic_checked(
        self,
        prompt: str,
        partition: str,
        embedding: Any,
        code: Any,
        threshold: float,
        radius: int,
        oldest: float | None = None,
    ) -> Hit | None:
        """The semantic path with rescoring or the content gate: the nearest binary candidates
        are read in one call, re-scored (rescoring), and the best that reaches the threshold
        and passes the gate is served."""
        options, bits = self._options, self._cache.code_bits
        query = np.asarray(embedding, dtype=np.float32).ravel()
        query_norm = float(np.linalg.norm(query))
        # Candidates down to the rescoring margin, and to the near-miss margin so that a near
        # miss is seen; only those at or above the threshold can answer.
        widest = max(self._near_miss_margin, options.margin if options.rescore else 0.0)
        radius = max(radius, hamming_radius(max(-1.0, threshold - widest), bits))
        # With a max_age, entries too old to answer are skipped: read a few more candidates.
        k = options.candidates if oldest is None else max(options.candidates, 16)
        entries, nearest = self._store.candidates(code, k, radius, namespace=partition)
        scored = []
        for entry in entries:
            record = _unpack(entry[2])
            similarity = float(hamming_to_cosine(entry[1], bits))
            if options.rescore and len(record.vector) == query.size and query_norm > 0:
                stored = np.frombuffer(record.vector, dtype=np.int8).astype(np.float32)
                norm = float(np.linalg.norm(stored))
                similarity = float(stored @ query) / (norm * query_norm) if norm > 0 else -1.0
            scored.append((similarity, entry, record))
        scored.sort(key=lambda item: -item[0])  # stable: equal scores keep the nearer code first
        # The best candidate's score, or the nearest code's estimate when none is that near.
        best = scored[0][0] if scored else None if nearest is None else float(hamming_to_cosine(nearest, bits))
        if best is not None:
            self._metrics.observe(best)
        for similarity, entry, record in scored:
            if similarity < threshold:
                break
            if oldest is not None and entry[3] < oldest:
                continue  # older than the request allows
            if options.gate is not None:
                rule = options.gate.veto(prompt, normalize_prompt(record.prompt))
                if rule is not None:
                    self._metrics.add("gate_vetoes")
                    logger.debug("bsc: content gate vetoed entry %d in %s (%s differ)", entry[0], partition, rule)
                    continue
            served = self._store.lookup_id(entry[0], namespace=partition)
            if served is None:
                continue  # deleted, replaced or expired since the scan: never touched
            hit = self._hit(served, record, partition, similarity, exact=False)
            self._metrics.add("semantic_hits")
            self._served(record)
            logger.debug("bsc: semantic hit in %s (similarity %.3f, entry %d)", partition, similarity, hit.id)
            return hit
        self._metrics.add("misses")
        if best is not None and threshold - self._near_miss_margin <= best < threshold:
            self._metrics.add("near_misses")
        logger.debug("bsc: miss in %s (best similarity %s)", partition, best)
        return None

    def lookup(self, prompt: str, *, namespace: str = DEFAULT_NAMESPACE, **scope: Any) -> Hit | None:
        """The cached answer for ``prompt`` in ``namespace`` and ``scope``, or ``None``.

        ``scope``: keyword values (JSON: str, numbers, bool, None, lists, dicts) that must be equal
        for an entry to answer, e.g. ``model="gpt-4o-mini", user_id=42``; see :func:`chat_scope`
        for chat requests. Raises ``TypeError``/``ValueError`` for a bad prompt, namespace or
        scope value."""
        return self._lookup_prepared(self._prepare(prompt, namespace, scope))

    def _lookup_prepared(
        self, prepared: tuple[str, str, str] | None, *, threshold: float | None = None, max_age: float | None = None
    ) -> Hit | None:
        """:meth:`lookup` after :meth:`_prepare` (callers that checked the request already, such
        as the client wrapper, do not check it twice). ``threshold``: this lookup's similarity
        threshold instead of the cache's; ``max_age``: only entries at most this many seconds
        old answer (HTTP ``Cache-Control: max-age``)."""
        if prepared is None:
            self._metrics.add("bypassed")
            return None
        threshold, oldest = _lookup_limits(threshold, max_age)
        text, partition, normalized = prepared
        hit = self._exact(partition, normalized, oldest)
        if hit is not None:
            return hit
        return self._semantic(text, partition, self._embed_one(text), threshold, oldest)

    def _embed_one(self, prompt: str) -> Any:
        if not self._fits(prompt):
            return None
        vector = self._recall(prompt)
        if vector is None:
            vector = self._remember(prompt, self._embedder.embed_text(prompt))
        return vector

    async def _aembed_one(self, prompt: str) -> Any:
        if not await asyncio.to_thread(self._fits, prompt):  # tokenizing a long prompt takes a while
            return None
        vector = self._recall(prompt)
        if vector is None:
            vector = self._remember(prompt, await self._embedder.aembed_text(prompt))
        return vector

    def _recall(self, text: str) -> Any:
        """The embedding of ``text`` if it was computed lately: a store that follows the lookup
        that missed (the usual pattern, and the proxy's) does not embed the prompt again."""
        with self._recent_lock:
            vector = self._recent.get(text)
            if vector is not None:
                self._recent.move_to_end(text)
            return vector

    def _remember(self, text: str, vector: Any) -> Any:
        with self._recent_lock:
            self._recent[text] = vector
            if len(self._recent) > RECENT_EMBEDDINGS:
                self._recent.popitem(last=False)
        return vector

    def lookup_many(
        self, prompts: Sequence[str], *, namespace: str = DEFAULT_NAMESPACE, **scope: Any
    ) -> list[Hit | None]:
        """:meth:`lookup` for each prompt; the prompts the exact path does not answer are
        embedded in one batch."""
        prepared = [self._prepare(p, namespace, scope) for p in _as_list(prompts, "prompts")]
        out: list[Hit | None] = [None] * len(prepared)
        todo: list[int] = []
        for i, item in enumerate(prepared):
            if item is None:
                self._metrics.add("bypassed")
                continue
            out[i] = self._exact(item[1], item[2])
            if out[i] is None:
                todo.append(i)
        embeddings = self._embed_batch([prepared[i][0] for i in todo])  # type: ignore[index]
        for i, embedding in zip(todo, embeddings, strict=True):
            prompt, partition, _ = prepared[i]  # type: ignore[misc]
            out[i] = self._semantic(prompt, partition, embedding)
        return out

    def _embed_batch(self, prompts: list[str]) -> list[Any]:
        fits = [self._fits(p) for p in prompts]
        known = [self._recall(p) for p in prompts]
        wanted = [p for p, ok, v in zip(prompts, fits, known, strict=True) if ok and v is None]
        vectors: Iterator[Any] = iter(self._embedder.embed_texts(wanted) if wanted else [])
        out = []
        for p, ok, v in zip(prompts, fits, known, strict=True):
            out.append(None if not ok else v if v is not None else self._remember(p, next(vectors)))
        return out

    # -- store -------------------------------------------------------------------------------

    def _record(
        self, prompt: Any, response: Any, namespace: Any, ttl: Any, tags: Any, usage: Any, cost: Any, scope: Any
    ) -> _Item | None:
        """Every check of a store, before anything is embedded or stored."""
        prepared = self._prepare(prompt, namespace, scope)
        checked_ttl = _check_entry_ttl(ttl)
        checked_tags = _check_tags(tags)
        tokens, price = _tokens_of(usage), _check_cost(cost)
        payload = encode_response(response)  # TypeError for what cannot be stored
        if prepared is None:
            return None
        text, partition, normalized = prepared
        # The prompt as given; the embedding's int8 copy is added by _put.
        record = functools.partial(_pack, prompt, checked_tags, tokens, price, payload)
        return text, partition, normalized, record, checked_ttl, checked_tags

    def _put(
        self,
        item: _Item,
        embedding: Any,
    ) -> int:
        _, partition, normalized, pack, ttl, tags = item
        if embedding is None:
            # Longer than the embedder's window: kept apart, answered by the exact path only.
            partition += "!"
            embedding = np.zeros(self._cache.encoder.embedding_dim, dtype=np.float32)
            embedding[0] = 1.0
            record = pack()
        else:
            record = pack(quantize(embedding)) if self._options.rescore else pack()
        code = self._cache._code(embedding)
        if ttl is None:
            ttl = self._cache.default_ttl
        entry_id = int(
            self._store.put(code, record, namespace=partition, ttl=ttl, key=self._key(partition, normalized))
        )
        if tags:
            self._note_tags(entry_id, tags)
        persister = self._cache._persister
        if persister is not None:
            persister.changed(put=True)
        logger.debug("bsc: stored entry %d in %s", entry_id, partition)
        return entry_id

    def store(
        self,
        prompt: str,
        response: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **scope: Any,
    ) -> int | None:
        """Store ``response`` for ``prompt``; return the new entry's id (``None`` if the request
        bypasses the cache by its temperature).

        ``response``: ``str``, ``bytes`` or a JSON value. ``ttl``: seconds (default
        ``default_ttl``). ``tags``: names to delete it by later (:meth:`delete_tag`). ``usage``
        (tokens: an int, or the LLM's usage object or dict) and ``cost`` (any currency) are what
        a later hit saves. An entry with the same normalised prompt, namespace and scope is
        replaced. Bad input raises ``TypeError``/``ValueError`` and stores nothing."""
        item = self._record(prompt, response, namespace, ttl, tags, usage, cost, scope)
        if item is None:
            return None
        return self._put(item, self._embed_one(item[0]))

    def store_many(
        self,
        prompts: Sequence[str],
        responses: Sequence[Any],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        **scope: Any,
    ) -> list[int | None]:
        """:meth:`store` for each pair, embedded in one batch. Every pair is checked before any
        is stored: one bad pair stores none."""
        prompts, responses = _as_list(prompts, "prompts"), _as_list(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tags = _check_tags(tags)  # once: an iterator would be used up by the first pair
        items = [
            self._record(p, r, namespace, ttl, tags, None, None, scope) for p, r in zip(prompts, responses, strict=True)
        ]
        live = [i for i, item in enumerate(items) if item is not None]
        embeddings = self._embed_batch([items[i][0] for i in live])  # type: ignore[index]
        out: list[int | None] = [None] * len(items)
        for i, embedding in zip(live, embeddings, strict=True):
            out[i] = self._put(items[i], embedding)  # type: ignore[arg-type]
        return out

    # -- async -------------------------------------------------------------------------------

    async def alookup(self, prompt: str, *, namespace: str = DEFAULT_NAMESPACE, **scope: Any) -> Hit | None:
        """Async :meth:`lookup`: the exact path runs inline (microseconds), the embedding through
        the embedder's async method, and the native scan in a worker thread, so the event loop
        is never blocked by a scan of a large cache."""
        return await self._alookup_prepared(self._prepare(prompt, namespace, scope))

    async def _alookup_prepared(
        self, prepared: tuple[str, str, str] | None, *, threshold: float | None = None, max_age: float | None = None
    ) -> Hit | None:
        """:meth:`alookup` after :meth:`_prepare` (``threshold``, ``max_age``: see
        :meth:`_lookup_prepared`)."""
        if prepared is None:
            self._metrics.add("bypassed")
            return None
        threshold, oldest = _lookup_limits(threshold, max_age)
        text, partition, normalized = prepared
        hit = self._exact(partition, normalized, oldest)
        if hit is not None:
            return hit
        embedding = await self._aembed_one(text)
        return await asyncio.to_thread(self._semantic, text, partition, embedding, threshold, oldest)

    async def astore(
        self,
        prompt: str,
        response: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **scope: Any,
    ) -> int | None:
        """Async :meth:`store`: embedding through the embedder's async method, the native put in a
        worker thread."""
        item = self._record(prompt, response, namespace, ttl, tags, usage, cost, scope)
        if item is None:
            return None
        embedding = await self._aembed_one(item[0])
        return await asyncio.to_thread(self._put, item, embedding)

    # -- chat requests -----------------------------------------------------------------------

    def lookup_chat(
        self, messages: Sequence[Mapping[str, Any]], *, model: str, namespace: str = DEFAULT_NAMESPACE, **params: Any
    ) -> Hit | None:
        """:meth:`lookup` for a chat request: the last user message is matched semantically; the
        model, the answer-changing parameters and every earlier message must be equal
        (:func:`chat_scope`)."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return self.lookup(prompt, namespace=namespace, **scope)

    def store_chat(
        self,
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
        self, messages: Sequence[Mapping[str, Any]], *, model: str, namespace: str = DEFAULT_NAMESPACE, **params: Any
    ) -> Hit | None:
        """Async :meth:`lookup_chat`."""
        prompt, scope = chat_scope(messages, model=model, **params)
        return await self.alookup(prompt, namespace=namespace, **scope)

    async def astore_chat(
        self,
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

    # -- invalidation ------------------------------------------------------------------------

    def delete(self, entry_id: int) -> bool:
        """Remove an entry by id; return whether it was present."""
        return self._cache.delete(entry_id)

    def delete_namespace(self, namespace: str) -> int:
        """Remove every entry of ``namespace``, of every scope; return how many."""
        namespace = _check_namespace(namespace)
        prefix = f"{namespace}#".encode()
        removed = 0
        for name in self._store.namespaces():
            if name.startswith(prefix):
                removed += self._cache.delete_namespace(name)
        return removed

    def _refresh_tags(self, *, stale: bool = False) -> None:
        """Builds the tag index (tag -> ids) from the stored records: on first need after a load,
        or (``stale``) to drop the ids of entries removed since without ``delete_tag`` (evicted,
        expired, deleted by id or namespace). Stores made during the scan note their tags in
        ``_tags_stored_meanwhile``, so none is lost."""
        with self._rebuild_lock:
            with self._tag_lock:
                if self._tags is not None and not (stale and self._tags_stale()):
                    return
                self._tags_stored_meanwhile = []
            index: dict[str, set[int]] = {}
            try:
                for entry_id in self._store.lru_ids().tolist():
                    found = self._store.peek(entry_id)
                    if found is None:
                        continue
                    for tag in _unpack(found[2]).tags:
                        index.setdefault(tag, set()).add(entry_id)
            finally:
                with self._tag_lock:
                    for entry_id, entry_tags in self._tags_stored_meanwhile or []:
                        if entry_id in self._store:  # not already evicted or deleted
                            for tag in entry_tags:
                                index.setdefault(tag, set()).add(entry_id)
                    self._tags_stored_meanwhile = None
                    self._tags = index
                    self._tag_members = self._tag_baseline = sum(map(len, index.values()))
                    self._tag_rebuild_started = False

    def _tags_stale(self) -> bool:
        """Whether the index has grown to more than twice (plus 1024) its size at the last
        rebuild: ids of removed entries may then make up most of it. (Under ``_tag_lock``.)"""
        return self._tag_members > 2 * self._tag_baseline + 1024

    def _note_tags(self, entry_id: int, tags: tuple[str, ...]) -> None:
        with self._tag_lock:
            if self._tags is not None:
                for tag in tags:
                    self._tags.setdefault(tag, set()).add(entry_id)
                self._tag_members += len(tags)
            if self._tags_stored_meanwhile is not None:
                self._tags_stored_meanwhile.append((entry_id, tags))
            start = self._tags is not None and self._tags_stale() and not self._tag_rebuild_started
            if start:
                self._tag_rebuild_started = True
        if start:
            # O(entries), so off the caller's thread; amortised O(1) per tag stored.
            threading.Thread(
                target=self._refresh_tags, kwargs={"stale": True}, name="bsc-tag-index", daemon=True
            ).start()

    def delete_tag(self, tag: str) -> int:
        """Remove every entry stored with ``tag``; return how many."""
        (tag,) = _check_tags([tag])
        # One delete_tag at a time: a second call must not return while the first still deletes
        # entries it popped from the index.
        with self._delete_tag_lock:
            self._refresh_tags()
            with self._tag_lock:
                ids = self._tags.pop(tag, set()) if self._tags is not None else set()
                self._tag_members -= len(ids)
            return sum(self._cache.delete(entry_id) for entry_id in ids)

    def mark_wrong(self, hit: Hit | int) -> bool:
        """Report a wrong answer: the entry that gave it is removed, so it is never served again,
        and ``false_hit_reports`` counts it. Returns whether the entry was still there.

        ``hit``: the :class:`Hit`, or its entry id (``Hit.id``, as a proxy's ``X-Bsc-Entry``
        header gives it). A Hit is counted even if its entry is gone already; an id only when
        its entry was there (an unknown id is no report)."""
        if isinstance(hit, int) and not isinstance(hit, bool):
            placement = self._store.placement(hit) if hit >= 0 else None
            removed = self._cache.delete(hit)
            if removed:
                self._metrics.add("false_hit_reports")
                partition = b"?" if placement is None else placement[0]
                logger.warning(
                    "bsc: false hit reported in %s: entry %d removed",
                    partition.decode("utf-8", "replace").split("#", 1)[0],
                    hit,
                )
            return removed
        if not isinstance(hit, Hit):
            raise TypeError(f"mark_wrong takes a bsc.Hit or an entry id (int), got {type(hit).__name__}")
        self._metrics.add("false_hit_reports")
        logger.warning(
            "bsc: false hit reported in %s: entry %d (similarity %.3f, %s) removed",
            hit.namespace,
            hit.id,
            hit.similarity,
            "exact" if hit.exact else "semantic",
        )
        return self._cache.delete(hit.id)

    def purge_expired(self) -> int:
        return self._cache.purge_expired()

    def clear(self) -> None:
        """Remove every entry (counters are kept)."""
        # Under the tag lock, so that a store between the two steps cannot lose its tags.
        with self._tag_lock:
            self._cache.clear()
            self._tags = {}
            self._tag_baseline = 0

    # -- stats and persistence ---------------------------------------------------------------

    def stats(self) -> SemanticStats:
        """Counters and sizes; ``namespaces`` counts namespaces holding entries (of any scope)."""
        persister = self._cache._persister
        return _stats(
            self._store.stats(),
            self._metrics.snapshot(),
            _namespace_count(self._store.namespaces()),
            0 if persister is None else persister.save_errors,
        )

    def _meta(self) -> dict[str, Any]:
        return {
            "semantic": {
                "version": _META_VERSION,
                "embedder": self._embedder.model_name,
                "max_temperature": self._max_temperature,
                "near_miss_margin": self._near_miss_margin,
                "max_prompt_chars": self._max_prompt_chars,
                **self._options.as_meta(),
                "metrics": self._metrics.snapshot(),
            }
        }

    @property
    def persist_path(self) -> Path | None:
        return self._cache.persist_path

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the cache to one crash-safe file (see :meth:`BinarySemanticCache.save`), with
        its settings and counters."""
        self._cache.save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embedder: Embedder | None = None,
        *,
        max_entries: int | None = None,
        similarity_threshold: float | None = None,
        verify: bool = False,
        rescore: bool | None = None,
        content_gate: bool | ContentGate | None = None,
    ) -> SemanticCache:
        """Open a cache saved by :meth:`save`. ``embedder`` (default the local one) must be the
        model the file's entries were embedded by (``EncoderMismatchError`` otherwise).
        ``verify`` checks every response's checksum now (see :meth:`BinarySemanticCache.load`).
        ``rescore`` and ``content_gate`` default to the file's settings; entries stored without
        rescoring have no int8 copy, and keep their binary similarity when rescoring is on."""
        if embedder is None:
            from bsc_backends import default_embedder

            embedder = default_embedder()
        cache = BinarySemanticCache.load(
            path, max_entries=max_entries, similarity_threshold=similarity_threshold, verify=verify
        )
        if cache.encoder.embedding_dim != _embedder_dim(embedder):
            raise EncoderMismatchError(
                f"{path}: its codes come from {cache.encoder.embedding_dim}-dimensional embeddings, "
                f"this embedder makes {embedder.embedding_dim}"
            )
        saved = cache._file_meta.get("semantic") or {}
        try:
            if rescore is not None and not isinstance(rescore, bool):
                raise TypeError(f"rescore must be a bool or None, got {rescore!r}")
            gate_arg(content_gate)  # TypeError for what is not a gate setting
        except TypeError:
            cache.close()
            raise
        try:
            options = _Options.from_meta(saved, rescore, content_gate)
        except (TypeError, ValueError) as err:
            cache.close()
            raise CorruptFileError(f"{path}: its SemanticCache settings are malformed: {err}") from None
        out = cls.__new__(cls)
        out._setup(
            embedder,
            cache,
            saved.get("max_temperature", 1.0),
            saved.get("near_miss_margin", 0.05),
            saved.get("max_prompt_chars", 100_000),
            options,
        )
        return out

    def close(self) -> None:
        """Stop background saving and save a last time (with ``persist_path``)."""
        self._cache.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class _Options:
    """Rescoring and the content gate: a cache's quality options (saved in the file's META)."""

    rescore: bool
    candidates: int
    margin: float
    gate: ContentGate | None

    @classmethod
    def checked(cls, rescore: Any, candidates: Any, margin: Any, content_gate: Any) -> _Options:
        if not isinstance(rescore, bool):
            raise TypeError(f"rescore must be a bool, got {rescore!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= 256:
            raise ValueError(f"rescore_candidates must be an int from 1 to 256, got {candidates!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 2:
            raise ValueError(f"rescore_margin must be a number from 0 to 2, got {margin!r}")
        return cls(rescore, candidates, float(margin), gate_arg(content_gate))

    def as_meta(self) -> dict[str, Any]:
        return {
            "rescore": self.rescore,
            "rescore_candidates": self.candidates,
            "rescore_margin": self.margin,
            "content_gate": None if self.gate is None else self.gate.as_dict(),
        }

    @classmethod
    def from_meta(cls, saved: Mapping[str, Any], rescore: Any, content_gate: Any) -> _Options:
        gate = saved.get("content_gate")
        if content_gate is None:
            content_gate = None if gate is None else ContentGate.from_dict(gate)
        return cls.checked(
            saved.get("rescore", False) if rescore is None else rescore,
            saved.get("rescore_candidates", 4),
            saved.get("rescore_margin", 0.1),
            content_gate,
        )


def _lookup_limits(threshold: Any, max_age: Any) -> tuple[float | None, float | None]:
    """A lookup's own threshold (checked) and the oldest creation time ``max_age`` admits."""
    if threshold is not None:
        threshold = _check_threshold(threshold)
    if max_age is None:
        return threshold, None
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 <= max_age < float("inf"):
        raise ValueError(f"max_age must be a number of seconds >= 0, got {max_age!r}")
    return threshold, time.time() - max_age


def _check_settings(max_temperature: Any, near_miss_margin: Any, max_prompt_chars: Any) -> None:
    for name, value in (("max_temperature", max_temperature), ("near_miss_margin", near_miss_margin)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) or max_prompt_chars < 1:
        raise ValueError(f"max_prompt_chars must be a positive int, got {max_prompt_chars!r}")


def _embedder_dim(embedder: Any) -> int:
    for name in ("embedding_dim", "model_name", "embed_text", "embed_texts"):
        if not hasattr(embedder, name):
            raise TypeError(f"embedder must implement bsc.embeddings.Embedder; {type(embedder).__name__} has no {name}")
    dim = embedder.embedding_dim
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise TypeError(f"embedder.embedding_dim must be a positive int, got {dim!r}")
    return dim


def _as_list(values: Any, what: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a list, got {type(values).__name__}")
    return list(values)


def _namespace_count(partitions: Mapping[bytes, int]) -> int:
    return len({name.split(b"#", 1)[0] for name in partitions})


def _stats(raw: Mapping[str, Any], metrics: Mapping[str, Any], namespaces: int, save_errors: int = 0) -> SemanticStats:
    exact, semantic = int(metrics["exact_hits"]), int(metrics["semantic_hits"])
    misses, bypassed = int(metrics["misses"]), int(metrics["bypassed"])
    lookups = exact + semantic + misses + bypassed
    histogram = {f"{-1.0 + 2.0 * i / _BINS:.2f}": n for i, n in enumerate(metrics["histogram"]) if n}
    return SemanticStats(
        size=raw["size"],
        max_size=raw["max_entries"],
        lookups=lookups,
        hits=exact + semantic,
        exact_hits=exact,
        semantic_hits=semantic,
        misses=misses,
        near_misses=int(metrics["near_misses"]),
        bypassed=bypassed,
        hit_rate=(exact + semantic) / lookups if lookups else 0.0,
        false_hit_reports=int(metrics["false_hit_reports"]),
        gate_vetoes=int(metrics["gate_vetoes"]),
        evictions=raw["evictions"],
        expirations=raw["expirations"],
        namespaces=namespaces,
        tokens_saved=int(metrics["tokens_saved"]),
        cost_saved=float(metrics["cost_saved"]),
        memory_bytes=raw["memory_bytes"],
        response_bytes=raw["response_bytes"],
        similarity_histogram=histogram,
        save_errors=save_errors,
    )


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``bsc stats PATH`` prints: the counters and settings of a saved cache, read without
    an embedder (nothing is embedded, responses are not read)."""
    from bsc.cache import _read_meta
    from bsc_native import CacheStore

    file = Path(os.fspath(path))
    store = CacheStore.load(file)
    meta = _read_meta(file, store.meta)
    raw = store.stats()
    report: dict[str, Any] = {"file": str(file), "file_bytes": file.stat().st_size}
    semantic = meta.get("semantic")
    encoder = meta.get("encoder") or {}
    common = {
        "bsc_version": meta.get("bsc_version"),
        "similarity_threshold": meta.get("similarity_threshold"),
        "default_ttl": meta.get("default_ttl"),
        "code_bits": store.code_bits,
        "embedding_dim": encoder.get("embedding_dim"),
    }
    if isinstance(semantic, dict):
        try:
            metrics = _Metrics(semantic.get("metrics")).snapshot()
        except ValueError as err:
            raise CorruptFileError(f"{file}: its SemanticCache metrics are malformed: {err}") from None
        stats = _stats(raw, metrics, _namespace_count(store.namespaces())).as_dict()
        del stats["save_errors"]  # a count of the process that saved, not kept in the file
        report.update(
            kind="SemanticCache",
            embedder=semantic.get("embedder"),
            **common,
            rescore=bool(semantic.get("rescore", False)),
            content_gate=semantic.get("content_gate"),
            **stats,
        )
    else:
        lookups = raw["hits"] + raw["misses"]
        report.update(
            kind="BinarySemanticCache",
            **common,
            size=raw["size"],
            max_size=raw["max_entries"],
            lookups=lookups,
            hits=raw["hits"],
            misses=raw["misses"],
            hit_rate=raw["hits"] / lookups if lookups else 0.0,
            evictions=raw["evictions"],
            expirations=raw["expirations"],
            namespaces=raw["namespaces"],
            memory_bytes=raw["memory_bytes"],
            response_bytes=raw["response_bytes"],
        )
    return report


def list_entries(
    path: str | os.PathLike[str], *, namespace: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The entries of a saved cache, most recently used first (what ``bsc inspect`` prints):
    id, namespace, times, uses, expiry, the stored prompt (``None`` for a BinarySemanticCache
    entry) and the response. Read without an embedder."""
    from bsc.cache import _read_meta
    from bsc_native import CacheStore

    file = Path(os.fspath(path))
    store = CacheStore.load(file)
    semantic = isinstance(_read_meta(file, store.meta).get("semantic"), dict)
    out: list[dict[str, Any]] = []
    for entry_id in store.lru_ids().tolist():
        if limit is not None and len(out) >= limit:
            break
        found, placement = store.peek(entry_id), store.placement(entry_id)
        if found is None or placement is None:
            continue
        partition = placement[0].decode("utf-8", "replace")
        name = partition.split("#", 1)[0] if semantic else partition
        if namespace is not None and name != namespace:
            continue
        _, _, payload, created_at, last_accessed, access_count = found
        record = _unpack(payload) if semantic else None
        response = decode_response(record.response if record else payload)
        out.append(
            {
                "id": entry_id,
                "namespace": name,
                "created_at": created_at,
                "last_accessed": last_accessed,
                "access_count": access_count,
                "expires_at": placement[1],
                "prompt": record.prompt if record else None,
                "tags": list(record.tags) if record else [],
                "response": response
                if isinstance(response, (str, int, float, bool, dict, list)) or response is None
                else repr(response),
            }
        )
    return out


def _not_cached(fn: Callable[..., Any], err: Exception) -> None:
    """A result the cache cannot store is returned all the same (it was paid for), and logged."""
    logger.warning("bsc: the result of %s was returned but not cached: %s", fn.__qualname__, err)


def semantic_cache(
    cache: SemanticCache | Callable[[], SemanticCache] | None = None,
    *,
    namespace: str = DEFAULT_NAMESPACE,
    ttl: float | None = None,
    tags: Iterable[str] | None = None,
) -> Callable[[F], F]:
    """Cache a function whose first argument is the prompt, sync or ``async``.

    Its other arguments (defaults applied) and its qualified name form the scope, so calls with
    other arguments never share an answer; they must be JSON values (``TypeError`` otherwise).
    ``cache``: a :class:`SemanticCache`, a function returning one (called on first use), or
    ``None`` for a ``SemanticCache()`` made on first use; the wrapper's ``cache()`` returns it.
    A ``temperature`` argument also counts as the request's temperature (``max_temperature``).
    Return values must be ``str``, ``bytes`` or JSON values to be cached; any other is returned
    uncached, with a warning on the ``bsc`` logger. Functions are told apart by module and
    qualified name: closures made by one factory share answers unless their differences are
    arguments or the ``namespace``::

        @semantic_cache()
        def answer(question: str, model: str = "gpt-4o-mini") -> str: ...
    """
    checked_namespace = _check_namespace(namespace)
    checked_tags = _check_tags(tags)
    checked_ttl = _check_entry_ttl(ttl)

    def decorate(fn: F) -> F:
        signature = inspect.signature(fn)
        if not signature.parameters:
            raise TypeError(f"{fn.__qualname__} takes no arguments: its first argument must be the prompt")
        name = f"{fn.__module__}.{fn.__qualname__}"
        lock = threading.Lock()
        made: list[SemanticCache] = []

        def get_cache() -> SemanticCache:
            with lock:
                if not made:
                    if isinstance(cache, SemanticCache):
                        made.append(cache)
                    else:
                        made.append(cache() if cache is not None else SemanticCache())
                return made[0]

        def split(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            values = list(bound.arguments.items())
            prompt = values[0][1]
            arguments = dict(values[1:])
            _canonical(arguments, f"the arguments of {fn.__qualname__} (the cache scope)")
            out: dict[str, Any] = {"scope": {"function": name, "arguments": arguments}}
            if "temperature" in arguments:  # so max_temperature applies
                out["temperature"] = arguments["temperature"]
            return prompt, out

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                prompt, scope = split(args, kwargs)
                target = get_cache()
                hit = await target.alookup(prompt, namespace=checked_namespace, **scope)
                if hit is not None:
                    return hit.response
                result = await fn(*args, **kwargs)
                try:
                    await target.astore(
                        prompt, result, namespace=checked_namespace, ttl=checked_ttl, tags=checked_tags, **scope
                    )
                except (TypeError, ValueError) as err:
                    _not_cached(fn, err)
                return result

            async_wrapper.cache = get_cache  # type: ignore[attr-defined]
            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            prompt, scope = split(args, kwargs)
            target = get_cache()
            hit = target.lookup(prompt, namespace=checked_namespace, **scope)
            if hit is not None:
                return hit.response
            result = fn(*args, **kwargs)
            try:
                target.store(prompt, result, namespace=checked_namespace, ttl=checked_ttl, tags=checked_tags, **scope)
            except (TypeError, ValueError) as err:
                _not_cached(fn, err)
            return result

        wrapper.cache = get_cache  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate
