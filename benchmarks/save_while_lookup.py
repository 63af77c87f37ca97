"""Lookup latency while a save runs: does a save of a large cache hold lookups up?

    uv run python benchmarks/save_while_lookup.py --label after      # N = 1M, 32-byte responses
    uv run python benchmarks/save_while_lookup.py --entries 100k --saves 5

Fills a ``CacheStore`` with N random 256-bit codes (each with an exact-match key) and small
responses, then times single calls from one Python thread with ``time.perf_counter_ns``, one
sample per call, in three phases:

- **idle**: lookups alone, as a baseline;
- **save**: lookups while a second thread runs ``CacheStore.save`` ``--saves`` times back to back;
- **save + puts**: the same, while a third thread also stores one entry every ``--put-every-ms``
  milliseconds. A writer that arrives during a save is the case that used to stop lookups: it
  waited on the engine's lock behind the save, and ``std::sync::RwLock`` lets no new reader in
  while a writer waits.

Each phase runs twice, once per lookup, on a fixed schedule (one call every ``--interval-us``):
``lookup_key`` (the O(1) exact path) and ``lookup`` with ``max_distance=0`` (a Hamming scan that
stops at the stored code). Both are hits, so each also records a use for the LRU order. A call's
latency runs from its scheduled start, so a call held up delays the ones scheduled behind it and
they count the wait (an open loop, as clients arriving at a steady rate see it: a closed loop
would record one stalled call however long the stall); its service time runs from its actual
start. Reported per phase and lookup: p50, p99 and max of both in microseconds, the puts' times
and the saves' durations.

Only bsc_native and numpy are needed, so a bare wheel of any build can be measured: to compare
two builds, install each wheel in turn and run with ``--label before`` and ``--label after``.
Rows go to ``benchmarks/results/save_while_lookup.json`` with machine info; rows of other labels
already in the file are kept, so one file holds both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results
from run import parse_size

from bsc_native import CacheStore

HERE = Path(__file__).resolve().parent
WORDS = 4  # 256-bit codes


def percentiles(samples_ns: list[int]) -> dict[str, float]:
    ordered = sorted(samples_ns)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000

    return {
        "count": len(ordered),
        "p50_us": round(at(0.50), 1),
        "p99_us": round(at(0.99), 1),
        "max_us": round(ordered[-1] / 1000, 1),
    }


def fill(n: int, payload_bytes: int) -> tuple[CacheStore, np.ndarray]:
    store = CacheStore(WORDS * 64, max_entries=n + 1_000_000)
    codes = np.random.default_rng(0).integers(0, 2**64, size=(n, WORDS), dtype=np.uint64)
    payload = b"r" * payload_bytes
    for i in range(n):
        store.put(codes[i], payload, key=i + 1)
    return store, codes


def measure(
    store: CacheStore,
    codes: np.ndarray,
    kind: str,
    stop: threading.Event,
    rng: np.random.Generator,
    interval_us: float,
) -> dict[str, list[int]]:
    """Hits on random stored entries with `kind` (``lookup_key`` or ``lookup``), one every
    `interval_us`, until `stop` is set.

    The schedule is fixed (open loop): a call that starts late because the one before it was held
    up counts the wait, as a client arriving at that moment would see it. Each call gives two
    samples: its latency (end minus its scheduled start) and its service time (end minus start).
    """
    picks = rng.integers(0, len(codes), size=1 << 16)
    latency: list[int] = []
    service: list[int] = []
    clock = time.perf_counter_ns
    interval = int(interval_us * 1000)
    scheduled = clock()
    i = 0
    while not stop.is_set():
        scheduled += interval
        ahead = scheduled - clock()
        if ahead > 300_000:
            time.sleep((ahead - 200_000) / 1e9)  # the rest is spun, so a late wake-up is not counted
        while clock() < scheduled:
            pass
        row = int(picks[i & 0xFFFF])
        start = clock()
        found = store.lookup_key(row + 1) if kind == "lookup_key" else store.lookup(codes[row], 0)
        end = clock()
        assert found is not None
        latency.append(end - scheduled)
        service.append(end - start)
        i += 1
    return {"latency": latency, "service": service}


def phase(
    store: CacheStore,
    codes: np.ndarray,
    path: Path,
    kind: str,
    *,
    saves: int,
    idle_s: float,
    put_every_ms: float | None,
    interval_us: float,
) -> dict[str, Any]:
    stop = threading.Event()
    save_ms: list[float] = []
    put_ns: list[int] = []
    errors: list[BaseException] = []

    def saver() -> None:
        try:
            for _ in range(saves):
                start = time.perf_counter()
                store.save(path)
                save_ms.append((time.perf_counter() - start) * 1000)
        except BaseException as err:  # reported below, not lost in the thread
            errors.append(err)
        finally:
            stop.set()

    def putter() -> None:
        rng = np.random.default_rng(7)
        while not stop.is_set():
            code = rng.integers(0, 2**64, size=WORDS, dtype=np.uint64)
            start = time.perf_counter_ns()
            store.put(code, b"p")
            put_ns.append(time.perf_counter_ns() - start)
            time.sleep(put_every_ms / 1000)  # type: ignore[operator]

    threads = []
    if saves:
        threads.append(threading.Thread(target=saver))
        if put_every_ms is not None:
            threads.append(threading.Thread(target=putter))
    else:
        threading.Timer(idle_s, stop.set).start()
    for t in threads:
        t.start()
    samples = measure(store, codes, kind, stop, np.random.default_rng(saves), interval_us)
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    out: dict[str, Any] = {what: percentiles(ns) for what, ns in samples.items()}
    if save_ms:
        out["save_ms"] = {"median": round(statistics.median(save_ms), 1), "max": round(max(save_ms), 1)}
    if put_ns:
        out["put"] = percentiles(put_ns)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", default="1M", help="N (k and M suffixes; default 1M)")
    parser.add_argument("--payload-bytes", type=int, default=32)
    parser.add_argument("--saves", type=int, default=10, help="saves back to back per phase (default 10)")
    parser.add_argument("--idle-seconds", type=float, default=3.0, help="length of the idle phase")
    parser.add_argument("--put-every-ms", type=float, default=5.0)
    parser.add_argument("--interval-us", type=float, default=2000.0, help="a lookup every this many µs (default 2000)")
    parser.add_argument("--label", default="current", help="names this build's rows, e.g. before / after")
    parser.add_argument("--dir", type=Path, default=None, help="where to save (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "save_while_lookup.json")
    args = parser.parse_args()
    n = parse_size(args.entries)
    start = time.perf_counter()
    store, codes = fill(n, args.payload_bytes)
    print(f"filled {n:,} entries in {time.perf_counter() - start:.1f} s", flush=True)
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        path = Path(tmp) / "cache.bsc"
        store.save(path)  # warm: the file and the page cache exist, as in a server's later saves
        setups = [
            ("idle", 0, None),
            ("save", args.saves, None),
            ("save + puts", args.saves, args.put_every_ms),
        ]
        for name, saves, put_every in setups:
            for kind in ("lookup_key", "lookup"):
                result = phase(
                    store,
                    codes,
                    path,
                    kind,
                    saves=saves,
                    idle_s=args.idle_seconds,
                    put_every_ms=put_every,
                    interval_us=args.interval_us,
                )
                row = {
                    "label": args.label,
                    "phase": name,
                    "kind": kind,
                    "entries": n,
                    "payload_bytes": args.payload_bytes,
                    "put_every_ms": put_every,
                    "interval_us": args.interval_us,
                    **result,
                }
                rows.append(row)
                print(json.dumps(row), flush=True)
    stats = store.stats()
    print("lru_touches_dropped:", stats.get("lru_touches_dropped", "(not counted by this build)"))
    print()
    print("| build | phase | call | latency p50 / p99 / max µs | service p99 µs | save ms (median) | put p99 µs |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        lat = r["latency"]
        save = r.get("save_ms", {}).get("median", "")
        put = r.get("put", {}).get("p99_us", "")
        print(
            f"| {r['label']} | {r['phase']} | {r['kind']} | {lat['p50_us']} / {lat['p99_us']} / {lat['max_us']} | "
            f"{r['service']['p99_us']} | {save} | {put} |"
        )
    if args.out.exists():
        kept = [r for r in json.loads(args.out.read_text(encoding="utf-8"))["results"] if r.get("label") != args.label]
        rows = kept + rows
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
