"""The cache store's 48-byte entry: approximate LRU, exact access counts, whole-second times."""

from __future__ import annotations

import time
from collections import OrderedDict
from pathlib import Path

import numpy as np

from bsc_native import CacheStore


def codes(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 2**64, size=(n, 4), dtype=np.uint64)


def test_small_stores_evict_exactly_the_least_recently_used() -> None:
    store = CacheStore(256, 100)
    rows = codes(300)
    ids = [store.put(rows[i], b"", key=i + 1) for i in range(100)]
    reference: OrderedDict[int, None] = OrderedDict((i, None) for i in ids)
    rng = np.random.default_rng(1)
    for step in range(100, 300):
        for i in rng.choice(len(ids), size=3, replace=False):
            if store.lookup_key(int(i) + 1) is not None:
                reference.move_to_end(ids[i])
        new = store.put(rows[step], b"")
        reference[new] = None
        reference.popitem(last=False)
        ids.append(new)
        assert list(store.lru_ids()) == list(reversed(reference))


def test_large_stores_evict_old_entries_and_keep_recent_ones() -> None:
    n = 20_000
    store = CacheStore(256, n)
    rows = codes(n + 2_000)
    ids = [store.put(rows[i], b"", key=i + 1) for i in range(n)]
    # Use the newest three quarters again: the oldest quarter is the LRU tail.
    for i in range(n // 4, n):
        assert store.lookup_key(i + 1) is not None
    for i in range(n, n + 2_000):
        store.put(rows[i], b"")
    survivors = sum(i in store for i in ids[: n // 4])
    used_survivors = sum(i in store for i in ids[n // 4 :])
    assert used_survivors >= 3 * n // 4 - 100, used_survivors
    assert survivors <= n // 4 - 1_900, survivors


def test_access_counts_are_exact_past_255_and_survive_a_save(tmp_path: Path) -> None:
    store = CacheStore(256, 10)
    a = store.put(codes(1)[0], b"a", key=7)
    for _ in range(1_000):
        found = store.lookup_key(7)
        assert found is not None
    assert found[5] == 1_000
    path = tmp_path / "c.bsc"
    store.save(path)
    loaded = CacheStore.load(path)
    entry = loaded.peek(a)
    assert entry is not None and entry[5] == 1_000
    assert loaded.peek(a) == store.peek(a)


def test_times_are_whole_seconds() -> None:
    store = CacheStore(256, 10)
    before = time.time()
    a = store.put(codes(1)[0], b"a", ttl=30.0)
    entry = store.peek(a)
    assert entry is not None
    _, _, _, created, accessed, count = entry
    assert created == int(created) == accessed and count == 0
    assert int(before) <= created <= time.time()
    placement = store.placement(a)
    assert placement is not None and placement[1] is not None
    # The deadline is the put's time plus the TTL to the tenth, not the whole second's.
    assert before + 30.0 - 0.2 <= placement[1] <= time.time() + 30.0
