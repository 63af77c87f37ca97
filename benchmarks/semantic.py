"""SemanticCache lookup latency, the exact path and the semantic path side by side.

    uv run python benchmarks/semantic.py                  # N = 10k, 100k and 1M entries
    uv run python benchmarks/semantic.py --sizes 100k --out /tmp/semantic.json

The cache uses the default local embedder (all-MiniLM-L6-v2 int8, offline). It stores the first
question of each of the 400 pairs of the shipped QQP sample, then is filled to N entries with
filler entries (random codes and 80-byte records, each with its exact-match key) in the same
namespace, so every scan reads N codes. Then it times each series below in whole passes over the
400 pairs, one series after the other, for ``--rounds`` rounds (so each runs hot, as in a
service answering a stream of lookups, and all share the machine's state over the run):

- **exact hit**: ``lookup(q1)`` — the stored question verbatim: hashing, the O(1) key table, the
  record check; no embedding;
- **semantic lookup**: ``lookup(q2)`` — the other question of the pair: the exact path misses,
  then the prompt is embedded, encoded and scanned (a hit or a miss);
- its parts: the **embedding** alone (``embed_text(q2)``), the **native scan** alone
  (``lookup_nearest`` with the code precomputed) and the **exact-path miss** alone (the cost the
  exact path adds to every lookup it does not answer);
- **alookup** of q1 and q2 in one event loop (the async twins).

Medians in microseconds; results go to ``benchmarks/results/semantic.json`` with machine info.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results
from run import parse_size

from bsc import SemanticCache, normalize_prompt
from bsc._codec import encode_response
from bsc.demo import load_pairs
from bsc.semantic import _pack
from bsc_backends import LocalEmbedder

HERE = Path(__file__).resolve().parent


def fill(cache: SemanticCache, n: int, seed: int = 0) -> None:
    """Adds filler entries until the cache holds ``n``: random codes, each with a record and
    its exact-match key, in the default namespace and scope."""
    store = cache.binary._store
    partition = cache._partition("default", {})
    words = cache.binary.code_bits // 64
    rng = np.random.default_rng(seed)
    payload = encode_response("x" * 40)
    todo = n - len(cache)
    codes = rng.integers(0, 2**63, size=(max(todo, 0), words), dtype=np.uint64)
    for i in range(todo):
        prompt = f"filler prompt number {i}"
        record = _pack(prompt, (), 0, 0.0, payload)
        store.put(codes[i], record, namespace=partition, key=cache._key(partition, normalize_prompt(prompt)))


def us(seconds: float) -> float:
    return round(seconds * 1e6, 1)


def bench(n: int, embedder: LocalEmbedder, pairs: list[tuple[str, str]], rounds: int) -> dict[str, Any]:
    cache = SemanticCache(embedder, max_entries=max(n, len(pairs)))
    cache.store_many([q1 for q1, _ in pairs], [f"answer to: {q1}" for q1, _ in pairs])
    started = time.perf_counter()
    fill(cache, n)
    fill_s = time.perf_counter() - started
    store = cache.binary._store
    partition = cache._partition("default", {})
    _, radius = cache.binary._rule
    codes = [cache.binary._code(embedder.embed_text(q2)) for _, q2 in pairs]
    marker = " \u2060"  # an invisible suffix: a prompt the exact path has never seen
    normalized_q2 = [normalize_prompt(q2) + marker for _, q2 in pairs]
    hits = {"semantic": 0}

    def exact_hit(i: int) -> None:
        hit = cache.lookup(pairs[i][0])
        assert hit is not None and hit.exact

    def semantic_lookup(i: int) -> None:
        found = cache.lookup(pairs[i][1])
        hits["semantic"] += found is not None and not found.exact

    one_pass = {
        "exact_hit": exact_hit,
        "semantic_lookup": semantic_lookup,
        "embedding": lambda i: embedder.embed_text(pairs[i][1]),
        "native_scan": lambda i: store.lookup_nearest(codes[i], radius, namespace=partition),
        "exact_miss": lambda i: cache._exact(partition, normalized_q2[i]),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated N (k and M suffixes)")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the 400 pairs per series")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "semantic.json")
    args = parser.parse_args()
    pairs = [(p.text_a, p.text_b) for p in load_pairs(None)[0]]
    embedder = LocalEmbedder()
    rows = []
    for size in args.sizes.split(","):
        row = bench(parse_size(size), embedder, pairs, args.rounds)
        rows.append(row)
        print(json.dumps(row), flush=True)
    print()
    print(
        "| N | exact hit µs | semantic lookup µs | (embedding µs | native scan µs | exact-path miss µs) "
        "| semantic / exact | alookup exact µs | alookup semantic µs |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['exact_hit_us']} | {r['semantic_lookup_us']} | {r['embedding_us']} | "
            f"{r['native_scan_us']} | {r['exact_miss_us']} | {r['semantic_over_exact']}x | "
            f"{r['alookup_exact_hit_us']} | {r['alookup_semantic_us']} |"
        )
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
