"""Embedding backends, re-exported from ``bsc_backends``.

``from bsc.embeddings import OllamaEmbedder`` and
``from bsc.embeddings.openai_backend import OpenAIEmbeddingBackend`` are the original system's
import paths; :class:`LocalEmbedder` is the offline default.
"""

from bsc_backends import (
    BackendUnavailableError,
    Embedder,
    EmbeddingError,
    InvalidEmbeddingError,
    LocalEmbedder,
    ModelCannotEmbedError,
    ModelNotFoundError,
    OllamaEmbedder,
    OpenAIEmbeddingBackend,
    RateLimitError,
    SentenceTransformerEmbedder,
    default_embedder,
    normalize,
)

__all__ = [
    "BackendUnavailableError",
    "Embedder",
    "EmbeddingError",
    "InvalidEmbeddingError",
    "LocalEmbedder",
    "ModelCannotEmbedError",
    "ModelNotFoundError",
    "OllamaEmbedder",
    "OpenAIEmbeddingBackend",
    "RateLimitError",
    "SentenceTransformerEmbedder",
    "default_embedder",
    "normalize",
]
