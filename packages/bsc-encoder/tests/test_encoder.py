from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsc_encoder import (
    BinaryEncoder,
    cosine_to_hamming,
    gaussian_projection,
    hamming_distance,
    hamming_radius,
    hamming_to_cosine,
)


def integer_vector(dim: int) -> np.ndarray:
    # Exactly representable values: the same input on every platform.
    return ((np.arange(dim) * 7919) % 101 - 50).astype(np.float64)


def test_known_codes_are_pinned():
    # If these change, every stored code changes: bump ALGORITHM_VERSION instead.
    encoder = BinaryEncoder(embedding_dim=384, code_bits=256, seed=42)
    assert [hex(int(w)) for w in encoder.encode(integer_vector(384))] == [
        "0xf587387c06433b21",
        "0xd9a38499f0376204",
        "0x79774e3c5f31ed9c",
        "0xe0a6ca61ebb3164c",
    ]
    small = BinaryEncoder(embedding_dim=8, code_bits=64, seed=7)
    assert int(small.encode(np.array([3.0, -1, 4, -1, 5, -9, 2, 6]))[0]) == 0x6F51C913164C16FD


def test_projection_is_pinned():
    p = gaussian_projection(64, 8, 7)
    np.testing.assert_allclose(
        p[0, :4], [1.1186632301507777, -0.8430660137721919, 0.2682506305252265, 1.7080561124924014], rtol=1e-12
    )
    assert p[63, -1] == pytest.approx(-1.5528815397481794, rel=1e-12)


def test_projection_is_standard_normal():
    p = gaussian_projection(1024, 256, 0).ravel()
    assert abs(p.mean()) < 0.01
    assert abs(p.std() - 1.0) < 0.01
    # Tails of a normal: about 4.55% beyond two standard deviations.
    assert abs(np.mean(np.abs(p) > 2) - 0.0455) < 0.003


def test_bit_order_is_little_endian_lsb_first():
    encoder = BinaryEncoder(embedding_dim=16, code_bits=128, seed=3)
    x = np.linspace(-1, 1, 16) + 0.05
    code = encoder.encode(x)
    signs = encoder.projection @ x > 0
    for j in range(128):
        assert bool((int(code[j // 64]) >> (j % 64)) & 1) == bool(signs[j])


def test_batch_equals_single_and_float32_equals_float64():
    encoder = BinaryEncoder(embedding_dim=32, code_bits=256)
    batch = np.random.default_rng(0).standard_normal((20, 32)).astype(np.float32)
    codes = encoder.encode(batch)
    assert codes.shape == (20, 4) and codes.dtype == np.uint64
    for row, code in zip(batch, codes, strict=True):
        np.testing.assert_array_equal(encoder.encode(row), code)
        np.testing.assert_array_equal(encoder.encode(row.astype(np.float64)), code)
    np.testing.assert_array_equal(encoder.encode_batch(batch), codes)
    np.testing.assert_array_equal(encoder.encode(batch.tolist()), codes)


def test_scale_does_not_change_the_code():
    encoder = BinaryEncoder(embedding_dim=32)
    x = np.random.default_rng(1).standard_normal(32)
    np.testing.assert_array_equal(encoder.encode(x), encoder.encode(x * 1e6))


def test_same_seed_same_codes_other_seed_other_codes():
    x = np.random.default_rng(2).standard_normal(64)
    a = BinaryEncoder(64, 256, seed=5).encode(x)
    np.testing.assert_array_equal(a, BinaryEncoder(64, 256, seed=5).encode(x))
    assert not np.array_equal(a, BinaryEncoder(64, 256, seed=6).encode(x))


def test_fingerprint_names_the_encoding():
    base = BinaryEncoder(384, 256, seed=42)
    assert base.fingerprint() == "bsc-srp1:dim=384:bits=256:seed=42"
    others = {BinaryEncoder(385, 256, 42), BinaryEncoder(384, 512, 42), BinaryEncoder(384, 256, 43)}
    assert len({e.fingerprint() for e in others} | {base.fingerprint()}) == 4
    assert repr(base) == "BinaryEncoder(embedding_dim=384, code_bits=256, seed=42)"


def test_projection_is_read_only():
    encoder = BinaryEncoder(8, 64)
    with pytest.raises(ValueError, match="read-only"):
        encoder.projection[0, 0] = 1.0


def test_hamming_distance_tracks_the_angle():
    # For vectors at angle theta the expected distance is bits * theta / pi.
    rng = np.random.default_rng(3)
    dim, bits = 128, 1024
    encoder = BinaryEncoder(dim, bits, seed=11)
    for cosine in (0.95, 0.8, 0.5, 0.0):
        distances = []
        for _ in range(30):
            a = rng.standard_normal(dim)
            a /= np.linalg.norm(a)
            noise = rng.standard_normal(dim)
            noise -= noise @ a * a
            noise /= np.linalg.norm(noise)
            b = cosine * a + math.sqrt(1 - cosine**2) * noise
            distances.append(int(hamming_distance(encoder.encode(a), encoder.encode(b))))
        expected = cosine_to_hamming(cosine, bits)
        assert abs(np.mean(distances) - expected) < 0.05 * bits


@settings(max_examples=300, deadline=None)
@given(threshold=st.floats(-1, 1), bits=st.sampled_from([64, 128, 256, 1024, 4096]))
def test_radius_is_exactly_the_threshold_boundary(threshold, bits):
    radius = hamming_radius(threshold, bits)
    assert 0 <= radius <= bits
    assert hamming_to_cosine(radius, bits) >= threshold
    if radius < bits:
        assert hamming_to_cosine(radius + 1, bits) < threshold


def test_conversions():
    assert hamming_to_cosine(0, 256) == 1.0
    assert hamming_to_cosine(256, 256) == -1.0
    assert hamming_to_cosine(128, 256) == pytest.approx(0.0, abs=1e-15)
    np.testing.assert_allclose(hamming_to_cosine(np.array([0, 128]), 256), [1.0, 0.0], atol=1e-15)
    assert cosine_to_hamming(1.0, 256) == 0.0
    assert cosine_to_hamming(0.0, 256) == 128.0
    assert hamming_radius(1.0, 256) == 0
    assert hamming_radius(-1.0, 256) == 256
    # cos(pi * 52 / 256) = 0.8032..., cos(pi * 53 / 256) = 0.7961...
    assert hamming_radius(0.80, 256) == 52
    assert hamming_distance(np.array([0b1011], dtype=np.uint64), np.array([0b0001], dtype=np.uint64)) == 2


@pytest.mark.parametrize("bad", [1.5, -1.01, float("nan"), float("inf")])
def test_bad_similarity(bad):
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        hamming_radius(bad, 256)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        cosine_to_hamming(bad, 256)


def test_bad_conversion_arguments():
    with pytest.raises(TypeError):
        hamming_radius("0.8", 256)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="code_bits"):
        hamming_radius(0.8, 0)
    with pytest.raises(ValueError, match=r"distance must be in \[0, 256\]"):
        hamming_to_cosine(257, 256)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"embedding_dim": 0}, ValueError, "embedding_dim must be > 0"),
        ({"embedding_dim": 3.0}, TypeError, "embedding_dim must be an int"),
        ({"embedding_dim": True}, TypeError, "embedding_dim must be an int"),
        ({"embedding_dim": 8, "code_bits": 100}, ValueError, "multiple of 64.*got 100"),
        ({"embedding_dim": 8, "code_bits": 8192}, ValueError, "got 8192"),
        ({"embedding_dim": 8, "seed": -1}, ValueError, "seed must be >= 0"),
        ({"embedding_dim": 8, "seed": "x"}, TypeError, "seed must be an int"),
    ],
)
def test_bad_constructor_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        BinaryEncoder(**kwargs)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.zeros(8, dtype=np.int64) + 1, TypeError, "float32 or float64, got int64"),
        (np.ones(7), ValueError, r"shape \(8,\) or \(n, 8\), got shape \(7,\)"),
        (np.ones((2, 7)), ValueError, r"got shape \(2, 7\)"),
        (np.ones((2, 2, 8)), ValueError, r"got shape \(2, 2, 8\)"),
        (np.ones((0, 8)), ValueError, "empty"),
        (np.array([np.nan] + [1.0] * 7), ValueError, "NaN or infinite"),
        (np.array([np.inf] + [1.0] * 7), ValueError, "NaN or infinite"),
        (np.zeros(8), ValueError, "all zeros"),
        (np.vstack([np.ones(8), np.zeros(8)]), ValueError, r"rows \[1\] are all zeros"),
        ("text", TypeError, "numpy.ndarray"),
        (["a"] * 8, TypeError, "sequence of numbers"),
    ],
)
def test_bad_embeddings(value, error, message):
    with pytest.raises(error, match=message):
        BinaryEncoder(8, 64).encode(value)


def test_non_contiguous_input_is_encoded_like_a_copy():
    encoder = BinaryEncoder(8, 64)
    wide = np.random.default_rng(4).standard_normal((5, 16))
    view = wide[:, ::2]
    np.testing.assert_array_equal(encoder.encode(view), encoder.encode(np.ascontiguousarray(view)))


def test_encode_batch_requires_two_dimensions():
    with pytest.raises(ValueError, match=r"shape \(n, 8\)"):
        BinaryEncoder(8, 64).encode_batch(np.ones(8))
