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
    # id -> the time its put returned + its ttl: it must have expired by then.
    expiry: dict[int, float] = {}
    lock = threading.Lock()
    violations: list[str] = []
    counts = {"puts": 0, "hits": 0, "misses": 0, "saves": 0}
    stop = time.monotonic() + SECONDS

    def check_hit(namespace: str, hit: object, started: float, started_wall: float) -> None:
        entry = hit  # a CacheEntry
        response = entry.response  # type: ignore[attr-defined]
        if response["ns"] != namespace:
            violations.append(f"{namespace} lookup served an entry of {response['ns']}")
        # The engine's deadline is the put's own time + ttl (rounded down to a tenth), so it is
        # at most the time the put returned + ttl: an entry served after that had expired. (Not
        # `expires`, computed before the put: a put may wait, for a save say, before it stores.)
        latest = expiry.get(entry.id)  # type: ignore[attr-defined]
        if latest is not None and started_wall > latest + 0.005:
            violations.append(f"served an entry {started_wall - latest:.3f} s after it expired")
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
            entry_id = cache.put(
                vectors[i], {"ns": namespace, "i": i, "expires": expires}, namespace=namespace, ttl=ttl
            )
            if ttl is not None:
                expiry[entry_id] = time.time() + ttl
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


def test_semantic_cache_invariants_under_concurrency(tmp_path: Path) -> None:
    """The same invariants through SemanticCache: sync calls from 8 threads and alookup/astore
    from 100 async tasks, with deletes by id, namespace and tag, mark_wrong, TTLs and saves. A
    lookup that starts after a delete returned never serves an entry whose store returned
    before that delete started."""
    from bsc import SemanticCache
    from bsc_backends.testing import WordEmbedder

    max_entries = 150
    cache = SemanticCache(WordEmbedder(32), similarity_threshold=0.7, max_entries=max_entries)
    prompts = [f"how do I {verb} the {thing}" for verb in ("fix", "clean", "paint", "sell") for thing in "abcdefghij"]
    models = ["m1", "m2"]
    tags = ["t0", "t1", "t2"]
    lock = threading.Lock()
    stored: dict[int, float] = {}  # id -> when its store returned
    expiry: dict[int, float] = {}  # id -> the wall-clock time its store returned + its ttl
    deleted: dict[int, float] = {}  # id -> when its delete returned
    # (namespace or tag) -> [(when the delete started, when it returned)]
    group_deletes: dict[str, list[tuple[float, float]]] = {}
    violations: list[str] = []
    counts = {"stores": 0, "hits": 0, "exact": 0}
    stop = time.monotonic() + SECONDS

    def served_after_delete(key: str, entry_id: int, started: float) -> bool:
        done = stored.get(entry_id)
        return done is not None and any(done < begun and ended < started for begun, ended in group_deletes.get(key, []))

    def check(namespace: str, model: str, hit: object, started: float, started_wall: float) -> None:
        response = hit.response  # type: ignore[attr-defined]
        entry_id = hit.id  # type: ignore[attr-defined]
        if hit.namespace != namespace or response["ns"] != namespace or response["model"] != model:  # type: ignore[attr-defined]
            violations.append(f"{namespace}/{model} lookup served {response}")
        latest = expiry.get(entry_id)  # the time its store returned + its ttl (see the test above)
        if latest is not None and started_wall > latest + 0.005:
            violations.append(f"served an entry {started_wall - latest:.3f} s after it expired")
        with lock:
            gone = deleted.get(entry_id)
            if gone is not None and gone < started:
                violations.append(f"served entry {entry_id} after its delete returned")
            for key in ("ns:" + namespace, "tag:" + response["tag"]):
                if served_after_delete(key, entry_id, started):
                    violations.append(f"served entry {entry_id} after {key} was deleted (exact={hit.exact})")  # type: ignore[attr-defined]

    def plan(rng: random.Random) -> tuple[str, str, str, float]:
        return rng.choice(NAMESPACES), rng.choice(models), rng.choice(prompts), rng.random()

    def record(namespace: str, model: str, rng: random.Random) -> tuple[dict[str, object], float | None, str]:
        ttl = rng.choice([None, 0.05, 0.3, 5.0])
        tag = rng.choice(tags)
        expires = None if ttl is None else time.time() + ttl
        return {"ns": namespace, "model": model, "expires": expires, "tag": tag}, ttl, tag

    def after_store(entry_id: int | None, ttl: float | None) -> None:
        if entry_id is not None:
            with lock:
                stored[entry_id] = time.monotonic()
                if ttl is not None:
                    expiry[entry_id] = time.time() + ttl
                counts["stores"] += 1

    def after_lookup(namespace: str, model: str, hit: object, started: float, started_wall: float) -> None:
        if hit is not None:
            with lock:
                counts["hits"] += 1
                counts["exact"] += bool(hit.exact)  # type: ignore[attr-defined]
            check(namespace, model, hit, started, started_wall)

    def group_delete(key: str, delete: object) -> None:
        begun = time.monotonic()
        delete()  # type: ignore[operator]
        with lock:
            group_deletes.setdefault(key, []).append((begun, time.monotonic()))

    def one_step(rng: random.Random) -> None:
        namespace, model, prompt, action = plan(rng)
        if action < 0.4:
            response, ttl, tag = record(namespace, model, rng)
            after_store(cache.store(prompt, response, namespace=namespace, ttl=ttl, tags=[tag], model=model), ttl)
        elif action < 0.9:
            started, started_wall = time.monotonic(), time.time()
            hit = cache.lookup(prompt + rng.choice(["", " please", " now"]), namespace=namespace, model=model)
            after_lookup(namespace, model, hit, started, started_wall)
        elif action < 0.95:
            hit = cache.lookup(prompt, namespace=namespace, model=model)
            if hit is not None:
                (cache.mark_wrong if rng.random() < 0.5 else lambda h: cache.delete(h.id))(hit)
                with lock:
                    deleted.setdefault(hit.id, time.monotonic())
        elif action < 0.98:
            tag = rng.choice(tags)
            group_delete("tag:" + tag, lambda: cache.delete_tag(tag))
        elif action < 0.99:
            cache.purge_expired()
        else:
            group_delete("ns:" + namespace, lambda: cache.delete_namespace(namespace))
        if len(cache) > max_entries:
            violations.append(f"size {len(cache)} > max_entries {max_entries}")

    async def async_step(rng: random.Random) -> None:
        namespace, model, prompt, action = plan(rng)
        if action < 0.4:
            response, ttl, tag = record(namespace, model, rng)
            after_store(
                await cache.astore(prompt, response, namespace=namespace, ttl=ttl, tags=[tag], model=model), ttl
            )
        else:
            started, started_wall = time.monotonic(), time.time()
            hit = await cache.alookup(prompt, namespace=namespace, model=model)
            after_lookup(namespace, model, hit, started, started_wall)

    def thread_body(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            one_step(rng)

    def saver() -> None:
        while time.monotonic() < stop:
            cache.save(tmp_path / "semantic-stress.bsc")
            time.sleep(0.05)

    async def task_body(seed: int) -> None:
        rng = random.Random(seed)
        while time.monotonic() < stop:
            await async_step(rng)
            await asyncio.sleep(0)

    async def tasks() -> None:
        await asyncio.gather(*(task_body(2000 + s) for s in range(100)))

    threads = [threading.Thread(target=thread_body, args=(s,)) for s in range(8)]
    threads.append(threading.Thread(target=saver))
    for t in threads:
        t.start()
    asyncio.run(tasks())
    for t in threads:
        t.join()

    assert not violations, violations[:5]
    assert counts["stores"] > 100 and counts["hits"] > 100 and counts["exact"] > 10, counts
    stats = cache.stats()
    assert stats.size <= max_entries and stats.exact_hits + stats.semantic_hits == stats.hits
    loaded = SemanticCache.load(tmp_path / "semantic-stress.bsc", WordEmbedder(32))
    assert len(loaded) <= max_entries
