"""The engine's projection (bsc_native.Projector) makes the numpy encoder's codes: over 100k
vectors a differing bit is rare and always one whose product lies within float rounding of zero;
the cache's get and put use it, with the encoder's errors for bad input."""

from __future__ import annotations

import numpy as np
import pytest

import bsc_native
from bsc import BinarySemanticCache
from bsc_encoder import BinaryEncoder


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    # Embedding-like: a shared mean direction (as real embeddings have) plus spread.
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal(dim)
    return (0.6 * mean + rng.standard_normal((n, dim))).astype(np.float32)


@pytest.mark.parametrize(("dim", "bits", "seed"), [(384, 256, 42), (768, 512, 7), (64, 64, 0)])
def test_codes_equal_the_numpy_encoders_but_for_bits_at_zero(dim: int, bits: int, seed: int) -> None:
    encoder = BinaryEncoder(dim, bits, seed=seed)
    projector = bsc_native.Projector(encoder.projection)
    assert (projector.dim, projector.code_bits) == (dim, bits)
    n = 100_000 if dim == 384 else 20_000
    x = vectors(n, dim, seed)
    for batch in (x, x.astype(np.float64)):
        want = encoder.encode(batch)
        got = projector.encode(batch)
        assert got.shape == want.shape and got.dtype == np.uint64
        diff = np.bitwise_xor(got, want)
        flipped_bits = int(np.unpackbits(diff.view(np.uint8)).sum())
        assert flipped_bits <= max(3, n * bits // 1_000_000), f"{flipped_bits} bits differ"
        # Every differing bit's product, in float64, is within rounding of zero.
        rows, words = np.nonzero(diff)
        for row, word in zip(rows, words, strict=True):
            v = batch[row].astype(np.float64) / np.abs(batch[row]).max()
            for bit in range(64):
                if int(diff[row, word]) >> bit & 1:
                    dot = float(v @ encoder.projection[word * 64 + bit])
                    assert abs(dot) < 1e-4, dot
    assert projector.encode(x[123]).shape == (bits // 64,)


def test_bad_embeddings_raise_the_encoders_errors() -> None:
    encoder = BinaryEncoder(8, 64)
    projector = bsc_native.Projector(encoder.projection)
    cases = [
        ([1.0] * 8, TypeError, "numpy.ndarray of float32 or float64, got list"),
        (np.ones(8, dtype=np.int64), TypeError, "dtype float32 or float64, got int64"),
        (np.ones(7), ValueError, r"shape \(8,\) or \(n, 8\), got shape \(7,\)"),
        (np.ones((2, 2, 8)), ValueError, r"got shape \(2, 2, 8\)"),
        (np.ones((0, 8)), ValueError, "batch is empty"),
        (np.array([np.nan] + [1.0] * 7), ValueError, "NaN or infinite"),
        (np.array([np.inf] + [1.0] * 7, dtype=np.float32), ValueError, "NaN or infinite"),
        (np.zeros(8), ValueError, "all zeros"),
        (np.stack([np.ones(8), np.zeros(8)]), ValueError, r"rows \[1\] are all zeros"),
    ]
    for value, error, message in cases:
        with pytest.raises(error, match=message):
            projector.encode(value)
        if not isinstance(value, list):  # the numpy encoder takes lists; the engine's does not
            with pytest.raises(error, match=message):
                encoder.encode(value)
    # Huge finite values and non-contiguous views are fine.
    assert np.array_equal(projector.encode(np.full(8, 1e300)), encoder.encode(np.full(8, 1e300)))
    wide = np.arange(1, 33, dtype=np.float64).reshape(2, 16)[:, ::2]
    assert np.array_equal(projector.encode(wide), encoder.encode(np.ascontiguousarray(wide)))
    with pytest.raises(TypeError, match=r"2-D numpy\.ndarray of float64"):
        bsc_native.Projector(encoder.projection.astype(np.float32))
    with pytest.raises(ValueError, match="multiple of 64"):
        bsc_native.Projector(np.ones((10, 8)))


def test_the_cache_encodes_in_the_engine() -> None:
    encoder = BinaryEncoder(384, 256)
    cache = BinarySemanticCache(encoder, max_entries=100)
    x = vectors(50, 384, 1)
    for i, v in enumerate(x):
        cache.put(v, f"answer {i}")
    for i, v in enumerate(x):
        entry = cache.get(v)
        assert entry is not None and entry.response == f"answer {i}"
        # Lists still take the numpy path, to the same code.
        assert np.array_equal(cache.encode(v.tolist()), encoder.encode(v.astype(np.float64)))
    # Another byte order goes to the numpy encoder, which refuses it as before.
    with pytest.raises(TypeError, match="dtype float32 or float64, got >f4"):
        cache.get(x[0].astype(">f4"))
    with pytest.raises(ValueError, match="expected one embedding of shape"):
        cache.get(x[:2])
    with pytest.raises(TypeError, match="dtype float32 or float64"):
        cache.get(np.ones(384, dtype=np.int32))
    # A float16 vector was refused before the engine encoder and still is.
    with pytest.raises(TypeError, match="got float16"):
        cache.get(np.ones(384, dtype=np.float16))
