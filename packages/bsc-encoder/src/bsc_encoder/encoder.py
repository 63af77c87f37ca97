"""Sign random projection: float embeddings to packed binary codes."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from bsc_encoder.projection import gaussian_projection

#: Changes whenever the same (dim, bits, seed) would produce different codes.
ALGORITHM_VERSION = 1

MIN_CODE_BITS = 64
MAX_CODE_BITS = 4096


def _positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return int(value)


class BinaryEncoder:
    """Encodes embeddings into binary codes by Gaussian random projection and sign.

    Bit ``j`` of a code is 1 when the embedding's dot product with row ``j`` of the projection
    is positive. Bits are packed least-significant first into little-endian ``uint64`` words:
    bit ``j`` is bit ``j % 64`` of word ``j // 64``. Codes have ``code_bits // 64`` words.

    The projection comes from ``seed`` through a documented, version-stable generator
    (:mod:`bsc_encoder.projection`), so a seed gives the same codes on every platform and numpy
    version. :meth:`fingerprint` names the encoding so codes of different encoders are never
    compared.
    """

    __slots__ = ("_code_bits", "_dim", "_projection", "_seed")

    def __init__(self, embedding_dim: int, code_bits: int = 256, seed: int = 42) -> None:
        dim = _positive_int(embedding_dim, "embedding_dim")
        bits = _positive_int(code_bits, "code_bits")
        if bits % 64 or not MIN_CODE_BITS <= bits <= MAX_CODE_BITS:
            raise ValueError(f"code_bits must be a multiple of 64 between 64 and 4096, got {bits}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self._dim = dim
        self._code_bits = bits
        self._seed = int(seed)
        self._projection = gaussian_projection(bits, dim, self._seed)
        self._projection.flags.writeable = False

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def code_bits(self) -> int:
        return self._code_bits

    @property
    def n_words(self) -> int:
        """``uint64`` words per code."""
        return self._code_bits // 64

    @property
    def seed(self) -> int:
        return self._seed

    @property
    def projection(self) -> npt.NDArray[np.float64]:
        """The read-only ``(code_bits, embedding_dim)`` projection matrix."""
        return self._projection

    def __repr__(self) -> str:
        return f"BinaryEncoder(embedding_dim={self._dim}, code_bits={self._code_bits}, seed={self._seed})"

    def fingerprint(self) -> str:
        """Identifies the encoding: algorithm version, dim, bits and seed. Codes with different
        fingerprints are not comparable.

        It names the inputs of the generator rather than hashing the projection, whose last
        float bits may differ between CPUs (numpy's SIMD ``log``/``cos``) without changing codes.
        """
        return f"bsc-srp{ALGORITHM_VERSION}:dim={self._dim}:bits={self._code_bits}:seed={self._seed}"

    def _as_embeddings(self, embedding: Any) -> npt.NDArray[np.float64]:
        if isinstance(embedding, np.ndarray):
            if embedding.dtype not in (np.float32, np.float64):
                raise TypeError(f"embedding must have dtype float32 or float64, got {embedding.dtype}")
            array = embedding
        elif isinstance(embedding, (list, tuple)):
            try:
                array = np.asarray(embedding, dtype=np.float64)
            except (TypeError, ValueError) as err:
                raise TypeError(f"embedding must be a sequence of numbers: {err}") from None
        else:
            raise TypeError(f"embedding must be a numpy.ndarray of float32 or float64, got {type(embedding).__name__}")
        if array.ndim not in (1, 2) or array.shape[-1] != self._dim:
            raise ValueError(f"embedding must have shape ({self._dim},) or (n, {self._dim}), got shape {array.shape}")
        if array.ndim == 2 and array.shape[0] == 0:
            raise ValueError(f"embedding batch is empty: shape {array.shape}")
        if not np.isfinite(array).all():
            raise ValueError("embedding contains NaN or infinite values")
        if array.ndim == 1:
            if not np.any(array):
                raise ValueError("embedding is all zeros: it has no direction to encode")
        else:
            zero = ~np.any(array, axis=1)
            if zero.any():
                raise ValueError(f"embedding rows {np.flatnonzero(zero)[:10].tolist()} are all zeros")
        return array.astype(np.float64, copy=False)

    def encode(self, embedding: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Encode one embedding ``(dim,)`` to a code ``(code_bits // 64,)``, or a batch
        ``(n, dim)`` to ``(n, code_bits // 64)``. Accepts float32 or float64."""
        x = self._as_embeddings(embedding)
        # Scaling each row by its largest magnitude changes no sign but keeps huge finite
        # inputs (1e300) from overflowing the dot products to inf/NaN.
        x = x / np.max(np.abs(x), axis=-1, keepdims=True)
        positive = (x @ self._projection.T) > 0.0
        packed = np.packbits(positive, axis=-1, bitorder="little")
        return packed.view("<u8").astype(np.uint64, copy=False)

    def encode_batch(self, embeddings: npt.ArrayLike) -> npt.NDArray[np.uint64]:
        """Encode a batch ``(n, dim)`` to ``(n, code_bits // 64)``."""
        x = self._as_embeddings(embeddings)
        if x.ndim != 2:
            raise ValueError(f"embeddings must have shape (n, {self._dim}), got shape {x.shape}")
        return self.encode(x)
