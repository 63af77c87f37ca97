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
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results
from run import parse_size

from bsc.bench import bench
from bsc.demo import load_pairs
from bsc_backends import LocalEmbedder

HERE = Path(__file__).resolve().parent


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
