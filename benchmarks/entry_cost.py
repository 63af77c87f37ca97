"""What an entry costs, and what the approximate LRU costs in hits.

    uv run python benchmarks/entry_cost.py                       # 1M and 10M entries; LRU up to 1M
    uv run python benchmarks/entry_cost.py --sizes 1M --lru-capacities 1k,10k,100k

(``benchmarks/index.py`` runs this too, after the 10M search table.)

**Memory per entry.** In a fresh interpreter for each row: the resident-set growth while N
entries are put one call at a time (256-bit codes, empty responses; measured after glibc's
``malloc_trim``, so memory the allocator holds freed is not counted), minus the growth of the
same loop putting into a 1,000-entry store (the interpreter's own allocations: about 0.3 B an
operation here), divided by N. Rows: ``BinaryIndex`` (``add`` of all codes in one call);
``CacheStore`` as ``put(code, b"")`` stores it (what issue 21's target counts); and the same
with every entry in one of 100 namespaces, with a TTL and with an exact-match key (what the bsc
facade stores), which adds the namespace and expiry columns and the key column and its table.
``memory_bytes`` is the engine's own count (allocated capacity, so up to 2x the growth of the
last column doubled).

**LRU.** A Zipf(1.0) trace over a key space ten times the capacity (ranks shuffled over keys),
20x the capacity long; the first 5x warm the cache, the rest are counted. Exact LRU is an
``OrderedDict`` replay of the same trace; the cache store is ``bsc_native.CacheStore`` itself:
``lookup_key`` (a hit marks the entry used) and, on a miss, ``put(code, b"", key=key)``, which
evicts by sampling when full (see docs/ARCHITECTURE.md). Stores of at most 1,024 slots choose
their victim exactly.

Writes ``benchmarks/results/entry_cost.json`` (with machine info) and the
``<!-- entry:start/end -->`` section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import log, parse_size, write_section
from machine import machine_info

import bsc_native

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

MEMORY_CHILD = """
import sys, numpy as np, bsc_native
n, kind, capacity = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096
codes = np.random.default_rng(1).integers(0, 2**64, size=(n, 4), dtype=np.uint64)
rows = list(codes)
names = [f"tenant-{i}" for i in range(100)]
before = rss()
if kind == "index":
    store = bsc_native.BinaryIndex(256)
    store.add(codes)
else:
    store = bsc_native.CacheStore(256, capacity)
    put = store.put
    if kind == "cache":
        for row in rows:
            put(row, b"")
    else:
        for i, row in enumerate(rows):
            put(row, b"", namespace=names[i % 100], ttl=86400.0, key=i + 1)
try:  # hand freed allocator memory back first: it is not the store's
    import ctypes
    ctypes.CDLL("libc.so.6").malloc_trim(0)
except (OSError, AttributeError):
    pass
print(rss() - before, store.memory_bytes())
"""


def child(n: int, kind: str, capacity: int) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", MEMORY_CHILD, str(n), kind, str(capacity)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    grown, counted = out.stdout.split()
    return int(grown), int(counted)


def memory_rows(sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        for kind in ("index", "cache", "facade"):
            grown, counted = child(n, kind, n)
            # The interpreter's own growth for the same loop (the index is one call: none).
            baseline = 0 if kind == "index" else child(n, kind, 1000)[0]
            row = {
                "n": n,
                "store": kind,
                "rss_bytes_per_entry": round(grown / n, 2),
                "interpreter_bytes_per_entry": round(baseline / n, 2),
                "bytes_per_entry": round((grown - baseline) / n, 2),
                "memory_bytes_per_entry": round(counted / n, 2),
            }
            rss, own = row["rss_bytes_per_entry"], row["interpreter_bytes_per_entry"]
            net = row["bytes_per_entry"]
            log(f"memory {kind:7} n={n:>10,}: {net:.2f} B/entry (RSS {rss:.2f}, interpreter {own:.2f})")
            rows.append(row)
    return rows


def zipf_trace(keys: int, length: int, rng: np.random.Generator) -> np.ndarray:
    weights = 1.0 / np.arange(1, keys + 1)
    cumulative = np.cumsum(weights)
    ranks = np.searchsorted(cumulative, rng.random(length) * cumulative[-1], side="right")
    return rng.permutation(keys)[np.minimum(ranks, keys - 1)]


def lru_row(capacity: int, rng: np.random.Generator) -> dict[str, Any]:
    keys = 10 * capacity
    trace = zipf_trace(keys, 20 * capacity, rng)
    warm = 5 * capacity
    exact: OrderedDict[int, None] = OrderedDict()
    exact_hits = 0
    for i, key in enumerate(trace.tolist()):
        if key in exact:
            exact.move_to_end(key)
            exact_hits += i >= warm
        else:
            exact[key] = None
            if len(exact) > capacity:
                exact.popitem(last=False)
    codes = rng.integers(0, 2**64, size=(keys, 4), dtype=np.uint64)
    store = bsc_native.CacheStore(256, capacity)
    lookup, put = store.lookup_key, store.put
    hits = 0
    start = time.perf_counter()
    for i, key in enumerate(trace.tolist()):
        if lookup(key + 1) is not None:
            hits += i >= warm
        else:
            put(codes[key], b"", key=key + 1)
    seconds = time.perf_counter() - start
    counted = len(trace) - warm
    row = {
        "capacity": capacity,
        "keys": keys,
        "operations": len(trace),
        "counted": counted,
        "exact_lru_hit_ratio": round(exact_hits / counted, 5),
        "bsc_hit_ratio": round(hits / counted, 5),
        "difference_pp": round(100 * (hits - exact_hits) / counted, 3),
        "bsc_us_per_operation": round(seconds / len(trace) * 1e6, 3),
    }
    log(f"lru capacity {capacity:>9,}: exact {row['exact_lru_hit_ratio']:.4f} bsc {row['bsc_hit_ratio']:.4f} "
        f"({row['difference_pp']:+.3f} pp)")  # fmt: skip
    return row


def render(memory: list[dict[str, Any]], lru: list[dict[str, Any]]) -> str:
    names = {"index": "`BinaryIndex`", "cache": "`CacheStore`, `put(code, b\"\")`",
             "facade": "`CacheStore` with namespace, TTL and key"}  # fmt: skip
    lines = [
        "| entries | store | bytes per entry | RSS growth | interpreter's share | `memory_bytes()` |",
        "|---|---|---|---|---|---|",
    ]
    for r in memory:
        lines.append(f"| {r['n']:,} | {names[r['store']]} | **{r['bytes_per_entry']:.1f}** | "
                     f"{r['rss_bytes_per_entry']:.1f} | {r['interpreter_bytes_per_entry']:.1f} | "
                     f"{r['memory_bytes_per_entry']:.1f} |")  # fmt: skip
    lines += [
        "",
        "| capacity | key space | operations (counted) | exact LRU hit ratio | bsc (sampled) | difference |",
        "|---|---|---|---|---|---|",
    ]
    for r in lru:
        ratios = f"{r['exact_lru_hit_ratio']:.4f} | {r['bsc_hit_ratio']:.4f} | {r['difference_pp']:+.2f} pp"
        lines.append(f"| {r['capacity']:,} | {r['keys']:,} | {r['operations']:,} ({r['counted']:,}) | {ratios} |")
    return "\n".join(lines)


def run(sizes: list[int], capacities: list[int], out: Path, doc: Path) -> str:
    rng = np.random.default_rng(20261208)
    memory = memory_rows(sizes)
    lru = [lru_row(c, rng) for c in capacities]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine_info(["bsc-native", "numpy"]), "memory": memory, "lru": lru},
                              indent=2) + "\n", encoding="utf-8")  # fmt: skip
    table = render(memory, lru)
    write_section(doc, table, "entry")
    log(f"wrote {out} and {doc}")
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="N for the memory rows (k and M suffixes)")
    parser.add_argument("--lru-capacities", default="1k,10k,100k,1M", help="cache sizes for the LRU rows")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "entry_cost.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    args = parser.parse_args()
    sizes = [parse_size(s) for s in args.sizes.split(",")]
    capacities = [parse_size(s) for s in args.lru_capacities.split(",")]
    print(run(sizes, capacities, args.out, args.doc))


if __name__ == "__main__":
    main()
