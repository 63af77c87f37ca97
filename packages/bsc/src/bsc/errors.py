"""One error root: everything bsc raises on purpose is a :class:`BscError`.

The engine's errors (``bsc_native``) already are. Embedding failures come from
``bsc_backends``, a leaf package that knows nothing of bsc, as ``bsc_backends.EmbeddingError``
subclasses; when a cache embeds a prompt and the backend fails, the cache raises the matching
class of this module instead, which is both a :class:`BscError` and the backend's class (with the
original error as ``__cause__``). So ``except bsc.BscError``, ``except EmbeddingError`` and
``except RateLimitError`` (from ``bsc.embeddings``) all catch it. Bad arguments raise the built-in
``TypeError``/``ValueError``, as everywhere in Python.
"""

from __future__ import annotations

import threading

import bsc_backends
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
    "BackendUnavailableError",
    "BscError",
    "CacheFileError",
    "CorruptFileError",
    "EmbeddingFailedError",
    "EmptyFileError",
    "EncoderMismatchError",
    "IndexFullError",
    "InvalidEmbeddingError",
    "ModelCannotEmbedError",
    "ModelNotFoundError",
    "NotACacheFileError",
    "RateLimitError",
    "SharedStoreError",
    "TruncatedFileError",
    "UnsupportedVersionError",
    "embedding_failed",
]


class SharedStoreError(BscError):
    """The shared store (Redis) refused a cache: unreachable when the cache starts, set up with
    other settings (shards), or a server older than Redis 6.2. (A store holding another
    encoder's codes raises ``EncoderMismatchError``.)"""


class EmbeddingFailedError(BscError, bsc_backends.EmbeddingError):
    """A cache could not embed a prompt (the backend's error is the ``__cause__``). Nothing was
    cached or answered."""


class BackendUnavailableError(EmbeddingFailedError, bsc_backends.BackendUnavailableError):
    """The embedding server could not be reached, or did not answer in time."""


class ModelNotFoundError(EmbeddingFailedError, bsc_backends.ModelNotFoundError):
    """The embedding server does not have the requested model."""


class ModelCannotEmbedError(EmbeddingFailedError, bsc_backends.ModelCannotEmbedError):
    """The requested model exists but does not produce embeddings."""


class InvalidEmbeddingError(EmbeddingFailedError, bsc_backends.InvalidEmbeddingError):
    """The embedding server answered with something that is not a usable embedding."""


class RateLimitError(EmbeddingFailedError, bsc_backends.RateLimitError):
    """The embedding server kept refusing with HTTP 429 after every retry."""


_MIRRORS: tuple[tuple[type[bsc_backends.EmbeddingError], type[EmbeddingFailedError]], ...] = (
    (bsc_backends.BackendUnavailableError, BackendUnavailableError),
    (bsc_backends.ModelNotFoundError, ModelNotFoundError),
    (bsc_backends.ModelCannotEmbedError, ModelCannotEmbedError),
    (bsc_backends.InvalidEmbeddingError, InvalidEmbeddingError),
    (bsc_backends.RateLimitError, RateLimitError),
)


def embedding_failed(err: bsc_backends.EmbeddingError) -> EmbeddingFailedError:
    """The :class:`BscError` to raise (``from err``) for a backend's embedding error: an
    instance of the mirror of its class, with the same message and attributes. For a subclass
    of the backend's errors that this module does not mirror (a custom backend's own), a class
    derived from both the nearest mirror and that subclass, so an ``except`` naming the
    subclass still catches it. An error that already is a :class:`BscError` is returned as it is."""
    if isinstance(err, EmbeddingFailedError):
        return err
    cls = _mirror(type(err))
    out = cls.__new__(cls, *err.args)  # no __init__: a subclass's own signature is not ours to call
    out.__dict__.update(getattr(err, "__dict__", {}))
    return out


_DERIVED: dict[type[bsc_backends.EmbeddingError], type[EmbeddingFailedError]] = {}
_DERIVED_LOCK = threading.Lock()


def _mirror(source: type[bsc_backends.EmbeddingError]) -> type[EmbeddingFailedError]:
    with _DERIVED_LOCK:
        if source not in _DERIVED:
            _DERIVED[source] = _derive(source)
        return _DERIVED[source]


def _derive(source: type[bsc_backends.EmbeddingError]) -> type[EmbeddingFailedError]:
    nearest: type[EmbeddingFailedError] = EmbeddingFailedError
    for backend, mirror in _MIRRORS:
        if source is backend:
            return mirror
        if issubclass(source, backend):
            nearest = mirror
            break
    if source is bsc_backends.EmbeddingError:
        return nearest
    namespace = {"__module__": source.__module__, "__qualname__": source.__qualname__, "__doc__": source.__doc__}
    return type(source.__name__, (nearest, source), namespace)
