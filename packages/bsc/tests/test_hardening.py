"""Hardening: lone surrogates, TTL limits, temporary files of killed saves, failed saves counted,
mark_wrong by entry id."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import bsc
from bsc import (
    MAX_TTL,
    BinaryEncoder,
    BinarySemanticCache,
    CacheStats,
    SemanticCache,
    SemanticStats,
    semantic_cache,
)
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"


def unit(seed: int, dim: int = 64) -> Any:
    vector = np.random.default_rng(seed).standard_normal(dim).astype(np.float32)
    return vector / np.linalg.norm(vector)


@pytest.fixture
def cache() -> SemanticCache:
    return SemanticCache(WordEmbedder())


def chat(text: str, system: str = "Be brief.") -> list[dict[str, str]]:
    return [{"role": "system", "content": system}, {"role": "user", "content": text}]


# -- 1. lone surrogates ------------------------------------------------------------------------

BAD_PROMPT = "a\ud800b"
PROMPT_CALLS: list[Callable[[SemanticCache, str], Any]] = [
    lambda c, p: c.store(p, "x"),
    lambda c, p: c.lookup(p),
    lambda c, p: c.store_many([Q, p], ["x", "y"]),
    lambda c, p: c.lookup_many([Q, p]),
    lambda c, p: c.store_chat(chat(p), "x", model="m"),
    lambda c, p: c.lookup_chat(chat(p), model="m"),
    lambda c, p: asyncio.run(c.astore(p, "x")),
    lambda c, p: asyncio.run(c.alookup(p)),
    lambda c, p: asyncio.run(c.astore_chat(chat(p), "x", model="m")),
    lambda c, p: asyncio.run(c.alookup_chat(chat(p), model="m")),
]


@pytest.mark.parametrize("call", PROMPT_CALLS)
def test_a_prompt_with_a_lone_surrogate_is_a_clear_value_error(cache: SemanticCache, call: Callable[..., Any]) -> None:
    with pytest.raises(ValueError, match=r"prompt holds a lone surrogate U\+D800 at index 1") as info:
        call(cache, BAD_PROMPT)
    assert not isinstance(info.value, UnicodeError)
    with pytest.raises(ValueError, match=r"lone surrogate U\+DFFF at index 3"):
        call(cache, "abc\udfffdef")
    assert len(cache) == 0
    # Surrogate pairs written as one code point, and other non-ASCII text, are fine.
    cache.store("naïve café \U0001f600", "x")
    assert cache.lookup("naïve café \U0001f600") is not None


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.store(Q, "x", model="gpt\ud800"),
        lambda c: c.lookup(Q, model="gpt\ud800"),
        lambda c: c.lookup(Q, **{"k\udc00": 1}),
        lambda c: c.store(Q, "x", options={"stop": ["ok", "\ud800"]}),
        lambda c: c.store_many([Q], ["x"], user_id="\ud800"),
        lambda c: asyncio.run(c.alookup(Q, model="gpt\ud800")),
        lambda c: c.lookup_chat(chat(Q), model="gpt\ud800"),
        lambda c: c.store_chat(chat(Q, system="sys\ud800"), "x", model="m"),
        lambda c: c.lookup_chat(chat(Q), model="m", stop=["\ud800"]),
        lambda c: c.store(Q, "x", tags=["ok", "t\ud800"]),
        lambda c: c.delete_tag("t\ud800"),
    ],
)
def test_a_scope_value_or_tag_with_a_lone_surrogate_is_a_clear_value_error(
    cache: SemanticCache, call: Callable[..., Any]
) -> None:
    with pytest.raises(ValueError, match=r"lone surrogate U\+D[8C]00 at index") as info:
        call(cache)
    assert not isinstance(info.value, UnicodeError)
    assert len(cache) == 0


def test_a_namespace_with_a_lone_surrogate_is_a_value_error(cache: SemanticCache, encoder: BinaryEncoder) -> None:
    for call in (
        lambda: cache.store(Q, "x", namespace="ns\ud800"),
        lambda: cache.lookup(Q, namespace="ns\ud800"),
        lambda: cache.delete_namespace("ns\ud800"),
    ):
        with pytest.raises(ValueError, match="namespace"):
            call()
    binary = BinarySemanticCache(encoder)
    binary_calls: list[Callable[[], Any]] = [
        lambda: binary.put(unit(1), "x", namespace="ns\ud800"),
        lambda: binary.get(unit(1), namespace="ns\ud800"),
    ]
    for binary_call in binary_calls:
        with pytest.raises(ValueError, match=r"namespace holds a lone surrogate U\+D800 at index 2") as info:
            binary_call()
        assert not isinstance(info.value, UnicodeError)
    assert len(binary) == 0


def test_the_decorator_refuses_a_lone_surrogate_before_calling(cache: SemanticCache) -> None:
    calls = []

    @semantic_cache(cache)
    def answer(question: str, model: str = "m") -> str:
        calls.append(question)
        return "x"

    with pytest.raises(ValueError, match="lone surrogate"):
        answer(BAD_PROMPT)
    with pytest.raises(ValueError, match="lone surrogate"):
        answer(Q, model="m\ud800")
    assert calls == []


# -- 2. TTL limits -----------------------------------------------------------------------------

BAD_TTLS = [
    (1e30, ValueError),
    (float("inf"), ValueError),
    (float("nan"), ValueError),
    (-1, ValueError),
    (0, ValueError),
    (MAX_TTL + 1, ValueError),
    (10**400, ValueError),
    (True, TypeError),
    ("5", TypeError),
]


def test_max_ttl_is_ten_years_and_exported() -> None:
    assert bsc.MAX_TTL == MAX_TTL == 315_360_000 == 10 * 365 * 24 * 3600
    assert "MAX_TTL" in bsc.__all__


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS)
def test_bad_ttls_are_refused_everywhere(encoder: BinaryEncoder, ttl: Any, error: type[Exception]) -> None:
    match = "MAX_TTL = 315,360,000" if error is ValueError else "number of seconds"
    words = WordEmbedder()
    with pytest.raises(error, match="default_ttl.*" + match):
        BinarySemanticCache(encoder, default_ttl=ttl)
    with pytest.raises(error, match="default_ttl.*" + match):
        SemanticCache(words, default_ttl=ttl)
    binary = BinarySemanticCache(encoder)
    with pytest.raises(error, match="ttl.*" + match):
        binary.put(unit(1), "x", ttl=ttl)
    assert len(binary) == 0
    cache = SemanticCache(words)
    calls: list[Callable[[], Any]] = [
        lambda: cache.store(Q, "x", ttl=ttl),
        lambda: asyncio.run(cache.astore(Q, "x", ttl=ttl)),
        lambda: cache.store_many([Q], ["x"], ttl=ttl),
        lambda: cache.store_chat(chat(Q), "x", model="m", ttl=ttl),
        lambda: asyncio.run(cache.astore_chat(chat(Q), "x", model="m", ttl=ttl)),
        lambda: semantic_cache(cache, ttl=ttl),
    ]
    for call in calls:
        with pytest.raises(error, match="ttl.*" + match):
            call()
    assert len(cache) == 0


def test_max_ttl_itself_is_accepted_and_kept(encoder: BinaryEncoder) -> None:
    binary = BinarySemanticCache(encoder, default_ttl=MAX_TTL)
    entry_id = binary.put(unit(1), "x")
    placement = binary.engine.placement(entry_id)
    assert placement is not None and placement[1] == pytest.approx(time.time() + MAX_TTL, abs=5)
    cache = SemanticCache(WordEmbedder(), default_ttl=np.float64(60))
    stored = cache.store(Q, "x", ttl=np.int64(MAX_TTL))
    assert stored is not None
    placement = cache.binary.engine.placement(stored)
    assert placement is not None and placement[1] == pytest.approx(time.time() + MAX_TTL, abs=5)


def test_a_file_saved_with_a_default_ttl_above_the_limit_loads_with_it_clamped(
    tmp_path: Path, encoder: BinaryEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    old = BinarySemanticCache(encoder)
    old.put(unit(1), "x")
    old._default_ttl = 1e30  # as an older bsc, without MAX_TTL, saved it
    old.save(tmp_path / "c.bsc")
    with caplog.at_level(logging.WARNING, logger="bsc"):
        loaded = BinarySemanticCache.load(tmp_path / "c.bsc")
    assert loaded.default_ttl == MAX_TTL and len(loaded) == 1
    assert "above MAX_TTL" in caplog.text
    loaded.put(unit(2), "y")  # and puts with it work
    with BinarySemanticCache(encoder, persist_path=tmp_path / "c.bsc") as reopened:
        assert len(reopened) == 1  # opened (with its own default_ttl, as always with persist_path)
    semantic = SemanticCache(WordEmbedder(), default_ttl=60)
    semantic.store(Q, "x")
    semantic._cache._default_ttl = 1e30
    semantic.save(tmp_path / "s.bsc")
    assert SemanticCache.load(tmp_path / "s.bsc", WordEmbedder()).binary.default_ttl == MAX_TTL


# -- 3. temporary files of killed saves --------------------------------------------------------


def strays(directory: Path, name: str) -> list[Path]:
    """Temporary files a killed save of ``name`` leaves, and others that must survive."""
    doomed = [directory / f".{name}.abc123.tmp", directory / f".{name}.Zz9Yy8.tmp"]
    kept = [
        directory / ".other.bsc.x.tmp",  # another cache file's
        directory / f".{name}.bak.abc123.tmp",  # the temporary file of `<name>.bak`
        directory / f"{name}.abc123.tmp",  # not hidden: not the engine's
        directory / f".{name}.abc123.tmp.keep",
    ]
    for path in doomed + kept:
        path.write_bytes(b"half a save")
    return kept


def temp_files(directory: Path, name: str) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name.startswith(f".{name}.") and p.name.endswith(".tmp"))


@pytest.mark.parametrize("name", ["c.bsc", "c[1] *?.bsc"])
def test_save_removes_the_temporary_files_of_killed_saves(
    tmp_path: Path, encoder: BinaryEncoder, caplog: pytest.LogCaptureFixture, name: str
) -> None:
    cache = BinarySemanticCache(encoder)
    cache.put(unit(1), "x")
    kept = strays(tmp_path, name)
    # A name whose glob characters were not escaped would match this one.
    decoy = tmp_path / ".c1 xy.bsc.abc123.tmp"
    decoy.write_bytes(b"")
    with caplog.at_level(logging.INFO, logger="bsc"):
        cache.save(tmp_path / name)
    assert temp_files(tmp_path, name) == [tmp_path / f".{name}.bak.abc123.tmp"]
    assert all(p.exists() for p in [*kept, decoy])
    assert caplog.text.count("left by an interrupted save") == 2
    assert BinarySemanticCache.load(tmp_path / name).peek(0) is not None


def test_concurrent_saves_of_one_cache_never_lose_their_temporary_file(tmp_path: Path, encoder: BinaryEncoder) -> None:
    cache = BinarySemanticCache(encoder, max_entries=5000)
    for i in range(3000):
        cache.put(unit(i), "x" * 200)
    errors: list[BaseException] = []

    def saver() -> None:
        try:
            for _ in range(8):
                cache.save(tmp_path / "c.bsc")
        except BaseException as err:  # pragma: no cover - what this test looks for
            errors.append(err)

    (tmp_path / ".c.bsc.abc123.tmp").write_bytes(b"")
    threads = [threading.Thread(target=saver) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert temp_files(tmp_path, "c.bsc") == []
    assert len(BinarySemanticCache.load(tmp_path / "c.bsc")) == 3000


def test_load_and_the_background_saver_remove_them_too(tmp_path: Path, encoder: BinaryEncoder) -> None:
    file = tmp_path / "c.bsc"
    SemanticCache(WordEmbedder(), persist_path=file).close()  # nothing stored: no file
    semantic = SemanticCache(WordEmbedder())
    semantic.store(Q, "Paris")
    semantic.save(file)

    kept = strays(tmp_path, "c.bsc")
    assert len(SemanticCache.load(file, WordEmbedder())) == 1
    assert temp_files(tmp_path, "c.bsc") == [tmp_path / ".c.bsc.bak.abc123.tmp"]

    strays(tmp_path, "c.bsc")
    assert len(BinarySemanticCache.load(file)) == 1
    assert temp_files(tmp_path, "c.bsc") == [tmp_path / ".c.bsc.bak.abc123.tmp"]

    strays(tmp_path, "c.bsc")
    with SemanticCache(WordEmbedder(), persist_path=file, persist_every=1, persist_interval=None) as persisted:
        assert temp_files(tmp_path, "c.bsc") == [tmp_path / ".c.bsc.bak.abc123.tmp"]  # removed on opening
        strays(tmp_path, "c.bsc")
        persisted.store("How tall is Mont Blanc?", "4808 m")  # a background save follows
        deadline = time.monotonic() + 30
        while len(temp_files(tmp_path, "c.bsc")) > 1 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert temp_files(tmp_path, "c.bsc") == [tmp_path / ".c.bsc.bak.abc123.tmp"]
    assert all(p.exists() for p in kept)
    assert len(SemanticCache.load(file, WordEmbedder())) == 2


# -- 4. failed saves are counted ---------------------------------------------------------------


def test_the_stats_fields_are_only_ever_appended() -> None:
    """Positional users keep working: save_errors was appended after the original fields, then
    lru_touches_dropped, then (SemanticStats) the self-check's counters."""
    later = ["verifications", "checks", "checks_different", "verification_tokens", "verification_seconds"]
    for cls, before, added in ((CacheStats, "namespaces", []), (SemanticStats, "similarity_histogram", later)):
        fields = dataclasses.fields(cls)
        names = [f.name for f in fields]
        at = names.index(before)
        assert names[at:] == [before, "save_errors", "lru_touches_dropped", *added]
        assert all(f.default in (0, 0.0) for f in fields[at + 1 :])


def test_a_failed_final_save_is_counted_logged_and_raised(
    tmp_path: Path, encoder: BinaryEncoder, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    cache = BinarySemanticCache(encoder, persist_path=directory / "c.bsc", persist_every=None, persist_interval=None)
    cache.put(unit(1), "x")
    assert cache.stats().save_errors == 0
    shutil.rmtree(directory)
    directory.write_text("a file where the directory was")
    with caplog.at_level(logging.DEBUG, logger="bsc"), pytest.raises(NotADirectoryError, match="gone"):
        cache.close()
    assert cache.stats().save_errors == 1
    persister = cache._persister
    assert persister is not None and persister.last_save_error is not None
    assert persister.last_save_error.startswith(f"{directory / 'c.bsc'}: ")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert message.startswith(f"bsc: saving the cache to {directory / 'c.bsc'} failed: ") and "\n" not in message
    assert errors[0].exc_info is None  # the traceback is logged at DEBUG
    assert any(r.levelno == logging.DEBUG and r.exc_info for r in caplog.records)
    cache.close()  # idempotent: nothing raised or counted again
    assert cache.stats().save_errors == 1


def test_failed_background_saves_are_counted_and_retried(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    directory = tmp_path / "gone"
    file = directory / "c.bsc"
    cache = SemanticCache(WordEmbedder(), persist_path=file, persist_every=1, persist_interval=None)
    assert cache.stats().save_errors == 0
    with caplog.at_level(logging.ERROR, logger="bsc"):
        cache.store(Q, "Paris")  # the directory does not exist: the background save fails
        deadline = time.monotonic() + 30
        while cache.stats().save_errors < 1 and time.monotonic() < deadline:
            time.sleep(0.02)
    assert cache.stats().save_errors == 1
    assert cache.stats().as_dict()["save_errors"] == 1
    assert f"bsc: saving the cache to {file} failed: " in caplog.text
    directory.mkdir()
    cache.store("How tall is Mont Blanc?", "4808 m")  # the next save writes both entries
    deadline = time.monotonic() + 30
    while not file.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    cache.close()
    assert cache.stats().save_errors == 1
    assert len(SemanticCache.load(file, WordEmbedder())) == 2


def test_a_failed_final_save_of_a_semantic_cache_is_counted(tmp_path: Path) -> None:
    directory = tmp_path / "gone"
    directory.mkdir()
    cache = SemanticCache(WordEmbedder(), persist_path=directory / "c.bsc", persist_every=None, persist_interval=None)
    cache.store(Q, "Paris")
    shutil.rmtree(directory)
    with pytest.raises(OSError, match="gone"):
        cache.close()
    assert cache.stats().save_errors == 1
    assert SemanticCache(WordEmbedder()).stats().save_errors == 0


# -- 5. mark_wrong by entry id -----------------------------------------------------------------


def test_mark_wrong_takes_an_entry_id(cache: SemanticCache, caplog: pytest.LogCaptureFixture) -> None:
    entry_id = cache.store(Q, "Lyon", namespace="geo")
    assert entry_id is not None
    with caplog.at_level(logging.WARNING, logger="bsc"):
        assert cache.mark_wrong(entry_id) is True
    assert f"false hit reported in geo: entry {entry_id} removed" in caplog.text
    assert cache.lookup(Q, namespace="geo") is None
    assert cache.stats().false_hit_reports == 1
    # An id no longer (or never) there is no report.
    for missing in (entry_id, 987_654, -1, 2**70):
        assert cache.mark_wrong(missing) is False
    assert cache.stats().false_hit_reports == 1
    for bad in (True, "0", 0.0, None, [entry_id]):
        with pytest.raises(TypeError, match="Hit or an entry id"):
            cache.mark_wrong(bad)  # type: ignore[arg-type]
    # A Hit is counted as before, even when its entry is gone already.
    cache.store(Q, "Lyon")
    hit = cache.lookup(Q)
    assert hit is not None
    assert cache.mark_wrong(hit) is True and cache.mark_wrong(hit) is False
    assert cache.stats().false_hit_reports == 3
