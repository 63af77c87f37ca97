"""Self-checking: a cache that measures its own wrong answers and moves its threshold.

A static threshold is calibrated on someone else's traffic. With ``SemanticCache(self_check=...)``
each deployment learns its own, from answers it compares:

- **paid checks**: a semantic hit whose similarity falls in the band ``[t, t + band)`` over the
  threshold ``t`` is, with a probability that starts at ``initial_rate`` and decays as labels
  accumulate, *not* served: the lookup reports a miss, the caller asks the upstream as for any
  miss (``CachedOpenAI``, the proxy and the decorator do) and stores the fresh answer, and the
  store compares it with the candidate's cached answer;
- **free checks**: a miss whose best candidate was in the band ``[t - band, t)`` under the
  threshold is compared the same way when its fresh answer is stored (the upstream call was
  paid for anyway).

Each comparison is a labelled pair (:class:`Check`: stored prompt, asked prompt, similarity,
same answer or not), kept with the cache (saved in its file) and exportable as JSON lines that
``bsc eval``/``bsc calibrate`` read. After each label the namespace's threshold moves toward
``target_wrong_rate`` with the Wilson-bound calibration of :func:`bsc.quality.calibrate_scores`:
up at once to the calibrated threshold (or just over a wrong answer's similarity, when too few
labels qualify one), down slowly (``lower_rate`` of the gap per label). A candidate that gave a
different answer is never served again for the prompt it was compared on.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bsc._codec import decode_response
from bsc.quality import lowest_threshold
from bsc.semantic.keys import digest, namespace_of

__all__ = ["Check", "Checker", "SelfCheck", "answer_text", "lowest_threshold", "same_answer"]

logger = logging.getLogger("bsc")

# Pending comparisons waiting for their fresh answer: at most this many, for at most this long.
_PENDING = 10_000
_PENDING_BYTES = 64 << 20  # and at most this much of their prompts and cached answers
_PENDING_SECONDS = 600.0
# (entry, prompt) pairs never served again: at most this many (the oldest are forgotten).
_BLOCKED = 100_000
# An answer this short (in words), or structured (JSON, code), compares exactly.
_SHORT_WORDS = 12
_STEP = 0.005  # just over a wrong answer's similarity


@dataclass(frozen=True, slots=True)
class SelfCheck:
    """How a :class:`~bsc.SemanticCache` checks itself (``self_check=True`` uses the defaults).

    Args:
        target_wrong_rate: the share of answers served (exact and semantic hits) allowed to be
            wrong; each namespace's threshold moves toward it. Exact hits are never wrong, so
            semantic hits may be wrong at ``target_wrong_rate * hits / semantic_hits`` (at most
            0.5).
        band: width of the uncertainty band on each side of the threshold.
        initial_rate: probability of a paid check for a hit in the band, with no labels yet.
        min_rate: the probability never decays below this.
        half_life: labels in a namespace at which the probability has halved.
        confidence: one-sided confidence of the Wilson bound used to recalibrate.
        lower_rate: share of the gap closed per label when the threshold moves down.
        min_threshold, max_threshold: the learned threshold stays within these.
        comparator: ``(cached answer, fresh answer) -> bool`` (same answer?); default
            :func:`same_answer` (exact after normalisation for short or structured answers,
            embedding cosine of at least ``same_answer_similarity`` for prose).
        max_labels: labels kept over every namespace (the oldest are dropped; each namespace
            recalibrates on those of its labels that are kept).
        seed: seed of the sampling (``None``: random).
    """

    target_wrong_rate: float = 0.10
    band: float = 0.10
    initial_rate: float = 1.0
    min_rate: float = 0.02
    half_life: int = 50
    confidence: float = 0.95
    lower_rate: float = 0.05
    min_threshold: float = 0.5
    max_threshold: float = 1.0
    comparator: Callable[[Any, Any], bool] | None = None
    same_answer_similarity: float = 0.90
    max_labels: int = 10_000
    seed: int | None = None

    def __post_init__(self) -> None:
        def number(name: str, low: float, high: float) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise ValueError(f"SelfCheck.{name} must be a number from {low} to {high}, got {value!r}")

        number("target_wrong_rate", 0.0, 1.0)
        number("band", 0.0, 1.0)
        number("initial_rate", 0.0, 1.0)
        number("min_rate", 0.0, 1.0)
        number("lower_rate", 0.0, 1.0)
        number("min_threshold", -1.0, 1.0)
        number("max_threshold", -1.0, 1.0)
        number("same_answer_similarity", -1.0, 1.0)
        if not 0.5 <= self.confidence < 1:
            raise ValueError(f"SelfCheck.confidence must be in [0.5, 1), got {self.confidence!r}")
        for name in ("half_life", "max_labels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"SelfCheck.{name} must be a positive int, got {value!r}")
        if self.min_threshold > self.max_threshold:
            raise ValueError("SelfCheck.min_threshold must not exceed max_threshold")
        if self.comparator is not None and not callable(self.comparator):
            raise TypeError("SelfCheck.comparator must be callable (cached answer, fresh answer) -> bool")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise TypeError(f"SelfCheck.seed must be an int or None, got {self.seed!r}")

    def as_meta(self) -> dict[str, Any]:
        """The settings a file keeps (not the comparator: pass it again when loading)."""
        out = asdict(self)
        out.pop("comparator")
        return out


def self_check_arg(value: Any) -> SelfCheck | None:
    if value is None or value is False:
        return None
    if value is True:
        return SelfCheck()
    if isinstance(value, SelfCheck):
        return value
    raise TypeError(f"self_check must be a bool or a SelfCheck, got {type(value).__name__}")


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: the cached answer of ``stored_prompt`` against the fresh answer for
    ``asked_prompt``. ``paid``: a check the cache asked for (a hit not served); otherwise a
    near miss whose fresh answer came anyway."""

    namespace: str
    stored_prompt: str
    asked_prompt: str
    similarity: float
    same: bool
    paid: bool
    entry_id: int
    time: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def as_pair(self, pair_id: int = 0) -> dict[str, Any]:
        """The labelled pair as ``bsc eval`` and ``bsc calibrate`` read it."""
        return {
            "id": pair_id,
            "text_a": self.stored_prompt,
            "text_b": self.asked_prompt,
            "label": int(self.same),
            "similarity": self.similarity,
            "namespace": self.namespace,
            "paid": self.paid,
            "time": self.time,
        }


@dataclass(slots=True)
class _Pending:
    namespace: str
    entry_id: int
    stored_prompt: str
    asked_prompt: str
    response: bytes
    similarity: float
    paid: bool
    started: float = field(default_factory=time.monotonic)


def _size(pending: _Pending) -> int:
    return len(pending.response) + 4 * (len(pending.stored_prompt) + len(pending.asked_prompt))


def answer_text(value: Any) -> str:
    """The text of an answer: a string as is, bytes decoded, a chat completion's message
    contents (or a Responses API object's output text) joined, any other JSON value as JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    if isinstance(value, Mapping):
        choices = value.get("choices")
        if isinstance(choices, list) and choices:
            parts = []
            for choice in choices:
                if not isinstance(choice, Mapping):
                    continue
                message = choice.get("message")
                if isinstance(message, Mapping) and isinstance(message.get("content"), str):
                    parts.append(message["content"])
                elif isinstance(choice.get("text"), str):
                    parts.append(choice["text"])
            if parts:
                return "\n".join(parts)
        output = value.get("output")
        if isinstance(output, list):
            texts: list[str] = [
                part["text"]
                for item in output
                if isinstance(item, Mapping)
                for part in (item.get("content") or [])
                if isinstance(part, Mapping) and isinstance(part.get("text"), str)
            ]
            if texts:
                return "\n".join(texts)
    return json.dumps(value, sort_keys=True, default=str)


_SPACE = re.compile(r"\s+")


def _normal(text: str) -> str:
    return _SPACE.sub(" ", text).strip().strip(".!").casefold()


def _structured(text: str) -> bool:
    stripped = text.strip()
    if stripped[:1] in "{[" or "```" in stripped:
        return True
    try:
        float(stripped)
        return True
    except ValueError:
        return False


def same_answer(cached: Any, fresh: Any, embed: Callable[[str], Any] | None = None, similarity: float = 0.9) -> bool:
    """The default comparator: answers are the same when equal after normalisation (case,
    whitespace, a final full stop); short (at most 12 words) or structured ones (JSON, code, a
    number) only then; longer prose also when the cosine of their embeddings (``embed``)
    reaches ``similarity``."""
    a, b = answer_text(cached), answer_text(fresh)
    if _normal(a) == _normal(b):
        return True
    if embed is None or _structured(a) or _structured(b):
        return False
    if min(len(a.split()), len(b.split())) <= _SHORT_WORDS:
        return False
    va, vb = embed(a), embed(b)
    if va is None or vb is None:  # longer than the embedder's window
        return False
    va, vb = np.asarray(va, dtype=np.float64).ravel(), np.asarray(vb, dtype=np.float64).ravel()
    norms = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return norms > 0 and float(va @ vb) / norms >= similarity


class Checker:
    """A cache's self-checking state: per-namespace thresholds and labels, pending comparisons,
    blocked (entry, prompt) pairs. Thread-safe."""

    def __init__(
        self,
        config: SelfCheck,
        embed: Callable[[str], Any] | None = None,
        saved: Mapping[str, Any] | None = None,
        hits: Callable[[], tuple[int, int]] | None = None,
    ) -> None:
        self.config = config
        self._embed = embed
        self._hits = hits  # (exact hits, semantic hits) served so far
        self._lock = threading.Lock()
        self._rng = random.Random(config.seed)
        self._thresholds: dict[str, float] = {}
        self._labels: dict[str, deque[tuple[float, bool]]] = {}
        self._checks: deque[Check] = deque(maxlen=config.max_labels)
        self._pending: OrderedDict[tuple[str, str], _Pending] = OrderedDict()
        self._pending_bytes = 0
        self._blocked: OrderedDict[tuple[int, bytes], None] = OrderedDict()
        if saved:
            self._restore(saved)

    # -- lookup side ---------------------------------------------------------------------

    def threshold(self, namespace: str, default: float) -> float:
        with self._lock:
            return self._thresholds.get(namespace, default)

    def blocked(self, entry_id: int, prompt: str) -> bool:
        with self._lock:
            return (entry_id, digest(prompt, 8)) in self._blocked

    def probability(self, namespace: str) -> float:
        """The chance that a hit in the band is checked now."""
        c = self.config
        n = len(self._labels.get(namespace, ()))
        return max(c.min_rate, c.initial_rate * c.half_life / (c.half_life + n))

    def should_check(self, namespace: str) -> bool:
        with self._lock:
            return self._rng.random() < self.probability(namespace)

    def note(
        self,
        partition: str,
        prompt: str,
        entry_id: int,
        stored_prompt: str,
        response: bytes,
        similarity: float,
        paid: bool,
    ) -> None:
        """Remember a candidate to compare when ``prompt``'s fresh answer arrives."""
        with self._lock:
            key = (partition, prompt)
            self._forget(key)
            self._pending[key] = _Pending(
                namespace_of(partition), entry_id, stored_prompt, prompt, response, similarity, paid
            )
            self._pending_bytes += _size(self._pending[key])
            while len(self._pending) > _PENDING or self._pending_bytes > _PENDING_BYTES:
                self._forget(next(iter(self._pending)))

    def _forget(self, key: tuple[str, str]) -> _Pending | None:
        pending = self._pending.pop(key, None)
        if pending is not None:
            self._pending_bytes -= _size(pending)
        return pending

    # -- store side ----------------------------------------------------------------------

    def answered(self, partition: str, prompt: str, fresh: Any, default: float) -> tuple[Check, float] | None:
        """Compare ``fresh`` (the upstream's answer for ``prompt``) with the candidate noted for
        it, if any: the label, and the seconds since the lookup."""
        with self._lock:
            pending = self._forget((partition, prompt))
        if pending is None:
            return None
        elapsed = time.monotonic() - pending.started
        if elapsed > _PENDING_SECONDS:
            return None
        try:
            cached = decode_response(pending.response)
            if self.config.comparator is not None:
                same = bool(self.config.comparator(cached, fresh))
            else:
                same = same_answer(cached, fresh, self._embed, self.config.same_answer_similarity)
        except Exception as err:  # a comparator or an embedder failing never fails the store
            logger.warning("bsc: self-check could not compare the answers for entry %d: %r", pending.entry_id, err)
            return None
        check = Check(
            pending.namespace,
            pending.stored_prompt,
            pending.asked_prompt,
            round(pending.similarity, 6),
            same,
            pending.paid,
            pending.entry_id,
            time.time(),
        )
        self._learn(check, default)
        return check, elapsed

    def _learn(self, check: Check, default: float) -> None:
        c = self.config
        with self._lock:
            self._keep(check)
            labels = self._labels[check.namespace]
            if not check.same:
                self._blocked[(check.entry_id, digest(check.asked_prompt, 8))] = None
                while len(self._blocked) > _BLOCKED:
                    self._blocked.popitem(last=False)
            current = self._thresholds.get(check.namespace, default)
            scores = np.fromiter((s for s, _ in labels), dtype=np.float64, count=len(labels))
            same = np.fromiter((ok for _, ok in labels), dtype=bool, count=len(labels))
            target = c.target_wrong_rate
            if self._hits is not None:
                exact, semantic = self._hits()
                if semantic > 0:
                    target = min(0.5, target * (exact + semantic) / semantic)
            calibrated = lowest_threshold(scores, same, target, c.confidence)
            if calibrated is not None:
                wanted = calibrated
            elif not check.same and check.similarity >= current:
                wanted = check.similarity + _STEP  # too few labels to calibrate: just over it
            else:
                wanted = current
            # up at once, down slowly
            new = wanted if wanted > current else current - c.lower_rate * (current - wanted)
            self._thresholds[check.namespace] = min(c.max_threshold, max(c.min_threshold, new))

    def _keep(self, check: Check) -> None:
        """Keep a label: at most ``max_labels`` over every namespace (the oldest go first), so
        many namespaces cannot grow the state without bound."""
        if len(self._checks) == self._checks.maxlen:
            oldest = self._checks[0]
            labels = self._labels[oldest.namespace]
            labels.popleft()
            if not labels:
                del self._labels[oldest.namespace]
        self._checks.append(check)
        self._labels.setdefault(check.namespace, deque()).append((float(check.similarity), bool(check.same)))

    # -- reports and saving --------------------------------------------------------------

    def checks(self) -> list[Check]:
        with self._lock:
            return list(self._checks)

    def thresholds(self) -> dict[str, float]:
        with self._lock:
            return dict(self._thresholds)

    def state(self) -> dict[str, Any]:
        """What a save keeps: settings, learned thresholds, labels and blocked pairs."""
        with self._lock:
            return {
                "settings": self.config.as_meta(),
                "thresholds": dict(self._thresholds),
                "checks": [list(asdict(c).values()) for c in self._checks],
                "blocked": [[entry, key.hex()] for entry, key in self._blocked],
            }

    def _restore(self, saved: Mapping[str, Any]) -> None:
        thresholds = saved.get("thresholds", {})
        if not isinstance(thresholds, Mapping):
            raise ValueError("self-check thresholds are not an object")
        for name, value in thresholds.items():
            if not isinstance(name, str) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"self-check threshold {name!r} is {value!r}")
            self._thresholds[name] = float(value)
        for row in saved.get("checks", []):
            self._keep(Check(*row))
        for entry, key in saved.get("blocked", []):
            self._blocked[(int(entry), bytes.fromhex(key))] = None
