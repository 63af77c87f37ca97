from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bsc
from bsc import BinaryEncoder, BinarySemanticCache, CacheEntry, CacheStats
from bsc._native import check_native_version
from bsc_encoder import hamming_distance, hamming_to_cosine

PACKAGES = Path(__file__).resolve().parents[2]


def unit(rng: np.random.Generator, dim: int = 64) -> np.ndarray:
    v = rng.standard_normal(dim)
    return v / np.linalg.norm(v)


def at_cosine(rng: np.random.Generator, base: np.ndarray, cosine: float) -> np.ndarray:
    noise = rng.standard_normal(base.shape[0])
    noise -= noise @ base * base
    noise /= np.linalg.norm(noise)
    return cosine * base + np.sqrt(1 - cosine**2) * noise


def test_put_get_hit_and_miss(encoder):
    rng = np.random.default_rng(0)
    cache = BinarySemanticCache(encoder, max_entries=100, similarity_threshold=0.8)
    v = unit(rng)
    before = time.time()
    entry_id = cache.put(v, "Paris")
    hit = cache.get(v)
    assert isinstance(hit, CacheEntry)
    assert (hit.response, hit.id, hit.similarity, hit.distance, hit.access_count) == ("Paris", entry_id, 1.0, 0, 1)
    # The engine keeps whole seconds, rounded down.
    assert int(before) <= hit.created_at <= hit.last_accessed <= time.time()
    assert cache.get(v).access_count == 2
    assert cache.get(-v) is None
    stats = cache.stats()
    assert isinstance(stats, CacheStats)
    assert (stats.size, stats.max_size, stats.hits, stats.misses, stats.evictions) == (1, 100, 2, 1, 0)
    assert stats.hit_rate == pytest.approx(2 / 3)
    assert stats.memory_bytes > 0
    assert stats.as_dict()["hits"] == 2


def test_hit_rate_is_zero_before_any_lookup(encoder):
    assert BinarySemanticCache(encoder).stats().hit_rate == 0.0


@settings(max_examples=60, deadline=None)
@given(cosine=st.floats(0.3, 0.999), threshold=st.floats(0.3, 0.99), seed=st.integers(0, 2**32 - 1))
def test_hit_iff_estimated_cosine_reaches_threshold(cosine, threshold, seed):
    encoder = BinaryEncoder(embedding_dim=64, code_bits=256, seed=42)
    rng = np.random.default_rng(seed)
    cache = BinarySemanticCache(encoder, similarity_threshold=threshold)
    stored = unit(rng)
    query = at_cosine(rng, stored, cosine)
    cache.put(stored, "answer")
    estimate = hamming_to_cosine(int(hamming_distance(encoder.encode(stored), encoder.encode(query))), 256)
    hit = cache.get(query)
    if estimate >= threshold:
        assert hit is not None and hit.similarity == estimate
    else:
        assert hit is None


def test_nearest_entry_wins(encoder):
    rng = np.random.default_rng(1)
    cache = BinarySemanticCache(encoder, similarity_threshold=0.0)
    base = unit(rng)
    far = cache.put(at_cosine(rng, base, 0.6), "far")
    near = cache.put(at_cosine(rng, base, 0.98), "near")
    hit = cache.get(base)
    assert hit.id == near and hit.response == "near" and far in cache


def test_lru_eviction(encoder):
    rng = np.random.default_rng(2)
    cache = BinarySemanticCache(encoder, max_entries=3, similarity_threshold=0.95)
    vs = [unit(rng) for _ in range(4)]
    ids = [cache.put(v, i) for i, v in enumerate(vs[:3])]
    assert cache.get(vs[0]).response == 0  # 0 is now the most recent; 1 is the oldest
    cache.put(vs[3], 3)
    assert len(cache) == 3
    assert ids[1] not in cache and cache.get(vs[1]) is None
    assert cache.get(vs[0]).response == 0 and cache.get(vs[2]).response == 2
    assert cache.stats().evictions == 1


def test_len_never_exceeds_max_entries(encoder):
    rng = np.random.default_rng(3)
    cache = BinarySemanticCache(encoder, max_entries=5)
    for i in range(50):
        cache.put(unit(rng), i)
        assert len(cache) <= 5
    assert cache.stats().evictions == 45


def test_delete_and_clear(encoder):
    rng = np.random.default_rng(4)
    cache = BinarySemanticCache(encoder)
    v, w = unit(rng), unit(rng)
    a = cache.put(v, "a")
    cache.put(w, "b")
    assert cache.delete(a) is True and cache.delete(a) is False
    assert cache.get(v) is None and len(cache) == 1
    assert cache.peek(a) is None
    cache.clear()
    assert len(cache) == 0 and cache.get(w) is None


def test_peek_does_not_count(encoder):
    cache = BinarySemanticCache(encoder)
    entry_id = cache.put(unit(np.random.default_rng(5)), {"a": 1})
    entry = cache.peek(entry_id)
    assert entry.response == {"a": 1} and entry.access_count == 0
    assert cache.stats().hits == cache.stats().misses == 0


@pytest.mark.parametrize(
    "response",
    [
        "text",
        "",
        "ünïcødé \U0001f600",
        "\ud800",
        b"\x00\xffbytes",
        {"a": [1, 2.5, None, True, {"b": "c"}]},
        [1, "x"],
        7,
        2.5,
        None,
        False,
        10**40,
    ],
)
def test_responses_round_trip(encoder, response):
    cache = BinarySemanticCache(encoder)
    v = unit(np.random.default_rng(6))
    cache.put(v, response)
    got = cache.get(v).response
    assert got == response and type(got) is type(response)


@pytest.mark.parametrize(
    ("response", "error", "message"),
    [
        (object(), TypeError, "response has type object"),
        ({1: "a"}, TypeError, "key of type int"),
        ({"a": (1, 2)}, TypeError, r"response\['a'\] has type tuple"),
        ([1, {2, 3}], TypeError, r"response\[1\] has type set"),
        ({"x": float("nan")}, ValueError, "NaN or infinity"),
        (bytearray(b"x"), TypeError, "type bytearray"),
    ],
)
def test_bad_responses_are_rejected_and_change_nothing(encoder, response, error, message):
    cache = BinarySemanticCache(encoder)
    v = unit(np.random.default_rng(7))
    with pytest.raises(error, match=message):
        cache.put(v, response)
    assert len(cache) == 0 and cache.get(v) is None


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"max_entries": 0}, ValueError, "max_entries must be > 0, got 0"),
        ({"max_entries": -3}, ValueError, "got -3"),
        ({"max_entries": 2.0}, TypeError, "max_entries must be an int"),
        ({"max_entries": True}, TypeError, "max_entries must be an int"),
        ({"similarity_threshold": 1.5}, ValueError, r"\[-1, 1\], got 1.5"),
        ({"similarity_threshold": -1.01}, ValueError, r"\[-1, 1\]"),
        ({"similarity_threshold": float("nan")}, ValueError, r"\[-1, 1\], got nan"),
        ({"similarity_threshold": "0.8"}, TypeError, "similarity_threshold must be a number"),
        ({"code_bits": 512}, ValueError, "code_bits=512 does not match the encoder's code_bits=256"),
        ({"storage_mode": "disk"}, ValueError, "storage_mode must be 'memory'"),
    ],
)
def test_bad_constructor_arguments(encoder, kwargs, error, message):
    with pytest.raises(error, match=message):
        BinarySemanticCache(encoder, **kwargs)


def test_encoder_must_be_an_encoder():
    with pytest.raises(TypeError, match=r"encoder must be a bsc\.BinaryEncoder, got str"):
        BinarySemanticCache("encoder")  # type: ignore[arg-type]


def test_threshold_bounds_are_accepted(encoder):
    for value in (-1, -1.0, 0, 1, 1.0, np.float32(0.5)):
        assert BinarySemanticCache(encoder, similarity_threshold=value).similarity_threshold == float(value)


def test_threshold_can_be_changed(encoder):
    rng = np.random.default_rng(8)
    cache = BinarySemanticCache(encoder, similarity_threshold=0.99)
    base = unit(rng)
    cache.put(base, "x")
    query = at_cosine(rng, base, 0.9)
    assert cache.get(query) is None
    cache.similarity_threshold = 0.5
    assert cache.get(query).response == "x"
    assert cache.max_distance == 85  # cos(pi * 85 / 256) >= 0.5 > cos(pi * 86 / 256)
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        cache.similarity_threshold = 2.0
    assert cache.similarity_threshold == 0.5


@pytest.mark.parametrize(
    ("embedding", "error", "message"),
    [
        (np.ones(63), ValueError, r"shape \(64,\)"),
        (np.ones((2, 64)), ValueError, r"one embedding of shape \(64,\), got shape \(2, 64\)"),
        (np.full(64, np.nan), ValueError, "NaN or infinite"),
        (np.full(64, np.inf), ValueError, "NaN or infinite"),
        (np.zeros(64), ValueError, "all zeros"),
        (np.ones(64, dtype=np.int32), TypeError, "float32 or float64, got int32"),
        ("text", TypeError, "numpy.ndarray of float32 or float64, got str"),
        (None, TypeError, "got NoneType"),
        ([[1.0, 2.0], [3.0]], ValueError, "one embedding"),
        (np.ones(0), ValueError, r"got shape \(0,\)"),
    ],
)
def test_bad_embeddings_leave_the_cache_unchanged(encoder, embedding, error, message):
    cache = BinarySemanticCache(encoder)
    cache.put(np.ones(64), "kept")
    with pytest.raises(error, match=message):
        cache.put(embedding, "x")
    with pytest.raises(error, match=message):
        cache.get(embedding)
    assert len(cache) == 1
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions) == (0, 0, 0)


def test_non_contiguous_and_float32_embeddings_work(encoder):
    wide = np.random.default_rng(9).standard_normal((1, 128))
    view = wide[0, ::2]
    cache = BinarySemanticCache(encoder)
    cache.put(view, "v")
    assert cache.get(np.ascontiguousarray(view).astype(np.float32)).response == "v"


def test_concurrent_gets_and_puts(encoder):
    rng = np.random.default_rng(10)
    cache = BinarySemanticCache(encoder, max_entries=200, similarity_threshold=0.95)
    keep = [unit(rng) for _ in range(20)]
    errors: list[BaseException] = []
    gets = 0
    lock = threading.Lock()

    def reader(seed: int) -> None:
        nonlocal gets
        local = np.random.default_rng(seed)
        try:
            for _ in range(200):
                i = int(local.integers(len(keep)))
                hit = cache.get(keep[i])
                with lock:
                    gets += 1
                if hit is not None:
                    assert hit.response == i
        except BaseException as err:
            errors.append(err)

    def writer(seed: int) -> None:
        local = np.random.default_rng(seed)
        try:
            for n in range(300):
                if n % 10 == 0:
                    i = int(local.integers(len(keep)))
                    cache.put(keep[i], i)
                else:
                    cache.put(unit(local), -1)
                assert len(cache) <= 200
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=reader, args=(s,)) for s in range(4)]
    threads += [threading.Thread(target=writer, args=(100 + s,)) for s in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    stats = cache.stats()
    assert stats.hits + stats.misses == gets
    assert stats.size == len(cache) <= 200


def test_repr(encoder):
    cache = BinarySemanticCache(encoder, max_entries=5)
    assert repr(cache) == (
        "BinarySemanticCache(encoder=BinaryEncoder(embedding_dim=64, code_bits=256, seed=42), "
        "max_entries=5, similarity_threshold=0.8, len=0)"
    )


def test_version_pins_agree():
    native = re.search(r'^version = "([^"]+)"', (PACKAGES / "bsc-native/pyproject.toml").read_text(), re.M)
    facade = (PACKAGES / "bsc/pyproject.toml").read_text()
    assert native and f'"bsc-native=={native.group(1)}"' in facade
    assert native.group(1) == bsc.NATIVE_VERSION
    assert re.search(rf'^version = "{re.escape(bsc.__version__)}"', facade, re.M)


def test_refuses_another_native_version():
    with pytest.raises(ImportError, match=r"requires bsc-native==0\.1\.0, but bsc-native 9\.9\.9 is installed"):
        check_native_version("9.9.9")
    check_native_version(bsc.NATIVE_VERSION)


def test_import_fails_against_another_native_version():
    code = "import bsc_native; bsc_native.__version__ = '0.0.1'\nimport bsc"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode != 0
    assert "ImportError: bsc 0.1.0 requires bsc-native==0.1.0, but bsc-native 0.0.1 is installed" in result.stderr


def test_huge_and_tiny_finite_embeddings_are_encoded_by_direction(encoder):
    rng = np.random.default_rng(11)
    v = unit(rng)
    cache = BinarySemanticCache(encoder, similarity_threshold=0.99)
    cache.put(v * 1e300, "big")
    assert cache.get(v).response == "big"
    assert cache.get(v * 1e-300).response == "big"
    assert cache.get(-v * 1e300) is None


def test_ids_that_cannot_exist(encoder):
    cache = BinarySemanticCache(encoder)
    cache.put(unit(np.random.default_rng(12)), "x")
    assert cache.delete(2**64) is False and cache.delete(-1) is False
    assert 2**64 not in cache and "0" not in cache
    assert cache.peek(2**70) is None


def test_max_entries_beyond_the_engine_limit(encoder):
    with pytest.raises(ValueError, match="max_entries must be between 1 and 4294967294"):
        BinarySemanticCache(encoder, max_entries=2**70)
