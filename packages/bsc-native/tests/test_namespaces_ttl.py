"""Namespaces (hard isolation inside the scan) and time to live in CacheStore."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from bsc_native import CacheStore


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**63, size=(n, 4), dtype=np.uint64)


def test_identical_codes_in_two_namespaces_never_cross() -> None:
    store = CacheStore(code_bits=256, max_entries=10_000)
    c = codes(300)
    for i, code in enumerate(c):
        store.put(code, b"A%d" % i, namespace="tenant-a")
        store.put(code, b"B%d" % i, namespace=b"tenant-b")
    for i, code in enumerate(c):
        a = store.lookup(code, max_distance=0, namespace="tenant-a")
        b = store.lookup(code, max_distance=0, namespace="tenant-b")
        assert a is not None and a[2] == b"A%d" % i
        assert b is not None and b[2] == b"B%d" % i
        assert store.lookup(code, max_distance=256) is None  # the unnamed namespace is empty
        assert store.lookup(code, max_distance=256, namespace="tenant-c") is None
    assert store.stats()["namespaces"] == 2


def test_a_nearer_entry_in_another_namespace_does_not_hide_a_hit() -> None:
    """The filter runs inside the scan: 1,000 entries of tenant-b lie nearer to the query than
    tenant-a's one entry, and tenant-a still finds it (a post-filter on the top-1 would miss)."""
    store = CacheStore(code_bits=256, max_entries=10_000)
    query = np.zeros(4, dtype=np.uint64)
    far = np.array([0xFF, 0, 0, 0], dtype=np.uint64)  # 8 bits away
    mine = store.put(far, b"mine", namespace="tenant-a")
    for i in range(1000):
        near = np.array([1 << (i % 8), 0, 0, 0], dtype=np.uint64)  # 1 bit away
        store.put(near, b"theirs", namespace="tenant-b")
    found = store.lookup(query, max_distance=10, namespace="tenant-a")
    assert found is not None and found[0] == mine and found[1] == 8
    ids, distances = store.search(query, k=3, namespace="tenant-a")
    assert ids.tolist() == [mine] and distances.tolist() == [8]
    assert len(store.search(query, k=3)[0]) == 3  # no namespace: every namespace


def test_delete_namespace_and_placement() -> None:
    store = CacheStore(code_bits=256)
    c = codes(10)
    a_ids = [store.put(code, b"a", namespace="a") for code in c[:5]]
    b_id = store.put(c[5], b"b", namespace="b", ttl=60)
    assert store.placement(a_ids[0]) == (b"a", None)
    namespace, expires_at = store.placement(b_id)
    assert namespace == b"b" and expires_at is not None and 59 < expires_at - time.time() <= 60
    assert store.delete_namespace("a") == 5
    assert store.delete_namespace("a") == 0
    assert len(store) == 1 and all(i not in store for i in a_ids)
    assert store.placement(a_ids[0]) is None


def test_an_expired_entry_is_never_served_and_is_reclaimed() -> None:
    store = CacheStore(code_bits=256, max_entries=100)
    c = codes(3)
    short = store.put(c[0], b"short", ttl=0.2)
    store.put(c[1], b"long", ttl=3600)
    assert store.lookup(c[0], max_distance=0) is not None
    time.sleep(0.25)
    assert store.lookup(c[0], max_distance=0) is None  # expired: not served, even before reclaiming
    assert short in store
    assert store.purge_expired() == 1
    assert short not in store and store.stats()["expirations"] == 1
    assert store.lookup(c[1], max_distance=0) is not None


def test_puts_reclaim_expired_entries_before_evicting_live_ones() -> None:
    store = CacheStore(code_bits=256, max_entries=3)
    c = codes(5)
    store.put(c[0], b"x", ttl=0.1)
    keep = [store.put(code, b"y") for code in c[1:3]]
    time.sleep(0.15)
    store.put(c[3], b"z")  # the cache is full, but an entry has expired: it goes, not an LRU one
    stats = store.stats()
    assert (stats["expirations"], stats["evictions"], stats["size"]) == (1, 0, 3)
    assert all(i in store for i in keep)


@pytest.mark.parametrize(
    ("kwargs", "error"),
    [
        ({"ttl": 0}, ValueError),
        ({"ttl": -1.0}, ValueError),
        ({"ttl": float("nan")}, ValueError),
        ({"ttl": float("inf")}, ValueError),
        ({"ttl": True}, TypeError),
        ({"ttl": "60"}, TypeError),
        ({"namespace": 3}, TypeError),
        ({"namespace": "n" * 1025}, ValueError),
    ],
)
def test_bad_namespace_or_ttl_stores_nothing(kwargs, error) -> None:  # type: ignore[no-untyped-def]
    store = CacheStore(code_bits=256)
    with pytest.raises(error):
        store.put(codes(1)[0], b"x", **kwargs)
    assert len(store) == 0


def test_namespaces_and_ttls_survive_save_and_load(tmp_path: Path) -> None:
    store = CacheStore(code_bits=256, max_entries=50)
    c = codes(20)
    ids = [store.put(code, b"%d" % i, namespace=f"ns{i % 3}", ttl=None if i % 2 else 600) for i, code in enumerate(c)]
    store.delete_namespace("ns2")
    path = tmp_path / "c.bsc"
    store.save(path)
    loaded = CacheStore.load(path)
    for entry_id in ids:
        assert loaded.placement(entry_id) == store.placement(entry_id)
    for code in c:
        for ns in ("ns0", "ns1", "ns2"):
            a = store.lookup(code, max_distance=0, namespace=ns)
            b = loaded.lookup(code, max_distance=0, namespace=ns)
            assert (a is None) == (b is None) and (a is None or a[:3] == b[:3])
    assert loaded.stats()["namespaces"] == 2


def test_exact_keys_are_per_namespace_replace_and_survive_a_save(tmp_path: Path) -> None:
    store = CacheStore(code_bits=256, max_entries=100)
    c = codes(3)
    a = store.put(c[0], b"a", namespace="x", key=2**64 - 1)
    b = store.put(c[1], b"b", namespace="y", key=2**64 - 1)
    hit = store.lookup_key(2**64 - 1, namespace="x")
    assert hit is not None and hit[0] == a and hit[1] == 0 and hit[2] == b"a"
    assert store.lookup_key(2**64 - 1, namespace="y")[0] == b  # type: ignore[index]
    assert store.lookup_key(2**64 - 1) is None  # the unnamed namespace
    assert store.lookup_key(5, namespace="x") is None
    assert store.stats()["hits"] == 2 and store.stats()["misses"] == 0  # a key miss counts nothing
    # The same key in the same namespace replaces the entry.
    a2 = store.put(c[2], b"a2", namespace="x", key=2**64 - 1)
    assert a not in store and len(store) == 2 and store.stats()["evictions"] == 0
    path = tmp_path / "k.bsc"
    store.save(path)
    loaded = CacheStore.load(path)
    assert loaded.lookup_key(2**64 - 1, namespace="x")[0] == a2  # type: ignore[index]
    assert loaded.delete(a2)
    assert loaded.lookup_key(2**64 - 1, namespace="x") is None
    assert loaded.namespaces() == {b"y": 1}
    t = store.put(c[0], b"t", namespace="x", key=9, ttl=0.2)
    assert store.lookup_key(9, namespace="x")[0] == t  # type: ignore[index]
    time.sleep(0.25)
    assert store.lookup_key(9, namespace="x") is None


@pytest.mark.parametrize(
    ("key", "error"), [(-1, ValueError), (2**64, ValueError), (1.5, TypeError), (True, TypeError), ("k", TypeError)]
)
def test_bad_keys_are_refused(key: object, error: type[Exception]) -> None:
    store = CacheStore(code_bits=256)
    with pytest.raises(error, match="key"):
        store.put(codes(1)[0], b"x", key=key)
    assert len(store) == 0
    with pytest.raises(error, match="key"):
        store.lookup_key(key)


def test_lookup_nearest_reports_the_best_candidate_beyond_the_radius() -> None:
    store = CacheStore(code_bits=256)
    query = np.zeros(4, dtype=np.uint64)
    assert store.lookup_nearest(query, 10, namespace="a") == (None, None)
    store.put(np.array([0xFFF, 0, 0, 0], dtype=np.uint64), b"x", namespace="a")  # 12 bits away
    store.put(np.zeros(4, dtype=np.uint64), b"other", namespace="b")
    assert store.lookup_nearest(query, 10, namespace="a") == (None, 12)
    found, nearest = store.lookup_nearest(query, 12, namespace="a")
    assert nearest == 12 and found is not None and found[2] == b"x" and found[1] == 12
    assert store.stats()["hits"] == 1 and store.stats()["misses"] == 2
