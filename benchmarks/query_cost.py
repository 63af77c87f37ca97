"""The query's own cost: encoding in numpy against encoding in the engine, side by side.

    uv run python benchmarks/query_cost.py                 # N = 10k, 100k, 1M
    uv run python benchmarks/query_cost.py --sizes 10k

``BinarySemanticCache.get`` of a near hit (a stored 384-d vector plus a little noise, 256-bit
codes, threshold 0.80) at N entries, one call from Python, and the encoding alone for one
vector: ``BinaryEncoder.encode`` (numpy: projection in float64, sign, packing, checks) against
``bsc_native.Projector.encode`` (the same projection in the engine). "before" is the same cache
with its query encoder swapped for the numpy one, so both answer from the same entries; the two
take turns query by query, in a random order, over ``--queries`` queries after a warm-up.
Medians and p99 in microseconds; writes ``benchmarks/results/query_cost.json`` (with machine
info) and the ``<!-- query:start/end -->`` section of docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from index import write_section
from machine import write_results
from run import parse_size

import bsc_native
from bsc import BinarySemanticCache
from bsc_encoder import BinaryEncoder

HERE = Path(__file__).resolve().parent
DIM = 384


class NumpyEncode:
    """The cache's query encoder as it was: the numpy encoder."""

    def __init__(self, encoder: BinaryEncoder) -> None:
        self.encode = encoder.encode


def stats(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": statistics.median(ordered), "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def timed(fn: Any) -> float:
    started = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - started) / 1000


def run(n: int, queries: int, rng: np.random.Generator) -> dict[str, Any]:
    encoder = BinaryEncoder(DIM, 256)
    cache = BinarySemanticCache(encoder, max_entries=n)
    stored = rng.standard_normal((n, DIM), dtype=np.float32)
    for i, v in enumerate(stored):
        cache.put(v, i)
    asked = stored[rng.integers(0, n, size=queries)] + 0.05 * rng.standard_normal((queries, DIM), dtype=np.float32)
    native = cache._projector
    numpy_encode = NumpyEncode(encoder)
    projector = bsc_native.Projector(encoder.projection)
    series: dict[str, Any] = {
        "get_after": lambda v: cache.get(v),
        "get_before": lambda v: cache.get(v),
        "encode_after": projector.encode,
        "encode_before": encoder.encode,
    }
    samples: dict[str, list[float]] = {k: [] for k in series}
    hits = 0
    for j, v in enumerate(np.concatenate([asked[:20], asked])):
        for name in rng.permutation(list(series)):
            cache._projector = numpy_encode if name == "get_before" else native
            took = timed(lambda name=name, v=v: series[name](v))
            if j >= 20:
                samples[name].append(took)
        hits += cache.get(v) is not None
    cache._projector = native
    row = {"n": n, "queries": queries, "hit_share": hits / (queries + 20)}
    row.update({name: stats(s) for name, s in samples.items()})
    return row


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| N | `get()` near hit, numpy encode | `get()`, engine encode | encode one vector: numpy | engine |",
        "|---|---|---|---|---|",
    ]
    for r in rows:

        def cell(key: str, r: dict[str, Any] = r) -> str:
            return f"{r[key]['median_us']:.1f} µs ({r[key]['p99_us']:.1f})"

        lines.append(
            f"| {r['n']:,} | {cell('get_before')} | {cell('get_after')} | {cell('encode_before')} "
            f"| {cell('encode_after')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated N (k and M suffixes)")
    parser.add_argument("--queries", type=int, default=2000, help="queries per N (default 2000)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "query_cost.json")
    parser.add_argument("--doc", type=Path, default=HERE.parent / "docs" / "PERFORMANCE.md")
    args = parser.parse_args()
    rng = np.random.default_rng(21)
    rows = []
    for size in args.sizes.split(","):
        n = parse_size(size)
        print(f"N = {n:,} ...", file=sys.stderr, flush=True)
        rows.append(run(n, args.queries, rng))
    write_results(args.out, rows)
    table = render(rows)
    print(table)
    write_section(args.doc, table, "query")


if __name__ == "__main__":
    main()
