"""The engine boundary: the one interface through which the facade stores and finds entries.

:class:`Engine` is what :class:`~bsc.BinarySemanticCache` and :class:`~bsc.SemanticCache` need
from a store of binary codes: put, lookup (nearest, by key, by id, the k best candidates), peek,
delete (by id or namespace), expire, stats, save. ``bsc_native.CacheStore`` is the in-process
implementation, and this module is the only one in ``bsc`` that imports it (:func:`create`,
:func:`open_file`); a store shared by several processes implements the same protocol and the
caches above it do not change.

Entries are ``(id, distance, payload, created_at, last_accessed, access_count)`` tuples
(:data:`EntryTuple`): the payload is opaque bytes (a SemanticCache record, or an encoded
response), ``distance`` is the Hamming distance to the query (``None`` from :meth:`Engine.peek`,
0 from key and id lookups), times are seconds since the Unix epoch. A *namespace* is an opaque
name (``str`` or ``bytes``, at most 1024 bytes) that partitions the entries: a lookup only ever
sees its own namespace's entries. Every method is safe to call from many threads at once.
"""

from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import numpy.typing as npt

from bsc_native import CacheStore

__all__ = ["Codes", "Engine", "EntryTuple", "create", "open_file"]

#: One entry as the engine returns it: ``(id, distance, payload, created_at, last_accessed,
#: access_count)``.
EntryTuple = tuple[int, "int | None", bytes, float, float, int]
#: One packed binary code: ``code_bits // 64`` unsigned 64-bit words.
Codes = npt.NDArray[np.uint64]
Namespace = str | bytes | None


class Engine(Protocol):
    """A bounded, thread-safe store of binary codes with payloads, TTLs and LRU eviction."""

    @property
    def code_bits(self) -> int:
        """Bits per code (a multiple of 64)."""

    @property
    def max_entries(self) -> int:
        """Entries kept; beyond it the least recently used one is evicted."""

    @property
    def fingerprint(self) -> str:
        """The encoder that made the codes (``""`` when unknown); a file of another is refused."""

    @property
    def meta(self) -> bytes:
        """The settings bytes saved with the store (``b""`` for a new one)."""

    def __len__(self) -> int:
        """Live entries (expired ones not yet removed count)."""

    def __contains__(self, id: int, /) -> bool:
        """Whether entry ``id`` is live."""

    def put(
        self,
        code: Codes,
        payload: bytes,
        *,
        namespace: Namespace = None,
        ttl: float | None = None,
        key: int | None = None,
    ) -> int:
        """Store one entry and return its id. ``ttl``: seconds until it expires (``None``: never).
        ``key`` (in ``[1, 2**64)``) makes it findable by :meth:`lookup_key` and replaces the live
        entry of ``namespace`` stored with the same key. Expired entries go first, then the least
        recently used when full."""

    def lookup(self, code: Codes, max_distance: int | None = None, *, namespace: Namespace = None) -> EntryTuple | None:
        """The nearest unexpired entry of ``namespace`` within ``max_distance``, marked used;
        counts a hit or a miss."""

    def lookup_nearest(
        self, code: Codes, max_distance: int | None = None, *, namespace: Namespace = None
    ) -> tuple[EntryTuple | None, int | None]:
        """:meth:`lookup`, plus the distance of the namespace's nearest entry at any distance."""

    def lookup_key(self, key: int, *, namespace: Namespace = None) -> EntryTuple | None:
        """The unexpired entry of ``namespace`` stored with ``key``, marked used; O(1)."""

    def lookup_id(self, id: int, *, namespace: Namespace = None) -> EntryTuple | None:
        """Entry ``id`` if live, unexpired and in ``namespace``, marked used."""

    def candidates(
        self, code: Codes, k: int | None = None, max_distance: int | None = None, *, namespace: Namespace = None
    ) -> tuple[list[EntryTuple], int | None]:
        """The ``k`` nearest unexpired entries of ``namespace`` within ``max_distance``, nearest
        first, not marked used, and the distance of the nearest at any distance."""

    def peek(self, id: int) -> EntryTuple | None:
        """An entry without marking it used (distance ``None``)."""

    def placement(self, id: int) -> tuple[bytes, float | None] | None:
        """An entry's namespace and expiry time (``None``: never expires)."""

    def namespaces(self) -> dict[bytes, int]:
        """Each namespace holding entries and how many."""

    def lru_ids(self) -> npt.NDArray[np.int64]:
        """Live ids from most to least recently used."""

    def delete(self, id: int) -> bool:
        """Remove an entry; whether it was there."""

    def delete_namespace(self, namespace: str | bytes) -> int:
        """Remove every entry of ``namespace``; how many."""

    def purge_expired(self) -> int:
        """Remove every entry whose TTL has run out; how many."""

    def clear(self) -> None:
        """Remove every entry (counters are kept)."""

    def stats(self) -> dict[str, int]:
        """At least ``size``, ``max_entries``, ``hits``, ``misses``, ``evictions``,
        ``expirations``, ``namespaces``, ``memory_bytes`` and ``response_bytes``; the native
        engine adds ``mapped_bytes`` and ``lru_touches_dropped``."""

    def save(self, path: str | os.PathLike[str], meta: bytes | None = None) -> None:
        """A crash-safe snapshot of every entry, the LRU order, the counters and ``meta`` at
        ``path``; lookups go on meanwhile."""


def create(code_bits: int, max_entries: int, fingerprint: str) -> Engine:
    """A new, empty in-process engine."""
    return CacheStore(code_bits=code_bits, max_entries=max_entries, fingerprint=fingerprint)


def open_file(
    path: str | os.PathLike[str],
    *,
    fingerprint: str | None = None,
    max_entries: int | None = None,
    verify: bool = False,
) -> Engine:
    """An in-process engine opened from a file :meth:`Engine.save` wrote (memory-mapped; see
    ``bsc_native.CacheStore.load``). Raises a ``bsc.CacheFileError`` subclass for a bad file and
    ``EncoderMismatchError`` when ``fingerprint`` is not the file's."""
    return CacheStore.load(path, fingerprint=fingerprint, max_entries=max_entries, verify=verify)
