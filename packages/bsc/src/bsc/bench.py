"""Lookup latency of ``SemanticCache``, the exact path and the semantic path side by side:
what ``bsc bench`` and ``benchmarks/semantic.py`` run (docs/PERFORMANCE.md describes the
series). The cache stores the first question of each pair, then is filled to N entries with
filler entries of the same namespace, so every scan reads N codes."""

from __future__ import annotations

import asyncio
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bsc._codec import encode_response
from bsc.semantic import SemanticCache, normalize_prompt, quantize
from bsc.semantic.keys import entry_key, partition_of
from bsc.semantic.records import pack
from bsc_backends import Embedder

__all__ = ["bench", "fill", "rescore_cost"]


def fill(cache: SemanticCache, n: int, seed: int = 0) -> None:
    """Adds filler entries until the cache holds ``n``: random codes, each with a record and
    its exact-match key, in the default namespace and scope; with rescoring, each record holds
    a random int8 embedding, as a real one would."""
    engine = cache.binary.engine
    partition = partition_of("default", {})
    words = cache.binary.code_bits // 64
    rng = np.random.default_rng(seed)
    payload = encode_response("x" * 40)
    todo = n - len(cache)
    codes = rng.integers(0, 2**63, size=(max(todo, 0), words), dtype=np.uint64)
    dim = cache.binary.encoder.embedding_dim
    for i in range(todo):
        prompt = f"filler prompt number {i}"
        vector = quantize(rng.standard_normal(dim)) if cache.rescore else b""
        record = pack(prompt, (), 0, 0.0, payload, vector)
        engine.put(codes[i], record, namespace=partition, key=entry_key(partition, normalize_prompt(prompt)))


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def bench(n: int, embedder: Embedder, pairs: list[tuple[str, str]], rounds: int) -> dict[str, Any]:
    """One row of the benchmark: a cache of ``n`` entries, ``rounds`` passes per series."""
    cache = SemanticCache(embedder, max_entries=max(n, len(pairs)))
    cache.store_many([q1 for q1, _ in pairs], [f"answer to: {q1}" for q1, _ in pairs])
    started = time.perf_counter()
    fill(cache, n)
    fill_s = time.perf_counter() - started
    engine = cache.binary.engine
    partition = partition_of("default", {})
    _, radius = cache.binary.match_rule
    codes = [cache.binary.encode(embedder.embed_text(q2)) for _, q2 in pairs]
    marker = " \u2060"  # an invisible suffix: a prompt the exact path has never seen
    normalized_q2 = [normalize_prompt(q2) + marker for _, q2 in pairs]
    hits = {"semantic": 0}

    def exact_hit(i: int) -> None:
        hit = cache.lookup(pairs[i][0])
        assert hit is not None and hit.exact

    def semantic_lookup(i: int) -> None:
        found = cache.lookup(pairs[i][1])
        hits["semantic"] += found is not None and not found.exact

    one_pass: dict[str, Callable[[int], object]] = {
        "exact_hit": exact_hit,
        "semantic_lookup": semantic_lookup,
        "embedding": lambda i: embedder.embed_text(pairs[i][1]),
        "native_scan": lambda i: engine.lookup_nearest(codes[i], radius, namespace=partition),
        "exact_miss": lambda i: cache.matcher.exact(partition, normalized_q2[i]),
    }

    async def alookup(prompts: list[str]) -> list[float]:
        times = []
        for prompt in prompts:
            t0 = time.perf_counter()
            await cache.alookup(prompt)
            times.append(time.perf_counter() - t0)
        return times

    series: dict[str, list[float]] = {name: [] for name in [*one_pass, "alookup_exact_hit", "alookup_semantic"]}
    for _ in range(rounds):
        # Whole passes, one series after another, repeated: each series runs hot, as a service
        # answering a stream of lookups does, and all see the same machine over the run.
        for name, step in one_pass.items():
            for i in range(len(pairs)):
                t0 = time.perf_counter()
                step(i)
                series[name].append(time.perf_counter() - t0)
        series["alookup_exact_hit"] += asyncio.run(alookup([q1 for q1, _ in pairs]))
        series["alookup_semantic"] += asyncio.run(alookup([q2 for _, q2 in pairs]))
    semantic_hits = hits["semantic"] // rounds
    stats = cache.stats()
    row: dict[str, Any] = {
        "n": n,
        "lookups_per_series": len(pairs) * rounds,
        "fill_seconds": round(fill_s, 2),
        "memory_bytes_per_entry": round(stats.memory_bytes / len(cache), 1),
        "semantic_hits_of_q2": semantic_hits,
    }
    for name, values in series.items():
        row[f"{name}_us"] = us(statistics.median(values))
    row["semantic_over_exact"] = round(row["semantic_lookup_us"] / row["exact_hit_us"], 1)
    return row


def rescore_cost(n: int, embedder: Embedder, pairs: list[tuple[str, str]], rounds: int) -> dict[str, Any]:
    """What rescoring costs at ``n`` entries, side by side with a cache without it: memory per
    entry, and the median time of the semantic path after the embedding (the scan, plus the
    candidates' records read and re-scored), with the question embeddings computed beforehand.
    Both caches hold the pairs' first questions and the same filler; passes alternate."""
    caches = {}
    for rescore in (False, True):
        cache = SemanticCache(embedder, max_entries=max(n, len(pairs)), rescore=rescore)
        cache.store_many([q1 for q1, _ in pairs], [f"answer to: {q1}" for q1, _ in pairs])
        fill(cache, n)
        caches[rescore] = cache
    partition = partition_of("default", {})
    texts = [normalize_prompt(q2) for _, q2 in pairs]
    vectors = embedder.embed_texts(texts)
    times: dict[bool, list[float]] = {False: [], True: []}
    hits = dict.fromkeys((False, True), 0)
    for _ in range(rounds):
        for rescore, cache in caches.items():
            hits[rescore] = 0
            for text, vector in zip(texts, vectors, strict=True):
                t0 = time.perf_counter()
                hit = cache.matcher.semantic(text, partition, vector)
                times[rescore].append(time.perf_counter() - t0)
                hits[rescore] += hit is not None
    stats = {r: c.stats() for r, c in caches.items()}
    memory = {r: s.memory_bytes / s.size for r, s in stats.items()}
    records = {r: s.response_bytes / s.size for r, s in stats.items()}
    off, on = statistics.median(times[False]), statistics.median(times[True])
    return {
        "n": n,
        "lookups_per_series": len(pairs) * rounds,
        # Allocated memory (buffers grow by doubling, so this includes their free capacity),
        # and the bytes the records themselves take.
        "memory_bytes_per_entry": round(memory[False], 1),
        "memory_bytes_per_entry_rescore": round(memory[True], 1),
        "record_bytes_per_entry": round(records[False], 1),
        "record_bytes_per_entry_rescore": round(records[True], 1),
        "extra_bytes_per_entry": round(records[True] - records[False], 1),
        "semantic_path_us": us(off),
        "semantic_path_us_rescore": us(on),
        "extra_us_per_lookup": us(on - off),
        "hits": hits[False],
        "hits_rescore": hits[True],
    }
