"""``BinarySemanticCache``: the embedding-level semantic cache (the original bsc API)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from bsc._codec import decode_response, encode_response
from bsc_encoder import BinaryEncoder, hamming_radius, hamming_to_cosine
from bsc_native import CacheStore

__all__ = ["BinarySemanticCache", "CacheEntry", "CacheStats"]


@dataclass(frozen=True, slots=True)
class CacheEntry:
    """A cache hit.

    ``similarity`` is the cosine similarity estimated from the binary codes,
    ``cos(pi * distance / code_bits)``; times are seconds since the Unix epoch, and
    ``last_accessed`` / ``access_count`` already count this hit.
    """

    response: Any
    similarity: float
    id: int
    created_at: float
    last_accessed: float
    access_count: int
    distance: int


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Counters and sizes of a cache. ``hit_rate`` is ``hits / (hits + misses)`` (0.0 before
    any lookup); ``memory_bytes`` counts everything held (codes, metadata, stored responses and
    spare capacity), ``response_bytes`` the stored responses alone."""

    size: int
    max_size: int
    hits: int
    misses: int
    evictions: int
    hit_rate: float
    memory_bytes: int
    response_bytes: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_threshold(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"similarity_threshold must be a number in [-1, 1], got {type(value).__name__}")
    threshold = float(value)
    if not -1.0 <= threshold <= 1.0:
        raise ValueError(f"similarity_threshold must be in [-1, 1], got {value!r}")
    return threshold


class BinarySemanticCache:
    """A semantic cache keyed by embeddings.

    ``get(embedding)`` returns the stored response of the nearest earlier embedding whose
    estimated cosine similarity is at least ``similarity_threshold``; ``put`` stores one. The
    cache holds at most ``max_entries`` entries and evicts the least recently used one (O(1))
    when full. Responses are ``str``, ``bytes`` or JSON values (see ``bsc._codec``).

    All per-entry state lives in the native ``CacheStore``. Lookups run in parallel from
    many threads: the scan holds a shared read lock, and only the O(1) LRU update of a hit
    takes the write lock.
    """

    def __init__(
        self,
        encoder: BinaryEncoder,
        max_entries: int = 1000,
        similarity_threshold: float = 0.80,
        code_bits: int | None = None,
        storage_mode: str = "memory",
    ) -> None:
        if not isinstance(encoder, BinaryEncoder):
            raise TypeError(f"encoder must be a bsc.BinaryEncoder, got {type(encoder).__name__}")
        if isinstance(max_entries, bool) or not isinstance(max_entries, (int, np.integer)):
            raise TypeError(f"max_entries must be an int, got {type(max_entries).__name__}")
        if max_entries <= 0:
            raise ValueError(f"max_entries must be > 0, got {max_entries}")
        if code_bits is not None and code_bits != encoder.code_bits:
            raise ValueError(
                f"code_bits={code_bits!r} does not match the encoder's code_bits={encoder.code_bits}; "
                "set code_bits on the BinaryEncoder"
            )
        if storage_mode != "memory":
            raise ValueError(f"storage_mode must be 'memory', got {storage_mode!r}")
        threshold = _check_threshold(similarity_threshold)
        self._encoder = encoder
        self._store = CacheStore(code_bits=encoder.code_bits, max_entries=int(max_entries))
        # One tuple, replaced whole, so a concurrent reader never sees a threshold with the
        # radius of another.
        self._rule = (threshold, hamming_radius(threshold, encoder.code_bits))

    @property
    def encoder(self) -> BinaryEncoder:
        return self._encoder

    @property
    def max_entries(self) -> int:
        return self._store.max_entries

    @property
    def code_bits(self) -> int:
        return self._encoder.code_bits

    @property
    def storage_mode(self) -> str:
        return "memory"

    @property
    def similarity_threshold(self) -> float:
        """Minimum estimated cosine similarity for a hit."""
        return self._rule[0]

    @similarity_threshold.setter
    def similarity_threshold(self, value: float) -> None:
        threshold = _check_threshold(value)
        self._rule = (threshold, hamming_radius(threshold, self._encoder.code_bits))

    @property
    def max_distance(self) -> int:
        """The Hamming radius equivalent to ``similarity_threshold``."""
        return self._rule[1]

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int) and entry_id in self._store

    def __repr__(self) -> str:
        return (
            f"BinarySemanticCache(encoder={self._encoder!r}, max_entries={self.max_entries}, "
            f"similarity_threshold={self.similarity_threshold}, len={len(self)})"
        )

    def _code(self, embedding: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        if not isinstance(embedding, (np.ndarray, list, tuple)):
            raise TypeError(f"embedding must be a numpy.ndarray of float32 or float64, got {type(embedding).__name__}")
        try:
            shape: tuple[int, ...] | str = np.shape(embedding)
        except ValueError:  # a ragged list
            shape = "ragged"
        if not (isinstance(shape, tuple) and len(shape) == 1):
            raise ValueError(f"expected one embedding of shape ({self._encoder.embedding_dim},), got shape {shape}")
        return self._encoder.encode(embedding)

    def get(self, embedding: npt.ArrayLike) -> CacheEntry | None:
        """The cached entry nearest to ``embedding`` if its similarity reaches the threshold."""
        code = self._code(embedding)
        _, radius = self._rule
        found = self._store.lookup(code, max_distance=radius)
        if found is None:
            return None
        entry_id, distance, payload, created_at, last_accessed, access_count = found
        assert distance is not None
        return CacheEntry(
            response=decode_response(payload),
            similarity=hamming_to_cosine(distance, self._encoder.code_bits),
            id=entry_id,
            created_at=created_at,
            last_accessed=last_accessed,
            access_count=access_count,
            distance=distance,
        )

    def put(self, embedding: npt.ArrayLike, response: Any) -> int:
        """Store ``response`` under ``embedding``; return the new entry's id. Evicts the least
        recently used entry when the cache is full. Bad input changes nothing."""
        payload = encode_response(response)
        code = self._code(embedding)
        return self._store.put(code, payload)

    def peek(self, entry_id: int) -> CacheEntry | None:
        """An entry by id without counting a lookup or marking it used (similarity 1.0)."""
        found = self._store.peek(entry_id)
        if found is None:
            return None
        entry_id, _, payload, created_at, last_accessed, access_count = found
        return CacheEntry(decode_response(payload), 1.0, entry_id, created_at, last_accessed, access_count, 0)

    def delete(self, entry_id: int) -> bool:
        """Remove an entry by id; return whether it was present. Its slot is reused."""
        return self._store.delete(entry_id)

    def clear(self) -> None:
        """Remove every entry (counters are kept)."""
        self._store.clear()

    def stats(self) -> CacheStats:
        raw = self._store.stats()
        lookups = raw["hits"] + raw["misses"]
        return CacheStats(
            size=raw["size"],
            max_size=raw["max_entries"],
            hits=raw["hits"],
            misses=raw["misses"],
            evictions=raw["evictions"],
            hit_rate=raw["hits"] / lookups if lookups else 0.0,
            memory_bytes=raw["memory_bytes"],
            response_bytes=raw["response_bytes"],
        )
