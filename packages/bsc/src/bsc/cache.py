"""``BinarySemanticCache``: the embedding-level semantic cache (the original bsc API)."""

from __future__ import annotations

import json
import logging
import os
import threading
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

import bsc_native
from bsc import engine as engines
from bsc._checks import MAX_TTL, check_no_surrogate, check_threshold, check_ttl
from bsc._codec import decode_response, encode_response
from bsc._version import __version__
from bsc.engine import Engine
from bsc.errors import EncoderMismatchError
from bsc.persist import Persister, encoder_from_meta, read_meta, remove_stale_temp_files
from bsc.shared.config import Shared
from bsc_encoder import BinaryEncoder, hamming_radius, hamming_to_cosine
from bsc_encoder.encoder import ALGORITHM_VERSION

logger = logging.getLogger("bsc")

#: Embeddings the engine's projector encodes; any other input (lists, other byte orders, other
#: dtypes, which raise) goes through ``BinaryEncoder``.
_ENGINE_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))

__all__ = ["MAX_TTL", "BinarySemanticCache", "CacheEntry", "CacheStats"]


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
    spare capacity), ``response_bytes`` the stored responses alone; ``expirations`` counts
    entries removed because their TTL ran out, ``namespaces`` the namespaces holding entries;
    ``lru_touches_dropped`` counts hits left out of the LRU order because the engine's queue of
    them was full (docs/ARCHITECTURE.md); ``save_errors`` counts failed background and final
    saves of ``persist_path`` (both kept in this
    process only: a loaded file starts at 0)."""

    size: int
    max_size: int
    hits: int
    misses: int
    evictions: int
    hit_rate: float
    memory_bytes: int
    response_bytes: int
    expirations: int = 0
    namespaces: int = 0
    save_errors: int = 0
    lru_touches_dropped: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class BinarySemanticCache:
    """A semantic cache keyed by embeddings.

    ``get(embedding)`` returns the stored response of the nearest earlier embedding whose
    estimated cosine similarity is at least ``similarity_threshold``; ``put`` stores one. The
    cache holds at most ``max_entries`` entries and evicts the least recently used one (O(1))
    when full. Responses are ``str``, ``bytes`` or JSON values (see ``bsc._codec``).

    All per-entry state lives in the engine (:mod:`bsc.engine`). Lookups run in parallel from
    many threads: the scan holds a shared read lock, and only the O(1) LRU update of a hit
    takes the write lock if it is free at once (or is queued, if a save, a writer or another
    lookup holds the lock).

    **Persistence.** ``save(path)`` writes one crash-safe file (docs/FORMAT.md) and
    ``BinarySemanticCache.load(path)`` opens it. With ``persist_path=``, the cache loads that
    file at start if it exists, saves it in a background thread after every ``persist_every``
    puts or ``persist_interval`` seconds (whichever comes first, only if something changed),
    and once more on ``close()``, when a ``with`` block ends, or when the program exits.
    """

    _persister: Persister | None

    def __init__(
        self,
        encoder: BinaryEncoder,
        max_entries: int = 1000,
        similarity_threshold: float = 0.80,
        code_bits: int | None = None,
        storage_mode: str | None = None,
        *,
        persist_path: str | os.PathLike[str] | None = None,
        persist_every: int | None = 1000,
        persist_interval: float | None = 60.0,
        default_ttl: float | None = None,
        shared: str | Shared | None = None,
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
        if storage_mode is not None:
            _storage_mode_arg(storage_mode)
        threshold = check_threshold(similarity_threshold)
        ttl = check_ttl(default_ttl)
        path = None if persist_path is None else Path(os.fspath(persist_path))
        meta: dict[str, Any] = {}
        store: Engine
        if shared is not None:
            if path is not None:
                raise ValueError("persist_path and shared cannot be combined: a shared cache is kept by Redis")
            config = Shared.parse(shared)
            from bsc.shared import connect

            store = connect(
                config, code_bits=encoder.code_bits, max_entries=int(max_entries), fingerprint=encoder.fingerprint()
            )
        elif path is not None and path.exists():
            # Raises EncoderMismatchError when the file holds another encoder's codes.
            store = engines.open_file(path, fingerprint=encoder.fingerprint(), max_entries=int(max_entries))
            meta = read_meta(path, store.meta)
            logger.info("bsc: loaded %d entries from %s", len(store), path)
            remove_stale_temp_files(path)
        else:
            store = engines.create(encoder.code_bits, int(max_entries), encoder.fingerprint())
        self._setup(encoder, store, threshold, ttl, meta)
        if path is not None:
            self._persister = Persister(self, path, persist_every, persist_interval)

    @classmethod
    def from_engine(
        cls,
        engine: Engine,
        encoder: BinaryEncoder,
        *,
        similarity_threshold: float = 0.80,
        default_ttl: float | None = None,
    ) -> BinarySemanticCache:
        """A cache over an existing :class:`bsc.engine.Engine` (its entries are kept): another
        implementation of the engine, such as a store shared by several processes, or one opened
        with :func:`bsc.engine.open_file`. ``encoder`` must make the engine's codes (same
        ``code_bits``; ``EncoderMismatchError`` when the engine names another fingerprint)."""
        if not isinstance(encoder, BinaryEncoder):
            raise TypeError(f"encoder must be a bsc.BinaryEncoder, got {type(encoder).__name__}")
        if engine.code_bits != encoder.code_bits:
            raise ValueError(f"the engine holds {engine.code_bits}-bit codes, the encoder makes {encoder.code_bits}")
        if engine.fingerprint and engine.fingerprint != encoder.fingerprint():
            raise EncoderMismatchError(
                f"the engine's codes were made by encoder {engine.fingerprint!r}, not {encoder.fingerprint()!r}"
            )
        cache = cls.__new__(cls)
        cache._setup(encoder, engine, check_threshold(similarity_threshold), check_ttl(default_ttl), {})
        return cache

    def _setup(
        self,
        encoder: BinaryEncoder,
        store: Engine,
        threshold: float,
        default_ttl: float | None,
        file_meta: dict[str, Any],
    ) -> None:
        """The state every cache holds, whether made by ``__init__`` or ``load``."""
        self._encoder = encoder
        # The query path's encoder: the same projection in the engine (bsc_native.Projector), a
        # few µs instead of numpy's ~35 µs of temporaries and checks for one embedding.
        self._projector = bsc_native.Projector(encoder.projection)
        # The settings of the file this cache was loaded from ({} for a new cache), and a hook
        # through which a wrapper (SemanticCache) adds its own to every save.
        self._file_meta = file_meta
        self._meta_extra: Callable[[], dict[str, Any]] | None = None
        self._store = store
        # One tuple, replaced whole, so a concurrent reader never sees a threshold with the
        # radius of another.
        self._rule = (threshold, hamming_radius(threshold, encoder.code_bits))
        self._default_ttl = default_ttl
        self._persister = None
        self._closed = False
        # Held across the removal of stale temporary files and the save itself, so that a save
        # never removes the temporary file of a concurrent save of this cache.
        self._save_lock = threading.Lock()

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
    def similarity_threshold(self) -> float:
        """Minimum estimated cosine similarity for a hit."""
        return self._rule[0]

    @similarity_threshold.setter
    def similarity_threshold(self, value: float) -> None:
        threshold = check_threshold(value)
        self._rule = (threshold, hamming_radius(threshold, self._encoder.code_bits))

    @property
    def max_distance(self) -> int:
        """The Hamming radius equivalent to ``similarity_threshold``."""
        return self._rule[1]

    # -- for caches layered on this one (SemanticCache) ---------------------------------------

    @property
    def engine(self) -> Engine:
        """The engine holding the entries (:class:`bsc.engine.Engine`). A layered cache stores
        its own records through it; what it stores there is this cache's, too (saved with it)."""
        return self._store

    @property
    def match_rule(self) -> tuple[float, int]:
        """``(similarity_threshold, max_distance)``, read together (a concurrent change of the
        threshold replaces both at once)."""
        return self._rule

    @property
    def file_meta(self) -> dict[str, Any]:
        """The settings saved in the file this cache was loaded from (``{}`` for a new cache)."""
        return dict(self._file_meta)

    def set_meta_provider(self, provider: Callable[[], dict[str, Any]] | None) -> None:
        """Have every save add ``provider()``'s keys to the file's settings (one provider at a
        time: a layered cache's own settings and counters)."""
        self._meta_extra = provider

    def notify_changed(self, *, put: bool = False) -> None:
        """Tell the background saver (with ``persist_path``) that entries changed through
        :attr:`engine` (``put``: one more entry stored, counted towards ``persist_every``)."""
        if self._persister is not None:
            self._persister.changed(put=put)

    @property
    def save_errors(self) -> int:
        """Failed background and final saves of ``persist_path`` in this process."""
        return 0 if self._persister is None else self._persister.save_errors

    def __len__(self) -> int:
        return len(self._store)

    def __contains__(self, entry_id: object) -> bool:
        return isinstance(entry_id, int) and entry_id in self._store

    def __repr__(self) -> str:
        return (
            f"BinarySemanticCache(encoder={self._encoder!r}, max_entries={self.max_entries}, "
            f"similarity_threshold={self.similarity_threshold}, len={len(self)})"
        )

    def encode(self, embedding: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """The binary code of one embedding (shape ``(embedding_dim,)``), as ``get`` and ``put``
        compute it."""
        if isinstance(embedding, np.ndarray) and embedding.ndim == 1 and embedding.dtype in _ENGINE_DTYPES:
            return self._projector.encode(embedding)
        if not isinstance(embedding, (np.ndarray, list, tuple)):
            raise TypeError(f"embedding must be a numpy.ndarray of float32 or float64, got {type(embedding).__name__}")
        try:
            shape: tuple[int, ...] | str = np.shape(embedding)
        except ValueError:  # a ragged list
            shape = "ragged"
        if not (isinstance(shape, tuple) and len(shape) == 1):
            raise ValueError(f"expected one embedding of shape ({self._encoder.embedding_dim},), got shape {shape}")
        return self._encoder.encode(embedding)

    def get(self, embedding: npt.ArrayLike, *, namespace: str | bytes | None = None) -> CacheEntry | None:
        """The cached entry nearest to ``embedding`` if its similarity reaches the threshold.

        Only entries of ``namespace`` (default: the unnamed one) are candidates — the namespace
        is checked inside the native scan, so a nearer entry of another namespace neither
        answers nor hides one of this namespace — and an expired entry is never returned."""
        if isinstance(namespace, str):
            check_no_surrogate(namespace, "namespace")
        code = self.encode(embedding)
        _, radius = self._rule
        found = self._store.lookup(code, max_distance=radius, namespace=namespace)
        if self._persister is not None:
            self._persister.changed()
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

    def put(
        self,
        embedding: npt.ArrayLike,
        response: Any,
        *,
        namespace: str | bytes | None = None,
        ttl: float | None = None,
    ) -> int:
        """Store ``response`` under ``embedding``; return the new entry's id.

        ``namespace`` (str or bytes, at most 1024 bytes; default: the unnamed one) isolates the
        entry; ``ttl`` (seconds, default ``default_ttl``) makes it expire. Expired entries are
        removed first, then the least recently used one when the cache is full. Bad input
        changes nothing. ``ttl`` above :data:`MAX_TTL` raises ``ValueError``."""
        ttl = self._default_ttl if ttl is None else check_ttl(ttl, "ttl")
        if isinstance(namespace, str):
            check_no_surrogate(namespace, "namespace")
        payload = encode_response(response)
        code = self.encode(embedding)
        entry_id = self._store.put(code, payload, namespace=namespace, ttl=ttl)
        if self._persister is not None:
            self._persister.changed(put=True)
        return entry_id

    def peek(self, entry_id: int) -> CacheEntry | None:
        """An entry by id without counting a lookup or marking it used (similarity 1.0)."""
        found = self._store.peek(entry_id)
        if found is None:
            return None
        entry_id, _, payload, created_at, last_accessed, access_count = found
        return CacheEntry(decode_response(payload), 1.0, entry_id, created_at, last_accessed, access_count, 0)

    def delete(self, entry_id: int) -> bool:
        """Remove an entry by id; return whether it was present. Its slot is reused."""
        removed = self._store.delete(entry_id)
        if removed and self._persister is not None:
            self._persister.changed()
        return removed

    def delete_namespace(self, namespace: str | bytes) -> int:
        """Remove every entry of ``namespace``; return how many."""
        removed = self._store.delete_namespace(namespace)
        if removed and self._persister is not None:
            self._persister.changed()
        return removed

    def purge_expired(self) -> int:
        """Remove every entry whose TTL has run out; return how many. (Lookups never return
        them anyway, and puts remove them as they go.)"""
        return self._store.purge_expired()

    @property
    def default_ttl(self) -> float | None:
        """Seconds an entry lives when ``put`` gives no ``ttl`` (``None``: forever; at most
        :data:`MAX_TTL`)."""
        return self._default_ttl

    def clear(self) -> None:
        """Remove every entry (counters are kept)."""
        self._store.clear()
        if self._persister is not None:
            self._persister.changed()

    # -- persistence -------------------------------------------------------------------------

    @property
    def persist_path(self) -> Path | None:
        """The file this cache loads from and saves to automatically, if any."""
        return None if self._persister is None else self._persister.path

    def _meta(self) -> bytes:
        meta = {
            "bsc_version": __version__,
            "similarity_threshold": self.similarity_threshold,
            "default_ttl": self._default_ttl,
            "encoder": {
                "algorithm_version": ALGORITHM_VERSION,
                "embedding_dim": self._encoder.embedding_dim,
                "code_bits": self._encoder.code_bits,
                "seed": self._encoder.seed,
            },
        }
        if self._meta_extra is not None:
            meta.update(self._meta_extra())
        return json.dumps(meta, sort_keys=True).encode()

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write every entry, response, timestamp, the LRU order, the counters and the settings
        to ``path`` (default: ``persist_path``) in one file, crash-safely: a temporary file in
        the same directory, fsynced, renamed over ``path``, the directory fsynced. A crash
        leaves the old file or the new one, never a mix. Lookups keep running meanwhile; a put or
        delete waits until the save has written its data (docs/SEMANTICS.md).

        A save killed midway (a crash, ``kill -9``) leaves its temporary file
        ``.<name>.<random>.tmp`` behind; each save first removes those of ``path``, so at most
        one (the save in progress) exists per cache file. A cache file is meant to be saved by
        one cache at a time: another process saving the same file meanwhile would lose its
        temporary file and fail (and retry, in the background saver)."""
        if path is None:
            if self._persister is None:
                raise ValueError("save() needs a path: this cache has no persist_path")
            path = self._persister.path
        file = Path(os.fspath(path))
        with self._save_lock:
            remove_stale_temp_files(file)
            self._store.save(file, self._meta())
        logger.info("bsc: saved %d entries to %s", len(self._store), file)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        encoder: BinaryEncoder | None = None,
        *,
        max_entries: int | None = None,
        similarity_threshold: float | None = None,
        verify: bool = False,
    ) -> BinarySemanticCache:
        """Open a cache saved by :meth:`save`.

        ``encoder``: the encoder the file must have been made with (``EncoderMismatchError``
        otherwise); by default it is rebuilt from the file. ``max_entries`` and
        ``similarity_threshold`` default to the saved ones (a smaller ``max_entries`` evicts the
        least recently used entries). Codes are searched in the memory-mapped file and each
        response is read (and its 64 KiB block checksummed) on its first hit; ``verify=True``
        checks every response now. Bad files raise a ``bsc.CacheFileError`` subclass naming
        the file and the problem; nothing in a file is ever executed. Temporary files left by
        killed saves of ``path`` are removed once it is open (see :meth:`save`); a saved
        ``default_ttl`` above :data:`MAX_TTL` is lowered to it.
        """
        if encoder is not None and not isinstance(encoder, BinaryEncoder):
            raise TypeError(f"encoder must be a bsc.BinaryEncoder or None, got {type(encoder).__name__}")
        file = Path(os.fspath(path))
        fingerprint = None if encoder is None else encoder.fingerprint()
        store = engines.open_file(file, fingerprint=fingerprint, max_entries=max_entries, verify=verify)
        meta = read_meta(file, store.meta)
        logger.info("bsc: loaded %d entries from %s", len(store), file)
        remove_stale_temp_files(file)
        if encoder is None:
            encoder = encoder_from_meta(file, meta, store.fingerprint)
        if similarity_threshold is None:
            similarity_threshold = meta.get("similarity_threshold", 0.80)
        cache = cls.__new__(cls)
        cache._setup(encoder, store, check_threshold(similarity_threshold), meta.get("default_ttl"), meta)
        return cache

    def close(self) -> None:
        """Stop background saving and save a last time (with ``persist_path``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._persister is not None:
            self._persister.stop()
        close = getattr(self._store, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> BinarySemanticCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

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
            expirations=raw["expirations"],
            namespaces=raw["namespaces"],
            lru_touches_dropped=raw.get("lru_touches_dropped", 0),
            save_errors=self.save_errors,
        )


def _storage_mode_arg(storage_mode: Any) -> None:
    """The original system's ``storage_mode`` argument, accepted so that its code runs unchanged:
    ``"memory"`` is what every cache is (with disk persistence through ``persist_path``), so the
    argument does nothing and says so; any other value is refused."""
    if storage_mode != "memory":
        raise ValueError(f"storage_mode must be 'memory', got {storage_mode!r}")
    warnings.warn(
        "storage_mode has no effect (every cache is held in memory; use persist_path to keep it on disk) "
        "and will be removed in bsc 1.0",
        DeprecationWarning,
        stacklevel=3,
    )
