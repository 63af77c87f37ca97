"""Metrics: the counters ``SemanticCache`` keeps beside the engine's, and its stats."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Metrics", "SemanticStats", "build_stats", "namespace_count"]

# Histogram of the best candidate's similarity: 40 bins of 0.05 over [-1, 1].
_BINS = 40


@dataclass(frozen=True, slots=True)
class SemanticStats:
    """What a :class:`SemanticCache` has done.

    ``hits = exact_hits + semantic_hits``; ``lookups = hits + misses + bypassed``; ``hit_rate``
    is ``hits / lookups``. ``near_misses`` are misses whose best candidate was within
    ``near_miss_margin`` under the threshold (a threshold set too high shows up here).
    ``gate_vetoes`` counts candidates the content gate vetoed (a lookup may veto several).
    ``similarity_histogram`` counts the best candidate's similarity on the semantic path in bins
    of 0.05, keyed by each bin's lower edge (``"0.80"`` is [0.80, 0.85)). ``tokens_saved`` and
    ``cost_saved`` add up the usage stored with each entry that answered.
    ``lru_touches_dropped`` counts hits left out of the LRU order because the engine's queue of
    them was full, ``save_errors`` failed background and final saves of ``persist_path`` (both
    this process only; not saved). With ``self_check``: ``verifications`` counts hits held back
    to be checked (counted as misses: the upstream answered), ``checks`` the comparisons made
    (paid and free), ``checks_different`` those whose answers differed, ``verification_tokens``
    and ``verification_seconds`` what the paid ones cost (the stored usage, the time from the
    lookup to the store)."""

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
    lru_touches_dropped: int = 0
    verifications: int = 0
    checks: int = 0
    checks_different: int = 0
    verification_tokens: int = 0
    verification_seconds: float = 0.0

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
    "verifications",
    "checks",
    "checks_different",
    "verification_tokens",
    "verification_seconds",
)


class Metrics:
    """The Python-side counters (the engine keeps size, evictions and expirations)."""

    def __init__(self, saved: Mapping[str, Any] | None = None) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, float] = dict.fromkeys(_COUNTERS, 0)
        self.histogram = [0] * _BINS
        if saved:
            for name in _COUNTERS:
                value = saved.get(name, 0)  # counters added later are 0 in older files
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


def namespace_count(partitions: Mapping[bytes, int]) -> int:
    return len({name.split(b"#", 1)[0] for name in partitions})


def build_stats(
    raw: Mapping[str, Any], metrics: Mapping[str, Any], namespaces: int, save_errors: int = 0
) -> SemanticStats:
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
        lru_touches_dropped=raw.get("lru_touches_dropped", 0),
        save_errors=save_errors,
        verifications=int(metrics["verifications"]),
        checks=int(metrics["checks"]),
        checks_different=int(metrics["checks_different"]),
        verification_tokens=int(metrics["verification_tokens"]),
        verification_seconds=float(metrics["verification_seconds"]),
    )
