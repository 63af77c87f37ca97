"""Binary-code index with Hamming search: the native engine of bsc.

``BinaryIndex`` is a raw index of binary codes (``uint64`` words, ``code_bits / 64`` per code)
with stable ids, slot reuse on removal and exact k-nearest / radius search. ``CacheStore`` adds
payload bytes, access metadata and least-recently-used eviction; ``bsc.BinarySemanticCache``
is built on it.
"""

from bsc_native._core import (
    KERNEL,
    MAX_CODE_BITS,
    MIN_CODE_BITS,
    BinaryIndex,
    BscError,
    CacheStore,
    IndexFullError,
    __version__,
)

__all__ = [
    "KERNEL",
    "MAX_CODE_BITS",
    "MIN_CODE_BITS",
    "BinaryIndex",
    "BscError",
    "CacheStore",
    "IndexFullError",
    "__version__",
]
