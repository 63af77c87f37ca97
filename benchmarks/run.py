"""The native engine's benchmark: search latency, batch throughput, put speed and memory per entry,
side by side with a hand-written C roofline, faiss ``IndexBinaryFlat`` and numpy, in one run.

    uv run --with faiss-cpu==1.15.1 python benchmarks/run.py            # N = 10k, 100k, 1M
    uv run --with faiss-cpu==1.15.1 python benchmarks/run.py --sizes 10k,100k,1M,10M

Without faiss installed its columns are left empty. Random 256-bit codes; queries are random codes
(a miss: the whole index is scanned) unless named "hit", "exact" or "radius". Every query time is
one call from Python, k=1, one thread, median (and p99) over ``--queries`` queries; each method
answers the same queries in one run of consecutive calls after a warm-up, the methods in a random
order. Memory per entry is the growth of the process's resident set (RSS) when N entries are
added, measured in a fresh subprocess per N. A second table runs every kernel this CPU supports
(each in a subprocess with ``BSC_KERNEL`` set) against the roofline variants written for its
instruction set (benchmarks/roofline.c), at ``--kernel-sizes``. Writes JSON with machine info to
``benchmarks/results/native.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

import bsc_native

HERE = Path(__file__).resolve().parent
WORDS = 4  # 256-bit codes


def parse_size(text: str) -> int:
    text = text.strip().lower()
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1], 1)
    return int(float(text.rstrip("km")) * scale)


def build_roofline(workdir: Path) -> ctypes.CDLL:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SystemExit("a C compiler (cc or gcc) is needed for the roofline kernel")
    lib = workdir / "roofline.so"
    subprocess.run([cc, "-O3", "-shared", "-fPIC", "-o", str(lib), str(HERE / "roofline.c")], check=True)
    dll = ctypes.CDLL(str(lib))
    dll.roofline_min.restype = ctypes.c_uint32
    dll.roofline_min.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    dll.roofline_variant.restype = ctypes.c_uint32
    dll.roofline_variant.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_int]
    return dll


#: The roofline variants (benchmarks/roofline.c) written for each kernel's instruction set.
ROOFLINE_VARIANTS = {"avx512": 0, "avx2": 1, "popcnt": 2, "avx2+popcnt": 3}
KERNEL_ISA = {
    "avx512-vpopcntdq": ["avx512"],
    "avx2": ["avx2", "avx2+popcnt", "popcnt"],
    "popcnt": ["popcnt"],
}


def kernel_size(roofline: ctypes.CDLL, n: int, queries: int, rng: np.random.Generator) -> dict[str, Any]:
    """bsc's k=1 miss scan with this process's kernel against the roofline variants for its
    instruction set, at N = ``n``."""
    kernel = bsc_native.KERNEL
    codes = rng.integers(0, 2**64, size=(n, WORDS), dtype=np.uint64)
    index = bsc_native.BinaryIndex(256)
    index.add(codes)
    index.configure_search("flat")
    qs = rng.integers(0, 2**64, size=(queries, WORDS), dtype=np.uint64)
    ptrs = [qs[i].ctypes.data for i in range(queries)]
    calls: dict[str, Any] = {"bsc": lambda i: index.search(qs[i], k=1)}
    for name in KERNEL_ISA[kernel]:
        v = ROOFLINE_VARIANTS[name]
        if roofline.roofline_variant(codes.ctypes.data, 8, ptrs[0], v) != 2**32 - 1:
            calls[name] = lambda i, v=v: roofline.roofline_variant(codes.ctypes.data, n, ptrs[i], v)
    # As for the main table: each method answers all queries in one run of consecutive calls
    # after three warm-up calls, the methods in a random order.
    samples: dict[str, list[float]] = {}
    for k in rng.permutation(list(calls)):
        fn = calls[k]
        for i in range(3):
            fn(i)
        samples[k] = [timed(lambda fn=fn, i=i: fn(i)) for i in range(queries)]
    medians = {k: statistics.median(v) for k, v in samples.items()}
    rooflines = {k: v for k, v in medians.items() if k != "bsc"}
    best = min(rooflines, key=lambda k: rooflines[k])
    return {
        "n": n,
        "kernel": kernel,
        "bsc_us": medians["bsc"],
        "roofline_us": rooflines,
        "best_roofline": best,
        "ratio_to_best_roofline": medians["bsc"] / rooflines[best],
    }


def kernel_child(sizes: list[int], queries: int) -> None:
    """Runs in a subprocess with BSC_KERNEL set; prints its rows as JSON."""
    rng = np.random.default_rng(7)
    with tempfile.TemporaryDirectory() as tmp:
        roofline = build_roofline(Path(tmp))
        print(json.dumps([kernel_size(roofline, n, queries, rng) for n in sizes]))


def kernel_rows(sizes: list[int], queries: int) -> list[dict[str, Any]]:
    """Every kernel this CPU runs, each in its own process (the kernel is picked at import)."""
    rows: list[dict[str, Any]] = []
    for kernel in KERNEL_ISA:
        env = {**os.environ, "BSC_KERNEL": kernel}
        probe = subprocess.run([sys.executable, "-c", "import bsc_native; print(bsc_native.KERNEL)"],
                               env=env, capture_output=True, text=True, check=True)  # fmt: skip
        if probe.stdout.strip() != kernel:
            continue  # this CPU lacks it
        child = [sys.executable, __file__, "--kernel-child", "--sizes", ",".join(map(str, sizes)),
                 "--queries", str(queries)]  # fmt: skip
        out = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
        rows += json.loads(out.stdout.strip().splitlines()[-1])
    return rows


def kernel_table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| kernel | N | bsc k=1 µs | roofline variants for its ISA, µs | bsc / best variant |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        variants = ", ".join(f"{k} {v:.1f}" for k, v in r["roofline_us"].items())
        lines.append(
            f"| {r['kernel']} | {r['n']:,} | {r['bsc_us']:.1f} | {variants} | {r['ratio_to_best_roofline']:.2f}x |"
        )
    return "\n".join(lines)


def timed(fn: Any) -> float:
    start = time.perf_counter_ns()
    fn()
    return (time.perf_counter_ns() - start) / 1000  # microseconds


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median_us": statistics.median(ordered), "p99_us": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]}


def memory_per_entry(n: int, kind: str) -> float:
    """Resident-set growth per entry when ``n`` entries are added, in a fresh interpreter, as
    ``benchmarks/entry_cost.py`` measures it (after ``malloc_trim``; for the cache store, minus
    the interpreter's own growth over the same loop of puts)."""
    import entry_cost

    grown, _ = entry_cost.child(n, kind, n)
    baseline = 0 if kind == "index" else entry_cost.child(n, kind, 1000)[0]
    return (grown - baseline) / n


def bench_size(n: int, queries: int, roofline: ctypes.CDLL, faiss: Any, rng: np.random.Generator) -> dict[str, Any]:
    codes = rng.integers(0, 2**64, size=(n, WORDS), dtype=np.uint64)
    result: dict[str, Any] = {"n": n}

    index = bsc_native.BinaryIndex(256)
    add_us = timed(lambda: index.add(codes))
    result["put_bulk_codes_per_second"] = n / (add_us / 1e6)

    single = bsc_native.BinaryIndex(256)
    rows = [codes[i] for i in range(min(n, 20_000))]
    result["put_single_us"] = summary([timed(lambda r=r: single.add(r)) for r in rows])

    misses = rng.integers(0, 2**64, size=(queries, WORDS), dtype=np.uint64)
    exact = codes[rng.integers(0, n, size=queries)].copy()  # a stored code: the scan stops there
    # For the radius search: a stored code with 40 of its 256 bits flipped, so that the search
    # for everything within distance 64 finds it (random codes are ~128 apart: nothing else).
    near = codes[rng.integers(0, n, size=queries)].copy()
    for row in near:
        for bit in rng.choice(WORDS * 64, size=40, replace=False):
            row[bit // 64] ^= np.uint64(1) << np.uint64(bit % 64)
    hits = exact.copy()
    hits[:, 0] ^= np.uint64(0b1011)  # three bits away from a stored code
    flat = None
    if faiss is not None:
        flat = faiss.IndexBinaryFlat(WORDS * 64)
        flat.add(codes.view(np.uint8).reshape(n, WORDS * 8))
    with_numpy = n <= 1_000_000
    samples: dict[str, list[float]] = {k: [] for k in ["bsc_k1", "bsc_k1_hit", "bsc_k1_exact", "bsc_k10",
                                                        "bsc_radius", "roofline", "faiss_k1", "numpy_k1"]}  # fmt: skip
    ptr = codes.ctypes.data
    query_ptrs = [misses[i].ctypes.data for i in range(queries)]  # not timed: ctypes costs ~1.7 µs
    calls: dict[str, Any] = {
        "bsc_k1": lambda i: index.search(misses[i], k=1),
        "bsc_k1_hit": lambda i: index.search(hits[i], k=1),
        "bsc_k1_exact": lambda i: index.search(exact[i], k=1),
        "bsc_k10": lambda i: index.search(misses[i], k=10),
        # The cache-hit question: every code within distance 64 (estimated cosine >= 0.71).
        "bsc_radius": lambda i: index.search(near[i], k=n, max_distance=64),
        "roofline": lambda i: roofline.roofline_min(ptr, n, query_ptrs[i]),
    }
    if flat is not None:
        bytes_view = misses.view(np.uint8).reshape(queries, 1, WORDS * 8)
        calls["faiss_k1"] = lambda i: flat.search(bytes_view[i], 1)
    if with_numpy:
        calls["numpy_k1"] = lambda i: int(np.bitwise_count(codes ^ misses[i]).sum(axis=1).argmin())
    # Each method answers its queries in one run of consecutive calls after three untimed
    # warm-up calls, in a random order of methods: every method is timed in the steady state of
    # a server answering a stream of queries, with the caches to itself (interleaving methods
    # query by query made each one pay for the others' data in unpredictable ways).
    for name in rng.permutation(list(calls)):
        call = calls[str(name)]
        count = 20 if name == "numpy_k1" else queries
        for i in range(3):
            call(i)
        samples[str(name)] = [timed(lambda i=i, call=call: call(i)) for i in range(count)]

    for name, values in samples.items():
        if values:
            result[name] = summary(values)

    # Correctness spot checks: the nearest distance agrees with the roofline, and the radius
    # searches found their planted code.
    _, dist = index.search(misses[0], k=1)
    assert int(dist[0]) == roofline.roofline_min(ptr, n, query_ptrs[0])
    assert all(len(index.search(near[i], k=n, max_distance=64)[0]) >= 1 for i in range(5))

    batch = np.ascontiguousarray(misses[:64])
    rounds = max(9, queries // 20)

    def batch_time(threads: int | None) -> float:
        return statistics.median(
            [timed(lambda: index.search_batch(batch, k=1, threads=threads)) / len(batch) for _ in range(rounds)]
        )

    result["bsc_batch64_per_query_us"] = batch_time(None)
    result["bsc_batch64_1thread_per_query_us"] = batch_time(1)
    # The same batch while another process keeps one core busy: sharing chunks of queries
    # between threads must not make it slower than one thread.
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.2)
        result["bsc_batch64_busy_core_per_query_us"] = batch_time(None)
        result["bsc_batch64_busy_core_1thread_per_query_us"] = batch_time(1)
    finally:
        busy.kill()
        busy.wait()

    base = result["roofline"]["median_us"]
    result["ratio_to_roofline"] = result["bsc_k1"]["median_us"] / base
    if "faiss_k1" in result:
        result["faiss_over_bsc"] = result["faiss_k1"]["median_us"] / result["bsc_k1"]["median_us"]
    if "numpy_k1" in result:
        result["numpy_over_bsc"] = result["numpy_k1"]["median_us"] / result["bsc_k1"]["median_us"]
    result["k10_over_k1"] = result["bsc_k10"]["median_us"] / result["bsc_k1"]["median_us"]
    result["radius_over_k1"] = result["bsc_radius"]["median_us"] / result["bsc_k1"]["median_us"]
    result["memory_bytes_per_entry"] = {
        "index": memory_per_entry(n, "index"),
        "cache_store": memory_per_entry(n, "cache"),
    }
    return result


def table(rows: list[dict[str, Any]]) -> str:
    def us(row: dict[str, Any], key: str) -> str:
        return f"{row[key]['median_us']:.1f}" if key in row else "-"

    def ratio(row: dict[str, Any], key: str) -> str:
        return f"{row[key]:.2f}x" if key in row else "-"

    head = ("| N | bsc k=1 µs (p99) | roofline µs | bsc/roofline | faiss µs | faiss/bsc | numpy µs | numpy/bsc "
            "| k=10 µs | radius µs | hit µs | exact µs | batch64 µs/query (1 thread; busy core: default, 1 thread) "
            "| put bulk Mcodes/s | put single µs "
            "| B/entry index | B/entry cache |")  # fmt: skip
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        batch = (
            f"{r['bsc_batch64_per_query_us']:.1f} ({r['bsc_batch64_1thread_per_query_us']:.1f}; "
            f"{r['bsc_batch64_busy_core_per_query_us']:.1f}, {r['bsc_batch64_busy_core_1thread_per_query_us']:.1f})"
        )
        lines.append(
            f"| {r['n']:,} | {r['bsc_k1']['median_us']:.1f} ({r['bsc_k1']['p99_us']:.1f}) | {us(r, 'roofline')} "
            f"| {ratio(r, 'ratio_to_roofline')} | {us(r, 'faiss_k1')} | {ratio(r, 'faiss_over_bsc')} "
            f"| {us(r, 'numpy_k1')} | {ratio(r, 'numpy_over_bsc')} | {us(r, 'bsc_k10')} | {us(r, 'bsc_radius')} "
            f"| {us(r, 'bsc_k1_hit')} | {us(r, 'bsc_k1_exact')} | {batch} | {r['put_bulk_codes_per_second'] / 1e6:.1f} "
            f"| {r['put_single_us']['median_us']:.2f} | {r['memory_bytes_per_entry']['index']:.1f} "
            f"| {r['memory_bytes_per_entry']['cache_store']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10k,100k,1M", help="comma-separated N (k and M suffixes)")
    parser.add_argument("--queries", type=int, default=200, help="queries per N (default 200)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "native.json")
    parser.add_argument(
        "--kernel-sizes", default="100k,1M", help="N for the per-kernel table (every kernel the CPU runs)"
    )
    parser.add_argument("--kernel-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.kernel_child:
        kernel_child([parse_size(x) for x in args.sizes.split(",")], args.queries)
        return
    try:
        import faiss

        faiss.omp_set_num_threads(1)
    except ImportError:
        faiss = None
        print("faiss not installed: its columns stay empty (uv run --with faiss-cpu ...)", file=sys.stderr)
    rng = np.random.default_rng(20261126)
    with tempfile.TemporaryDirectory() as tmp:
        roofline = build_roofline(Path(tmp))
        rows = []
        for size in args.sizes.split(","):
            n = parse_size(size)
            print(f"N = {n:,} ...", file=sys.stderr, flush=True)
            rows.append(bench_size(n, args.queries, roofline, faiss, rng))
        roofline_kernel = "avx512-vpopcntdq" if roofline.roofline_kernel() else "popcnt"
    flags = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if f.startswith(("avx", "popcnt", "bmi"))]
                break
    except OSError:
        pass
    packages = ["bsc-native", "numpy", "faiss-cpu"]
    result = {
        "machine": {**machine_info(packages), "cpu_flags": flags},
        "bsc_native_kernel": bsc_native.KERNEL,
        "roofline_kernel": roofline_kernel,
        "queries_per_size": args.queries,
        "results": rows,
        "kernels": kernel_rows([parse_size(x) for x in args.kernel_sizes.split(",")], args.queries),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    print(f"kernel: bsc_native {bsc_native.KERNEL}, roofline {roofline_kernel}; {result['machine']['cpu']}")
    print(table(rows))
    print()
    print(kernel_table(result["kernels"]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
