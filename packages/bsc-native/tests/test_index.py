from __future__ import annotations

import re
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import bsc_native
from bsc_native import BinaryIndex

RNG = np.random.default_rng(1234)


def random_codes(n: int, words: int = 4, rng: np.random.Generator = RNG) -> np.ndarray:
    return rng.integers(0, 2**64, size=(n, words), dtype=np.uint64)


def popcount_distances(codes: np.ndarray, query: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(codes, query)
    return np.unpackbits(x.view(np.uint8), axis=-1).sum(axis=-1)


def reference_search(ids, codes, query, k, max_distance):
    """(distance, id) of the k nearest, ties to the lower slot (the id's low 32 bits)."""
    d = popcount_distances(codes, query)
    order = sorted(
        ((int(dist), int(i)) for dist, i in zip(d, ids, strict=True) if max_distance is None or dist <= max_distance),
        key=lambda pair: (pair[0], pair[1] & 0xFFFF_FFFF),
    )
    return order[:k]


def test_version_matches_the_manifests():
    root = Path(__file__).resolve().parents[1]
    cargo = re.search(r'^version = "([^"]+)"', (root / "Cargo.toml").read_text(), re.M)
    pyproject = re.search(r'^version = "([^"]+)"', (root / "pyproject.toml").read_text(), re.M)
    assert cargo and pyproject
    assert bsc_native.__version__ == cargo.group(1) == pyproject.group(1)


def test_add_returns_stable_ids_and_search_finds_them():
    index = BinaryIndex(code_bits=256)
    codes = random_codes(100)
    ids = index.add(codes)
    assert ids.dtype == np.int64 and ids.shape == (100,)
    assert len(set(ids.tolist())) == 100
    assert len(index) == 100 and index.code_bits == 256
    for row in (0, 17, 99):
        found, dist = index.search(codes[row])
        assert found.tolist() == [ids[row]] and dist.tolist() == [0]
        np.testing.assert_array_equal(index.get(int(ids[row])), codes[row])


def test_one_dimensional_add_is_one_code():
    index = BinaryIndex(code_bits=128)
    ids = index.add(np.array([1, 2], dtype=np.uint64))
    assert ids.shape == (1,) and len(index) == 1


def test_remove_reuses_slot_and_kills_the_id():
    index = BinaryIndex(code_bits=64)
    ids = index.add(random_codes(10, 1))
    victim = int(ids[3])
    assert index.remove(victim) is True
    before = index.memory_bytes()
    assert index.remove(victim) is False
    assert victim not in index and len(index) == 9
    assert index.get(victim) is None
    # Many add/remove cycles do not grow the index: freed slots are reused.
    for _ in range(1000):
        new = int(index.add(random_codes(1, 1))[0])
        assert new != victim and new not in ids.tolist()
        assert index.remove(new)
    assert index.memory_bytes() <= before
    assert set(index.ids().tolist()) == set(ids.tolist()) - {victim}


def test_clear_kills_old_ids():
    index = BinaryIndex(code_bits=64)
    old = index.add(random_codes(5, 1)).tolist()
    index.clear()
    assert len(index) == 0
    new = index.add(random_codes(5, 1)).tolist()
    assert not set(old) & set(new)
    assert all(i not in index for i in old)


def test_top_k_radius_and_ties():
    index = BinaryIndex(code_bits=64)
    codes = np.array([[0b0], [0b1], [0b11], [0b1], [0b111]], dtype=np.uint64)
    ids = index.add(codes).tolist()
    found, dist = index.search(np.array([0], dtype=np.uint64), k=10)
    assert dist.tolist() == [0, 1, 1, 2, 3]
    assert found.tolist() == [ids[0], ids[1], ids[3], ids[2], ids[4]]  # ties by ascending slot
    found, dist = index.search(np.array([0], dtype=np.uint64), k=10, max_distance=1)
    assert dist.tolist() == [0, 1, 1]
    found, _ = index.search(np.array([0], dtype=np.uint64), k=10, max_distance=0)
    assert found.tolist() == [ids[0]]
    found, _ = index.search(np.array([2**63], dtype=np.uint64), k=1, max_distance=0)
    assert found.size == 0


def test_search_on_empty_index():
    found, dist = BinaryIndex(256).search(np.zeros(4, dtype=np.uint64), k=5)
    assert found.size == 0 and dist.size == 0


@pytest.mark.parametrize("code_bits", [64, 128, 192, 256, 512, 1024, 4096])
def test_all_code_lengths_match_numpy(code_bits):
    words = code_bits // 64
    rng = np.random.default_rng(code_bits)
    index = BinaryIndex(code_bits=code_bits)
    codes = random_codes(300, words, rng)
    ids = index.add(codes)
    query = random_codes(1, words, rng)[0]
    found, dist = index.search(query, k=7)
    expect = reference_search(ids, codes, query, 7, None)
    assert list(zip(dist.tolist(), found.tolist(), strict=True)) == expect


@pytest.mark.parametrize("bad", [0, 32, 65, 100, 4160, 8192])
def test_bad_code_bits(bad):
    with pytest.raises(ValueError, match=f"multiple of 64 between 64 and 4096, got {bad}"):
        BinaryIndex(code_bits=bad)


@pytest.mark.parametrize(
    ("value", "error", "message"),
    [
        (np.zeros((2, 4), dtype=np.float64), TypeError, "dtype uint64.*got dtype float64"),
        (np.zeros((2, 4), dtype=np.int64), TypeError, "dtype uint64.*got dtype int64"),
        (np.zeros((2, 4), dtype=">u8"), TypeError, "native byte order"),
        (np.zeros((2, 3), dtype=np.uint64), ValueError, r"shape \(n, 4\).*got shape \(2, 3\)"),
        (np.zeros((0, 4), dtype=np.uint64), ValueError, "non-empty"),
        (np.zeros((2, 4, 1), dtype=np.uint64), ValueError, r"got shape \(2, 4, 1\)"),
        (np.zeros(5, dtype=np.uint64), ValueError, r"got shape \(5,\)"),
        (np.zeros((4, 8), dtype=np.uint64)[:, ::2], TypeError, "C-contiguous"),
        ([[1, 2, 3, 4]], TypeError, "numpy.ndarray.*got list"),
        (None, TypeError, "got NoneType"),
    ],
)
def test_add_rejects_bad_codes_and_changes_nothing(value, error, message):
    index = BinaryIndex(code_bits=256)
    index.add(random_codes(3))
    with pytest.raises(error, match=message):
        index.add(value)
    assert len(index) == 3


@pytest.mark.parametrize(
    ("query", "kwargs", "error", "message"),
    [
        (np.zeros((1, 4), dtype=np.uint64), {}, ValueError, r"shape \(4,\)"),
        (np.zeros(3, dtype=np.uint64), {}, ValueError, r"got shape \(3,\)"),
        (np.zeros(4, dtype=np.float32), {}, TypeError, "float32"),
        (np.zeros(4, dtype=np.uint64), {"k": 0}, ValueError, "k must be between 1 and .*, got 0"),
        (np.zeros(4, dtype=np.uint64), {"max_distance": -1}, ValueError, "max_distance .*, got -1"),
    ],
)
def test_search_rejects_bad_input(query, kwargs, error, message):
    index = BinaryIndex(code_bits=256)
    with pytest.raises(error, match=message):
        index.search(query, **kwargs)


def test_read_only_arrays_are_accepted():
    codes = random_codes(4)
    codes.flags.writeable = False
    index = BinaryIndex(256)
    index.add(codes)
    assert index.search(codes[0])[1].tolist() == [0]


def test_huge_k_and_radius_are_clamped():
    index = BinaryIndex(256)
    index.add(random_codes(3))
    found, _ = index.search(random_codes(1)[0], k=2**62, max_distance=10**12)
    assert found.size == 3


def test_unknown_ids():
    index = BinaryIndex(64)
    index.add(random_codes(2, 1))
    assert index.remove(-1) is False and index.remove(2**40) is False
    assert -5 not in index and index.get(-5) is None


def test_repr():
    index = BinaryIndex(128)
    index.add(random_codes(2, 2))
    assert repr(index) == "BinaryIndex(code_bits=128, len=2)"


ops = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 5)),
        st.tuples(st.just("remove"), st.integers(0, 10**6)),
        st.tuples(st.just("search"), st.integers(1, 8), st.one_of(st.none(), st.integers(0, 6))),
        st.tuples(st.just("clear")),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops=ops, seed=st.integers(0, 2**32 - 1), words=st.sampled_from([1, 2, 3, 4, 5, 8, 16, 17]))
def test_matches_numpy_reference(ops, seed, words):
    # Few distinct bits so that ties and radius edges are common.
    rng = np.random.default_rng(seed)
    index = BinaryIndex(code_bits=64 * words)
    model: dict[int, np.ndarray] = {}
    for op in ops:
        if op[0] == "add":
            codes = rng.integers(0, 16, size=(op[1], words), dtype=np.uint64)
            for i, code in zip(index.add(codes).tolist(), codes, strict=True):
                assert i not in model
                model[i] = code
        elif op[0] == "remove" and model:
            victim = sorted(model)[op[1] % len(model)]
            assert index.remove(victim)
            del model[victim]
        elif op[0] == "search":
            query = rng.integers(0, 16, size=words, dtype=np.uint64)
            found, dist = index.search(query, k=op[1], max_distance=op[2])
            if model:
                ids = list(model)
                expect = reference_search(ids, np.stack([model[i] for i in ids]), query, op[1], op[2])
            else:
                expect = []
            assert list(zip(dist.tolist(), found.tolist(), strict=True)) == expect
        elif op[0] == "clear":
            index.clear()
            model.clear()
        assert len(index) == len(model)


def test_concurrent_searches_are_correct_while_writers_run():
    index = BinaryIndex(code_bits=256)
    stable = random_codes(2000)
    stable_ids = index.add(stable)
    errors: list[BaseException] = []
    stop = threading.Event()

    def reader(offset: int) -> None:
        try:
            for i in range(300):
                row = (offset * 300 + i) % len(stable)
                found, dist = index.search(stable[row], k=1)
                # The stable entries are never removed, so each is always its own nearest.
                assert dist[0] == 0 and found[0] == stable_ids[row]
        except BaseException as err:
            errors.append(err)

    def writer() -> None:
        rng = np.random.default_rng(7)
        try:
            while not stop.is_set():
                ids = index.add(rng.integers(0, 2**64, size=(50, 4), dtype=np.uint64))
                for i in ids.tolist():
                    assert index.remove(i)
        except BaseException as err:
            errors.append(err)

    writers = [threading.Thread(target=writer) for _ in range(2)]
    readers = [threading.Thread(target=reader, args=(n,)) for n in range(6)]
    for t in writers + readers:
        t.start()
    for t in readers:
        t.join()
    stop.set()
    for t in writers:
        t.join()
    assert not errors, errors
    assert len(index) == 2000


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"k": -1}, ValueError, "k must be between 1 and"),
        ({"k": 2**64}, ValueError, "k must be between 1 and"),
        ({"k": "3"}, TypeError, "k must be an int, got str"),
        ({"k": True}, TypeError, "k must be an int, got bool"),
        ({"max_distance": 2**63}, ValueError, "max_distance must be between 0 and"),
        ({"max_distance": 1.5}, TypeError, "max_distance must be an int, got float"),
    ],
)
def test_search_integer_arguments(kwargs, error, message):
    index = BinaryIndex(code_bits=64)
    index.add(random_codes(3, 1))
    with pytest.raises(error, match=message):
        index.search(np.zeros(1, dtype=np.uint64), **kwargs)


@pytest.mark.parametrize(("value", "error"), [(-64, ValueError), (2**70, ValueError), ("256", TypeError)])
def test_code_bits_argument_types(value, error):
    with pytest.raises(error, match="code_bits"):
        BinaryIndex(code_bits=value)


def test_ids_that_cannot_exist():
    index = BinaryIndex(64)
    ids = index.add(random_codes(2, 1))
    assert 2**64 not in index and index.remove(2**64) is False and index.get(2**70) is None
    assert index.remove(ids[0]) is True  # numpy integers are ids too
    with pytest.raises(TypeError, match="id must be an int, got str"):
        index.remove("0")


def test_k_as_large_as_the_index_returns_everything_sorted():
    index = BinaryIndex(code_bits=256)
    codes = random_codes(20_000)
    ids = index.add(codes)
    query = codes[5]
    found, dist = index.search(query, k=len(index))
    assert found.size == 20_000
    assert list(zip(dist.tolist(), found.tolist(), strict=True)) == reference_search(ids, codes, query, 20_000, None)


def test_search_releases_the_gil():
    # With a 10 s switch interval, another Python thread can only run while this one has
    # released the GIL; the counter thread yields on every step, so it never holds it long.
    index = BinaryIndex(code_bits=256)
    index.add(random_codes(500_000))
    query = random_codes(1)[0]
    count = 0
    stop = threading.Event()

    def counter() -> None:
        nonlocal count
        while not stop.is_set():
            count += 1
            time.sleep(0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(10)
    thread = threading.Thread(target=counter)
    try:
        thread.start()
        advanced = 0
        for _ in range(20):
            before = count
            index.search(query, k=1)
            advanced += count - before
        assert advanced > 0, "no other thread ran during 20 scans of 500k codes"
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)


def test_ties_go_to_the_lower_slot_even_after_reuse():
    index = BinaryIndex(code_bits=64)
    a, _, c = index.add(np.array([[1], [9], [1]], dtype=np.uint64)).tolist()
    assert index.remove(a)
    (d,) = index.add(np.array([[1]], dtype=np.uint64)).tolist()  # reuses slot 0: a larger id
    assert d > c and d & 0xFFFF_FFFF == 0
    found, dist = index.search(np.array([1], dtype=np.uint64), k=2)
    assert found.tolist() == [d, c] and dist.tolist() == [0, 0]


@pytest.mark.parametrize("pair", [(1, 2), (5, 6), (9, 10), (13, 14)])
def test_ties_above_zero_go_to_the_lower_slot(pair):
    # Two codes at distance 3 in one group of 8 that the AVX-512 kernel reduces out of order.
    codes = np.full((16, 4), np.iinfo(np.uint64).max, dtype=np.uint64)
    codes[list(pair)] = [0b111, 0, 0, 0]
    index = BinaryIndex(256)
    ids = index.add(codes)
    query = np.zeros(4, dtype=np.uint64)
    for radius in (None, 3):
        found, dist = index.search(query, k=1, max_distance=radius)
        assert found.tolist() == [ids[pair[0]]] and dist.tolist() == [3]
        found, _ = index.search_batch(query[None, :], k=2, max_distance=radius)
        assert found.tolist() == [[ids[pair[0]], ids[pair[1]]]]
    store = bsc_native.CacheStore(256, 100)
    stored = [store.put(code, b"") for code in codes]
    assert store.lookup(query)[0] == stored[pair[0]]


def test_kernel_is_named():
    assert bsc_native.KERNEL in {"avx512-vpopcntdq", "avx2", "popcnt", "portable"}


@pytest.mark.parametrize("threads", [None, 1, 2])
def test_search_batch_matches_search(threads):
    rng = np.random.default_rng(3)
    index = bsc_native.BinaryIndex(256)
    # Low-entropy codes: many ties and many codes inside small radii.
    codes = rng.integers(0, 16, size=(6000, 4), dtype=np.uint64)
    index.add(codes)
    index.remove(int(index.ids()[10]))  # a free slot in the middle, reused by nothing
    queries = np.ascontiguousarray(np.concatenate([codes[:300], rng.integers(0, 16, size=(500, 4), dtype=np.uint64)]))
    for k, radius in [(1, None), (7, None), (50, 3)]:
        ids, dists = index.search_batch(queries, k=k, max_distance=radius, threads=threads)
        assert ids.shape == dists.shape and ids.shape[0] == len(queries) and ids.dtype == np.int64
        for j in range(0, len(queries), 41):
            want_ids, want_d = index.search(queries[j], k=k, max_distance=radius)
            got = ids[j][ids[j] >= 0]
            np.testing.assert_array_equal(got, want_ids)
            np.testing.assert_array_equal(dists[j][: len(got)], want_d)
            assert (dists[j][len(got) :] == -1).all()


def test_search_batch_rejects_bad_input():
    index = bsc_native.BinaryIndex(128)
    index.add(np.zeros((3, 2), dtype=np.uint64))
    with pytest.raises(ValueError, match=r"queries must have shape \(n, 2\)"):
        index.search_batch(np.zeros((3, 4), dtype=np.uint64))
    with pytest.raises(ValueError, match="non-empty batch"):
        index.search_batch(np.zeros((0, 2), dtype=np.uint64))
    with pytest.raises(ValueError, match="threads must be between 1 and 1024"):
        index.search_batch(np.zeros((1, 2), dtype=np.uint64), threads=0)
    with pytest.raises(TypeError, match="uint64"):
        index.search_batch(np.zeros((1, 2), dtype=np.int64))
    ids, dists = index.search_batch(np.zeros((2, 2), dtype=np.uint64), k=5)
    assert ids.shape == (2, 3) and (dists == 0).all()
    empty = bsc_native.BinaryIndex(128)
    ids, _ = empty.search_batch(np.zeros((2, 2), dtype=np.uint64))
    assert ids.shape == (2, 1) and (ids == -1).all()
