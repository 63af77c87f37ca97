"""Binary-code index with Hamming search: the native engine of bsc.

``BinaryIndex`` is a raw index of binary codes (``uint64`` words, ``code_bits / 64`` per code)
with stable ids, slot reuse on removal and exact k-nearest / radius search. ``CacheStore`` adds
payload bytes, access metadata and least-recently-used eviction; ``bsc.BinarySemanticCache``
is built on it. ``Projector`` encodes embeddings to codes (sign random projection, the codes of
``bsc_encoder.BinaryEncoder`` with the same matrix) without Python temporaries. The two index
classes ``save`` to and ``load`` from one crash-safe file (docs/FORMAT.md); a file
that cannot be loaded raises a ``CacheFileError`` subclass whose message names the file and the
problem.
"""

from bsc_native._core import (
    FORMAT_VERSION,
    KERNEL,
    MAX_CODE_BITS,
    MIN_CODE_BITS,
    BinaryIndex,
    BscError,
    CacheFileError,
    CacheStore,
    CorruptFileError,
    EmptyFileError,
    EncoderMismatchError,
    IndexFullError,
    NotACacheFileError,
    Projector,
    TruncatedFileError,
    UnsupportedVersionError,
    __version__,
)

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
