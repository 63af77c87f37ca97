"""Embedding backends for bsc: text in, L2-normalised float32 vectors out.

- :class:`LocalEmbedder` — the default: all-MiniLM-L6-v2 on the CPU, offline (extra ``local``).
- :class:`OpenAIEmbeddingBackend` — OpenAI or a compatible server (extra ``openai``).
- :class:`OllamaEmbedder` — a running Ollama server (extra ``ollama``).
- :class:`SentenceTransformerEmbedder` — any sentence-transformers model (extra
  ``sentence-transformers``).

Each class imports its optional libraries only when it is made, and says which extra to install
when they are missing.
"""

from bsc_backends.errors import (
    BackendUnavailableError,
    EmbeddingError,
    InvalidEmbeddingError,
    ModelCannotEmbedError,
    ModelNotFoundError,
    RateLimitError,
)
from bsc_backends.local import LocalEmbedder, default_embedder
from bsc_backends.ollama import OllamaEmbedder
from bsc_backends.openai_backend import OpenAIEmbeddingBackend
from bsc_backends.protocol import Embedder, normalize
from bsc_backends.ratelimit import RateLimiter
from bsc_backends.sentence_transformer import SentenceTransformerEmbedder

__version__ = "0.1.0"

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
    "RateLimiter",
    "SentenceTransformerEmbedder",
    "__version__",
    "default_embedder",
    "normalize",
]
