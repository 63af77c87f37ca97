"""Persistence benchmark: save time against one ``write`` of the same bytes, and the time to open
a saved cache and answer the first lookup.

    uv run python benchmarks/persistence.py                 # N = 1M entries, 200-byte responses
    uv run python benchmarks/persistence.py --sizes 100k,1M --response-bytes 200

For each N it fills a cache with N random 256-bit codes and responses of ``--response-bytes``
bytes, then, alternating so both see the same machine state, ``--runs`` times each:

- **save**: ``CacheStore.save`` (temporary file, write, fsync, rename, directory fsync);
- **one write**: the same number of bytes written with one ``write`` call to a fresh file in the
  same directory, then fsync (the floor a save is compared with);
- **open + first get**: ``BinarySemanticCache.load(path, encoder)`` and one ``get`` (a hit: the
  query is a stored entry, so its response is read and its 64 KiB block checksummed); the same
  with the encoder rebuilt from the file (``load(path)``, its projection matrix generated afresh
  each time); and the bare ``CacheStore.load`` + ``lookup``. The file is in the page cache (it
  was just written), as on a server restarting.

Medians are reported; results go to ``benchmarks/results/persistence.json`` with machine info.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results
from run import parse_size

from bsc import BinaryEncoder, BinarySemanticCache
from bsc_encoder import gaussian_projection
from bsc_native import CacheStore

HERE = Path(__file__).resolve().parent
DIM = 384


def one_write(path: Path, data: bytes) -> float:
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - start


def bench(n: int, response_bytes: int, runs: int, workdir: Path) -> dict[str, Any]:
    encoder = BinaryEncoder(DIM, 256, seed=42)
    cache = BinarySemanticCache(encoder, max_entries=n)
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(1000, DIM)).astype(np.float32)
    codes = encoder.encode_batch(vectors)
    store = cache.engine
    filler = rng.integers(0, 2**63, size=(n, 4), dtype=np.uint64)
    filler[: len(codes)] = codes  # the first entries are real embeddings' codes, to query
    payload = b"r" * (response_bytes - 1)
    start = time.perf_counter()
    for i in range(n):
        store.put(filler[i], b"s" + payload)  # a str response of response_bytes bytes, as bsc encodes it
    fill_s = time.perf_counter() - start
    path = workdir / "cache.bsc"
    cache.save(path)
    size = path.stat().st_size
    data = path.read_bytes()
    saves, writes = [], []
    for _ in range(runs):
        start = time.perf_counter()
        cache.save(path)
        saves.append(time.perf_counter() - start)
        writes.append(one_write(workdir / "one_write.bin", data))
    del data
    opens, opens_rebuilt, opens_native = [], [], []
    for run in range(runs):
        query = vectors[run % len(vectors)]
        start = time.perf_counter()
        loaded = BinarySemanticCache.load(path, encoder)
        hit = loaded.get(query)
        opens.append(time.perf_counter() - start)
        assert hit is not None and hit.similarity == 1.0
        del loaded
        gaussian_projection.cache_clear()
        start = time.perf_counter()
        loaded = BinarySemanticCache.load(path)
        hit = loaded.get(query)
        opens_rebuilt.append(time.perf_counter() - start)
        assert hit is not None and hit.similarity == 1.0
        del loaded
        start = time.perf_counter()
        raw = CacheStore.load(path)
        found = raw.lookup(codes[run % len(codes)], max_distance=0)
        opens_native.append(time.perf_counter() - start)
        assert found is not None
        del raw
    ms = lambda xs: round(statistics.median(xs) * 1000, 2)  # noqa: E731
    return {
        "n": n,
        "response_bytes": response_bytes,
        "file_bytes": size,
        "fill_s": round(fill_s, 2),
        "save_ms": ms(saves),
        "one_write_ms": ms(writes),
        "save_over_one_write": round(statistics.median(saves) / statistics.median(writes), 2),
        "open_first_get_ms": ms(opens),
        "open_first_get_rebuilt_encoder_ms": ms(opens_rebuilt),
        "open_first_lookup_native_ms": ms(opens_native),
        "runs": runs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1M", help="comma-separated N (k and M suffixes; default 1M)")
    parser.add_argument("--response-bytes", type=int, default=200)
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--dir", type=Path, default=None, help="where to write (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "persistence.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        for size in args.sizes.split(","):
            row = bench(parse_size(size), args.response_bytes, args.runs, Path(tmp))
            rows.append(row)
            print(json.dumps(row), flush=True)
    print()
    print(
        "| N | file MB | save ms | one write ms | save / one write | open + first get ms "
        "(load(path, encoder)) | (load(path), encoder rebuilt) | (bsc_native) |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['file_bytes'] / 1e6:.0f} | {r['save_ms']} | {r['one_write_ms']} | "
            f"{r['save_over_one_write']}x | {r['open_first_get_ms']} | {r['open_first_get_rebuilt_encoder_ms']} | "
            f"{r['open_first_lookup_native_ms']} |"
        )
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
