"""BinarySemanticCache.save / load / persist_path."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bsc import (
    BinaryEncoder,
    BinarySemanticCache,
    BscError,
    CacheFileError,
    CorruptFileError,
    EncoderMismatchError,
    UnsupportedVersionError,
)
from bsc_native import CacheStore


def embeddings(n: int, dim: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def state(cache: BinarySemanticCache) -> list[tuple[Any, ...]]:
    """Every entry, in LRU order, as peek() reports it."""
    out = []
    for entry_id in cache._store.lru_ids().tolist():
        entry = cache.peek(entry_id)
        assert entry is not None
        out.append((entry.id, entry.response, entry.created_at, entry.last_accessed, entry.access_count))
    return out


RESPONSES = [
    "plain text",
    "ünïcødé \N{SNOWMAN} and an unpaired surrogate \ud800",
    b"\x00raw bytes\xff",
    {"choices": [{"message": {"content": "hi"}}], "usage": {"total_tokens": 7}},
    [1, 2.5, None, True, "x"],
    None,
    42,
    "",
]


def test_save_and_load_round_trip(tmp_path: Path, encoder: BinaryEncoder) -> None:
    cache = BinarySemanticCache(encoder, max_entries=50, similarity_threshold=0.9)
    vectors = embeddings(len(RESPONSES))
    for vector, response in zip(vectors, RESPONSES, strict=True):
        cache.put(vector, response)
    assert cache.get(vectors[2]) is not None and cache.get(-vectors[0]) is None
    path = tmp_path / "cache.bsc"
    cache.save(path)
    loaded = BinarySemanticCache.load(path)
    assert state(loaded) == state(cache)
    assert loaded.encoder.fingerprint() == encoder.fingerprint()
    assert (loaded.max_entries, loaded.similarity_threshold) == (50, 0.9)
    assert loaded.stats().as_dict() | {"memory_bytes": 0} == cache.stats().as_dict() | {"memory_bytes": 0}
    for vector, response in zip(vectors, RESPONSES, strict=True):
        hit = loaded.get(vector)
        assert hit is not None and hit.response == response and hit.similarity == 1.0
    # Settings can be overridden at load; a smaller max_entries keeps the most recent entries.
    small = BinarySemanticCache.load(path, encoder, max_entries=2, similarity_threshold=0.5)
    assert (len(small), small.similarity_threshold) == (2, 0.5)
    assert [e[0] for e in state(small)] == [e[0] for e in state(cache)][:2]


def test_wrong_encoder_and_bad_files_raise_bsc_errors(tmp_path: Path, encoder: BinaryEncoder) -> None:
    path = tmp_path / "c.bsc"
    cache = BinarySemanticCache(encoder)
    cache.put(embeddings(1)[0], "x")
    cache.save(path)
    with pytest.raises(EncoderMismatchError, match="seed=7"):
        BinarySemanticCache.load(path, BinaryEncoder(64, 256, seed=7))
    with pytest.raises(EncoderMismatchError):
        BinarySemanticCache(BinaryEncoder(64, 256, seed=7), persist_path=path)
    path.write_bytes(path.read_bytes()[:-3])
    with pytest.raises(CacheFileError, match=str(path)) as raised:
        BinarySemanticCache.load(path)
    assert isinstance(raised.value, BscError)
    with pytest.raises(ValueError, match="persist_path"):
        cache.save()
    with pytest.raises(TypeError, match="encoder"):
        BinarySemanticCache.load(tmp_path / "c.bsc", "not an encoder")  # type: ignore[arg-type]


def test_a_store_saved_without_settings_needs_an_encoder(tmp_path: Path, encoder: BinaryEncoder) -> None:
    path = tmp_path / "bare.bsc"
    CacheStore(code_bits=256, fingerprint=encoder.fingerprint()).save(path)
    with pytest.raises(CorruptFileError, match="encoder="):
        BinarySemanticCache.load(path)
    assert len(BinarySemanticCache.load(path, encoder)) == 0
    future = {"encoder": {"algorithm_version": 99, "embedding_dim": 64, "code_bits": 256, "seed": 42}}
    CacheStore(code_bits=256, fingerprint=encoder.fingerprint()).save(path, json.dumps(future).encode())
    with pytest.raises(UnsupportedVersionError, match="upgrade"):
        BinarySemanticCache.load(path)
    CacheStore(code_bits=256).save(path, b"\xff not json")
    with pytest.raises(CorruptFileError, match="JSON"):
        BinarySemanticCache.load(path)


def test_persist_path_loads_at_start_and_saves_on_close(tmp_path: Path, encoder: BinaryEncoder) -> None:
    path = tmp_path / "auto.bsc"
    vectors = embeddings(10)
    with BinarySemanticCache(encoder, persist_path=path, persist_every=None, persist_interval=None) as cache:
        assert cache.persist_path == path
        for i, vector in enumerate(vectors):
            cache.put(vector, f"answer {i}")
        assert not path.exists()  # no background saving was asked for
    assert path.exists()
    with BinarySemanticCache(encoder, persist_path=path) as again:
        hit = again.get(vectors[3])
        assert hit is not None and hit.response == "answer 3"
        assert len(again) == 10
    cache.close()  # idempotent


def wait_for(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_background_saves_every_n_puts_and_every_t_seconds(tmp_path: Path, encoder: BinaryEncoder) -> None:
    by_count = tmp_path / "count.bsc"
    cache = BinarySemanticCache(encoder, persist_path=by_count, persist_every=5, persist_interval=None)
    vectors = embeddings(5)
    for vector in vectors[:4]:
        cache.put(vector, "x")
    time.sleep(0.2)
    assert not by_count.exists()
    cache.put(vectors[4], "x")
    assert wait_for(lambda: by_count.exists() and len(BinarySemanticCache.load(by_count)) == 5)
    cache.close()

    by_time = tmp_path / "time.bsc"
    cache = BinarySemanticCache(encoder, persist_path=by_time, persist_every=None, persist_interval=0.1)
    cache.put(vectors[0], "x")
    assert wait_for(by_time.exists)
    # Lookups keep working while saves run in the background.
    for _ in range(200):
        assert cache.get(vectors[0]) is not None
    cache.close()
    assert BinarySemanticCache.load(by_time).stats().hits == 200


def test_bad_persist_settings_are_refused(tmp_path: Path, encoder: BinaryEncoder) -> None:
    for every, interval in [(0, None), (1.5, None), (None, -1.0), (None, "soon")]:
        with pytest.raises(ValueError, match="persist_"):
            BinarySemanticCache(encoder, persist_path=tmp_path / "x", persist_every=every, persist_interval=interval)  # type: ignore[arg-type]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(), children, max_size=3),
    max_leaves=8,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["put", "get", "delete"]), st.integers(0, 15), json_values | st.binary()),
        max_size=40,
    ),
    max_entries=st.integers(1, 8),
)
def test_round_trip_property(tmp_path: Path, encoder: BinaryEncoder, ops: list, max_entries: int) -> None:  # type: ignore[type-arg]
    """Any sequence of puts, hits and deletes, saved and loaded: every entry, response,
    timestamp, access count and the LRU order survive, and the counters too."""
    vectors = embeddings(16, seed=1)
    cache = BinarySemanticCache(encoder, max_entries=max_entries)
    ids: list[int] = []
    for op, pick, response in ops:
        if op == "put":
            ids.append(cache.put(vectors[pick], response))
        elif op == "get":
            cache.get(vectors[pick])
        elif ids:
            cache.delete(ids[pick % len(ids)])
    path = tmp_path / "prop.bsc"
    cache.save(path)
    loaded = BinarySemanticCache.load(path)
    assert state(loaded) == state(cache)
    assert loaded.stats().as_dict() | {"memory_bytes": 0} == cache.stats().as_dict() | {"memory_bytes": 0}


def test_a_program_that_exits_without_close_still_saves(tmp_path: Path) -> None:
    path = tmp_path / "exit.bsc"
    program = (
        "import numpy as np\n"
        "from bsc import BinaryEncoder, BinarySemanticCache\n"
        f"cache = BinarySemanticCache(BinaryEncoder(64), persist_path={str(path)!r}, persist_every=None,"
        " persist_interval=None)\n"
        "cache.put(np.ones(64), 'kept')\n"
    )
    subprocess.run([sys.executable, "-c", program], check=True)
    hit = BinarySemanticCache.load(path).get(np.ones(64))
    assert hit is not None and hit.response == "kept"


def test_namespaces_and_ttls_through_the_embedding_cache(tmp_path: Path, encoder: BinaryEncoder) -> None:
    vector = embeddings(1)[0]
    cache = BinarySemanticCache(encoder, default_ttl=3600)
    cache.put(vector, "for alice", namespace="alice")
    cache.put(vector, "for bob", namespace="bob", ttl=0.1)
    alice = cache.get(vector, namespace="alice")
    assert alice is not None and alice.response == "for alice"
    assert cache.get(vector) is None  # the unnamed namespace holds nothing
    time.sleep(0.15)
    assert cache.get(vector, namespace="bob") is None  # expired
    assert cache.purge_expired() == 1
    assert cache.stats().expirations == 1 and cache.stats().namespaces == 1
    cache.save(tmp_path / "ns.bsc")
    loaded = BinarySemanticCache.load(tmp_path / "ns.bsc")
    assert loaded.default_ttl == 3600
    hit = loaded.get(vector, namespace="alice")
    assert hit is not None and hit.response == "for alice"
    assert loaded.delete_namespace("alice") == 1 and len(loaded) == 0
    with pytest.raises(ValueError, match="default_ttl"):
        BinarySemanticCache(encoder, default_ttl=-1)
    with pytest.raises(TypeError, match="namespace"):
        cache.put(vector, "x", namespace=7)  # type: ignore[arg-type]
