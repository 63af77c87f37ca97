"""bsc: a binary semantic cache for LLM applications.

``BinarySemanticCache`` answers a prompt embedding from an earlier response when the two mean
the same thing, using 256-bit (by default) sign-projection codes searched by Hamming distance
in the native ``bsc_native`` engine.
"""

from bsc import _native  # noqa: F401  (refuses a bsc_native of another release)
from bsc._version import NATIVE_VERSION, __version__
from bsc.cache import BinarySemanticCache, CacheEntry, CacheStats
from bsc_encoder import BinaryEncoder
from bsc_native import (
    BscError,
    CacheFileError,
    CorruptFileError,
    EmptyFileError,
    EncoderMismatchError,
    IndexFullError,
    NotACacheFileError,
    TruncatedFileError,
    UnsupportedVersionError,
)

__all__ = [
    "NATIVE_VERSION",
    "BinaryEncoder",
    "BinarySemanticCache",
    "BscError",
    "CacheEntry",
    "CacheFileError",
    "CacheStats",
    "CorruptFileError",
    "EmptyFileError",
    "EncoderMismatchError",
    "IndexFullError",
    "NotACacheFileError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "__version__",
]
