"""bsc: a binary semantic cache for LLM applications.

``SemanticCache`` answers a prompt from an earlier response when the two are the same prompt
(the exact path) or mean the same thing (the semantic path); ``BinarySemanticCache`` answers a
prompt embedding from an earlier response when the two mean
the same thing, using 256-bit (by default) sign-projection codes searched by Hamming distance
in the native ``bsc_native`` engine.
"""

from bsc import _native  # noqa: F401  (refuses a bsc_native of another release)
from bsc._version import NATIVE_VERSION, __version__
from bsc.cache import MAX_TTL, BinarySemanticCache, CacheEntry, CacheStats
from bsc.errors import (
    BscError,
    CacheFileError,
    CorruptFileError,
    EmbeddingFailedError,
    EmptyFileError,
    EncoderMismatchError,
    IndexFullError,
    NotACacheFileError,
    SharedStoreError,
    TruncatedFileError,
    UnsupportedVersionError,
)
from bsc.gate import ContentGate, Verifier
from bsc.semantic import (
    Check,
    Hit,
    SelfCheck,
    SemanticCache,
    SemanticStats,
    chat_scope,
    normalize_prompt,
    semantic_cache,
)
from bsc.shared.config import Shared
from bsc_encoder import BinaryEncoder

__all__ = [
    "MAX_TTL",
    "NATIVE_VERSION",
    "BinaryEncoder",
    "BinarySemanticCache",
    "BscError",
    "CacheEntry",
    "CacheFileError",
    "CacheStats",
    "Check",
    "ContentGate",
    "CorruptFileError",
    "EmbeddingFailedError",
    "EmptyFileError",
    "EncoderMismatchError",
    "Hit",
    "IndexFullError",
    "NotACacheFileError",
    "SelfCheck",
    "SemanticCache",
    "SemanticStats",
    "Shared",
    "SharedStoreError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "Verifier",
    "__version__",
    "chat_scope",
    "normalize_prompt",
    "semantic_cache",
]
