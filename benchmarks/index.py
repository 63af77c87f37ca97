"""Sublinear exact radius search: bsc's multi-index against its flat scan, faiss and usearch.

    uv run --with faiss-cpu==1.15.1 --with usearch==2.26.6 python benchmarks/index.py           # 1M, 10M
    uv run --with faiss-cpu==1.15.1 --with usearch==2.26.6 python benchmarks/index.py --sizes 1M

The cache's question is "is there an entry within radius r of this code, and which is nearest":
every method answers it for the same queries (k=1, one thread, one call from Python each,
median and p99), at r = 37 (estimated cosine >= 0.90 at 256 bits) and r = 52 (0.80, bsc's
default threshold). Recall is the share of queries whose answer (the distance found, or none
within r) is the flat scan's; bsc's multi-index must, and does, also return the same id. The
uniform set's queries are misses, which every method answers right by finding nothing: its
recall column says nothing, its latency is the cost of a miss.

Three code sets:
- ``uniform``: random 256-bit codes, random queries (misses: nothing within r).
- ``qqp``: the sign codes (bsc_encoder, seed 42) of the local embedder's vectors of the QQP
  questions of the shipped dev and test splits (about 160k distinct questions, embedded once
  and cached in benchmarks/.cache); queries are the other question of test pairs, so near
  duplicates and misses come as the cache sees them. Measured at its own size.
- ``real-derived`` at N: each vector is ``a + 0.5 b + 0.25 c + 0.05 g`` for three real QQP
  vectors picked at random and Gaussian noise ``g`` (``N(0, I/384)``), normalised and encoded
  like the cache's: sign codes of real embeddings are skewed and correlated, which fills some
  buckets far beyond the uniform case. Queries: half are stored vectors plus noise of the
  same scale (near duplicates), half are fresh vectors of the same construction (mostly misses
  at r = 37, with neighbours near the radius at 52).

Methods: bsc ``flat`` (``configure_search("flat")``), bsc ``indexed`` (the multi-index), faiss
``IndexBinaryMultiHash`` (exact when ``nflip >= floor(r / nhash)``; this run uses
``nhash = 8``, ``b = 32``, ``nflip = floor(r / 8)``), faiss ``IndexBinaryIVF`` (approximate:
``nlist = 4 sqrt(N)``, ``nprobe = 16``) and usearch HNSW with the Hamming metric (approximate,
connectivity 16, expansion_search 64; built only up to ``--usearch-max`` entries, since its
build takes minutes per million on 2 cores). Memory is bytes per entry beyond the codes (bsc:
its own count; faiss and usearch: the process's resident-set growth while building, minus the
codes, so page-granular). Writes ``benchmarks/results/index.json`` (with machine info) and the
``<!-- index:start/end -->`` section of docs/PERFORMANCE.md.

Then, unless ``--no-entry-cost``, it runs ``benchmarks/entry_cost.py`` (memory per entry at the
same sizes and the approximate LRU's hit ratio against exact LRU), which writes
``benchmarks/results/entry_cost.json`` and the ``<!-- entry:start/end -->`` section.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import contextlib

from machine import machine_info

import bsc_native
from bsc_encoder import BinaryEncoder

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORDS = 4
RADII = (37, 52)


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def rss() -> int:
    """The resident set, after handing freed heap pages back to the system (so the growth while
    building an index is that index's, not memory freed earlier and reused)."""
    import ctypes

    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": statistics.median(ordered), "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def qqp_vectors(data: Path, cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Distinct QQP question vectors (dev and test), and the test pairs' second questions."""
    from bsc.demo import load_pairs
    from bsc.quality import embed_pairs
    from bsc_backends import LocalEmbedder

    embedder = LocalEmbedder()
    sides = {}
    for split in ("dev", "test"):
        pairs, _ = load_pairs(data / f"{split}.jsonl.gz")
        sides[split] = embed_pairs(pairs, embedder, str(cache_dir / f"qqp-{split}.npz"), progress=True)
    pool = np.concatenate([sides["dev"][0], sides["dev"][1], sides["test"][0], sides["test"][1]])
    pool = np.unique(pool.round(5), axis=0).astype(np.float32)
    return pool, sides["test"][1]


def derived(pool: np.ndarray, n: int, rng: np.random.Generator, encoder: BinaryEncoder) -> tuple[np.ndarray, Any]:
    """``n`` codes of real-derived vectors, built in chunks; also a function making more vectors."""

    def vectors(m: int) -> np.ndarray:
        picks = rng.integers(0, len(pool), size=(m, 3))
        v = pool[picks[:, 0]] + 0.5 * pool[picks[:, 1]] + 0.25 * pool[picks[:, 2]]
        v += 0.05 * rng.standard_normal(v.shape, dtype=np.float32) / np.sqrt(pool.shape[1])
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        return v.astype(np.float32)

    codes = np.empty((n, WORDS), dtype=np.uint64)
    for start in range(0, n, 200_000):
        stop = min(n, start + 200_000)
        codes[start:stop] = encoder.encode(vectors(stop - start))
    return codes, vectors


class Method:
    def __init__(self, name: str, search: Callable[[np.ndarray, int], tuple[int, int] | None], build_s: float,
                 bytes_per_entry: float, exact: bool) -> None:  # fmt: skip
        self.name, self.search, self.build_s, self.bytes_per_entry, self.exact = (
            name, search, build_s, bytes_per_entry, exact
        )  # fmt: skip


def bsc_methods(codes: np.ndarray) -> list[Method]:
    n = len(codes)
    methods = []
    for mode in ("flat", "indexed"):
        index = bsc_native.BinaryIndex(256)
        index.add(codes)
        index.configure_search(mode)  # type: ignore[arg-type]
        started = time.perf_counter()
        if mode == "indexed":
            assert index.build_index()
        build = time.perf_counter() - started
        info = index.search_info()

        def search(q: np.ndarray, r: int, index: bsc_native.BinaryIndex = index) -> tuple[int, int] | None:
            ids, dist = index.search(q, k=1, max_distance=r)
            return (int(ids[0]), int(dist[0])) if len(ids) else None

        methods.append(Method(f"bsc {mode}", search, build, info["index_bytes"] / n, True))
        if mode == "indexed":
            log(f"  bsc indexed: {info['substrings']} substrings of {info['substring_bits']} bits, "
                f"built in {build:.2f} s, {info['index_bytes'] / n:.1f} B/entry")  # fmt: skip
    return methods


def faiss_methods(codes: np.ndarray, faiss: Any, nflip: int) -> list[Method]:
    n = len(codes)
    data = np.ascontiguousarray(codes).view(np.uint8).reshape(n, 32)
    out = []
    before = rss()
    started = time.perf_counter()
    mh = faiss.IndexBinaryMultiHash(256, 8, 32)
    mh.nflip = nflip
    mh.add(data)
    build = time.perf_counter() - started
    grown = (rss() - before) / n - 32  # faiss keeps its own copy of the codes

    def search_mh(q: np.ndarray, r: int, index: Any = mh) -> tuple[int, int] | None:
        index.nflip = r // 8
        d, i = index.search(q.view(np.uint8).reshape(1, 32), 1)
        return (int(i[0, 0]), int(d[0, 0])) if i[0, 0] >= 0 and d[0, 0] <= r else None

    out.append(Method("faiss MultiHash", search_mh, build, grown, True))
    before = rss()
    started = time.perf_counter()
    nlist = int(4 * np.sqrt(n))
    quantizer = faiss.IndexBinaryFlat(256)
    ivf = faiss.IndexBinaryIVF(quantizer, 256, nlist)
    train = data[np.random.default_rng(0).choice(n, size=min(n, 40 * nlist), replace=False)]
    ivf.train(train)
    ivf.add(data)
    ivf.nprobe = 16
    build = time.perf_counter() - started
    grown = (rss() - before) / n - 32

    def search_ivf(q: np.ndarray, r: int, index: Any = ivf) -> tuple[int, int] | None:
        d, i = index.search(q.view(np.uint8).reshape(1, 32), 1)
        return (int(i[0, 0]), int(d[0, 0])) if i[0, 0] >= 0 and d[0, 0] <= r else None

    out.append(Method("faiss IVF", search_ivf, build, grown, False))
    return out


def usearch_method(codes: np.ndarray, usearch: Any) -> Method:
    from usearch.index import Index, MetricKind, ScalarKind

    n = len(codes)
    data = np.ascontiguousarray(codes).view(np.uint8).reshape(n, 32)
    before = rss()
    started = time.perf_counter()
    index = Index(ndim=256, metric=MetricKind.Hamming, dtype=ScalarKind.B1, connectivity=16, expansion_search=64)
    index.add(np.arange(n), data, threads=2)
    build = time.perf_counter() - started
    grown = (rss() - before) / n - 32

    def search(q: np.ndarray, r: int) -> tuple[int, int] | None:
        found = index.search(q.view(np.uint8), 1, threads=1)
        if len(found.keys) == 0 or found.distances[0] > r:
            return None
        return int(found.keys[0]), round(float(found.distances[0]))

    return Method("usearch HNSW", search, build, grown, False)


def measure(methods: list[Method], queries: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
    """Every method answers every query at every radius, the methods in a random order per query."""
    rows: dict[str, Any] = {}
    for r in RADII:
        answers: dict[str, list[Any]] = {m.name: [] for m in methods}
        times: dict[str, list[float]] = {m.name: [] for m in methods}
        # Warm-up; a method slower than 50 ms a query (faiss MultiHash at r = 52 probes every
        # 32-bit hash within 6 flips) answers only the first 20 queries.
        limit = {}
        for m in methods:
            started = time.perf_counter()
            for q in queries[:3]:
                m.search(q, r)
            limit[m.name] = 20 if (time.perf_counter() - started) / 3 > 0.05 else len(queries)
        for j, q in enumerate(queries):
            for i in rng.permutation(len(methods)):
                m = methods[i]
                if j >= limit[m.name]:
                    continue
                started = time.perf_counter_ns()
                found = m.search(q, r)
                times[m.name].append((time.perf_counter_ns() - started) / 1000)
                answers[m.name].append(found)
        truth = answers["bsc flat"]
        for m in methods:
            got = answers[m.name]
            same = sum((a is None and b is None) or (a is not None and b is not None and a[1] == b[1])
                       for a, b in zip(got, truth[: len(got)], strict=True))  # fmt: skip
            rows.setdefault(m.name, {"build_s": m.build_s, "bytes_per_entry": m.bytes_per_entry, "exact": m.exact})
            rows[m.name][f"r{r}"] = {
                **summary(times[m.name]),
                "queries": len(got),
                "recall_vs_flat": same / len(got),
                "hits": sum(a is not None for a in got),
                "hits_flat": sum(a is not None for a in truth[: len(got)]),
            }
            if m.name == "bsc indexed":
                assert got == truth, "the multi-index returned another result than the flat scan"
    return rows


def run_set(name: str, codes: np.ndarray, queries: np.ndarray, args: argparse.Namespace, libs: dict[str, Any],
            rng: np.random.Generator) -> dict[str, Any]:  # fmt: skip
    n = len(codes)
    log(f"{name}: N = {n:,}, {len(queries)} queries")
    methods = bsc_methods(codes)
    if libs.get("faiss") is not None and not args.no_faiss:
        log("  building faiss MultiHash and IVF ...")
        methods += faiss_methods(codes, libs["faiss"], RADII[0] // 8)
    if libs.get("usearch") is not None and n <= args.usearch_max:
        log("  building usearch HNSW ...")
        methods.append(usearch_method(codes, libs["usearch"]))
    rows = measure(methods, queries, rng)
    for m, row in rows.items():
        log(f"  {m:16} build {row['build_s']:7.2f} s  {row['bytes_per_entry']:6.1f} B/entry  "
            + "  ".join(f"r={r}: {row[f'r{r}']['median_us']:9.1f} us (p99 {row[f'r{r}']['p99_us']:9.1f}) "
                        f"recall {row[f'r{r}']['recall_vs_flat']:.3f}" for r in RADII))  # fmt: skip
    del methods
    gc.collect()
    return {"set": name, "n": n, "queries": len(queries), "methods": rows}


def render(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| codes | N | method | build s | B/entry beyond codes | r=37 p50 µs (p99) | recall (hits) "
        "| r=52 p50 µs (p99) | recall (hits) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        for name, m in row["methods"].items():
            cells = []
            for r in RADII:
                x = m[f"r{r}"]
                few = f", {x['queries']} queries" if x["queries"] < row["queries"] else ""
                cells += [f"{x['median_us']:,.0f} ({x['p99_us']:,.0f}){few}",
                          f"{x['recall_vs_flat']:.3f} ({x['hits_flat']})"]  # fmt: skip
            lines.append(
                f"| {row['set']} | {row['n']:,} | {name} | {m['build_s']:.2f} | {m['bytes_per_entry']:.1f} | "
                + " | ".join(cells)
                + " |"
            )
    return "\n".join(lines)


def write_section(doc: Path, text: str, name: str = "index") -> None:
    """Replaces the ``<!-- name:start/end -->`` section of ``doc`` (appended when missing)."""
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    body = doc.read_text(encoding="utf-8")
    if start not in body:
        body = body.rstrip("\n") + f"\n\n{start}\n{end}\n"
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{start}\n{text}\n{end}{tail}", encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M,10M", help="N for the uniform and real-derived sets (k and M suffixes)")
    parser.add_argument("--queries", type=int, default=200, help="queries per set (default 200)")
    parser.add_argument("--usearch-max", type=parse_size, default=1_000_000, help="largest N usearch builds")
    parser.add_argument("--no-faiss", action="store_true", help="leave faiss out (its MultiHash build is slow)")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "qqp", help="QQP splits")
    parser.add_argument("--cache-dir", type=Path, default=HERE / ".cache")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "index.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "PERFORMANCE.md")
    parser.add_argument("--no-entry-cost", action="store_true", help="skip the memory and LRU table")
    args = parser.parse_args()
    libs: dict[str, Any] = {}
    try:
        import faiss

        faiss.omp_set_num_threads(1)
        libs["faiss"] = faiss
    except ImportError:
        log("faiss not installed: its rows are left out (uv run --with faiss-cpu==1.15.1 ...)")
    try:
        import usearch

        libs["usearch"] = usearch
    except ImportError:
        log("usearch not installed: its rows are left out (uv run --with usearch==2.26.6 ...)")
    rng = np.random.default_rng(20261207)
    encoder = BinaryEncoder(384, 256, seed=42)
    args.cache_dir.mkdir(parents=True, exist_ok=True)
    pool, second = qqp_vectors(args.data, args.cache_dir)
    rows = []
    # The QQP questions as the cache sees them: every other question stored, the second
    # question of test pairs asked (and left out of the stored ones).
    asked = second[rng.choice(len(second), size=args.queries, replace=False)].round(5)
    keep = ~(pool[:, None, :8] == asked[None, :, :8]).all(axis=2).any(axis=1)
    rows.append(run_set("qqp", encoder.encode(pool[keep]), encoder.encode(asked), args, libs, rng))
    for n in [parse_size(s) for s in args.sizes.split(",")]:
        codes = rng.integers(0, 2**64, size=(n, WORDS), dtype=np.uint64)
        queries = rng.integers(0, 2**64, size=(args.queries, WORDS), dtype=np.uint64)
        rows.append(run_set("uniform", codes, queries, args, libs, rng))
        del codes
        gc.collect()
        codes, vectors = derived(pool, n, rng, encoder)
        half = args.queries // 2
        fresh = encoder.encode(vectors(args.queries - half))
        # Near duplicates: a stored code's vector is not kept, so a near duplicate is made by
        # flipping a few bits of a stored code (about as many as noise of the same scale flips).
        near = codes[rng.choice(n, size=half, replace=False)].copy()
        for row in near:
            for bit in rng.choice(256, size=int(rng.integers(2, 20)), replace=False):
                row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
        rows.append(run_set("real-derived", codes, np.concatenate([near, fresh]), args, libs, rng))
        del codes
        gc.collect()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine_info(["bsc-native", "numpy", "faiss-cpu", "usearch"]),
                                    "results": rows}, indent=2) + "\n", encoding="utf-8")  # fmt: skip
    table = render(rows)
    print(table)
    write_section(args.doc, table)
    log(f"wrote {args.out} and {args.doc}")
    if not args.no_entry_cost:
        import entry_cost

        sizes = [parse_size(s) for s in args.sizes.split(",")]
        capacities = [1_000, 10_000, 100_000, 1_000_000]
        print(entry_cost.run(sizes, capacities, HERE / "results" / "entry_cost.json", args.doc))


if __name__ == "__main__":
    main()
