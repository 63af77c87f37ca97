"""The shared cache (one cache in Redis, a replica answering lookups in each process), measured.

    uv run --extra redis --extra server python benchmarks/shared_cache.py    # all six, ~7 minutes
    uv run --extra redis --extra server python benchmarks/shared_cache.py lookup --entries 1M
    uv run --extra redis --extra server python benchmarks/shared_cache.py lag memory --memory-entries 100k
    uv run --extra redis --extra server python benchmarks/shared_cache.py soak --soak-seconds 600

(or ``.venv/bin/python benchmarks/shared_cache.py ...`` in a venv that has ``bsc[redis,server]``).
It needs ``redis-server`` on ``PATH`` (Debian: ``apt-get install redis-server``) and the default
local embedder (hitrate, throughput). Each measurement takes under 2.5 minutes by default.

Every measurement starts its own ``redis-server`` on 127.0.0.1 (``bsc.shared.testing.RedisServer``:
append-only file, ``--appendfsync always`` unless ``--appendfsync everysec``), so nothing else
shares it. The measurements, each selectable by name (all by default):

- **lookup**: ``BinarySemanticCache.get`` with ``shared=`` against a local-only cache holding the
  same N entries (default 100k random 384-d vectors, 256-bit codes, stored into each in turn:
  filling one's block before the other's left the second one's scan 2-6% slower, whichever
  it was, a memory-layout effect that is not the shared cache's). Single calls timed with
  ``perf_counter_ns``, the two caches interleaved call by call (the same query to both, in a
  random order per pair) in one run: misses (a random vector: the whole index is scanned) and
  hits (a stored vector plus a little noise). p50/p99 of each and the shared/local ratio of the
  medians (target: within 10%). The fill's rate through each is reported too.
- **fetch**: one ``HGET`` of a 500-byte response from redis-py on loopback (what a hit would pay
  if responses were fetched from Redis by key rather than held in the replica).
- **lag**: write-to-visible lag from process A to process B. A child process writes entries
  through its own ``SharedEngine`` on a fixed schedule, stamping each put's start and return with
  ``time.monotonic_ns`` (CLOCK_MONOTONIC, one clock for every process of the machine); this
  process holds a replica and polls ``lookup_key`` for the next entry every ``--poll-us``
  (sleeping in between, so its replication thread gets the GIL), and also stamps each entry as
  its replication thread applies it (``add_listener``). Lag = seen - the put's start (and -
  its return: negative when B saw the entry before A's put returned). ``--lag-writes`` writes at
  ``--lag-rate``/s, then ``--burst-rate``/s for ``--burst-seconds`` (target p99 <= 50 ms).
- **memory**: bytes per entry in Redis (``INFO memory`` ``used_memory`` before and after N puts,
  over N; the stream's share from ``MEMORY USAGE``) with ~500-byte and 32-byte responses, each
  entry with an exact-match key in a proxy-style namespace; and in a replica: a fresh child
  process connects to the filled cache (a resync), and its ``VmRSS`` growth, the native store's
  ``stats()["memory_bytes"]`` (everything held, spare capacity included) and the two id maps
  (shared id <-> local id, ``sys.getsizeof`` of the dicts and their int objects) are divided by
  N. The RSS growth counts touched pages only, and at the default N it is understated by memory
  the child already held (a few MB here); ``--memory-entries 100k`` gives a truer figure.
- **hitrate**: the shipped QQP sample (question 1 then question 2 of every pair, as chat
  requests) replayed one request at a time through ``bsc serve`` against a ``FakeChatUpstream``
  (a fresh one per setup, so its numbered answers restart): 1 process; 3 processes each with its
  own cache, round-robin; 3 processes (separate ``bsc serve --redis`` on 3 ports) sharing one
  cache, round-robin; and ``bsc serve --workers 3 --redis`` on one port (a new connection per
  request, the kernel spreading them). Hit rate of each, and how many answers differ from the
  single process's (the shared setups must match it).
- **throughput**: misses per second (every prompt new: embedding-bound) through ``bsc serve
  --redis URL --workers 1`` and ``--workers 2``, ``--clients`` threads each sending one request at
  a time on a new connection, for ``--throughput-seconds`` each after ``--throughput-warmup``.
  Prompts are ``proxy_load.py``'s four nouns; requests send ``X-Bsc-Threshold: 0.99`` so that
  prompts sharing nouns do not hit each other (the path is the same: embedding, scan, upstream
  (``--upstream-delay``), store). How many entries each worker stored is read back from Redis.
- **soak**: 3 ``bsc.shared.testing.Worker`` processes, each driven by a thread of this script at
  ``--soak-ops`` operations/s (35% puts of random codes with 50-400-byte payloads, a fifth of
  them with a ``--soak-ttl`` TTL; 5% deletes of any entry stored so far; 60% exact lookups of
  recent, recently deleted and TTL'd entries) for ``--soak-seconds``, while Redis is SIGKILLed
  and restarted (``--redis-down`` s later) every ``--redis-kill-every`` s and one worker is
  SIGKILLed mid-operation and restarted every ``--worker-kill-every`` s. A worker kill is put off
  until Redis has been back for 5 s: a process killed with writes still queued loses them by
  design (docs/SHARED.md), which would make "lost" ambiguous. At the end, once every worker is
  connected with an empty queue, every TTL'd entry is purged and every replica has synced, every
  replica's entries (ids and payloads) are compared with Redis's, and reported: **lost** entries
  (an acknowledged put missing from Redis with no delete sent for it and no TTL: must be 0;
  nothing is evicted, the capacity is far above the puts) and **stale** answers (a lookup sent
  after a delete of the entry returned True in the same process, or after the put's return + its
  TTL, that returned it: must be 0; the TTL case is split by whether the put returned while
  Redis was down or reconnecting, i.e. was queued). A lookup in another process after a delete
  returned is replication lag: counted apart, with its delay, split by whether an outage
  intervened, and stale past ``--stale-grace`` s while Redis was up.

The machine's cores are shared by Redis, every process of a measurement and this script; the
numbers are what one box does running all of them. Rows go to
``benchmarks/results/shared_cache.json`` with machine info; rows of other measurements or labels
already in the file are kept.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import write_results
from run import parse_size

HERE = Path(__file__).resolve().parent
MEASUREMENTS = ("lookup", "fetch", "lag", "memory", "hitrate", "throughput", "soak")
FINGERPRINT = "bsc-bench"
# A proxy-style namespace (docs/PROXY.md: ``key-`` and 24 hex digits of the API key's hash).
NAMESPACE = "key-0123456789abcdef01234567"
AUTH = {"Authorization": "Bearer sk-bench-0123456789"}


# -- helpers -------------------------------------------------------------------------------


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(samples: list[float], digits: int = 1) -> dict[str, float | int]:
    """count, p50, p99 and max of ``samples`` (in whatever unit they are)."""
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50": round(statistics.median(samples), digits),
        "p99": round(pct(samples, 0.99), digits),
        "max": round(max(samples), digits),
    }


def redis_server(args: argparse.Namespace) -> Any:
    from bsc.shared.testing import RedisServer

    return RedisServer(extra=["--appendfsync", args.appendfsync])


def vm_rss() -> int:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Sends this process's fd 2 (and so every child's started meanwhile) to ``path``: the
    replicas log each Redis outage, and the soak makes many."""
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def code_version() -> dict[str, Any]:
    """The commit, and a hash of the shared engine's sources as they are on disk (the work tree
    may differ from the commit), so that rows of different code are not compared unawares."""
    import hashlib

    import bsc.shared

    folder = Path(bsc.shared.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    out: dict[str, Any] = {"shared_sources_sha256": digest.hexdigest()[:16]}
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        run = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=folder)
        out["git_head"] = run.stdout.strip() or None
        run = subprocess.run(["git", "status", "--porcelain", "."], capture_output=True, text=True, cwd=folder)
        out["shared_sources_modified"] = bool(run.stdout.strip())
    return out


def table(header: list[str], rows: list[list[Any]]) -> None:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(str(c) for c in row) + " |")


# -- lookup ----------------------------------------------------------------------------------


def measure_lookup(args: argparse.Namespace) -> dict[str, Any]:
    from bsc import BinaryEncoder, BinarySemanticCache

    n = parse_size(args.entries)
    dim = 384
    encoder = BinaryEncoder(dim, 256, seed=0)
    rng = np.random.default_rng(0)
    keep_every = max(1, n // 2000)
    kept: list[np.ndarray] = []
    with redis_server(args) as server:
        url = f"{server.url}?prefix=lookup"
        local = BinarySemanticCache(encoder, max_entries=n + 1000)
        shared = BinarySemanticCache(encoder, max_entries=n + 1000, shared=url)
        fill_s = {"local": 0.0, "shared": 0.0}
        done = 0
        last_print = time.monotonic()
        while done < n:
            block = rng.standard_normal((min(10_000, n - done), dim)).astype(np.float32)
            # One entry into each in turn: filling one cache's block before the other's left the
            # second one's scan 2-6% slower (memory layout), whichever it was.
            for i, vector in enumerate(block):
                for name, cache in (("local", local), ("shared", shared)):
                    start = time.perf_counter()
                    cache.put(vector, f"answer {done + i}")
                    fill_s[name] += time.perf_counter() - start
            kept.extend(block[::keep_every])
            done += len(block)
            if time.monotonic() - last_print > 10:
                print(f"  lookup: filled {done:,} of {n:,}", flush=True)
                last_print = time.monotonic()
        assert len(local) == len(shared) == n, (len(local), len(shared))
        engine: Any = shared.engine
        assert engine.wait_synced(30)
        samples: dict[tuple[str, str], list[float]] = {(k, c): [] for k in ("miss", "hit") for c in ("local", "shared")}
        order = np.random.default_rng(1)
        clock = time.perf_counter_ns
        queries = args.queries
        for q in range(queries + 200):  # the first 200 are a warm-up
            kind = "hit" if q % 2 else "miss"
            if kind == "hit":
                base = kept[int(order.integers(len(kept)))]
                vector = base + order.standard_normal(dim).astype(np.float32) * 0.05
            else:
                vector = order.standard_normal(dim).astype(np.float32)
            pair = [("local", local), ("shared", shared)]
            if order.random() < 0.5:
                pair.reverse()
            for name, cache in pair:
                start = clock()
                found = cache.get(vector)
                elapsed = clock() - start
                assert (found is not None) == (kind == "hit"), (name, kind)
                if q >= 200:
                    samples[(kind, name)].append(elapsed / 1000)
        out: dict[str, Any] = {
            "entries": n,
            "code_bits": 256,
            "embedding_dim": dim,
            "queries_per_series": queries // 2,
            "fill_puts_per_second": {k: round(n / v) for k, v in fill_s.items()},
        }
        for kind in ("miss", "hit"):
            lo, sh = samples[(kind, "local")], samples[(kind, "shared")]
            out[kind] = {
                "local_us": summary(lo),
                "shared_us": summary(sh),
                "shared_over_local_p50": round(statistics.median(sh) / statistics.median(lo), 3),
            }
        out["shared_stats"] = engine.shared_stats()
        shared.close()
        local.close()
    return out


def measure_fetch(args: argparse.Namespace) -> dict[str, Any]:
    """The design choice a hit depends on: fetching its response from Redis by key (one HGET of a
    500-byte field from redis-py with hiredis, on loopback) instead of holding it in the replica.
    3,000 single calls over 1,000 stored entries, after 300 warm-up calls."""
    import redis

    with redis_server(args) as server:
        client = redis.Redis.from_url(server.url)
        for i in range(1000):
            client.hset(f"{{f:0}}:e:{i}", mapping={"p": b"x" * 500})
        times = []
        for i in range(3300):
            started = time.perf_counter_ns()
            client.hget(f"{{f:0}}:e:{i % 1000}", "p")
            if i >= 300:
                times.append((time.perf_counter_ns() - started) / 1000)
        client.close()
    return {"measurement": "fetch", "payload_bytes": 500, "hget_us": summary(times)}


def print_fetch(row: dict[str, Any]) -> None:
    h = row["hget_us"]
    print(f"\nfetch: one HGET of a 500-byte response: p50 {h['p50']} µs, p99 {h['p99']} µs, max {h['max']} µs")


def print_lookup(row: dict[str, Any]) -> None:
    print(f"\nlookup: {row['entries']:,} entries, {row['queries_per_series']:,} calls per series, interleaved")
    table(
        ["get()", "local p50 / p99 µs", "shared p50 / p99 µs", "shared/local (p50)"],
        [
            [
                kind,
                f"{row[kind]['local_us']['p50']} / {row[kind]['local_us']['p99']}",
                f"{row[kind]['shared_us']['p50']} / {row[kind]['shared_us']['p99']}",
                f"{row[kind]['shared_over_local_p50']}x",
            ]
            for kind in ("miss", "hit")
        ],
    )
    print(f"fill, puts/s: {row['fill_puts_per_second']}")


# -- lag -------------------------------------------------------------------------------------

WRITER = r"""
import json, sys, time
import numpy as np
from bsc.shared import connect

url, cap, payload_bytes = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
engine = connect(url, code_bits=256, max_entries=cap, fingerprint="bsc-bench")
print(json.dumps({"ready": True}), flush=True)
clock = time.monotonic_ns
for line in sys.stdin:
    job = json.loads(line)
    if job.get("stop"):
        break
    rate, count, first = job["rate"], job["count"], job["first"]
    codes = np.random.default_rng(first).integers(0, 2**63, size=(count, 4), dtype=np.uint64)
    pad = b"p" * max(0, payload_bytes - 12)
    starts, acks = [], []
    interval = 1e9 / rate
    t0 = clock() + 50_000_000
    for i in range(count):
        due = t0 + int(i * interval)
        ahead = due - clock()
        if ahead > 0:
            time.sleep(ahead / 1e9)
        start = clock()
        engine.put(codes[i], b"%012d" % (first + i) + pad, key=first + i)
        acks.append(clock())
        starts.append(start)
    print(json.dumps({"starts": starts, "acks": acks}), flush=True)
engine.close()
"""


def lag_phase(
    engine: Any,
    writer: subprocess.Popen[bytes],
    applied: dict[int, int],
    rate: float,
    count: int,
    first: int,
    poll_s: float,
) -> dict[str, Any]:
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(json.dumps({"rate": rate, "count": count, "first": first}).encode() + b"\n")
    writer.stdin.flush()
    seen: dict[int, int] = {}
    clock = time.monotonic_ns
    deadline = time.monotonic() + count / rate + 60
    for key in range(first, first + count):
        while engine.lookup_key(key) is None:
            if time.monotonic() > deadline:
                break
            if poll_s:
                time.sleep(poll_s)
        else:
            seen[key] = clock()
    answer = json.loads(writer.stdout.readline())
    starts, acks = answer["starts"], answer["acks"]
    from_start = [(seen[k] - starts[k - first]) / 1e6 for k in seen]
    from_ack = [(seen[k] - acks[k - first]) / 1e6 for k in seen]
    applied_from_start = [(applied[k] - starts[k - first]) / 1e6 for k in range(first, first + count) if k in applied]
    put_ms = [(a - s) / 1e6 for s, a in zip(starts, acks, strict=True)]
    span_s = (acks[-1] - starts[0]) / 1e9
    return {
        "rate_asked": rate,
        "writes": count,
        "rate_achieved": round(count / span_s, 1),
        "not_seen": count - len(seen),
        "seen_from_put_start_ms": summary(from_start, 2),
        "seen_from_put_return_ms": summary(from_ack, 2),
        "applied_from_put_start_ms": summary(applied_from_start, 2),
        "put_ms": summary(put_ms, 2),
    }


def measure_lag(args: argparse.Namespace) -> dict[str, Any]:
    from bsc.shared import connect

    cap = args.lag_writes + int(args.burst_rate * args.burst_seconds) + 10_000
    with redis_server(args) as server, tempfile.TemporaryDirectory() as tmp:
        url = f"{server.url}?prefix=lag"
        engine = connect(url, code_bits=256, max_entries=cap, fingerprint=FINGERPRINT)
        applied: dict[int, int] = {}
        clock = time.monotonic_ns
        engine.add_listener(lambda _gid, payload: applied.__setitem__(int(payload[:12]), clock()))
        with open(Path(tmp) / "writer.log", "wb") as log:
            writer = subprocess.Popen(
                [sys.executable, "-c", WRITER, url, str(cap), str(args.lag_payload_bytes)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=log,
            )
        try:
            assert writer.stdout is not None
            if not writer.stdout.readline():
                raise RuntimeError(f"the writer did not start: {(Path(tmp) / 'writer.log').read_text()}")
            poll_s = args.poll_us / 1e6
            low = lag_phase(engine, writer, applied, args.lag_rate, args.lag_writes, 1, poll_s)
            print(f"  lag: low rate done: {low['seen_from_put_start_ms']}", flush=True)
            burst_count = int(args.burst_rate * args.burst_seconds)
            burst = lag_phase(engine, writer, applied, args.burst_rate, burst_count, 1_000_000, poll_s)
        finally:
            if writer.stdin is not None:
                with contextlib.suppress(OSError):
                    writer.stdin.write(b'{"stop": true}\n')
                    writer.stdin.close()
            try:
                writer.wait(timeout=20)
            except subprocess.TimeoutExpired:
                writer.kill()
                writer.wait()
        stats = engine.shared_stats()
        engine.close()
    return {
        "payload_bytes": args.lag_payload_bytes,
        "poll_us": args.poll_us,
        "low_rate": low,
        "burst": burst,
        "reader_shared_stats": stats,
    }


def print_lag(row: dict[str, Any]) -> None:
    print(f"\nlag, A's put -> B's lookup_key sees it (polled every {row['poll_us']} µs), ms:")
    rows = []
    for name in ("low_rate", "burst"):
        r = row[name]
        s, a, ap, p = (
            r["seen_from_put_start_ms"],
            r["seen_from_put_return_ms"],
            r["applied_from_put_start_ms"],
            r["put_ms"],
        )
        rows.append(
            [
                f"{r['writes']:,} writes at {r['rate_asked']:g}/s ({r['rate_achieved']:g}/s achieved)",
                f"{s['p50']} / {s['p99']} / {s['max']}",
                f"{a['p50']} / {a['p99']}",
                f"{ap['p50']} / {ap['p99']}",
                f"{p['p50']} / {p['p99']}",
                r["not_seen"],
            ]
        )
    table(
        [
            "phase",
            "seen - put start p50 / p99 / max",
            "seen - put return p50 / p99",
            "applied - put start p50 / p99",
            "A's put p50 / p99",
            "never seen",
        ],
        rows,
    )


# -- memory ----------------------------------------------------------------------------------

REPLICA = r"""
import gc, json, sys
from bsc.shared import connect

def rss():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

url, empty, cap = sys.argv[1], sys.argv[2], int(sys.argv[3])
# Code, threads and a connection loaded first; a small capacity, so that no large buffer is freed
# before the baseline (glibc would keep it and the real replica would reuse it unseen).
warm = connect(empty, code_bits=256, max_entries=1000, fingerprint="bsc-bench")
warm.close()
gc.collect()
before = rss()
engine = connect(url, code_bits=256, max_entries=cap, fingerprint="bsc-bench")
assert engine.wait_synced(120)
gc.collect()
after = rss()
ints = {id(x): sys.getsizeof(x) for d in (engine._lid_of, engine._gid_of) for kv in d.items() for x in kv}
maps = sys.getsizeof(engine._lid_of) + sys.getsizeof(engine._gid_of) + sum(ints.values())
out = {"entries": len(engine), "rss_bytes": after - before, "native": engine.stats(), "id_maps_bytes": maps}
print(json.dumps(out))
engine.close()
"""


def measure_memory(args: argparse.Namespace) -> dict[str, Any]:
    import redis

    from bsc.shared import connect

    n = parse_size(args.memory_entries)
    out: dict[str, Any] = {"entries": n, "namespace": NAMESPACE, "with_key": True, "payloads": {}}
    with redis_server(args) as server:
        client: Any = redis.Redis.from_url(server.url)
        for size in (500, 32):
            prefix = f"mem{size}"
            url = f"{server.url}?prefix={prefix}"
            writer = connect(url, code_bits=256, max_entries=n + 1000, fingerprint=FINGERPRINT)
            before = int(client.info("memory")["used_memory"])
            codes = np.random.default_rng(size).integers(0, 2**63, size=(n, 4), dtype=np.uint64)
            # A typical response: an OpenAI-style JSON answer of about `size` bytes (its text varies).
            rng = random.Random(size)
            start = time.perf_counter()
            for i in range(n):
                text = "".join(rng.choices("abcdefghijklmnopqrstuvwxyz ", k=max(1, size - 24)))
                payload = ('{"i":%d,"t":"%s"}' % (i, text)).encode()[:size].ljust(size, b" ")  # noqa: UP031
                writer.put(codes[i], payload, namespace=NAMESPACE, key=i + 1)
            fill = time.perf_counter() - start
            after = int(client.info("memory")["used_memory"])
            stream = int(client.memory_usage(f"{{{prefix}:0}}:log", samples=0) or 0)
            stream_len = int(client.xlen(f"{{{prefix}:0}}:log"))
            writer.close()
            child = subprocess.run(
                [sys.executable, "-c", REPLICA, url, f"{server.url}?prefix=empty{size}", str(n + 1000)],
                capture_output=True,
                text=True,
                check=True,
                timeout=600,
            )
            replica = json.loads(child.stdout.strip().splitlines()[-1])
            assert replica["entries"] == n, replica
            native = replica["native"]
            redis_total = after - before
            out["payloads"][str(size)] = {
                "payload_bytes": size,
                "fill_puts_per_second": round(n / fill),
                "redis_bytes_per_entry": round(redis_total / n, 1),
                "redis_stream_bytes_per_entry": round(stream / n, 1),
                "redis_without_stream_bytes_per_entry": round((redis_total - stream) / n, 1),
                "stream_records": stream_len,
                "replica_rss_bytes_per_entry": round(replica["rss_bytes"] / n, 1),
                "replica_native_bytes_per_entry": round(native["memory_bytes"] / n, 1),
                "replica_native_response_bytes_per_entry": round(native["response_bytes"] / n, 1),
                "replica_id_maps_bytes_per_entry": round(replica["id_maps_bytes"] / n, 1),
            }
            print(f"  memory: {size}-byte payloads: {out['payloads'][str(size)]}", flush=True)
        client.close()
    return out


def print_memory(row: dict[str, Any]) -> None:
    print(f"\nmemory per entry, {row['entries']:,} entries (each with a key, namespace {row['namespace']!r}), bytes:")
    rows = []
    for r in row["payloads"].values():
        rows.append(
            [
                r["payload_bytes"],
                r["redis_bytes_per_entry"],
                f"{r['redis_stream_bytes_per_entry']} ({r['stream_records']:,} records)",
                r["redis_without_stream_bytes_per_entry"],
                r["replica_rss_bytes_per_entry"],
                r["replica_native_bytes_per_entry"],
                r["replica_id_maps_bytes_per_entry"],
            ]
        )
    table(
        [
            "payload",
            "Redis (used_memory)",
            "of which the stream",
            "Redis without the stream",
            "replica RSS",
            "replica native store",
            "replica id maps",
        ],
        rows,
    )


# -- hitrate ---------------------------------------------------------------------------------


def stores_by_writer(redis_url: str, prefix: str) -> list[int]:
    """How many of the entries in Redis each writer (process) stored, most first: shows how a
    pool's kernel spread the requests (an entry's id is its writer's number << 24 | a counter)."""
    import redis

    client: Any = redis.Redis.from_url(redis_url)
    counts: dict[int, int] = {}
    for member in client.zrange(f"{{{prefix}:0}}:ids", 0, -1):
        writer = int(member) >> 24
        counts[writer] = counts.get(writer, 0) + 1
    client.close()
    return sorted(counts.values(), reverse=True)


def start_serve(port: int, upstream: str, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "bsc", "serve", "--upstream", upstream, "--port", str(port)]
    with log.open("ab") as out:
        return subprocess.Popen(
            [*command, "--log-level", "warning", *extra],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def wait_healthy(base: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"bsc serve exited ({process.returncode}): {log.read_text()[-2000:]}")
        try:
            if httpx.get(base + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bsc serve did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)


def stop_all(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Answer:
    cache: str  # X-Bsc-Cache
    answered: str  # the prompt whose upstream answer was served (FakeChatUpstream echoes it)
    number: int  # the upstream's number of that answer
    sent: float  # perf_counter
    done: float


def replay(bases: list[str], prompts: list[str], *, new_connection: bool) -> list[Answer]:
    """Each prompt in turn to ``bases[i % len(bases)]``, the next one sent when the previous
    answer has arrived."""
    import httpx

    # Without keep-alive, every request opens a new connection (that the kernel hands to any
    # worker of a pool); one client per base all the same (making a client costs milliseconds).
    limits = httpx.Limits(max_keepalive_connections=0) if new_connection else httpx.Limits()
    clients = [httpx.Client(timeout=60, headers=AUTH, limits=limits) for _ in bases]
    out = []
    try:
        for i, text in enumerate(prompts):
            base = bases[i % len(bases)]
            body = {"model": "fake-model", "messages": [{"role": "user", "content": text}]}
            sent = time.perf_counter()
            response = clients[i % len(bases)].post(base + "/v1/chat/completions", json=body)
            done = time.perf_counter()
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
            head, _, answered = content.partition(": ")  # "answer <n>: <prompt>"
            out.append(Answer(response.headers["x-bsc-cache"], answered, int(head.split()[1]), sent, done))
    finally:
        for client in clients:
            client.close()
    return out


def measure_hitrate(args: argparse.Namespace) -> dict[str, Any]:
    from bsc.demo import load_pairs
    from bsc.shared.testing import free_port
    from bsc.testing import FakeChatUpstream, ServerThread

    pairs, source = load_pairs()
    if args.pairs:
        pairs = pairs[: args.pairs]
    prompts = [text for pair in pairs for text in (pair.text_a, pair.text_b)]
    setups = [
        ("1 process", 1, None, False),
        ("3 processes, unshared", 3, None, False),
        ("3 processes, shared (3 ports)", 3, "shared3", False),
        ("bsc serve --workers 3 --redis (1 port)", 1, "pooled", True),
    ]
    results: dict[str, Any] = {}
    reference: list[Answer] | None = None
    with redis_server(args) as server, tempfile.TemporaryDirectory() as tmp:
        for name, count, prefix, pooled in setups:
            fake = FakeChatUpstream()
            with ServerThread(fake.app) as up:
                ports = [free_port() for _ in range(count)]
                extra: list[str] = []
                if prefix is not None:
                    extra = ["--redis", f"{server.url}?prefix={prefix}"]
                if pooled:
                    extra += ["--workers", "3"]
                logs = [Path(tmp) / f"{prefix or 'local'}-{count}-{i}.log" for i in range(count)]
                processes = [start_serve(p, up.url + "/v1", log, *extra) for p, log in zip(ports, logs, strict=True)]
                try:
                    bases = [f"http://127.0.0.1:{p}" for p in ports]
                    for base, process, log in zip(bases, processes, logs, strict=True):
                        wait_healthy(base, process, log)
                    start = time.perf_counter()
                    answers = replay(bases, prompts, new_connection=pooled)
                    elapsed = time.perf_counter() - start
                finally:
                    stop_all(processes)
            hits = sum(1 for a in answers if a.cache == "hit")
            if reference is None:
                reference = answers
            results[name] = {
                "stores_by_process": None if prefix is None else stores_by_writer(server.url, prefix),
                "requests": len(answers),
                "hits": hits,
                "hit_rate": round(hits / len(answers), 4),
                "upstream_calls": fake.requests,
                "seconds": round(elapsed, 1),
                **compare(answers, reference, prompts, count),
            }
            print(f"  hitrate: {name}: {results[name]}", flush=True)
    return {"data": source, "pairs": len(pairs), "requests": len(prompts), "setups": results}


def compare(answers: list[Answer], reference: list[Answer], prompts: list[str], processes: int) -> dict[str, Any]:
    """How many requests were answered differently from the 1-process run: another outcome (hit
    or miss) or a hit from another stored prompt. The upstream's answer numbers are left out (one
    extra upstream call renumbers every later answer). For each request that missed here but hit
    there: which earlier request stored the answer it hit there, and how long before this request
    was sent that one's answer had returned (the time the store had to reach this process)."""
    differing = [
        k
        for k, (a, b) in enumerate(zip(answers, reference, strict=True))
        if (a.cache, a.answered) != (b.cache, b.answered)
    ]
    races = []
    for k in differing[:20]:
        if answers[k].cache != "miss" or reference[k].cache != "hit":
            races.append({"request": k, "here": answers[k].cache, "one_process": reference[k].cache})
            continue
        stored_by = max(
            (j for j in range(k) if answers[j].cache == "miss" and prompts[j] == reference[k].answered), default=None
        )
        races.append(
            {
                "request": k,
                "missed_here_hit_in_one_process_from_request": stored_by,
                "same_process": None if stored_by is None else (stored_by % processes == k % processes),
                "ms_between_that_answer_and_this_request": None
                if stored_by is None
                else round((answers[k].sent - answers[stored_by].done) * 1000, 1),
            }
        )
    return {"answers_differing_from_1_process": len(differing), "differences": races}


def print_hitrate(row: dict[str, Any]) -> None:
    print(f"\nhit rate, {row['requests']} requests ({row['pairs']} QQP pairs, q1 then q2), round-robin:")
    table(
        ["setup", "hits", "hit rate", "upstream calls", "answers differing from 1 process", "stores by process"],
        [
            [
                name,
                r["hits"],
                f"{100 * r['hit_rate']:.1f}%",
                r["upstream_calls"],
                r["answers_differing_from_1_process"],
                r["stores_by_process"] or "-",
            ]
            for name, r in row["setups"].items()
        ],
    )
    for name, r in row["setups"].items():
        if r["differences"] and "unshared" not in name:
            print(f"  {name}: differences: {r['differences']}")


# -- throughput ------------------------------------------------------------------------------


def miss_load(base: str, args: argparse.Namespace, next_prompt: Any) -> tuple[list[float], dict[str, int], float]:
    """``args.clients`` threads, each sending one new prompt at a time on a new connection (so
    the kernel spreads them over the workers): the latencies (ms) of the misses answered during
    ``args.throughput_seconds`` after ``args.throughput_warmup``, the count of each answer
    (``X-Bsc-Cache``, or ``error``), the seconds."""
    import httpx

    latencies: list[float] = []
    answers: dict[str, int] = {}
    stop = threading.Event()
    record = threading.Event()

    def client_loop() -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        # A stricter threshold than the default (X-Bsc-Threshold): four-noun prompts sharing
        # words would otherwise hit each other now and then; the path (embedding, scan,
        # upstream, store) is the same.
        headers = {**AUTH, "X-Bsc-Threshold": "0.99"}
        with httpx.Client(timeout=60, headers=headers, limits=limits) as client:
            while not stop.is_set():
                body = {"model": "fake-model", "messages": [{"role": "user", "content": next_prompt()}]}
                start = time.perf_counter()
                try:
                    response = client.post(base + "/v1/chat/completions", json=body)
                    what = response.headers.get("x-bsc-cache", "none") if response.status_code == 200 else "error"
                except httpx.HTTPError:
                    what = "error"
                if record.is_set() and not stop.is_set():
                    answers[what] = answers.get(what, 0) + 1
                    if what == "miss":
                        latencies.append((time.perf_counter() - start) * 1000)

    threads = [threading.Thread(target=client_loop) for _ in range(args.clients)]
    for t in threads:
        t.start()
    time.sleep(args.throughput_warmup)  # every worker loads its model on its first requests
    record.set()
    start = time.perf_counter()
    time.sleep(args.throughput_seconds)
    stop.set()
    elapsed = time.perf_counter() - start
    for t in threads:
        t.join()
    return latencies, answers, elapsed


def measure_throughput(args: argparse.Namespace) -> dict[str, Any]:
    from proxy_load import UPSTREAM, prompt, wait_ready

    from bsc.shared.testing import free_port

    results: dict[str, Any] = {}
    with redis_server(args) as server, tempfile.TemporaryDirectory() as tmp:
        up_port = free_port()
        with (Path(tmp) / "upstream.log").open("wb") as log:
            upstream = subprocess.Popen(
                [sys.executable, "-c", UPSTREAM, str(up_port), str(args.upstream_delay)], stdout=log, stderr=log
            )
        try:
            wait_ready(f"http://127.0.0.1:{up_port}/none", upstream)
            counter = iter(range(10**9))
            counter_lock = threading.Lock()

            def next_prompt() -> str:
                with counter_lock:
                    n = next(counter)
                return prompt((n * 7368787 + 12345) % 100_000_000)

            for workers in (1, 2):
                port = free_port()
                log_path = Path(tmp) / f"serve-{workers}.log"
                url = f"{server.url}?prefix=miss{workers}"
                process = start_serve(
                    port, f"http://127.0.0.1:{up_port}/v1", log_path, "--redis", url, "--workers", str(workers)
                )
                base = f"http://127.0.0.1:{port}"
                try:
                    wait_healthy(base, process, log_path)
                    latencies, answers, elapsed = miss_load(base, args, next_prompt)
                finally:
                    stop_all([process])
                results[str(workers)] = {
                    "workers": workers,
                    "stores_by_process": stores_by_writer(server.url, f"miss{workers}"),
                    "misses_per_second": round(len(latencies) / elapsed, 1),
                    "latency_ms": summary(latencies, 1),
                    "answers": answers,
                }
                print(f"  throughput: --workers {workers}: {results[str(workers)]}", flush=True)
        finally:
            upstream.terminate()
            upstream.wait(timeout=30)
    ratio = results["2"]["misses_per_second"] / results["1"]["misses_per_second"]
    return {
        "clients": args.clients,
        "seconds": args.throughput_seconds,
        "upstream_delay_ms": args.upstream_delay * 1000,
        "workers": results,
        "two_over_one": round(ratio, 2),
    }


def print_throughput(row: dict[str, Any]) -> None:
    print(
        f"\nmiss throughput, {row['clients']} clients, {row['seconds']:g} s, upstream {row['upstream_delay_ms']:g} ms:"
    )
    table(
        ["bsc serve --redis", "misses/s", "latency p50 / p99 ms", "answers (X-Bsc-Cache)", "stores by process"],
        [
            [
                f"--workers {r['workers']}",
                r["misses_per_second"],
                f"{r['latency_ms']['p50']} / {r['latency_ms']['p99']}",
                ", ".join(f"{k}: {v}" for k, v in sorted(r["answers"].items())),
                r["stores_by_process"],
            ]
            for r in row["workers"].values()
        ],
    )
    print(f"2 workers / 1 worker: {row['two_over_one']}x")


# -- soak ------------------------------------------------------------------------------------


@dataclass
class Put:
    gid: int
    code: list[int]
    payload: str
    ttl: float | None
    slot: int
    life: int  # which incarnation of the slot's worker stored it
    acked_ns: int


@dataclass
class SoakState:
    lock: threading.Lock = field(default_factory=threading.Lock)
    puts: dict[int, Put] = field(default_factory=dict)
    order: list[int] = field(default_factory=list)
    # gid -> (monotonic ns its delete returned True, slot, life)
    deleted: dict[int, tuple[int, int, int]] = field(default_factory=dict)
    # every delete: (gid, slot, life, sent ns, returned ns, what it returned)
    delete_log: list[tuple[int, int, int, int, int, bool]] = field(default_factory=list)
    maybe_deleted: set[int] = field(default_factory=set)  # a delete sent to a worker that died
    unacked_payloads: set[str] = field(default_factory=set)  # a put sent to a worker that died
    recent_deleted: list[int] = field(default_factory=list)
    recent_ttl: list[int] = field(default_factory=list)
    # Redis outages: (killed at, back at) in monotonic ns; back at = 0 while down.
    outages: list[list[int]] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    cross_delays_ms: list[float] = field(default_factory=list)  # Redis up all along
    cross_delays_outage_ms: list[float] = field(default_factory=list)  # an outage in between
    op_errors: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    started_ns: int = field(default_factory=time.monotonic_ns)

    def at(self, ns: int) -> float:
        """Seconds since the run started."""
        return round((ns - self.started_ns) / 1e9, 3)

    def count(self, name: str, by: int = 1) -> None:
        self.counts[name] = self.counts.get(name, 0) + by

    def redis_down_between(self, a_ns: int, b_ns: int, margin_ns: int) -> bool:
        """Whether an outage (widened by ``margin_ns`` after it ended, for the reconnect)
        overlaps [a, b]."""
        for killed, back in self.outages:
            end = (back or time.monotonic_ns() + 10**12) + margin_ns
            if killed <= b_ns and a_ns <= end:
                return True
        return False


def soak_code(rng: random.Random) -> list[int]:
    return [rng.getrandbits(63) for _ in range(4)]


def measure_soak(args: argparse.Namespace) -> dict[str, Any]:
    from bsc.shared.testing import RedisServer, Worker

    duration = args.soak_seconds
    rate = args.soak_ops
    capacity = max(100_000, int(4 * 3 * rate * duration))
    margin = int(3e9)  # a reconnect takes up to ~1 s (the replication thread's back-off)
    state = SoakState()
    stop = threading.Event()
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "workers.log"
        server = RedisServer()  # --appendfsync always: every acknowledged write is in the file
        url = f"{server.url}?prefix=soak"
        try:
            with stderr_to(log_path):
                slots: list[dict[str, Any]] = [
                    {"worker": Worker(url, max_entries=capacity), "life": 0, "lock": threading.Lock()} for _ in range(3)
                ]

                def restart(slot: dict[str, Any]) -> None:
                    with contextlib.suppress(Exception):
                        slot["worker"].kill()
                        slot["worker"].close()
                    for _ in range(600):
                        try:
                            slot["worker"] = Worker(url, max_entries=capacity)
                            slot["life"] += 1
                            return
                        except (RuntimeError, AssertionError, OSError):  # Redis is down: try again
                            time.sleep(0.5)
                    raise RuntimeError("a worker could not be restarted in 5 minutes")

                def driver(index: int) -> None:
                    rng = random.Random(1000 + index)
                    slot = slots[index]
                    seq = 0
                    interval = 1.0 / rate
                    next_at = time.monotonic()
                    while not stop.is_set():
                        next_at += interval
                        pause = next_at - time.monotonic()
                        if pause > 0:
                            time.sleep(pause)
                        else:
                            next_at = time.monotonic()
                        worker, life = slot["worker"], slot["life"]
                        r = rng.random()
                        try:
                            if r < 0.35:
                                seq += 1
                                code = soak_code(rng)
                                payload = f"s{index}-{life}-{seq}-" + "x" * rng.randrange(50, 400)
                                ttl = args.soak_ttl if rng.random() < 0.2 else None
                                with state.lock:
                                    state.unacked_payloads.add(payload)
                                gid = worker.call("put", code=code, payload=payload, ttl=ttl)
                                now = time.monotonic_ns()
                                with state.lock:
                                    state.unacked_payloads.discard(payload)
                                    state.puts[gid] = Put(gid, code, payload, ttl, index, life, now)
                                    state.order.append(gid)
                                    if ttl is not None:
                                        state.recent_ttl = [*state.recent_ttl[-49:], gid]
                                    state.count("puts")
                            elif r < 0.40:
                                with state.lock:
                                    if not state.order:
                                        continue
                                    gid = state.order[rng.randrange(len(state.order))]
                                    state.maybe_deleted.add(gid)
                                sent = time.monotonic_ns()
                                removed = worker.call("delete", id=gid)
                                now = time.monotonic_ns()
                                with state.lock:
                                    state.count("deletes" if removed else "deletes_of_absent_entries")
                                    state.delete_log.append((gid, index, life, sent, now, bool(removed)))
                                    if removed and gid not in state.deleted:
                                        state.deleted[gid] = (now, index, life)
                                    state.recent_deleted = [*state.recent_deleted[-49:], gid]
                            else:
                                soak_lookup(state, rng, worker, index, life, margin, args.stale_grace * 1000)
                        except (RuntimeError, OSError, ValueError) as err:
                            if worker.process.poll() is None and isinstance(err, RuntimeError):
                                with state.lock:
                                    state.op_errors.append(str(err))
                                continue
                            with state.lock:
                                state.count("worker_restarts_seen")
                            restart(slot)

                threads = [threading.Thread(target=driver, args=(i,), daemon=True) for i in range(3)]
                started = time.monotonic()
                state.started_ns = time.monotonic_ns()
                for t in threads:
                    t.start()
                next_redis = started + args.redis_kill_every
                next_worker = started + args.worker_kill_every
                victim = 0
                while time.monotonic() < started + duration:
                    now = time.monotonic()
                    if now >= next_redis:
                        with state.lock:
                            state.outages.append([time.monotonic_ns(), 0])
                        server.kill()
                        time.sleep(args.redis_down)
                        server.start()
                        with state.lock:
                            state.outages[-1][1] = time.monotonic_ns()
                            state.events.append(f"{now - started:.0f}s redis killed, back after {args.redis_down:g}s")
                        next_redis += args.redis_kill_every
                        print(f"  soak: {now - started:.0f} s: Redis killed and restarted", flush=True)
                    if now >= next_worker:
                        with state.lock:
                            recent = state.redis_down_between(time.monotonic_ns() - int(5e9), time.monotonic_ns(), 0)
                        if recent:  # its write queue may hold writes: a kill then loses them by design
                            next_worker = now + 1
                        else:
                            process = slots[victim]["worker"].process
                            process.send_signal(signal.SIGKILL)
                            with state.lock:
                                state.count("worker_kills")
                                state.events.append(f"{now - started:.0f}s worker {victim} killed")
                            print(f"  soak: {now - started:.0f} s: worker {victim} killed", flush=True)
                            victim = (victim + 1) % 3
                            next_worker += args.worker_kill_every
                    time.sleep(0.05)
                stop.set()
                for t in threads:
                    t.join(timeout=60)
                if server.process is None or server.process.poll() is not None:
                    server.start()
                final = soak_check(state, slots, restart, server, args)
                for slot in slots:
                    slot["worker"].close()
        finally:
            server.stop()
        log_text = log_path.read_text(errors="replace")
    final["worker_log_lines"] = {
        "lost the shared store": log_text.count("lost the shared store"),
        "is back": log_text.count("is back"),
        "Traceback": log_text.count("Traceback"),
    }
    final.update(
        {
            "seconds": duration,
            "ops_per_second_per_worker": rate,
            "redis_kill_every_s": args.redis_kill_every,
            "redis_down_s": args.redis_down,
            "worker_kill_every_s": args.worker_kill_every,
            "ttl_s": args.soak_ttl,
            "capacity": capacity,
            "events": state.events,
        }
    )
    return final


def soak_lookup(
    state: SoakState, rng: random.Random, worker: Any, index: int, life: int, margin: int, grace_ms: float
) -> None:
    with state.lock:
        if not state.order:
            return
        pick = rng.random()
        if pick < 0.25 and state.recent_deleted:
            gid = rng.choice(state.recent_deleted)
        elif pick < 0.5 and state.recent_ttl:
            gid = rng.choice(state.recent_ttl)
        else:
            gid = state.order[rng.randrange(max(0, len(state.order) - 200), len(state.order))]
        put = state.puts[gid]
    sent = time.monotonic_ns()
    found = worker.call("lookup", code=put.code, max_distance=0)
    with state.lock:
        state.count("lookups")
        deleted = state.deleted.get(gid)
        if found is None:
            # A miss in the process that stored it, after its put returned, with Redis up all along
            # (so the put was not queued), no delete sent and no TTL: read-your-writes broken.
            if (
                put.slot == index
                and put.life == life
                and put.ttl is None
                and gid not in state.maybe_deleted
                and not state.redis_down_between(put.acked_ns - margin, sent, margin)
            ):
                state.count("own_write_missed")
            return
        state.count("hits")
        if found[0] != gid or found[1] != put.payload:
            state.count("wrong_answer")
            state.op_errors.append(f"lookup of {gid} answered {found[0]} {found[1][:40]!r}")
            return
        if put.ttl is not None and sent > put.acked_ns + int(put.ttl * 1e9):
            # Queued: its put returned while Redis was down or reconnecting (replaying the queue).
            queued = state.redis_down_between(put.acked_ns, put.acked_ns, margin)
            state.count("stale_after_ttl_put_queued" if queued else "stale_after_ttl")
        if deleted is not None and sent > deleted[0]:
            when, slot, del_life = deleted
            if slot == index and del_life == life:
                state.count("stale_after_own_delete")
            else:
                delay_ms = (sent - when) / 1e6
                if state.redis_down_between(when, sent, margin):
                    state.cross_delays_outage_ms.append(delay_ms)
                else:
                    state.cross_delays_ms.append(delay_ms)
                    if delay_ms > grace_ms:
                        state.count("stale_after_other_process_delete_beyond_grace")


def soak_check(
    state: SoakState, slots: list[dict[str, Any]], restart: Any, server: Any, args: argparse.Namespace
) -> dict[str, Any]:
    """After the run: waits until every worker is connected with an empty queue, the expired
    entries are purged and every replica has caught up, then compares."""
    import redis

    client: Any = redis.Redis.from_url(server.url)
    tag = "{soak:0}"
    deadline = time.monotonic() + 120
    for slot in slots:
        while True:
            try:
                stats = slot["worker"].call("stats")
                if stats["connected"] and not stats["queue"]:
                    break
            except (RuntimeError, OSError, ValueError):  # killed as the run ended
                restart(slot)
                continue
            if time.monotonic() > deadline:
                raise RuntimeError(f"a worker did not reconnect: {stats}")
            time.sleep(0.2)
    # Until every entry with a TTL has run out and been purged from Redis (the workers' keepers
    # purge every 10 s): a replica hides an expired entry at once, Redis keeps it until then.
    while client.zcard(f"{tag}:exp") and time.monotonic() < deadline:
        time.sleep(0.5)
    for slot in slots:
        assert slot["worker"].call("wait_synced", timeout=60), "a replica did not catch up"
    truth: dict[int, str] = {}
    for member in client.zrange(f"{tag}:ids", 0, -1):
        payload = client.hget(f"{tag}:e:{int(member)}", "p")
        truth[int(member)] = "" if payload is None else payload.decode("latin-1")
    due = int(client.zcard(f"{tag}:exp"))
    client.close()
    replicas = []
    for i, slot in enumerate(slots):
        seen = {int(g): p for g, p in slot["worker"].call("entries")}
        stats = slot["worker"].call("stats")
        replicas.append(
            {
                "worker": i,
                "entries": len(seen),
                "missing_from_replica": len(set(truth) - set(seen)),
                "missing_ids": sorted(set(truth) - set(seen))[:5],
                "extra_in_replica": len(set(seen) - set(truth)),
                "payload_differs": sum(1 for g in set(seen) & set(truth) if seen[g] != truth[g]),
                "shared_stats": {
                    k: stats[k] for k in ("writes_queued", "writes_replayed", "writes_dropped", "resyncs")
                },
            }
        )
    now = time.monotonic_ns()
    lost = [
        g
        for g, p in state.puts.items()
        if g not in truth
        and g not in state.maybe_deleted
        and not (p.ttl is not None and now > p.acked_ns + int(p.ttl * 1e9))
    ]
    resurrected = [g for g in state.deleted if g in truth]
    wrong_payload = [g for g in truth if g in state.puts and truth[g] != state.puts[g].payload]
    unexplained = [g for g in truth if g not in state.puts and truth[g] not in state.unacked_payloads]
    details = []
    for g in resurrected[:10]:
        put = state.puts.get(g)
        details.append(
            {
                "id": g,
                "put": None
                if put is None
                else {"worker": put.slot, "life": put.life, "returned_s": state.at(put.acked_ns)},
                "deletes": [
                    {
                        "worker": d[1],
                        "life": d[2],
                        "sent_s": state.at(d[3]),
                        "returned_s": state.at(d[4]),
                        "result": d[5],
                    }
                    for d in state.delete_log
                    if d[0] == g
                ],
            }
        )
    counts = dict(sorted(state.counts.items()))
    return {
        "acknowledged_puts": len(state.puts),
        "acknowledged_deletes": len(state.deleted),
        "redis_entries_at_end": len(truth),
        "redis_ttl_entries_left": due,
        "lost": len(lost),
        "lost_ids": lost[:20],
        "deleted_but_in_redis": len(resurrected),
        "deleted_but_in_redis_details": details,
        "outages_s": [[state.at(a), state.at(b)] for a, b in state.outages],
        "payload_differs_from_put": len(wrong_payload),
        "in_redis_never_put": len(unexplained),
        "replicas": replicas,
        "replicas_equal_redis": all(
            r["missing_from_replica"] == r["extra_in_replica"] == r["payload_differs"] == 0 for r in replicas
        ),
        "stale": counts.get("stale_after_own_delete", 0)
        + counts.get("stale_after_ttl", 0)
        + counts.get("stale_after_ttl_put_queued", 0)
        + counts.get("stale_after_other_process_delete_beyond_grace", 0),
        "counts": counts,
        "served_after_other_process_delete_ms": summary(state.cross_delays_ms, 1),
        "served_after_other_process_delete_outage_ms": summary(state.cross_delays_outage_ms, 1),
        "op_errors": len(state.op_errors),
        "op_error_samples": state.op_errors[:10],
        "stale_grace_s": args.stale_grace,
    }


def print_soak(row: dict[str, Any]) -> None:
    c = row["counts"]
    print(
        f"\nsoak: {row['seconds']:g} s, 3 workers at {row['ops_per_second_per_worker']:g} ops/s each; "
        f"{len([e for e in row['events'] if 'redis' in e])} Redis kills, {c.get('worker_kills', 0)} worker kills"
    )
    table(
        ["measure", "value"],
        [
            ["acknowledged puts / deletes", f"{row['acknowledged_puts']:,} / {row['acknowledged_deletes']:,}"],
            ["lookups (hits)", f"{c.get('lookups', 0):,} ({c.get('hits', 0):,})"],
            ["**lost** (acknowledged, not deleted, no TTL, missing from Redis)", row["lost"]],
            ["**stale** (total of the four rows below)", row["stale"]],
            ["  served after the same process's delete returned", c.get("stale_after_own_delete", 0)],
            ["  served after the put's return + TTL, the put sent while Redis was up", c.get("stale_after_ttl", 0)],
            [
                "  served after the put's return + TTL, the put queued during an outage (TTL runs from the replay)",
                c.get("stale_after_ttl_put_queued", 0),
            ],
            [
                f"  served after another process's delete, > {row['stale_grace_s']:g} s later, Redis up",
                c.get("stale_after_other_process_delete_beyond_grace", 0),
            ],
            [
                "served after another process's delete, Redis up (replication lag): count, delay p50 / p99 / max ms",
                delays(row["served_after_other_process_delete_ms"]),
            ],
            [
                "served after another process's delete, an outage in between: count, delay p50 / p99 / max ms",
                delays(row["served_after_other_process_delete_outage_ms"]),
            ],
            ["own write missed (Redis up, no delete, no TTL)", c.get("own_write_missed", 0)],
            ["wrong answers (another entry's payload)", c.get("wrong_answer", 0)],
            ["deletes that found nothing (the entry not in Redis yet, or gone)", c.get("deletes_of_absent_entries", 0)],
            ["deleted (the delete returned True) but still in Redis", row["deleted_but_in_redis"]],
            ["in Redis but never put", row["in_redis_never_put"]],
            ["every replica equals Redis (ids and payloads)", row["replicas_equal_redis"]],
            ["operation errors", row["op_errors"]],
        ],
    )
    for r in row["replicas"]:
        print(f"  worker {r['worker']}: {r}")
    print(f"  Redis outages (s from the start): {row['outages_s']}")
    for d in row["deleted_but_in_redis_details"]:
        print(f"  deleted but in Redis: {d}")


def delays(s: dict[str, Any]) -> str:
    if not s.get("count"):
        return "0"
    return f"{s['count']}: {s['p50']} / {s['p99']} / {s['max']}"


# -- main ------------------------------------------------------------------------------------

RUNNERS = {
    "lookup": (measure_lookup, print_lookup),
    "fetch": (measure_fetch, print_fetch),
    "lag": (measure_lag, print_lag),
    "memory": (measure_memory, print_memory),
    "hitrate": (measure_hitrate, print_hitrate),
    "throughput": (measure_throughput, print_throughput),
    "soak": (measure_soak, print_soak),
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "measurements", nargs="*", metavar="NAME", help=f"any of {', '.join(MEASUREMENTS)} (default: all)"
    )
    parser.add_argument("--label", default="current", help="names this run's rows")
    parser.add_argument("--appendfsync", choices=["always", "everysec"], default="always")
    group = parser.add_argument_group("lookup")
    group.add_argument("--entries", default="100k", help="N (k and M suffixes; default 100k)")
    group.add_argument("--queries", type=int, default=10_000, help="calls per cache, half hits (default 10000)")
    group = parser.add_argument_group("lag")
    group.add_argument("--lag-writes", type=int, default=1000, help="writes at the low rate (default 1000)")
    group.add_argument("--lag-rate", type=float, default=100.0, help="the low rate, writes/s (default 100)")
    group.add_argument("--burst-rate", type=float, default=1000.0, help="the sustained rate, writes/s (default 1000)")
    group.add_argument("--burst-seconds", type=float, default=5.0, help="how long it is sustained (default 5)")
    group.add_argument("--lag-payload-bytes", type=int, default=500)
    group.add_argument("--poll-us", type=float, default=100.0, help="the reader's poll interval (0: spin)")
    group = parser.add_argument_group("memory")
    group.add_argument("--memory-entries", default="20k", help="N per payload size (default 20k)")
    group = parser.add_argument_group("hitrate and throughput")
    group.add_argument("--pairs", type=int, default=0, help="QQP pairs replayed (default: all 400)")
    group.add_argument("--clients", type=int, default=8, help="concurrent clients for throughput (default 8)")
    group.add_argument("--throughput-seconds", type=float, default=15.0, help="measured seconds per setup")
    group.add_argument("--throughput-warmup", type=float, default=5.0, help="unmeasured seconds first")
    group.add_argument("--upstream-delay", type=float, default=0.02, help="the fake upstream's answer time (s)")
    group = parser.add_argument_group("soak")
    group.add_argument("--soak-seconds", type=float, default=120.0)
    group.add_argument("--soak-ops", type=float, default=100.0, help="operations/s per worker (default 100)")
    group.add_argument("--soak-ttl", type=float, default=2.0, help="TTL of the puts that have one (s)")
    group.add_argument("--redis-kill-every", type=float, default=30.0)
    group.add_argument("--redis-down", type=float, default=2.0, help="seconds Redis stays down (default 2)")
    group.add_argument("--worker-kill-every", type=float, default=40.0)
    group.add_argument("--stale-grace", type=float, default=1.0, help="replication allowance, s (default 1)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "shared_cache.json")
    args = parser.parse_args()
    chosen = args.measurements or list(MEASUREMENTS)
    unknown = [name for name in chosen if name not in MEASUREMENTS]
    if unknown:
        parser.error(f"unknown measurement(s) {', '.join(unknown)}: choose from {', '.join(MEASUREMENTS)}")
    rows = []
    for name in chosen:
        measure, show = RUNNERS[name]
        print(f"{name}...", flush=True)
        start = time.perf_counter()
        load = os.getloadavg()[0]
        code = code_version()
        result = measure(args)
        row = {"label": args.label, "measurement": name, "appendfsync": args.appendfsync, **result}
        row["wall_seconds"] = round(time.perf_counter() - start, 1)
        row["load_average_1min"] = {"before": round(load, 2), "after": round(os.getloadavg()[0], 2)}
        row["code"] = code
        show(row)
        print(f"({name}: {row['wall_seconds']} s)", flush=True)
        rows.append(row)
    if args.out.exists():
        done = {(r["label"], r["measurement"]) for r in rows}
        kept = [
            r
            for r in json.loads(args.out.read_text(encoding="utf-8"))["results"]
            if (r.get("label"), r.get("measurement")) not in done
        ]
        rows = kept + rows
    write_results(args.out, rows)


if __name__ == "__main__":
    main()
