"""``BinarySemanticCache``: the embedding-level semantic cache (the original bsc API)."""

from __future__ import annotations

import atexit
import contextlib
import glob
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt

from bsc._codec import decode_response, encode_response
from bsc._version import __version__
from bsc_encoder import BinaryEncoder, hamming_radius, hamming_to_cosine
from bsc_encoder.encoder import ALGORITHM_VERSION
from bsc_native import CacheStore, CorruptFileError, UnsupportedVersionError

logger = logging.getLogger("bsc")

__all__ = ["MAX_TTL", "BinarySemanticCache", "CacheEntry", "CacheStats"]

#: The longest TTL (and ``default_ttl``) accepted, in seconds: 10 years. Anything longer is
#: refused with ``ValueError`` (use ``None`` for "never expires"); the engine keeps TTLs as
#: tenths of a second in 32 bits, which would otherwise cut them silently at about 13.6 years.
MAX_TTL = 315_360_000


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
    ``save_errors`` counts failed background and final saves of ``persist_path`` (kept in this
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

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_ttl(value: Any, name: str = "default_ttl") -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number of seconds or None, got {type(value).__name__}")
    if not 0 < value <= MAX_TTL:  # also refuses nan and inf
        raise ValueError(
            f"{name} must be a positive number of seconds, at most MAX_TTL = {MAX_TTL:,} (10 years; "
            f"None never expires), got {value!r}"
        )
    return float(value)


# Code points U+D800..U+DFFF: in a Python str they stand alone (a "lone surrogate") and have no
# UTF-8 encoding.
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_no_surrogate(text: str, what: str) -> None:
    """``ValueError`` naming the first lone surrogate of ``text`` (O(1) for ASCII text)."""
    if text.isascii():
        return
    found = _SURROGATE.search(text)
    if found is not None:
        raise ValueError(
            f"{what} holds a lone surrogate U+{ord(found.group()):04X} at index {found.start()}: it is not "
            "valid Unicode text and cannot be encoded as UTF-8 (decode its bytes with errors='replace')"
        )


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
    takes the write lock (or is queued, if a save or a writer holds it).

    **Persistence.** ``save(path)`` writes one crash-safe file (docs/FORMAT.md) and
    ``BinarySemanticCache.load(path)`` opens it. With ``persist_path=``, the cache loads that
    file at start if it exists, saves it in a background thread after every ``persist_every``
    puts or ``persist_interval`` seconds (whichever comes first, only if something changed),
    and once more on ``close()``, when a ``with`` block ends, or when the program exits.
    """

    _persister: _Persister | None

    def __init__(
        self,
        encoder: BinaryEncoder,
        max_entries: int = 1000,
        similarity_threshold: float = 0.80,
        code_bits: int | None = None,
        storage_mode: str = "memory",
        *,
        persist_path: str | os.PathLike[str] | None = None,
        persist_every: int | None = 1000,
        persist_interval: float | None = 60.0,
        default_ttl: float | None = None,
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
        ttl = _check_ttl(default_ttl)
        path = None if persist_path is None else Path(os.fspath(persist_path))
        meta: dict[str, Any] = {}
        if path is not None and path.exists():
            # Raises EncoderMismatchError when the file holds another encoder's codes.
            store = CacheStore.load(path, fingerprint=encoder.fingerprint(), max_entries=int(max_entries))
            meta = _read_meta(path, store.meta)
            logger.info("bsc: loaded %d entries from %s", len(store), path)
            _remove_stale_temp_files(path)
        else:
            store = CacheStore(
                code_bits=encoder.code_bits, max_entries=int(max_entries), fingerprint=encoder.fingerprint()
            )
        self._setup(encoder, store, threshold, ttl, meta)
        if path is not None:
            self._persister = _Persister(self, path, persist_every, persist_interval)

    def _setup(
        self,
        encoder: BinaryEncoder,
        store: CacheStore,
        threshold: float,
        default_ttl: float | None,
        file_meta: dict[str, Any],
    ) -> None:
        """The state every cache holds, whether made by ``__init__`` or ``load``."""
        self._encoder = encoder
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

    def get(self, embedding: npt.ArrayLike, *, namespace: str | bytes | None = None) -> CacheEntry | None:
        """The cached entry nearest to ``embedding`` if its similarity reaches the threshold.

        Only entries of ``namespace`` (default: the unnamed one) are candidates — the namespace
        is checked inside the native scan, so a nearer entry of another namespace neither
        answers nor hides one of this namespace — and an expired entry is never returned."""
        if isinstance(namespace, str):
            _check_no_surrogate(namespace, "namespace")
        code = self._code(embedding)
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
        ttl = self._default_ttl if ttl is None else _check_ttl(ttl, "ttl")
        if isinstance(namespace, str):
            _check_no_surrogate(namespace, "namespace")
        payload = encode_response(response)
        code = self._code(embedding)
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
        leaves the old file or the new one, never a mix. Lookups keep running meanwhile, unless
        a put or delete is waiting for the save to finish (docs/SEMANTICS.md).

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
            _remove_stale_temp_files(file)
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
        store = CacheStore.load(file, fingerprint=fingerprint, max_entries=max_entries, verify=verify)
        meta = _read_meta(file, store.meta)
        logger.info("bsc: loaded %d entries from %s", len(store), file)
        _remove_stale_temp_files(file)
        if encoder is None:
            encoder = _encoder_from_meta(file, meta, store.fingerprint)
        if similarity_threshold is None:
            similarity_threshold = meta.get("similarity_threshold", 0.80)
        cache = cls.__new__(cls)
        cache._setup(encoder, store, _check_threshold(similarity_threshold), meta.get("default_ttl"), meta)
        return cache

    def close(self) -> None:
        """Stop background saving and save a last time (with ``persist_path``). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._persister is not None:
            self._persister.stop()

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
            save_errors=0 if self._persister is None else self._persister.save_errors,
        )


def _remove_stale_temp_files(file: Path) -> None:
    """Removes the temporary files ``.<name>.<random>.tmp`` that killed saves of ``file`` left
    in its directory (the engine's random part is alphanumeric, so the temporary files of
    ``<name>.bak``, say, are not taken for those of ``<name>``)."""
    directory = file.parent
    prefix = f".{file.name}."
    try:
        names = glob.glob(f"{glob.escape(prefix)}*.tmp", root_dir=directory)
    except OSError:
        return
    for name in names:
        middle = name[len(prefix) : -len(".tmp")]
        if not (middle.isascii() and middle.isalnum()):
            continue
        stale = directory / name
        try:
            stale.unlink()
        except FileNotFoundError:
            continue
        except OSError as err:
            logger.warning("bsc: could not remove %s, left by an interrupted save: %s", stale, err)
            continue
        logger.info("bsc: removed %s, left by an interrupted save of %s", stale, file)


def _read_meta(file: Path, raw: bytes) -> dict[str, Any]:
    """The settings ``save`` wrote; a file without them (a bare ``CacheStore.save``) has none."""
    if not raw:
        return {}
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFileError(f"{file}: its settings are not valid JSON: {err}") from None
    if not isinstance(meta, dict):
        raise CorruptFileError(f"{file}: its settings are not a JSON object")
    threshold = meta.get("similarity_threshold", 0.80)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not -1 <= threshold <= 1:
        raise CorruptFileError(f"{file}: its similarity_threshold {threshold!r} is not a number in [-1, 1]")
    ttl = meta.get("default_ttl")
    if not isinstance(ttl, bool) and isinstance(ttl, (int, float)) and MAX_TTL < ttl < math.inf:
        # Saved before MAX_TTL existed (the engine cut such TTLs at about 13.6 years anyway).
        logger.warning("bsc: %s: its default_ttl %r is above MAX_TTL; using %d", file, ttl, MAX_TTL)
        meta["default_ttl"] = ttl = MAX_TTL
    try:
        meta["default_ttl"] = _check_ttl(ttl)
    except (TypeError, ValueError) as err:
        raise CorruptFileError(f"{file}: its {err}") from None
    return meta


def _encoder_from_meta(file: Path, meta: dict[str, Any], fingerprint: str) -> BinaryEncoder:
    """Rebuild the encoder named by the file, and check it against the file's fingerprint."""
    spec = meta.get("encoder")
    if not isinstance(spec, dict):
        raise CorruptFileError(f"{file}: it does not say which encoder made its codes; pass encoder=")
    version = spec.get("algorithm_version")
    if version != ALGORITHM_VERSION:
        raise UnsupportedVersionError(
            f"{file}: its codes were made by encoder algorithm version {version!r}; this bsc-encoder has "
            f"version {ALGORITHM_VERSION}: upgrade bsc-encoder"
        )
    try:
        encoder = BinaryEncoder(spec["embedding_dim"], spec["code_bits"], spec["seed"])
    except (KeyError, TypeError, ValueError) as err:
        raise CorruptFileError(f"{file}: its encoder settings {spec!r} are invalid: {err}") from None
    if encoder.fingerprint() != fingerprint:
        raise CorruptFileError(
            f"{file}: its encoder settings give fingerprint {encoder.fingerprint()!r}, but its codes are "
            f"marked {fingerprint!r}"
        )
    return encoder


class _Persister:
    """Saves a cache in a background thread after ``every`` puts or ``interval`` seconds with
    changes, whichever comes first, and once more when stopped. Failed saves are counted
    (``save_errors``, ``last_save_error``) and logged at ERROR."""

    def __init__(self, cache: BinarySemanticCache, path: Path, every: int | None, interval: float | None) -> None:
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every <= 0):
            raise ValueError(f"persist_every must be a positive int or None, got {every!r}")
        if interval is not None and (
            isinstance(interval, bool) or not isinstance(interval, (int, float)) or not interval > 0
        ):
            raise ValueError(f"persist_interval must be a positive number of seconds or None, got {interval!r}")
        self.path = path
        self._cache = cache
        self._every = every
        self._interval = interval
        self._wake = threading.Condition()
        self._puts = 0
        self._changes = 0
        self._stopping = False
        self.save_errors = 0
        #: ``"<path>: <reason>"`` of the latest failed save (``None`` before any).
        self.last_save_error: str | None = None
        self._thread: threading.Thread | None = None
        if every is not None or interval is not None:
            self._thread = threading.Thread(target=self._run, name=f"bsc-persist:{path.name}", daemon=True)
            self._thread.start()
        # A program that ends without close() still saves its last changes (not on a crash or
        # os._exit: the background saves cover those).
        atexit.register(self._at_exit)

    def _at_exit(self) -> None:
        with contextlib.suppress(Exception):  # counted and logged by _save
            self.stop()

    def _save(self) -> None:
        """Saves the cache; a failure is counted and logged (path and reason in one ERROR line,
        the traceback at DEBUG), then raised."""
        try:
            self._cache.save(self.path)
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"
            with self._wake:
                self.save_errors += 1
                self.last_save_error = f"{self.path}: {reason}"
            logger.error("bsc: saving the cache to %s failed: %s", self.path, reason)
            logger.debug("bsc: the failed save of %s", self.path, exc_info=True)
            raise

    def changed(self, put: bool = False) -> None:
        with self._wake:
            self._changes += 1
            if put:
                self._puts += 1
                if self._every is not None and self._puts >= self._every:
                    self._wake.notify()

    def _due(self) -> bool:
        return self._stopping or (self._every is not None and self._puts >= self._every)

    def _run(self) -> None:
        while True:
            with self._wake:
                deadline = None if self._interval is None else time.monotonic() + self._interval
                while not self._due():
                    timeout = None if deadline is None else deadline - time.monotonic()
                    if timeout is not None and timeout <= 0:
                        break
                    self._wake.wait(timeout)
                if self._stopping:
                    return
            self._save_if_changed()

    def _save_if_changed(self) -> None:
        with self._wake:
            changes, self._changes, self._puts = self._changes, 0, 0
        if not changes:
            return
        try:
            self._save()
        except Exception:
            # Keep the count so the next round tries again; the file on disk is the last
            # complete save.
            with self._wake:
                self._changes += changes

    def stop(self) -> None:
        atexit.unregister(self._at_exit)
        with self._wake:
            self._stopping = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join()
        with self._wake:
            changes, self._changes = self._changes, 0
        if changes:
            self._save()
