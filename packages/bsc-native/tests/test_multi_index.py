"""The multi-index gives exactly the flat scan's results: random and clustered codes, codes at
exactly the radius, empty and overfull substrings, deletes interleaved with puts, namespaces."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bsc_native import BinaryIndex, CacheStore

WORDS = 4


def flip(code: np.ndarray, bits: np.ndarray) -> np.ndarray:
    out = code.copy()
    for bit in bits:
        out[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    return out


def near(base: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    return flip(base, rng.choice(WORDS * 64, size=d, replace=False))


def pair(codes: np.ndarray, substrings: int | None = None) -> tuple[BinaryIndex, BinaryIndex]:
    flat, indexed = BinaryIndex(256), BinaryIndex(256)
    flat.configure_search("flat")
    indexed.configure_search("indexed", substrings=substrings)
    assert (flat.add(codes) == indexed.add(codes)).all()
    return flat, indexed


def same(a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    assert a[0].tolist() == b[0].tolist()
    assert a[1].tolist() == b[1].tolist()


def test_configure_search_checks_its_arguments() -> None:
    index = BinaryIndex(256)
    with pytest.raises(ValueError, match="'auto', 'flat' or 'indexed'"):
        index.configure_search("fast")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="substrings must be between 2 and 64"):
        index.configure_search("indexed", substrings=65)
    with pytest.raises(ValueError, match="substrings"):
        index.configure_search("indexed", substrings=1)
    assert index.search_info() == {
        "mode": "auto",
        "built": False,
        "substrings": None,
        "substring_bits": None,
        "index_entries": 0,
        "index_bytes": 0,
    }


def test_random_codes_every_radius() -> None:
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 2**64, size=(30_000, WORDS), dtype=np.uint64)
    flat, indexed = pair(codes)
    picks = zip(rng.integers(0, 30_000, 40), rng.integers(0, 70, 40), strict=True)
    queries = [near(codes[i], int(d), rng) for i, d in picks]
    queries += list(rng.integers(0, 2**64, size=(10, WORDS), dtype=np.uint64))
    for q in queries:
        for r in (0, 5, 20, 37, 52, 64, 100):
            for k in (1, 4, 25):
                same(indexed.search(q, k=k, max_distance=r), flat.search(q, k=k, max_distance=r))
    info = indexed.search_info()
    assert info["built"] and info["substrings"] and info["index_entries"] == 30_000


def test_codes_at_exactly_the_radius() -> None:
    # For each radius, codes whose flips are spread so that every substring but one is just over
    # its share: the pigeonhole bound is met with equality, and one bit more puts them outside.
    rng = np.random.default_rng(9)
    query = rng.integers(0, 2**64, size=WORDS, dtype=np.uint64)
    background = rng.integers(0, 2**64, size=(5000, WORDS), dtype=np.uint64)
    rows = [background]
    for r in (0, 1, 8, 9, 36, 37, 38, 52, 53):
        for _ in range(6):
            rows.append(near(query, r, rng)[None, :])
    codes = np.concatenate(rows)
    for m in (None, 3, 9, 11, 16):
        flat, indexed = pair(codes, m)
        for r in (0, 1, 8, 9, 36, 37, 38, 51, 52, 53):
            for k in (1, 3, 40):
                same(indexed.search(query, k=k, max_distance=r), flat.search(query, k=k, max_distance=r))


def test_empty_and_overfull_substrings() -> None:
    # All-zero, all-one and many identical codes: one bucket holds everything, the rest are empty.
    codes = np.concatenate(
        [
            np.zeros((3000, WORDS), dtype=np.uint64),
            np.full((3000, WORDS), np.iinfo(np.uint64).max, dtype=np.uint64),
            np.tile(np.array([1, 2, 3, 4], dtype=np.uint64), (3000, 1)),
        ]
    )
    flat, indexed = pair(codes)
    zero = np.zeros(WORDS, dtype=np.uint64)
    for q in (zero, ~zero, np.array([1, 2, 3, 4], dtype=np.uint64), flip(zero, np.arange(30))):
        for r in (0, 3, 30, 128, 256):
            for k in (1, 10, 5000):
                same(indexed.search(q, k=k, max_distance=r), flat.search(q, k=k, max_distance=r))


@settings(max_examples=30, deadline=None)
@given(
    ops=st.lists(st.tuples(st.integers(0, 9), st.integers(0, 2**31)), min_size=1, max_size=400),
    capacity=st.integers(5, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_cache_with_evictions_deletes_and_namespaces(ops: list[tuple[int, int]], capacity: int, seed: int) -> None:
    # Two stores fed the same writes, one searching flat and one indexed: puts that evict and
    # reuse slots, deletes, namespaces; every lookup and search agrees.
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**64, size=WORDS, dtype=np.uint64)
    stores = [CacheStore(256, capacity), CacheStore(256, capacity)]
    stores[0].configure_search("flat")
    stores[1].configure_search("indexed", substrings=int(rng.integers(2, 13)))
    ids: list[int] = []
    for op, pick in ops:
        namespace = ("a", "b", None)[pick % 3]
        if op < 6:
            code = near(base, pick % 90, rng)
            got = [s.put(code, b"x", namespace=namespace) for s in stores]
            assert got[0] == got[1]
            ids.append(got[0])
        elif op < 8 and ids:
            victim = ids[pick % len(ids)]
            assert stores[0].delete(victim) == stores[1].delete(victim)
        else:
            q = near(base, pick % 60, rng)
            r = pick % 80
            found = [s.search(q, k=1 + pick % 5, max_distance=r, namespace=namespace) for s in stores]
            same(found[1], found[0])
            hits = [s.lookup(q, r, namespace=namespace) for s in stores]
            assert (hits[0] and hits[0][:3]) == (hits[1] and hits[1][:3])


def test_writes_after_the_index_is_built_are_found() -> None:
    # Built first, then many puts (past the tail's merge size), deletes and slot reuse.
    rng = np.random.default_rng(3)
    codes = rng.integers(0, 2**64, size=(20_000, WORDS), dtype=np.uint64)
    flat, indexed = pair(codes)
    assert indexed.build_index()
    ids = list(indexed.ids())
    for _ in range(3):
        for i in rng.choice(len(ids), size=3000, replace=False):
            assert flat.remove(int(ids[i])) == indexed.remove(int(ids[i]))
        more = np.stack([near(codes[i], int(rng.integers(0, 40)), rng) for i in rng.integers(0, 20_000, 6000)])
        assert flat.add(more).tolist() == indexed.add(more).tolist()
        ids = list(indexed.ids())
        for i in rng.integers(0, len(ids), 30):
            q = near(indexed.get(int(ids[i])), int(rng.integers(0, 45)), rng)
            for r in (10, 37, 52):
                same(indexed.search(q, k=3, max_distance=r), flat.search(q, k=3, max_distance=r))
