"""Concurrent puts, lookups, deletes, namespace deletes, expiry and saves from 8 threads and 100
async tasks: every invariant holds throughout (size <= max_entries, nothing served after its
delete or expiry, no hit across namespaces)."""

from __future__ import annotations

import asyncio
import os
import random
import threading
import time
from pathlib import Path

import numpy as np

from bsc import BinaryEncoder, BinarySemanticCache

DIM = 32
NAMESPACES = ["alpha", "beta", "gamma"]
SECONDS = float(os.environ.get("BSC_STRESS_SECONDS", "3"))


def test_invariants_under_concurrency(tmp_path: Path) -> None:
    encoder = BinaryEncoder(DIM, 256, seed=3)
    max_entries = 200
    cache = BinarySemanticCache(encoder, max_entries=max_entries, similarity_threshold=0.95)
    vectors = np.random.default_rng(0).normal(size=(64, DIM))
    # id -> when its delete returned: a lookup that starts later must never return it.
    deleted: dict[int, float] = {}
    lock = threading.Lock()
    violations: list[str] = []
    counts = {"puts": 0, "hits": 0, "misses": 0, "saves": 0}
    stop = time.monotonic() + SECONDS

    def check_hit(namespace: str, hit: object, started: float, started_wall: float) -> None:
        entry = hit  # a CacheEntry
        response = entry.response  # type: ignore[attr-defined]
        if response["ns"] != namespace:
            violations.append(f"{namespace} lookup served an entry of {response['ns']}")
        # `expires` was computed just before the put, so the engine's deadline is a little later.
        if response["expires"] is not None and started_wall > response["expires"] + 0.05:
            violations.append(f"served an entry {started_wall - response['expires']:.3f} s after it expired")
        with lock:
            gone = deleted.get(entry.id)  # type: ignore[attr-defined]
        if gone is not None and gone < started:
            violations.append(f"served entry {entry.id} after its delete returned")  # type: ignore[attr-defined]

    def one_step(rng: random.Random) -> None:
        namespace = rng.choice(NAMESPACES)
        i = rng.randrange(len(vectors))
        action = rng.random()
        if action < 0.45:
            ttl = rng.choice([None, 0.05, 0.3, 5.0])
            expires = None if ttl is None else time.time() + ttl
            cache.put(vectors[i], {"ns": namespace, "i": i, "expires": expires}, namespace=namespace, ttl=ttl)
            counts["puts"] += 1
        elif action < 0.9:
            started, started_wall = time.monotonic(), time.time()
            hit = cache.get(vectors[i], namespace=namespace)
            if hit is None:
                counts["misses"] += 1
            else:
                counts["hits"] += 1
                check_hit(namespace, hit, started, started_wall)
        elif action < 0.97:
            hit = cache.get(vectors[i], namespace=namespace)
            if hit is not None:
                cache.delete(hit.id)
                with lock:
                    deleted.setdefault(hit.id, time.monotonic())
        elif action < 0.99:
            cache.purge_expired()
        else:
            cache.delete_namespace(namespace)
        if len(cache) > max_entries:
            violations.append(f"size {len(cache)} > max_entries {max_entries}")

    def thread_body(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            one_step(rng)

    def saver() -> None:
        while time.monotonic() < stop:
            cache.save(tmp_path / "stress.bsc")
            counts["saves"] += 1
            time.sleep(0.05)

    async def task_body(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            # Native calls release the GIL; run them off the event loop.
            await asyncio.to_thread(one_step, rng)

    async def tasks() -> None:
        await asyncio.gather(*(task_body(1000 + s) for s in range(100)))

    threads = [threading.Thread(target=thread_body, args=(s,)) for s in range(8)]
    threads.append(threading.Thread(target=saver))
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()

    assert not violations, violations[:5]
    assert counts["puts"] > 100 and counts["hits"] > 100 and counts["saves"] > 2, counts
    stats = cache.stats()
    assert stats.size <= max_entries and stats.size == len(cache)
    assert stats.hits >= counts["hits"]
    # The last save loads, and holds only entries of the three namespaces.
    loaded = BinarySemanticCache.load(tmp_path / "stress.bsc")
    assert len(loaded) <= max_entries
    for entry_id in loaded._store.lru_ids().tolist():
        namespace, _ = loaded._store.placement(entry_id)
        entry = loaded.peek(entry_id)
        assert entry is not None and entry.response["ns"] == namespace.decode()
