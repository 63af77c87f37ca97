"""Errors raised by the embedding backends.

Every backend failure is an :class:`EmbeddingError`, so one ``except`` clause covers them all; the
subclasses say what went wrong so that callers (and the cache) can react: retry later, pull a
model, or fix the configuration. Bad arguments raise the built-in ``TypeError``/``ValueError``.
"""

from __future__ import annotations


class EmbeddingError(RuntimeError):
    """An embedding could not be produced. Nothing was cached."""


class BackendUnavailableError(EmbeddingError):
    """The embedding server could not be reached, or did not answer in time."""


class ModelNotFoundError(EmbeddingError):
    """The server does not have the requested model."""


class ModelCannotEmbedError(EmbeddingError):
    """The requested model exists but does not produce embeddings."""


class InvalidEmbeddingError(EmbeddingError):
    """The server answered, but with something that is not a usable embedding.

    Raised for malformed bodies, a wrong number of vectors, vectors of the wrong dimension and
    vectors holding NaN, infinite or all-zero values.
    """


class RateLimitError(EmbeddingError):
    """The server kept refusing with HTTP 429 after every retry."""
