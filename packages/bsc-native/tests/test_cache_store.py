from __future__ import annotations

import time

import numpy as np
import pytest

from bsc_native import CacheStore


def code(value: int, words: int = 4) -> np.ndarray:
    out = np.zeros(words, dtype=np.uint64)
    out[0] = value
    return out


def test_put_lookup_and_metadata():
    store = CacheStore(code_bits=256, max_entries=10)
    before = time.time()
    entry_id = store.put(code(0b1011), b"payload")
    found = store.lookup(code(0b1001), max_distance=1)
    assert found is not None
    got_id, distance, payload, created, accessed, count = found
    assert (got_id, distance, payload, count) == (entry_id, 1, b"payload", 1)
    # Times are whole seconds, rounded down.
    assert int(before) <= created <= accessed <= time.time()
    assert created == int(created) and accessed == int(accessed)
    assert store.lookup(code(0b0100), max_distance=1) is None
    stats = store.stats()
    assert (stats["hits"], stats["misses"], stats["size"], stats["max_entries"]) == (1, 1, 1, 10)


def test_lru_eviction_order():
    store = CacheStore(code_bits=64, max_entries=3)
    a, b, c = (store.put(code(v, 1), bytes([v])) for v in (1, 2, 4))
    assert store.lookup(code(1, 1), max_distance=0) is not None  # a is now most recent
    d = store.put(code(8, 1), b"d")
    assert b not in store and {a, c, d} == set(store.lru_ids().tolist())
    assert store.lru_ids().tolist() == [d, a, c]
    assert store.stats()["evictions"] == 1
    assert len(store) == 3


def test_peek_does_not_touch():
    store = CacheStore(code_bits=64, max_entries=2)
    a = store.put(code(1, 1), b"a")
    b = store.put(code(2, 1), b"b")
    assert store.peek(a)[2] == b"a"
    assert store.lru_ids().tolist() == [b, a]
    assert store.peek(12345) is None
    assert store.stats()["hits"] == 0


def test_delete_clear_and_memory():
    store = CacheStore(code_bits=64, max_entries=100)
    empty = store.memory_bytes()
    ids = [store.put(code(i, 1), b"x" * 1000) for i in range(10)]
    assert store.memory_bytes() >= empty + 10_000
    assert store.delete(ids[0]) and not store.delete(ids[0])
    np.testing.assert_array_equal(store.get_code(ids[1]), code(1, 1))
    store.clear()
    assert len(store) == 0 and all(i not in store for i in ids)
    assert store.memory_bytes() < empty + 10_000


def test_search_does_not_count():
    store = CacheStore(code_bits=64, max_entries=5)
    ids = [store.put(code(v, 1), b"") for v in (0, 1, 3)]
    found, dist = store.search(code(0, 1), k=5)
    assert found.tolist() == ids and dist.tolist() == [0, 1, 2]
    assert store.stats()["hits"] == 0


def test_candidates_copy_the_nearest_entries_without_marking_or_counting():
    store = CacheStore(code_bits=64, max_entries=10)
    a = store.put(code(0b0, 1), b"a", namespace="n")
    b = store.put(code(0b1, 1), b"b", namespace="n")
    c = store.put(code(0b11, 1), b"c", namespace="n")
    store.put(code(0b0, 1), b"other", namespace="m")  # another namespace: never a candidate
    store.put(code(0b111, 1), b"far", namespace="n")
    before = store.lru_ids().tolist()
    found, nearest = store.candidates(code(0, 1), 3, 2, namespace="n")
    assert [(e[0], e[1], e[2], e[5]) for e in found] == [(a, 0, b"a", 0), (b, 1, b"b", 0), (c, 2, b"c", 0)]
    assert nearest == 0
    assert store.candidates(code(0, 1), 2, 64, namespace="n")[0][-1][0] == b  # k caps the count
    found, nearest = store.candidates(code(0b1111, 1), 5, 0, namespace="n")
    assert found == [] and nearest == 1  # the nearest distance even beyond the radius
    assert store.candidates(code(0, 1), 5, 64, namespace="nowhere") == ([], None)
    assert store.lru_ids().tolist() == before
    stats = store.stats()
    assert (stats["hits"], stats["misses"]) == (0, 0)
    store.put(code(0b0, 1), b"soon gone", namespace="t", ttl=0.05)
    time.sleep(0.1)
    assert store.candidates(code(0, 1), 5, 64, namespace="t") == ([], None)  # expired: never a candidate
    with pytest.raises(ValueError, match=r"code must have shape \(1,\)"):
        store.candidates(code(0, 2), 1, 1, namespace="n")


def test_lookup_id_serves_only_a_live_entry_of_the_namespace():
    store = CacheStore(code_bits=64, max_entries=10)
    a = store.put(code(1, 1), b"a", namespace="n")
    assert store.lookup_id(a, namespace="m") is None  # another namespace
    assert store.lookup_id(a + (1 << 32), namespace="n") is None  # another generation of the slot
    assert store.lookup_id(-1, namespace="n") is None
    entry = store.lookup_id(a, namespace="n")
    assert entry is not None and entry[0] == a and entry[2] == b"a" and entry[5] == 1  # marked used
    assert store.stats()["hits"] == 1 and store.stats()["misses"] == 0
    store.delete(a)
    replaced = store.put(code(1, 1), b"new", namespace="n")  # reuses the slot
    assert store.lookup_id(a, namespace="n") is None and store.peek(replaced)[5] == 0  # never touched
    store.put(code(2, 1), b"soon gone", namespace="t", ttl=0.05)
    gone = store.put(code(3, 1), b"soon gone", namespace="t", ttl=0.05)
    time.sleep(0.1)
    assert store.lookup_id(gone, namespace="t") is None


@pytest.mark.parametrize("max_entries", [0, -1, 2**32, 2**70])
def test_bad_max_entries(max_entries):
    with pytest.raises(ValueError, match=f"max_entries must be between 1 and 4294967294, got {max_entries}"):
        CacheStore(code_bits=256, max_entries=max_entries)


def test_max_entries_must_be_an_int():
    with pytest.raises(TypeError, match="max_entries must be an int, got float"):
        CacheStore(max_entries=10.0)


def test_bad_code_changes_nothing():
    store = CacheStore(code_bits=256, max_entries=1)
    store.put(code(1), b"a")
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        store.put(np.zeros(2, dtype=np.uint64), b"b")
    with pytest.raises(TypeError):
        store.put(code(1), "not bytes")  # type: ignore[arg-type]
    assert len(store) == 1 and store.stats()["evictions"] == 0
    assert repr(store) == "CacheStore(code_bits=256, max_entries=1, len=1)"


def test_response_bytes_and_responses_kept_through_many_deletes():
    store = CacheStore(64, 5000)
    rng = np.random.default_rng(5)
    payloads = {}
    for i in range(3000):
        payload = bytes(rng.integers(0, 256, size=int(rng.integers(0, 2000)), dtype=np.uint8))
        payloads[store.put(np.array([i], dtype=np.uint64), payload)] = payload
    assert store.stats()["response_bytes"] == sum(map(len, payloads.values()))
    # Deleting most entries frees their responses; the rest read back byte for byte.
    for entry_id in list(payloads)[:2500]:
        assert store.delete(entry_id)
        del payloads[entry_id]
    assert store.stats()["response_bytes"] == sum(map(len, payloads.values()))
    for entry_id, payload in payloads.items():
        assert store.peek(entry_id)[2] == payload
    store.clear()
    assert store.stats()["response_bytes"] == 0
