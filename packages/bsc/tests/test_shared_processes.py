"""Shared caches across real processes, with real faults: Redis SIGKILLed and restarted, a
worker SIGKILLed and restarted, a worker stopped past the stream's retention, writers racing in
three processes, tenants in two processes, and a 3-master Redis Cluster.

Each worker is a child process running a SharedEngine (``bsc.shared.testing.Worker``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from bsc.shared import Shared
from bsc.shared.testing import RedisCluster, RedisServer, Worker


def code(i: int) -> list[int]:
    return [int(w) for w in np.random.default_rng(i).integers(0, 2**63, size=4, dtype=np.uint64)]


# Reads a shard's ids and their payloads in one atomic step (writes go on during the reads).
READ_SHARD = """
local out = {}
for _, g in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  table.insert(out, g)
  table.insert(out, redis.call('HGET', ARGV[1] .. g, 'p'))
end
return out
"""


def redis_entries(url: str, shards: int = 1, *, cluster: bool = False) -> dict[int, str]:
    """Every entry in Redis: id -> payload (from each shard's capacity set and entry hashes)."""
    config = Shared.parse(url)
    client: Any = redis.RedisCluster.from_url(config.url) if cluster else redis.Redis.from_url(config.url)
    out = {}
    for shard in range(shards):
        tag = f"{{{config.prefix}:{shard}}}"
        flat = client.eval(READ_SHARD, 1, f"{tag}:ids", f"{tag}:e:")
        for member, payload in zip(flat[::2], flat[1::2], strict=True):
            assert payload is not None, f"id {int(member)} listed without its entry"
            out[int(member)] = payload.decode("latin-1")
    client.close()
    return out


def converged(workers: list[Worker], url: str, timeout: float = 20.0, **kwargs: Any) -> dict[int, str]:
    """Waits until every worker is connected with no write waiting, and its entries equal
    Redis's; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        stats = [w.call("stats") for w in workers]
        settled = all(s["connected"] == 1 and s["queue"] == 0 for s in stats)
        truth = redis_entries(url, **kwargs)
        seen = [dict(map(tuple, w.call("entries"))) for w in workers]
        if settled and all(s == truth for s in seen):
            return truth
        if time.monotonic() > deadline:
            diffs = [(len(set(s) - set(truth)), len(set(truth) - set(s))) for s in seen]
            raise AssertionError(f"replicas differ from Redis (extra, missing): {diffs}")
        time.sleep(0.1)


@pytest.fixture
def server(fresh_redis: RedisServer) -> RedisServer:
    return fresh_redis


@pytest.fixture
def workers(server: RedisServer) -> Iterator[Any]:
    made: list[Worker] = []

    def make(url: str | None = None, **kwargs: Any) -> Worker:
        worker = Worker(url or f"{server.url}?prefix=p", **kwargs)
        made.append(worker)
        return worker

    yield make
    for worker in made:
        worker.close()


def wait_for(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.02)


def test_redis_killed_while_three_processes_serve(server: RedisServer, workers: Any) -> None:
    url = f"{server.url}?prefix=p"
    a, b, c = workers(), workers(), workers()
    before = {a.call("put", code=code(i), payload=f"v{i}", namespace="n") for i in range(50)}
    doomed = a.call("put", code=code(100), payload="doomed", namespace="n")
    short = b.call("put", code=code(101), payload="short", namespace="n", ttl=1.0)
    converged([a, b, c], url)

    server.kill()
    # Lookups go on from each replica.
    for w in (a, b, c):
        found = w.call("lookup", code=code(7), max_distance=0, namespace="n")
        assert found is not None and found[1] == "v7"
    # Writes are queued: puts from two processes, a delete (applied at once where it was made).
    during = {b.call("put", code=code(200 + i), payload=f"d{i}", namespace="n") for i in range(20)}
    during |= {c.call("put", code=code(300 + i), payload=f"e{i}", namespace="m") for i in range(20)}
    assert a.call("delete", id=doomed) is True
    assert a.call("lookup", code=code(100), max_distance=0, namespace="n") is None
    assert all(w.call("stats")["connected"] == 0 for w in (b, c))
    time.sleep(1.1)  # the TTL runs out while Redis is down: no replica serves it
    for w in (a, b, c):
        assert w.call("lookup", code=code(101), max_distance=0, namespace="n") is None

    server.start()
    truth = converged([a, b, c], url)
    assert set(truth) == before | during  # nothing lost, the deleted and expired entries gone
    assert doomed not in truth and short not in truth
    assert len(truth) == len(before) + 40  # nothing duplicated
    for w in (a, b, c):
        stats = w.call("stats")
        assert stats["queue"] == 0 and stats["writes_dropped"] == 0 and stats["connected"] == 1
        assert w.call("lookup", code=code(100), max_distance=0, namespace="n") is None
        assert w.call("lookup", code=code(210), max_distance=0, namespace="n")[1] == "d10"


def test_a_write_in_flight_when_redis_dies_is_applied_once(server: RedisServer, workers: Any) -> None:
    """Puts race a SIGKILL: each either reached Redis (and its append-only file) or is replayed;
    Redis remembers the last id of each writer, so a replay of one that did reach it is a no-op."""
    url = f"{server.url}?prefix=p"
    a, b = workers(), workers()
    acknowledged: list[int] = []

    def write() -> None:
        acknowledged.extend(a.call("put_many", items=[[code(i), f"r{i}"] for i in range(400)], namespace="n"))

    thread = threading.Thread(target=write)
    thread.start()
    time.sleep(0.05)
    server.kill()
    thread.join()
    server.start()
    truth = converged([a, b], url)
    assert sorted(truth) == sorted(acknowledged) and len(truth) == 400


def test_a_killed_worker_restarts_and_converges(server: RedisServer, workers: Any) -> None:
    url = f"{server.url}?prefix=p"
    a, b = workers(), workers()
    for i in range(30):
        a.call("put", code=code(i), payload=f"v{i}")
    b.kill()
    for i in range(30, 60):
        a.call("put", code=code(i), payload=f"v{i}")
    a.call("delete_namespace", namespace="")
    for i in range(60, 70):
        a.call("put", code=code(i), payload=f"v{i}")
    b2 = workers()
    truth = converged([a, b2], url)
    assert sorted(truth.values()) == sorted(f"v{i}" for i in range(60, 70))
    mine = b2.call("put", code=code(99), payload="from the new process")
    assert mine not in truth
    converged([a, b2], url)


def test_a_stopped_worker_past_the_streams_retention_resyncs(server: RedisServer, workers: Any) -> None:
    url = f"{server.url}?prefix=p&stream_maxlen=100"
    a, b = workers(url), workers(url)
    resyncs = b.call("stats")["resyncs"]
    os.kill(b.process.pid, signal.SIGSTOP)
    try:
        ids = a.call("put_many", items=[[code(i), f"v{i}"] for i in range(1500)])
        for gid in ids[:200]:
            a.call("delete", id=gid)
        assert redis.Redis.from_url(server.url).xlen("{p:0}:log") < 500
    finally:
        os.kill(b.process.pid, signal.SIGCONT)
    truth = converged([a, b], url)
    assert set(truth) == set(ids[200:])
    assert b.call("stats")["resyncs"] > resyncs


def test_concurrent_writers_in_three_processes_converge(server: RedisServer, workers: Any) -> None:
    url = f"{server.url}?prefix=p"
    procs = [workers(url, max_entries=500) for _ in range(3)]
    errors: list[BaseException] = []

    def write(n: int, worker: Worker) -> None:
        try:
            for start in range(0, 300, 50):
                items = [[code(n * 1000 + i), f"w{n}-{i}"] for i in range(start, start + 50)]
                worker.call("put_many", items=items, namespace=f"ns{(start // 50) % 2}")
                worker.call("lookup", code=code(n * 1000 + start), max_distance=3, namespace="ns0")
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=write, args=(n, w)) for n, w in enumerate(procs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    truth = converged(procs, url)
    assert len(truth) == 500  # 900 written, capacity 500: every replica evicted the same ones
    # The codes too: Redis holds each entry's own code, and every replica finds the entry by it.
    client = redis.Redis.from_url(server.url)
    for gid, payload in truth.items():
        n, i = (int(part) for part in payload[1:].split("-"))
        stored = client.hget(f"{{p:0}}:e:{gid}", "c")
        assert stored == np.array(code(n * 1000 + i), dtype="<u8").tobytes()
        namespace = f"ns{(i // 50) % 2}"
        for worker in procs:
            assert worker.call("lookup", code=code(n * 1000 + i), max_distance=0, namespace=namespace)[0] == gid
    client.close()


def test_tenants_in_two_processes_never_see_each_others_answers(redis_server: Any) -> None:
    url = f"{redis_server.url}?prefix=tenants"
    script = textwrap.dedent(
        f"""
        from bsc import SemanticCache
        from bsc_backends.testing import WordEmbedder
        cache = SemanticCache(WordEmbedder(), similarity_threshold=0.5, shared={url!r})
        for i in range(150):
            p = f"question number {{i}} about topic {{i % 7}}"
            cache.store(p, {{"ns": "tenant-a", "p": p}}, namespace="tenant-a")
            cache.store(p + " in detail", {{"ns": "tenant-a", "p": p}}, namespace="tenant-a", user="u1")
        cache.close()
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)
    from bsc import SemanticCache
    from bsc_backends.testing import WordEmbedder

    cache = SemanticCache(WordEmbedder(), similarity_threshold=0.5, shared=url)
    try:
        assert len(cache) == 300
        crossed = 0
        for i in range(150):
            p = f"question number {i} about topic {i % 7}"
            for prompt in (p, p + " please", p + " in detail"):
                for namespace, scope in (("tenant-b", {}), ("tenant-b", {"user": "u1"}), ("tenant-a", {"user": "u2"})):
                    hit = cache.lookup(prompt, namespace=namespace, **scope)
                    crossed += hit is not None
            assert cache.lookup(p, namespace="tenant-a") is not None
        assert crossed == 0
    finally:
        cache.close()


def test_a_three_master_cluster_keeps_each_namespace_in_one_slot() -> None:
    try:
        cluster = RedisCluster(3)
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)
    try:
        url = f"{cluster.url}?prefix=c&cluster=true&shards=6"
        a, b = Worker(url), Worker(url)
        try:
            ids = {}
            for n in range(12):
                ids[n] = a.call("put", code=code(n), payload=f"v{n}", namespace=f"tenant-{n}")
            b.call("delete_namespace", namespace="tenant-3")
            assert b.call("wait_synced") and a.call("wait_synced")
            for w in (a, b):
                for n in range(12):
                    found = w.call("lookup", code=code(n), max_distance=0, namespace=f"tenant-{n}")
                    assert (found is None) == (n == 3)
            client = redis.RedisCluster.from_url(Shared.parse(url).url)
            slots = {client.keyslot(f"{{c:{s}}}:ids") for s in range(6)}
            assert len({client.get_node_from_key(f"{{c:{s}}}:ids").port for s in range(6)}) > 1  # spread
            assert len(slots) == 6
            client.close()
            truth = redis_entries(url, 6, cluster=True)
            assert len(truth) == 11
            assert dict(map(tuple, a.call("entries"))) == truth == dict(map(tuple, b.call("entries")))
        finally:
            a.close()
            b.close()
    finally:
        cluster.stop()
