"""Shared caches on a real Redis: several replicas (engines) of one cache in this process.

Each ``SharedEngine`` is a full replica with its own connections and replication thread, as it
would be in another process; ``test_shared_processes.py`` runs them in real processes and kills
them. A Redis server is started once for the session (``redis_server`` in conftest.py).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import redis

from bsc import BinaryEncoder, BinarySemanticCache, EncoderMismatchError, SemanticCache, Shared, SharedStoreError
from bsc.shared import connect, redact
from bsc.shared.engine import SharedEngine
from bsc.shared.testing import RedisServer
from bsc_backends.testing import WordEmbedder

rng = np.random.default_rng(7)


def eventually(condition: Any, timeout: float) -> None:
    """Waits up to ``timeout`` seconds for ``condition()`` (the asserts after it tell what failed)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.02)


def code(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 2**63, size=4, dtype=np.uint64)


@pytest.fixture
def engines(shared_url: str) -> Iterator[Any]:
    made: list[SharedEngine] = []

    def make(**kwargs: Any) -> SharedEngine:
        options = {"code_bits": 256, "max_entries": 1000, "fingerprint": "fp", **kwargs}
        engine = connect(options.pop("url", shared_url), **options)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.close()


def entries(engine: SharedEngine) -> dict[int, bytes]:
    out = {}
    for gid in engine.lru_ids().tolist():
        found = engine.peek(int(gid))
        if found is not None:
            out[int(gid)] = found[2]
    return out


def redis_entries(url: str, shard: int = 0) -> dict[int, bytes]:
    config = Shared.parse(url)
    client = redis.Redis.from_url(config.url)
    tag = f"{{{config.prefix}:{shard}}}"
    ids = [int(m) for m in client.zrange(f"{tag}:ids", 0, -1)]
    out = {gid: client.hget(f"{tag}:e:{gid}", "p") for gid in ids}
    client.close()
    return out  # type: ignore[return-value]


def test_a_put_in_one_replica_is_answered_by_another(engines: Any) -> None:
    a, b = engines(), engines()
    gid = a.put(code(1), b"one", namespace="ns")
    assert a.lookup(code(1), 0, namespace="ns")[:3] == (gid, 0, b"one")  # read-your-write, at once
    assert b.wait_synced(5)
    found = b.lookup(code(1), 0, namespace="ns")
    assert found is not None and found[:3] == (gid, 0, b"one")
    assert b.lookup(code(1), 0, namespace="other") is None
    assert b.lookup(code(2), 10, namespace="ns") is None
    c = engines()  # a replica started later bootstraps from Redis
    assert entries(c) == {gid: b"one"}


def test_deletes_namespaces_and_clear_reach_every_replica(engines: Any) -> None:
    a, b = engines(), engines()
    ids = [a.put(code(i), b"x%d" % i, namespace="n1" if i % 2 else "n2") for i in range(10)]
    assert b.wait_synced(5) and len(b) == 10
    assert b.delete(ids[0]) is True and b.delete(ids[0]) is False
    assert a.wait_synced(5) and ids[0] not in a and a.lookup(code(0), 0, namespace="n2") is None
    assert a.delete_namespace("n1") == 5
    assert b.wait_synced(5) and set(b.namespaces()) == {b"n2"} and len(b) == 4
    assert a.delete_many(ids[2:6]) == 2  # ids 3 and 5 went with n1
    b.clear()
    assert a.wait_synced(5) and len(a) == 0 and len(b) == 0


def test_a_keyed_put_replaces_the_entry_of_another_process(engines: Any) -> None:
    a, b = engines(), engines()
    first = a.put(code(1), b"old", namespace="ns", key=99)
    assert b.wait_synced(5)
    second = b.put(code(2), b"new", namespace="ns", key=99)
    assert a.wait_synced(5)
    for engine in (a, b):
        assert engine.lookup_key(99, namespace="ns")[:3] == (second, 0, b"new")
        assert first not in engine and len(engine) == 1


def test_ttl_expiry_is_the_same_in_every_replica(engines: Any) -> None:
    a, b = engines(), engines()
    a.put(code(1), b"short", ttl=0.4)
    a.put(code(2), b"long")
    assert b.wait_synced(5)
    assert b.lookup(code(1), 0) is not None
    time.sleep(0.5)
    for engine in (a, b):
        assert engine.lookup(code(1), 0) is None
        assert engine.lookup(code(2), 0) is not None
    assert a.purge_expired() in (0, 1)  # the keeper thread may have purged it first
    assert b.wait_synced(5)
    assert len(redis_entries(a.config.url + f"?prefix={a.config.prefix}")) == 1


def test_capacity_is_one_rule_for_every_replica_and_follows_shared_use(engines: Any) -> None:
    a, b, c = engines(max_entries=5), engines(max_entries=50), engines(max_entries=5)
    assert b.max_entries == 5  # set once, by the process that created the cache
    ids = [a.put(code(i), b"%d" % i) for i in range(5)]
    assert b.wait_synced(5)
    assert b.lookup(code(0), 0) is not None  # entry 0 is used (in b) ...
    time.sleep(1.3)  # ... and b sends its uses once a second
    c.put(code(5), b"5")
    for engine in (a, b, c):
        assert engine.wait_synced(5)
        assert len(engine) == 5
        assert ids[0] in engine and ids[1] not in engine  # the least recently used went
    assert {int(k) for k in redis_entries(f"{a.config.url}?prefix={a.config.prefix}")} == set(entries(a))


def test_settings_are_checked_against_the_shared_cache(engines: Any, shared_url: str) -> None:
    engines()
    with pytest.raises(EncoderMismatchError):
        engines(fingerprint="another")
    with pytest.raises(EncoderMismatchError):
        engines(code_bits=128)
    with pytest.raises(SharedStoreError, match="shards=1"):
        engines(url=shared_url + "&shards=2")


def test_an_unreachable_redis_at_start_is_a_clear_error_without_the_password() -> None:
    from bsc.shared.testing import free_port

    url = f"redis://alice:s3cret-pw@127.0.0.1:{free_port()}/0"
    with pytest.raises(SharedStoreError) as caught:
        connect(Shared(url, timeout=0.5), code_bits=256, max_entries=10, fingerprint="fp")
    assert "s3cret-pw" not in str(caught.value) and "alice" not in str(caught.value)
    assert "127.0.0.1" in str(caught.value)


def test_urls_are_parsed_and_redacted() -> None:
    config = Shared.parse(
        "rediss://u:pw@example.test:6380/2?prefix=app1&shards=4&on_disconnect=drop&ssl_cert_reqs=none"
    )
    assert (config.prefix, config.shards, config.on_disconnect) == ("app1", 4, "drop")
    assert config.url == "rediss://u:pw@example.test:6380/2?ssl_cert_reqs=none"
    assert "pw" not in repr(config) and config.safe_url == "rediss://***@example.test:6380/2?ssl_cert_reqs=none"
    assert redact("redis://:only-pw@h/0") == "redis://***@h/0"
    assert "qpw" not in redact("redis://h/0?password=qpw&ssl_password=qpw")
    assert "qpw" not in repr(Shared.parse("redis://h/0?password=qpw&prefix=x"))
    for bad in (
        "http://h",
        "redis://",
        "redis://h?prefix=a b",
        "redis://h?shards=0",
        "redis://h?on_disconnect=x",
        "redis://h?decode_responses=true",
    ):
        with pytest.raises(ValueError, match=r"redis|host|prefix|shards|on_disconnect|decode"):
            Shared.parse(bad)
    with pytest.raises(TypeError):
        Shared.parse(6379)  # type: ignore[arg-type]


def test_password_protected_redis_and_no_credentials_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    with RedisServer(extra=["--requirepass", "pw-9f8e7d"]) as server:
        url = f"redis://default:pw-9f8e7d@127.0.0.1:{server.port}/0?prefix=auth"
        caplog.set_level(logging.DEBUG, logger="bsc")
        engine = connect(url, code_bits=256, max_entries=10, fingerprint="fp")
        try:
            engine.put(code(1), b"x")
            server.kill()
            engine.put(code(2), b"queued")  # logged as a lost connection
            eventually(lambda: not engine.shared_stats()["connected"], 5)
            server.start()
            eventually(lambda: not engine.shared_stats()["queue"], 10)
            assert engine.shared_stats()["writes_replayed"] == 1 and len(engine) == 2
        finally:
            engine.close()
        with pytest.raises(SharedStoreError, match="authenticated"):
            connect(f"redis://127.0.0.1:{server.port}/0", code_bits=256, max_entries=10, fingerprint="fp")
    assert caplog.records and not any("pw-9f8e7d" in r.getMessage() for r in caplog.records)


def test_writes_while_redis_is_down_are_dropped_and_counted_with_the_drop_policy() -> None:
    with RedisServer() as server:
        engine = connect(Shared(server.url, on_disconnect="drop"), code_bits=256, max_entries=10, fingerprint="fp")
        try:
            kept = engine.put(code(1), b"kept")
            server.kill()
            engine.put(code(2), b"lost")
            engine.put(code(3), b"lost too")
            assert engine.lookup(code(1), 0)[0] == kept  # lookups go on from the replica
            assert engine.shared_stats()["writes_dropped"] == 2
            server.start()
            eventually(lambda: bool(engine.shared_stats()["connected"]), 10)
            assert engine.wait_synced(5) and set(entries(engine)) == {kept}
        finally:
            engine.close()


def test_a_stalled_replica_catches_up(engines: Any) -> None:
    a = engines()
    b = engines()
    bshard = b._shards[0]
    with bshard.apply_lock:
        first = [a.put(code(i), b"%d" % i) for i in range(300)]
        gone = first[:50]
        assert a.delete_many(gone) == 50
    assert b.wait_synced(10)
    assert set(entries(b)) == set(entries(a)) == set(first[50:])


@pytest.fixture
def short_stream(shared_url: str) -> str:
    return shared_url + "&stream_maxlen=100"


def test_the_stream_is_bounded_and_a_stalled_replica_rebuilds_itself(short_stream: str) -> None:
    a = connect(short_stream, code_bits=256, max_entries=5000, fingerprint="fp")
    b = connect(short_stream, code_bits=256, max_entries=5000, fingerprint="fp")
    try:
        before = b.shared_stats()["resyncs"]
        with b._shards[0].apply_lock:
            # More changes than the stream keeps plus what b's tailer may have read ahead (1000).
            ids = [a.put(code(i), b"%d" % i) for i in range(2500)]
            a.delete_many(ids[:100])
            client = redis.Redis.from_url(a.config.url)
            assert client.xlen(a._shards[0].log) < 500
            client.close()
        assert b.wait_synced(10)
        assert b.shared_stats()["resyncs"] > before
        assert set(entries(b)) == set(ids[100:])
    finally:
        a.close()
        b.close()


def test_semantic_caches_share_answers_tags_and_reports(shared_url: str) -> None:
    words = WordEmbedder()
    one = SemanticCache(words, similarity_threshold=0.5, shared=shared_url)
    two = SemanticCache(words, similarity_threshold=0.5, shared=shared_url)
    try:
        one.store("what is the capital of france", "Paris", tags=["geo"])
        one.store("how tall is mount everest", "8849 m", tags=["geo", "mountains"])
        one.store("who wrote hamlet", "Shakespeare")
        assert two.binary.engine.wait_synced(5)  # type: ignore[attr-defined]
        hit = two.lookup("what is the capital of france")
        assert hit is not None and hit.exact and hit.response == "Paris"
        assert two.lookup("capital of france what is the") is not None  # semantic, from the other process
        assert two.delete_tag("geo") == 2
        assert one.binary.engine.wait_synced(5)  # type: ignore[attr-defined]
        assert one.lookup("how tall is mount everest") is None and len(one) == 1
        hamlet = one.lookup("who wrote hamlet")
        assert hamlet is not None and two.mark_wrong(hamlet.id) is True
        assert one.binary.engine.wait_synced(5)  # type: ignore[attr-defined]
        assert one.lookup("who wrote hamlet") is None and len(one) == 0
    finally:
        one.close()
        two.close()


def test_identical_prompts_in_two_namespaces_never_cross_between_replicas(shared_url: str) -> None:
    words = WordEmbedder()
    writer = SemanticCache(words, similarity_threshold=0.5, shared=shared_url)
    reader = SemanticCache(words, similarity_threshold=0.5, shared=shared_url)
    try:
        prompts = [f"question number {i} about topic {i % 7}" for i in range(150)]
        for p in prompts:
            writer.store(p, {"ns": "tenant-a", "p": p}, namespace="tenant-a")
        assert reader.binary.engine.wait_synced(5)  # type: ignore[attr-defined]
        for p in prompts:
            assert reader.lookup(p, namespace="tenant-b") is None
            assert reader.lookup(p + " please", namespace="tenant-b") is None
            assert reader.lookup(p, namespace="tenant-a") is not None
    finally:
        writer.close()
        reader.close()


def test_binary_cache_and_its_arguments(shared_url: str, encoder: BinaryEncoder, tmp_path: Any) -> None:
    cache = BinarySemanticCache(encoder, max_entries=100, shared=shared_url)
    other = BinarySemanticCache(encoder, max_entries=100, shared=Shared.parse(shared_url))
    try:
        vector = rng.standard_normal(64).astype(np.float32)
        entry_id = cache.put(vector, {"answer": 42})
        assert other.engine.wait_synced(5)  # type: ignore[attr-defined]
        hit = other.get(vector)
        assert hit is not None and hit.id == entry_id and hit.response == {"answer": 42}
        with pytest.raises(ValueError, match="cannot be saved"):
            cache.save(tmp_path / "c.bsc")
    finally:
        cache.close()
        other.close()
    with pytest.raises(ValueError, match="persist_path and shared"):
        BinarySemanticCache(encoder, shared=shared_url, persist_path=tmp_path / "x.bsc")
    with pytest.raises(TypeError):
        BinarySemanticCache(encoder, shared=42)  # type: ignore[arg-type]


def test_bad_writes_change_nothing_in_redis(engines: Any) -> None:
    a = engines()
    for kwargs, error in (
        ({"ttl": 0}, ValueError),
        ({"ttl": float("nan")}, ValueError),
        ({"key": -1}, ValueError),
        ({"key": 2**64}, ValueError),
        ({"namespace": "x" * 1025}, ValueError),
        ({"namespace": "\udc80"}, ValueError),
        ({"namespace": 5}, TypeError),
    ):
        with pytest.raises(error):
            a.put(code(1), b"x", **kwargs)
    with pytest.raises(ValueError, match="shape"):
        a.put(np.zeros(3, dtype=np.uint64), b"x")
    with pytest.raises(TypeError):
        a.put(np.zeros(4, dtype=np.int64), b"x")
    assert len(a) == 0 and redis_entries(f"{a.config.url}?prefix={a.config.prefix}") == {}


def test_a_tls_redis_with_rediss_urls() -> None:
    with RedisServer(tls=True) as server:
        assert server.url.startswith("rediss://")
        a = connect(server.url + "&prefix=tls", code_bits=256, max_entries=10, fingerprint="fp")
        b = connect(server.url + "&prefix=tls", code_bits=256, max_entries=10, fingerprint="fp")
        try:
            gid = a.put(code(1), b"over tls")
            assert b.wait_synced(5) and b.lookup(code(1), 0)[:3] == (gid, 0, b"over tls")
        finally:
            a.close()
            b.close()
        # A client that does not trust the server's certificate is refused.
        untrusted = f"rediss://127.0.0.1:{server.port}/0"
        with pytest.raises(SharedStoreError, match="certificate"):
            connect(Shared(untrusted, timeout=2), code_bits=256, max_entries=10, fingerprint="fp")


def test_a_write_redis_refuses_is_a_shared_store_error(engines: Any, redis_server: Any) -> None:
    a = engines()
    client = redis.Redis.from_url(redis_server.url)
    client.config_set("maxmemory", 1)  # every write is now over the limit (noeviction)
    try:
        with pytest.raises(SharedStoreError, match="refused a put"):
            a.put(code(1), b"x" * 100_000)
    finally:
        client.config_set("maxmemory", 0)
        client.close()
    assert a.put(code(1), b"fits now") > 0 and len(a) == 1


def test_a_queued_puts_ttl_runs_from_the_put_not_from_its_replay(fresh_redis: Any) -> None:
    engine = connect(fresh_redis.url, code_bits=256, max_entries=10, fingerprint="fp")
    try:
        fresh_redis.kill()
        engine.put(code(1), b"expires in the queue", ttl=0.3)
        engine.put(code(2), b"outlives the outage", ttl=3.0)
        put_at = time.time()
        time.sleep(0.8)
        fresh_redis.start()
        eventually(lambda: not engine.shared_stats()["queue"], 10)
        assert engine.wait_synced(5)
        assert engine.lookup(code(1), 0) is None
        found = engine.lookup(code(2), 0)
        assert found is not None
        entries_in_redis = redis_entries(f"{fresh_redis.url}?prefix=bsc")
        assert list(entries_in_redis.values()) == [b"outlives the outage"]
        client = redis.Redis.from_url(fresh_redis.url)
        expiry_ms = int(client.hget(f"{{bsc:0}}:e:{found[0]}", "x"))
        client.close()
        assert expiry_ms / 1000 - put_at < 3.3  # not 3 s after the replay (0.8 s later)
    finally:
        engine.close()


def test_listeners_run_outside_the_replicas_lock_so_clear_never_deadlocks(shared_url: str) -> None:
    """A tag-index listener used to run under the replica's apply lock while ``clear`` held the
    tag index's lock and waited for the apply lock."""
    words = WordEmbedder()
    writer = SemanticCache(words, shared=shared_url)
    clearer = SemanticCache(words, shared=shared_url)
    engine = clearer.binary.engine
    engine.add_listener(lambda gid, payload: time.sleep(0.002))  # type: ignore[attr-defined]  (widens the window)
    done = threading.Event()

    def store() -> None:
        for i in range(150):
            writer.store(f"tagged question {i}", "x", tags=["t"])
        done.set()

    def clear() -> None:
        while not done.is_set():
            clearer.clear()

    threads = [threading.Thread(target=store, daemon=True), threading.Thread(target=clear, daemon=True)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not any(t.is_alive() for t in threads), "deadlocked"
    finally:
        writer.close()
        clearer.close()


def test_a_store_that_lost_its_last_changes_is_detected(engines: Any, shared_url: str) -> None:
    """Redis restarted without its last changes numbers the stream from below what replicas
    applied; they resync instead of skipping the new changes."""
    a, b = engines(), engines()
    ids = [a.put(code(i), b"%d" % i) for i in range(5)]
    assert b.wait_synced(5)
    client = redis.Redis.from_url(a.config.url)
    tag = a._shards[0].tag
    for gid in ids[3:]:  # as if the last two puts had not reached the append-only file
        client.unlink(f"{tag}:e:{gid}")
        client.zrem(f"{tag}:ids", gid)
    client.set(f"{tag}:seq", 3)
    client.close()
    new = a.put(code(9), b"after the loss")
    eventually(lambda: all(set(entries(e)) == {*ids[:3], new} for e in (a, b)), 10)
    for engine in (a, b):
        assert set(entries(engine)) == {*ids[:3], new}


def test_a_flushall_is_noticed_and_the_replicas_start_over(engines: Any, redis_server: Any) -> None:
    url = f"{redis_server.url}?prefix=flushall"
    a, b = engines(url=url), engines(url=url)
    for i in range(5):
        a.put(code(i), b"old")
    assert b.wait_synced(5) and len(b) == 5
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter("{flushall:*"):
        client.unlink(key)  # the cache's keys only (other tests share this server)
    client.close()
    eventually(lambda: not (len(a) or len(b)), 15)
    assert len(a) == 0 and len(b) == 0
    gid = b.put(code(7), b"new")
    assert a.wait_synced(5) and set(entries(a)) == {gid} and set(entries(b)) == {gid}


def test_a_dropped_delete_is_not_applied_anywhere(fresh_redis: Any) -> None:
    url = f"{fresh_redis.url}?on_disconnect=drop"
    a = connect(url, code_bits=256, max_entries=10, fingerprint="fp")
    try:
        gid = a.put(code(1), b"x")
        fresh_redis.kill()
        assert a.delete(gid) is False  # dropped: nothing changed, here or in Redis
        assert a.lookup(code(1), 0) is not None
        fresh_redis.start()
        eventually(lambda: bool(a.shared_stats()["connected"]), 10)
        assert a.wait_synced(5) and set(entries(a)) == {gid}
    finally:
        a.close()


def test_key_zero_is_no_key_and_evictions_are_counted(engines: Any) -> None:
    a, b = engines(max_entries=3), engines(max_entries=3)
    first = a.put(code(1), b"one", key=0)
    second = a.put(code(2), b"two", key=0)
    assert first in a and second in a  # 0 is "no key", as in the native store
    for i in range(3, 6):
        a.put(code(i), b"more")
    assert b.wait_synced(5)
    for engine in (a, b):
        assert len(engine) == 3 and engine.stats()["evictions"] == 2
