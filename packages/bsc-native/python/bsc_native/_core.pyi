"""Type stubs for the compiled ``bsc_native._core`` module."""

from os import PathLike
from typing import Literal, TypedDict, final

import numpy as np
import numpy.typing as npt

__all__ = [
    "FORMAT_VERSION",
    "KERNEL",
    "MAX_CODE_BITS",
    "MIN_CODE_BITS",
    "BinaryIndex",
    "BscError",
    "CacheFileError",
    "CacheStore",
    "CorruptFileError",
    "EmptyFileError",
    "EncoderMismatchError",
    "IndexFullError",
    "NotACacheFileError",
    "Projector",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "__version__",
]

_Path = str | PathLike[str]

__version__: str
#: The Hamming kernel this CPU runs: "avx512-vpopcntdq", "avx2", "popcnt" or "portable".
KERNEL: str
MIN_CODE_BITS: int
MAX_CODE_BITS: int
#: The newest file format version ``load`` reads, and the one a ``CacheStore`` is saved in (a
#: ``BinaryIndex`` is saved as version 1; version-1 cache files load and are saved as version 2).
FORMAT_VERSION: int

class BscError(Exception):
    """Base class of every error bsc raises on purpose."""

class IndexFullError(BscError):
    """An index cannot address more entries."""

class CacheFileError(BscError):
    """A file that cannot be loaded as a bsc index or cache. The message names the file."""

class EmptyFileError(CacheFileError):
    """A zero-length file."""

class NotACacheFileError(CacheFileError):
    """A file without the bsc magic bytes, or holding another kind of object."""

class UnsupportedVersionError(CacheFileError):
    """A file written by a newer format version than this bsc-native reads."""

class TruncatedFileError(CacheFileError):
    """A file shorter than its header says: cut off while copying, or a partial download."""

class CorruptFileError(CacheFileError):
    """A file whose checksums fail or whose contents contradict each other."""

class EncoderMismatchError(CacheFileError):
    """A file whose codes were made by another encoder than the one given."""

_EntryTuple = tuple[int, int | None, bytes, float, float, int]

class _SearchInfo(TypedDict):
    mode: Literal["auto", "flat", "indexed"]
    built: bool
    substrings: int | None
    substring_bits: int | None
    index_entries: int
    index_bytes: int

@final
class BinaryIndex:
    """An index of binary codes searched by Hamming distance.

    Codes are ``uint64`` arrays of ``code_bits / 64`` words. Ids are non-negative integers,
    stable for the life of an entry and never reused for another entry; a removed entry's slot
    is reused by the next insert. Searches release the GIL and may run from many threads.
    """

    def __new__(cls, code_bits: int | None = None, *, fingerprint: str | None = None) -> BinaryIndex:
        """Create an empty index; ``code_bits`` (``None``: 256) is a multiple of 64 from 64 to 4096;
        ``fingerprint`` names the encoder of its codes (saved with them)."""
    @property
    def code_bits(self) -> int:
        """Bits per code."""
    @property
    def fingerprint(self) -> str:
        """The encoder that made the codes, as given or as loaded (``""`` when unknown)."""
    @property
    def meta(self) -> bytes:
        """The metadata bytes of the file this index was loaded from (``b""`` otherwise)."""
    def save(self, path: _Path, meta: bytes | None = None) -> None:
        """Save crash-safely: a temporary file in the same directory, fsynced, renamed over ``path``, the
        directory fsynced. Searches proceed meanwhile; changes wait until the data is written."""
    @staticmethod
    def load(path: _Path, *, fingerprint: str | None = None) -> BinaryIndex:
        """Load a saved index; its codes are searched in the memory-mapped file until the first change.
        ``fingerprint``: raise ``EncoderMismatchError`` unless the file's is this one."""
    def __len__(self) -> int: ...
    def __contains__(self, id: int, /) -> bool: ...
    def add(self, codes: npt.NDArray[np.uint64]) -> npt.NDArray[np.int64]:
        """Add C-contiguous codes of shape ``(n, code_bits // 64)`` (or one code of shape
        ``(code_bits // 64,)``); return their ids in order."""
    def remove(self, id: int) -> bool:
        """Remove an entry; return whether it was present."""
    def clear(self) -> None:
        """Remove every entry. Ids handed out before stay dead."""
    def get(self, id: int) -> npt.NDArray[np.uint64] | None:
        """The stored code of an entry, or ``None``."""
    def ids(self) -> npt.NDArray[np.int64]:
        """Ids of all entries, in storage order."""
    def search(
        self, query: npt.NDArray[np.uint64], k: int | None = None, max_distance: int | None = None
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """The ``k`` (``None``: 1) nearest codes to ``query`` (shape ``(code_bits // 64,)``), optionally only
        those within ``max_distance``: ``(ids, distances)``, nearest first, ties to the lower slot (the low 32
        bits of the id)."""
    def search_batch(
        self,
        queries: npt.NDArray[np.uint64],
        k: int | None = None,
        max_distance: int | None = None,
        threads: int | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """``search`` for each row of ``queries`` (shape ``(m, code_bits // 64)``) on up to ``threads``
        threads (``None``: every CPU this process may use; never more than that): ``(ids, distances)`` of
        shape ``(m, w)``, ``w`` the longest result list (at least 1), padded with -1."""
    def configure_search(
        self, mode: Literal["auto", "flat", "indexed"] = "auto", *, substrings: int | None = None
    ) -> None:
        """How searches run (the results are the same): ``"auto"`` uses the multi-index where its estimated
        cost is below the flat scan's (from 50,000 entries, for small radii), ``"flat"`` always scans every
        code, ``"indexed"`` always uses the multi-index. ``substrings`` (2 to ``code_bits // 4``; ``None``:
        chosen from the number of entries) sets the multi-index's layout and drops the one built so far."""
    def build_index(self) -> bool:
        """Build the multi-index now rather than on the first search that wants it (about 0.1 s per
        million entries); ``False`` when the slots do not fit its layout (searches then scan)."""
    def search_info(self) -> _SearchInfo:
        """The search mode, whether the multi-index is built, its substrings and their bits, the entries
        it holds (dead ones until its next rebuild) and its bytes."""
    def memory_bytes(self) -> int:
        """Bytes held by the index's buffers on the heap."""
    def mapped_bytes(self) -> int:
        """Bytes of a loaded file searched in place (0 once the index has changed)."""

@final
class CacheStore:
    """A bounded store of codes with payload bytes, access metadata and approximate-LRU eviction.

    Entry tuples are ``(id, distance, payload, created_at, last_accessed, access_count)``;
    times are whole seconds since the Unix epoch (rounded down) and ``access_count`` saturates at
    2**32 - 1. A full store of more than 1,024 slots evicts by sampling (Redis's ``allkeys-lru``
    design: the oldest of a pool of sampled candidates), within 0.1 percentage point of exact LRU's
    hit ratio on Zipf traces (``benchmarks/entry_cost.py``); smaller ones evict exactly the least
    recently used entry.
    """

    def __new__(
        cls, code_bits: int | None = None, max_entries: int | None = None, *, fingerprint: str | None = None
    ) -> CacheStore:
        """Create an empty store; ``code_bits`` ``None`` means 256, ``max_entries`` ``None`` 1000;
        ``fingerprint`` names the encoder of its codes (saved with them)."""
    @property
    def code_bits(self) -> int: ...
    @property
    def max_entries(self) -> int: ...
    @property
    def fingerprint(self) -> str:
        """The encoder that made the codes, as given or as loaded (``""`` when unknown)."""
    @property
    def meta(self) -> bytes:
        """The metadata bytes of the file this store was loaded from (``b""`` otherwise)."""
    def save(self, path: _Path, meta: bytes | None = None) -> None:
        """Save every entry, response, timestamp, the LRU order and the counters crash-safely (a temporary
        file in the same directory, fsynced, renamed over ``path``, the directory fsynced). Lookups proceed
        meanwhile (a hit's LRU update is queued until the lock is free); changes wait until the data is
        written; the fsync runs after."""
    @staticmethod
    def load(
        path: _Path, *, fingerprint: str | None = None, max_entries: int | None = None, verify: bool = False
    ) -> CacheStore:
        """Load a saved store. Codes stay in the memory-mapped file until the first change; responses are
        read from it on demand, each 64 KiB block checked when first read (``verify=True``: all now).
        ``fingerprint``: raise ``EncoderMismatchError`` unless the file's is this one. ``max_entries``:
        evict least recently used entries beyond it."""
    def __len__(self) -> int: ...
    def __contains__(self, id: int, /) -> bool: ...
    def put(
        self,
        code: npt.NDArray[np.uint64],
        payload: bytes,
        *,
        namespace: str | bytes | None = None,
        ttl: float | None = None,
        key: int | None = None,
    ) -> int:
        """Store one code with its payload in ``namespace`` (``None``: the unnamed one; at most 1024 bytes),
        expiring after ``ttl`` seconds (``None``: never; kept in tenths of a second, rounded down). Expired
        entries are removed first, then least-recently-used ones when full; return the new id.

        ``key`` (an int in ``[1, 2**64)``; ``None`` or 0: none) makes the entry findable by ``lookup_key``
        and replaces the live entry of ``namespace`` stored with the same key (deleted, not counted as an
        eviction)."""
    def lookup(
        self,
        code: npt.NDArray[np.uint64],
        max_distance: int | None = None,
        *,
        namespace: str | bytes | None = None,
    ) -> _EntryTuple | None:
        """The nearest unexpired entry of ``namespace`` (``None``: the unnamed one) within ``max_distance``,
        marked as used; counts a hit or a miss. Entries of other namespaces are never returned and never
        hide one of this namespace. A response of a loaded file that fails its checksum raises
        ``CorruptFileError``."""
    def lookup_nearest(
        self,
        code: npt.NDArray[np.uint64],
        max_distance: int | None = None,
        *,
        namespace: str | bytes | None = None,
    ) -> tuple[_EntryTuple | None, int | None]:
        """``lookup``, plus the distance of the nearest unexpired entry of ``namespace`` even beyond
        ``max_distance`` (``None`` when it has none), from the same scan."""
    def lookup_key(self, key: int, *, namespace: str | bytes | None = None) -> _EntryTuple | None:
        """The unexpired entry of ``namespace`` stored with ``key``, marked as used (distance 0), or ``None``;
        O(1). Counts a hit when found and nothing otherwise."""
    def namespaces(self) -> dict[bytes, int]:
        """Each namespace holding entries and how many (expired entries not yet removed count)."""
    def search(
        self,
        code: npt.NDArray[np.uint64],
        k: int | None = None,
        max_distance: int | None = None,
        *,
        namespace: str | bytes | None = None,
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
        """The ``k`` nearest unexpired entries of ``namespace`` (``None``: of every namespace), without marking
        them used or counting."""
    def delete_namespace(self, namespace: str | bytes) -> int:
        """Remove every entry of ``namespace``; return how many."""
    def purge_expired(self) -> int:
        """Remove every entry whose TTL has run out; return how many."""
    def placement(self, id: int) -> tuple[bytes, float | None] | None:
        """An entry's namespace and expiry time (seconds since the Unix epoch, ``None`` without a TTL)."""
    def candidates(
        self,
        code: npt.NDArray[np.uint64],
        k: int | None = None,
        max_distance: int | None = None,
        *,
        namespace: str | bytes | None = None,
    ) -> tuple[list[_EntryTuple], int | None]:
        """The ``k`` (``None``: 1) nearest unexpired entries of ``namespace`` within ``max_distance``, nearest
        first, each as ``lookup`` returns one, read under one lock, without marking them used or counting, and the
        distance of the namespace's nearest entry at any distance (``None`` when it has none): ``(entries,
        nearest)``. A caller that re-scores them serves its pick with ``lookup_id``."""
    def lookup_id(self, id: int, *, namespace: str | bytes | None = None) -> _EntryTuple | None:
        """Entry ``id`` if it is live, unexpired and in ``namespace``, marked as used (distance 0), or ``None``.
        Counts a hit when found and nothing otherwise."""
    def peek(self, id: int) -> _EntryTuple | None:
        """An entry without marking it used (its distance is ``None``)."""
    def get_code(self, id: int) -> npt.NDArray[np.uint64] | None:
        """The stored code of an entry, or ``None``."""
    def delete(self, id: int) -> bool:
        """Remove an entry; return whether it was present."""
    def clear(self) -> None:
        """Remove every entry; counters are kept."""
    def lru_ids(self) -> npt.NDArray[np.int64]:
        """Live ids from most to least recently used."""
    def configure_search(
        self, mode: Literal["auto", "flat", "indexed"] = "auto", *, substrings: int | None = None
    ) -> None:
        """How searches and lookups run; see ``BinaryIndex.configure_search``. Namespaces and expiry are
        checked inside the multi-index search as in the flat scan."""
    def build_index(self) -> bool:
        """See ``BinaryIndex.build_index``."""
    def search_info(self) -> _SearchInfo:
        """See ``BinaryIndex.search_info``."""
    def memory_bytes(self) -> int:
        """Bytes held on the heap: codes, metadata and payloads."""
    def mapped_bytes(self) -> int:
        """Bytes of a loaded file read in place (codes until the first change, and responses)."""
    def stats(self) -> dict[str, int]:
        """``size``, ``max_entries``, ``hits``, ``misses``, ``evictions``, ``expirations``, ``namespaces`` (with
        entries), ``memory_bytes`` (everything held on the heap, responses included), ``response_bytes`` (the
        live responses alone), ``mapped_bytes`` (a loaded file read in place) and ``lru_touches_dropped``
        (hits whose use was left out of the LRU order: a hit that finds the engine's lock taken, by a save
        or a writer, queues its use; beyond 65,536 queued uses the oldest is dropped and counted here. Kept
        in this process only: a loaded store starts at 0)."""

@final
class Projector:
    """Sign random projection in the engine: embeddings to packed codes.

    Bit ``j`` of a code is 1 when the embedding's dot product with row ``j`` of the projection is
    positive, packed least-significant first into little-endian ``uint64`` words: the codes of
    ``bsc_encoder.BinaryEncoder`` with the same matrix, except that the products are taken in
    float32 (numpy: float64), so a bit within float rounding of zero may differ (a few in a
    million). One 384-d embedding to 256 bits takes a few microseconds.
    """

    def __new__(cls, projection: npt.NDArray[np.float64]) -> Projector:
        """``projection``: float64 of shape ``(code_bits, dim)``, ``code_bits`` a multiple of 64
        (``BinaryEncoder.projection``)."""
    @property
    def dim(self) -> int: ...
    @property
    def code_bits(self) -> int: ...
    def encode(self, embedding: npt.NDArray[np.float32] | npt.NDArray[np.float64]) -> npt.NDArray[np.uint64]:
        """One embedding ``(dim,)`` to a code ``(code_bits // 64,)``, or a batch ``(n, dim)`` to
        ``(n, code_bits // 64)``; float32 or float64. NaN, infinite or all-zero embeddings raise
        ``ValueError``, other dtypes and non-arrays ``TypeError`` (the messages of
        ``BinaryEncoder.encode``)."""
