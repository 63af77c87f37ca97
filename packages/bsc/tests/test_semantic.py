"""SemanticCache: the exact and semantic paths, isolation, chat scopes, expiry, invalidation,
metrics, persistence, async, batches, the decorator and bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bsc import (
    BinaryEncoder,
    BinarySemanticCache,
    EncoderMismatchError,
    Hit,
    NotACacheFileError,
    SemanticCache,
    chat_scope,
    normalize_prompt,
    semantic_cache,
)
from bsc.cli import main as cli_main
from bsc.semantic import ranking
from bsc_backends.testing import WordEmbedder

Q = "What is the capital of France?"
PARAPHRASE = "what is the capital city of France?"
UNRELATED = "How do I bake sourdough bread at home?"


@pytest.fixture
def cache(words: WordEmbedder) -> SemanticCache:
    return SemanticCache(words, similarity_threshold=0.8)


def test_a_verbatim_repeat_is_answered_without_the_embedder(cache: SemanticCache, words: WordEmbedder) -> None:
    entry = cache.store(Q, "Paris")
    calls = words.calls
    hit = cache.lookup("  What is the   capital of France?\n")  # same after normalisation
    assert hit is not None and hit.exact and hit.similarity == 1.0
    assert (hit.response, hit.id, hit.prompt, hit.namespace) == ("Paris", entry, Q, "default")
    assert words.calls == calls  # no embedding computed
    stats = cache.stats()
    assert (stats.exact_hits, stats.semantic_hits, stats.misses, stats.hits, stats.lookups) == (1, 0, 0, 1, 1)


def test_a_paraphrase_is_answered_by_the_semantic_path(cache: SemanticCache) -> None:
    cache.store(Q, "Paris")
    hit = cache.lookup(PARAPHRASE)
    assert hit is not None and not hit.exact and hit.response == "Paris"
    assert cache.similarity_threshold <= hit.similarity < 1.0
    assert cache.lookup(UNRELATED) is None
    stats = cache.stats()
    assert (stats.semantic_hits, stats.misses) == (1, 1)
    assert sum(stats.similarity_histogram.values()) == 2


def test_normalisation_keeps_case_and_punctuation() -> None:
    assert normalize_prompt("  a\u00a0b\t\nc  ") == "a b c"
    assert normalize_prompt("\uff21\uff22\uff23") == "ABC"  # NFKC: fullwidth letters
    assert normalize_prompt("Is it 1?") != normalize_prompt("is it 1")


def test_identical_prompts_in_two_namespaces_never_cross(words: WordEmbedder) -> None:
    cache = SemanticCache(words, similarity_threshold=0.5, max_entries=1000)
    prompts = [f"question number {i} about topic {i % 7}" for i in range(150)]
    for p in prompts:
        cache.store(p, {"ns": "tenant-a", "p": p}, namespace="tenant-a")
    for p in prompts:  # nothing in tenant-b yet: every lookup misses, exact or semantic
        assert cache.lookup(p, namespace="tenant-b") is None
        assert cache.lookup(p + " please", namespace="tenant-b") is None
    for p in prompts:
        cache.store(p, {"ns": "tenant-b", "p": p}, namespace="tenant-b")
    for p in prompts:
        for ns in ("tenant-a", "tenant-b"):
            exact = cache.lookup(p, namespace=ns)
            near = cache.lookup(p + " please", namespace=ns)
            assert exact is not None and exact.exact and exact.response == {"ns": ns, "p": p}
            assert near is None or near.response["ns"] == ns
    assert cache.stats().namespaces == 2


def test_scope_values_partition_the_cache(cache: SemanticCache) -> None:
    cache.store(Q, "Paris (gpt-a)", model="gpt-a", user_id=1)
    assert cache.lookup(Q, model="gpt-a", user_id=1).response == "Paris (gpt-a)"  # type: ignore[union-attr]
    assert cache.lookup(Q, user_id=1, model="gpt-a") is not None  # order does not matter
    assert cache.lookup(Q, model="gpt-b", user_id=1) is None
    assert cache.lookup(Q, model="gpt-a", user_id=2) is None
    assert cache.lookup(Q, model="gpt-a") is None
    assert cache.lookup(Q) is None
    assert cache.lookup(PARAPHRASE, model="gpt-a", user_id=1) is not None
    assert cache.lookup(PARAPHRASE, model="gpt-b", user_id=1) is None


def test_chat_requests_match_the_last_user_message_within_their_context(cache: SemanticCache) -> None:
    system = {"role": "system", "content": "You are terse."}
    messages = [system, {"role": "user", "content": Q}]
    cache.store_chat(messages, "Paris", model="m1", temperature=0.2, usage={"total_tokens": 40})
    assert cache.lookup_chat(messages, model="m1", temperature=0.2).response == "Paris"  # type: ignore[union-attr]
    paraphrased = [system, {"role": "user", "content": PARAPHRASE}]
    assert cache.lookup_chat(paraphrased, model="m1", temperature=0.2, stream=True, user="u") is not None
    other_system = [{"role": "system", "content": "You are verbose."}, {"role": "user", "content": Q}]
    assert cache.lookup_chat(other_system, model="m1", temperature=0.2) is None
    assert cache.lookup_chat(messages, model="m2", temperature=0.2) is None
    assert cache.lookup_chat(messages, model="m1", temperature=0.3) is None
    assert cache.lookup_chat(messages, model="m1", temperature=0.2, max_tokens=5) is None
    assert cache.lookup_chat(messages, model="m1", temperature=0.2, tools=[{"type": "function"}]) is None
    later = [system, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, messages[1]]
    assert cache.lookup_chat(later, model="m1", temperature=0.2) is None  # other earlier turns
    parts = [system, {"role": "user", "content": [{"type": "text", "text": Q}]}]
    assert cache.lookup_chat(parts, model="m1", temperature=0.2) is not None
    image = {"type": "image_url", "image_url": {"url": "data:a"}}
    with_image = [system, {"role": "user", "content": [{"type": "text", "text": Q}, image]}]
    assert cache.lookup_chat(with_image, model="m1", temperature=0.2) is None
    assert cache.stats().tokens_saved == 3 * 40
    with pytest.raises(ValueError, match="last message"):
        chat_scope([messages[0]], model="m1")
    with pytest.raises(ValueError, match="non-empty list"):
        chat_scope([], model="m1")


def test_a_temperature_above_the_limit_bypasses_the_cache(words: WordEmbedder) -> None:
    cache = SemanticCache(words, max_temperature=0.5)
    assert cache.store(Q, "Paris", temperature=0.9) is None
    assert len(cache) == 0
    cache.store(Q, "Paris", temperature=0.5)
    assert cache.lookup(Q, temperature=0.5) is not None
    assert cache.lookup(Q, temperature=0.9) is None
    messages = [{"role": "user", "content": Q}]
    assert cache.store_chat(messages, "x", model="m", temperature=1.5) is None
    assert cache.stats().bypassed == 1
    with pytest.raises(ValueError, match="temperature"):
        cache.lookup(Q, temperature="hot")


def test_expired_entries_are_never_served(words: WordEmbedder) -> None:
    cache = SemanticCache(words, default_ttl=0.3)
    cache.store(Q, "Paris")
    cache.store(UNRELATED, "Flour", ttl=60)
    assert cache.lookup(Q) is not None and cache.lookup(PARAPHRASE) is not None
    time.sleep(0.35)
    assert cache.lookup(Q) is None  # neither exact ...
    assert cache.lookup(PARAPHRASE) is None  # ... nor semantic
    assert cache.lookup(UNRELATED) is not None
    cache.store("fresh question here", "y")  # a put reclaims the expired entry
    assert cache.stats().expirations == 1


def test_storing_the_same_prompt_again_replaces_the_answer(cache: SemanticCache) -> None:
    first = cache.store(Q, "Paris")
    second = cache.store(" " + Q, "Paris, France")
    assert first != second and first not in cache and len(cache) == 1
    assert cache.lookup(Q).response == "Paris, France"  # type: ignore[union-attr]
    assert cache.stats().evictions == 0


def test_delete_by_id_namespace_and_tag(cache: SemanticCache) -> None:
    a = cache.store(Q, "Paris", namespace="t1", tags=["geo", "v1"])
    cache.store(Q, "Paris", namespace="t1", model="x", tags="geo")
    cache.store(UNRELATED, "Flour", namespace="t1", tags=["food"])
    cache.store(Q, "Paris", namespace="t2")
    assert cache.delete(a) and not cache.delete(a)
    assert cache.lookup(Q, namespace="t1") is None
    assert cache.delete_tag("geo") == 1  # the other "geo" entry was already deleted
    assert cache.lookup(Q, namespace="t1", model="x") is None
    assert cache.lookup(UNRELATED, namespace="t1") is not None
    assert cache.delete_namespace("t1") == 1
    assert cache.lookup(UNRELATED, namespace="t1") is None
    assert cache.lookup(Q, namespace="t2") is not None
    assert cache.delete_tag("nothing") == 0


def test_mark_wrong_removes_the_answer_for_good(cache: SemanticCache, caplog: pytest.LogCaptureFixture) -> None:
    cache.store(Q, "Lyon")
    hit = cache.lookup(PARAPHRASE)
    assert hit is not None
    with caplog.at_level(logging.WARNING, logger="bsc"):
        assert cache.mark_wrong(hit)
    assert "false hit reported" in caplog.text
    assert cache.lookup(PARAPHRASE) is None and cache.lookup(Q) is None
    assert not cache.mark_wrong(hit)
    assert cache.stats().false_hit_reports == 2
    with pytest.raises(TypeError, match="Hit"):
        cache.mark_wrong("not a hit")  # type: ignore[arg-type]


def test_near_misses_and_savings_are_counted(words: WordEmbedder) -> None:
    cache = SemanticCache(words, similarity_threshold=0.99, near_miss_margin=0.2)
    cache.store(Q, "Paris", usage={"prompt_tokens": 10, "completion_tokens": 5}, cost=0.002)
    assert cache.lookup(PARAPHRASE) is None  # ~0.93: under 0.99, within 0.2 of it
    assert cache.lookup(UNRELATED) is None
    assert cache.lookup(Q) is not None
    stats = cache.stats()
    assert (stats.misses, stats.near_misses, stats.exact_hits) == (2, 1, 1)
    assert stats.tokens_saved == 15 and stats.cost_saved == pytest.approx(0.002)
    assert stats.hit_rate == pytest.approx(1 / 3)
    assert json.loads(json.dumps(stats.as_dict()))["near_misses"] == 1


def test_a_prompt_longer_than_the_embedders_window_is_matched_exactly_only() -> None:
    words = WordEmbedder(max_tokens=8)
    cache = SemanticCache(words, similarity_threshold=0.5)
    long_a = "summarise this document: " + "alpha beta gamma delta " * 20 + "ending one"
    long_b = "summarise this document: " + "alpha beta gamma delta " * 20 + "ending two"
    cache.store(long_a, "summary one")
    assert cache.lookup(long_a).response == "summary one"  # type: ignore[union-attr]
    assert cache.lookup(long_b) is None  # same first tokens, another document
    assert cache.lookup("summarise this document: alpha beta gamma delta") is None
    cache.store("summarise this document: alpha beta", "short")
    assert cache.lookup(long_b) is None  # a long query never matches semantically either
    assert cache.delete_namespace("default") == 2


def test_a_hash_collision_never_answers(cache: SemanticCache, monkeypatch: pytest.MonkeyPatch) -> None:
    cache.store(Q, "Paris")
    # From now on every prompt hashes to Q's key, as a 64-bit collision would.
    q_key = ranking.entry_key("default#", normalize_prompt(Q))
    monkeypatch.setattr(ranking, "entry_key", lambda partition, normalized: q_key)  # what lookups use
    assert cache.lookup(UNRELATED) is None  # the stored prompt is compared: no exact hit
    hit = cache.lookup(Q)
    assert hit is not None and hit.exact


def test_persistence_keeps_entries_keys_tags_and_metrics(tmp_path: Path, words: WordEmbedder) -> None:
    path = tmp_path / "semantic.bsc"
    cache = SemanticCache(words, similarity_threshold=0.8, default_ttl=3600)
    cache.store(Q, "Paris", tags=["geo"], usage=7, namespace="app", model="m")
    cache.store(UNRELATED, "Flour", tags=["food"], namespace="app", model="m")
    assert cache.lookup(Q, namespace="app", model="m") is not None
    cache.save(path)
    loaded = SemanticCache.load(path, words)
    assert loaded.similarity_threshold == 0.8 and loaded.binary.default_ttl == 3600
    calls = words.calls
    hit = loaded.lookup(Q, namespace="app", model="m")
    assert hit is not None and hit.exact and hit.tags == ("geo",) and words.calls == calls
    assert loaded.lookup(PARAPHRASE, namespace="app", model="m") is not None
    assert loaded.stats().exact_hits == 2 and loaded.stats().tokens_saved == 3 * 7
    assert loaded.delete_tag("geo") == 1  # the tag index is rebuilt from the records
    assert loaded.lookup(Q, namespace="app", model="m") is None
    assert loaded.lookup(UNRELATED, namespace="app", model="m") is not None
    with pytest.raises(EncoderMismatchError, match="embedded by"):
        SemanticCache.load(path, WordEmbedder(name="another-model"))
    with pytest.raises(EncoderMismatchError, match="dimensional"):
        SemanticCache.load(path, WordEmbedder(dim=32))
    binary_path = tmp_path / "binary.bsc"
    binary = BinarySemanticCache(BinaryEncoder(64))
    binary.put(np.ones(64), "x")
    binary.save(binary_path)
    with pytest.raises(NotACacheFileError, match="BinarySemanticCache"):
        SemanticCache.load(binary_path, words)


def test_persist_path_saves_and_reloads(tmp_path: Path, words: WordEmbedder) -> None:
    path = tmp_path / "auto.bsc"
    with SemanticCache(words, persist_path=path, persist_every=None, persist_interval=None) as cache:
        cache.store(Q, "Paris")
    again = SemanticCache(words, persist_path=path, persist_every=None, persist_interval=None)
    assert again.lookup(Q) is not None
    again.close()


def test_bsc_stats_prints_a_saved_caches_counters(
    tmp_path: Path, words: WordEmbedder, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "s.bsc"
    cache = SemanticCache(words)
    cache.store(Q, "Paris", namespace="a", usage=9)
    cache.store(UNRELATED, "Flour", namespace="b")
    cache.lookup(Q, namespace="a")
    cache.lookup(PARAPHRASE, namespace="a")
    cache.lookup("something else entirely", namespace="b")
    cache.save(path)
    assert cli_main(["stats", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["size"], report["exact_hits"], report["semantic_hits"], report["misses"]) == (2, 1, 1, 1)
    assert report["namespaces"] == 2 and report["tokens_saved"] == 18
    assert report["file"] == str(path) and report["embedder"] == "test-words"
    assert cli_main(["stats", str(path)]) == 0
    text = capsys.readouterr().out
    assert "exact hits" in text and "near misses" in text
    assert cli_main(["stats", str(tmp_path / "missing.bsc")]) == 2
    (tmp_path / "junk.bsc").write_bytes(b"not a cache")
    assert cli_main(["stats", str(tmp_path / "junk.bsc")]) == 2
    assert "not a bsc" in capsys.readouterr().err.lower()


def test_batches_embed_once(cache: SemanticCache, words: WordEmbedder) -> None:
    ids = cache.store_many([Q, UNRELATED], ["Paris", "Flour"], namespace="b")
    assert len(ids) == 2 and all(isinstance(i, int) for i in ids)
    calls = words.calls
    hits = cache.lookup_many([Q, PARAPHRASE, "a new question nobody asked", UNRELATED], namespace="b")
    assert words.calls == calls + 1  # one batch for the two prompts the exact path missed
    assert [h.response if h else None for h in hits] == ["Paris", "Paris", None, "Flour"]
    assert [h.exact if h else None for h in hits] == [True, False, None, True]
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        cache.store_many([Q, UNRELATED], ["x"])
    with pytest.raises(TypeError):
        cache.store_many([Q, UNRELATED], ["fine", object()])
    assert len(cache) == 2  # one bad pair stores none


def test_async_lookup_and_store_from_many_tasks(words: WordEmbedder) -> None:
    cache = SemanticCache(words, max_entries=500)

    async def one(i: int) -> None:
        prompt = f"async question {i} about subject {i}"
        await cache.astore(prompt, {"i": i}, namespace=f"user-{i % 5}", usage=3)
        hit = await cache.alookup(prompt, namespace=f"user-{i % 5}")
        assert hit is not None and hit.response == {"i": i} and hit.exact
        other = await cache.alookup(prompt, namespace=f"user-{(i + 1) % 5}")
        assert other is None or (other.namespace == f"user-{(i + 1) % 5}" and other.response["i"] % 5 == (i + 1) % 5)

    async def main() -> None:
        await asyncio.gather(*(one(i) for i in range(100)))
        assert await cache.alookup(Q, temperature=5.0) is None
        assert await cache.astore(Q, "x", temperature=5.0) is None

    asyncio.run(main())
    stats = cache.stats()
    assert stats.size == 100 and stats.exact_hits == 100
    assert stats.tokens_saved == 3 * (100 + stats.semantic_hits)


def test_the_decorator_caches_by_prompt_and_arguments(words: WordEmbedder) -> None:
    cache = SemanticCache(words)
    calls: list[tuple[str, str]] = []

    @semantic_cache(cache, namespace="fn", tags=["decorated"])
    def answer(question: str, model: str = "m1") -> str:
        calls.append((question, model))
        return f"answer to {question} by {model}"

    assert answer(Q) == f"answer to {Q} by m1"
    assert answer(Q) == f"answer to {Q} by m1"
    assert answer(PARAPHRASE) == f"answer to {Q} by m1"  # served from the cache
    assert answer(Q, model="m2") == f"answer to {Q} by m2"  # other arguments: another scope
    assert calls == [(Q, "m1"), (Q, "m2")]
    assert answer.cache() is cache  # type: ignore[attr-defined]

    @semantic_cache(cache, namespace="fn")
    def other(question: str) -> str:  # another function never shares the first one's answers
        return "other"

    assert other(Q) == "other"
    assert cache.delete_tag("decorated") == 2

    @semantic_cache(lambda: cache)
    async def aanswer(question: str) -> dict[str, Any]:
        calls.append((question, "async"))
        return {"a": question}

    async def run() -> None:
        assert await aanswer(Q) == {"a": Q}
        assert await aanswer(Q) == {"a": Q}

    asyncio.run(run())
    assert calls[-1] == (Q, "async") and calls.count((Q, "async")) == 1

    @semantic_cache(cache)
    def takes_objects(question: str, thing: object) -> str:
        return "x"

    with pytest.raises(TypeError, match="arguments of"):
        takes_objects(Q, object())
    with pytest.raises(ValueError, match="namespace"):
        semantic_cache(cache, namespace="bad space")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.store("", "x"), ValueError, "empty"),
        (lambda c: c.store(" \n\t", "x"), ValueError, "empty"),
        (lambda c: c.store(b"bytes", "x"), TypeError, "prompt must be a str"),
        (lambda c: c.store(None, "x"), TypeError, "prompt must be a str"),
        (lambda c: c.store("x" * 100_001, "x"), ValueError, "max_prompt_chars"),
        (lambda c: c.store(Q, object()), TypeError, "response"),
        (lambda c: c.store(Q, {"a": float("nan")}), (TypeError, ValueError), None),
        (lambda c: c.store(Q, "x", ttl=-1), ValueError, "ttl must be a positive"),
        (lambda c: c.store(Q, "x", ttl=0), ValueError, "ttl must be a positive"),
        (lambda c: c.store(Q, "x", ttl=float("nan")), ValueError, "ttl"),
        (lambda c: c.store(Q, "x", ttl="1"), TypeError, "ttl"),
        (lambda c: c.store(Q, "x", namespace="has space"), ValueError, "namespace"),
        (lambda c: c.store(Q, "x", namespace="a#b"), ValueError, "namespace"),
        (lambda c: c.store(Q, "x", namespace=""), ValueError, "namespace"),
        (lambda c: c.store(Q, "x", namespace="n" * 129), ValueError, "namespace"),
        (lambda c: c.store(Q, "x", namespace=b"bytes"), TypeError, "namespace"),
        (lambda c: c.store(Q, "x", tags=["two words"]), ValueError, "tag"),
        (lambda c: c.store(Q, "x", tags=[1]), TypeError, "tags"),
        (lambda c: c.store(Q, "x", tags=[f"t{i}" for i in range(33)]), ValueError, "at most"),
        (lambda c: c.store(Q, "x", usage=-5), ValueError, "usage"),
        (lambda c: c.store(Q, "x", usage={"nothing": 1}), TypeError, "usage"),
        (lambda c: c.store(Q, "x", cost=-0.1), ValueError, "cost"),
        (lambda c: c.store(Q, "x", model=object()), TypeError, "scope"),
        (lambda c: c.store(Q, "x", model=float("inf")), TypeError, "scope"),
        (lambda c: c.lookup("", namespace="a"), ValueError, "empty"),
        (lambda c: c.lookup(Q, namespace="bad/ok but\x00"), ValueError, "namespace"),
        (lambda c: c.lookup(Q, user={1, 2}), TypeError, "scope"),
    ],
)
def test_bad_input_raises_a_clear_error_and_stores_nothing(
    cache: SemanticCache, call: Any, error: Any, match: str | None
) -> None:
    cache.store("an earlier prompt", "kept")
    with pytest.raises(error, match=match):
        call(cache)
    assert len(cache) == 1
    assert cache.lookup("an earlier prompt").response == "kept"  # type: ignore[union-attr]


def test_bad_settings_are_refused(words: WordEmbedder) -> None:
    with pytest.raises(ValueError, match="similarity_threshold"):
        SemanticCache(words, similarity_threshold=1.5)
    with pytest.raises(ValueError, match="max_temperature"):
        SemanticCache(words, max_temperature=-1)
    with pytest.raises(ValueError, match="max_prompt_chars"):
        SemanticCache(words, max_prompt_chars=0)
    with pytest.raises(TypeError, match="Embedder"):
        SemanticCache(object())  # type: ignore[arg-type]


def test_debug_logging_names_each_outcome(cache: SemanticCache, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="bsc"):
        cache.store(Q, "Paris")
        cache.lookup(PARAPHRASE)
        cache.lookup(UNRELATED)
    assert "stored entry" in caplog.text and "semantic hit" in caplog.text and "miss" in caplog.text


def test_hit_is_a_frozen_record(cache: SemanticCache) -> None:
    cache.store(Q, b"\x00bytes")
    hit = cache.lookup(Q)
    assert isinstance(hit, Hit) and hit.response == b"\x00bytes" and hit.access_count == 1
    with pytest.raises(AttributeError):
        hit.response = "x"  # type: ignore[misc]


# -- regressions found in review ---------------------------------------------------------------


class DenseTokens(WordEmbedder):
    """Three word pieces per character, as some scripts give with the local tokenizer."""

    def token_count(self, text: str) -> int:
        return min(3 * len(text) + 2, self.max_tokens)


def test_a_short_prompt_of_many_word_pieces_is_exact_match_only() -> None:
    cache = SemanticCache(DenseTokens(max_tokens=40), similarity_threshold=0.3)
    prefix = "\ud799 " * 7  # 14 characters, 44 pieces: cut by the model
    cache.store(prefix + "bake bread", "bread")
    assert cache.lookup(prefix + "bake bread").response == "bread"  # type: ignore[union-attr]
    assert cache.lookup(prefix + "capital of France") is None


def test_prompts_equal_after_normalisation_replace_each_other_across_window_sizes() -> None:
    cache = SemanticCache(WordEmbedder(max_tokens=6))
    cache.store("a\u00a8 b c", "old")  # NFKC: "a \u0308 b c"
    cache.store("a \u0308 b c", "new")
    assert len(cache) == 1
    assert cache.lookup("a\u00a8 b c").response == "new"  # type: ignore[union-attr]


def _persist_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bsc-persist") and t.is_alive()]


def test_a_constructor_that_raises_leaves_no_background_saver(tmp_path: Path, words: WordEmbedder) -> None:
    before = len(_persist_threads())
    with pytest.raises(ValueError, match="max_temperature"):
        SemanticCache(words, persist_path=tmp_path / "a.bsc", max_temperature=-1)
    cache = SemanticCache(words)
    cache.store(Q, "x")
    cache.save(tmp_path / "b.bsc")
    with pytest.raises(EncoderMismatchError):
        SemanticCache(WordEmbedder(name="other"), persist_path=tmp_path / "b.bsc")
    assert len(_persist_threads()) == before


def test_store_many_tags_every_entry_even_from_an_iterator(cache: SemanticCache) -> None:
    cache.store_many(["a b", "c d", "e f"], [1, 2, 3], tags=(t for t in ["user-1"]))
    assert cache.delete_tag("user-1") == 3 and len(cache) == 0


def test_the_tag_index_forgets_removed_entries(words: WordEmbedder) -> None:
    cache = SemanticCache(words, max_entries=10)
    for i in range(3000):
        cache.store(f"prompt {i}", i, tags=[f"request-{i}", "all"])
    for thread in threading.enumerate():
        if thread.name == "bsc-tag-index":
            thread.join()
    # Not 6,000 memberships: rebuilt in the background, the index holds the live entries' tags
    # (and those of stores made during a rebuild) and at most 1,024 more since.
    assert cache._tags._baseline < 500 and cache._tags._members <= 2 * cache._tags._baseline + 1024 + 2
    assert cache.delete_tag("all") == 10 and len(cache) == 0
    many = SemanticCache(words)
    many.store_many([f"p {i}" for i in range(2000)], list(range(2000)), tags=["a", "b", "c"])
    many._tags.refresh(stale=True)
    assert not many._tags._stale()  # three tags per entry is not staleness


def test_chat_scope_keeps_every_parameter_but_the_neutral_ones(cache: SemanticCache) -> None:
    messages = [{"role": "user", "content": Q}]
    cache.store_chat(messages, "json answer", model="llama3", format="json")
    assert cache.lookup_chat(messages, model="llama3") is None  # Ollama's format changes the answer
    assert cache.lookup_chat(messages, model="llama3", format="json", stream=True, user="u1") is not None
    cache.store_chat(messages, "terse", model="claude", system="Be terse.")
    assert cache.lookup_chat(messages, model="claude", system="Be verbose.") is None
    cache.store_chat(messages, "t1", model="m", temperature=1)
    assert cache.lookup_chat(messages, model="m", temperature=1.0).response == "t1"  # type: ignore[union-attr]
    assert cache.lookup_chat(messages, model="m", temperature=1, seed=None) is not None  # None: not given
    assert cache.store_chat(messages, "x", model="llama3", options={"temperature": 1.5}) is None  # bypassed
    with pytest.raises(TypeError, match="chat parameter"):
        chat_scope(messages, model="m", ttl=5)


@pytest.mark.parametrize("name", ["ttl", "tags", "usage", "cost"])
def test_store_arguments_cannot_be_lookup_scope(cache: SemanticCache, name: str) -> None:
    with pytest.raises(TypeError, match="cannot be scope values"):
        cache.lookup(Q, **{name: 1})


def test_the_decorator_returns_an_unstorable_result_and_honours_temperature(
    words: WordEmbedder, caplog: pytest.LogCaptureFixture
) -> None:
    cache = SemanticCache(words, max_temperature=0.5)
    calls = []

    @semantic_cache(cache)
    def ask(prompt: str, temperature: float = 0.0) -> Any:
        calls.append(temperature)
        return {1, 2} if prompt == "set" else "text"

    with caplog.at_level(logging.WARNING, logger="bsc"):
        assert ask("set") == {1, 2}
    assert "not cached" in caplog.text and len(cache) == 0
    ask(Q, temperature=0.9)
    ask(Q, temperature=0.9)
    assert calls == [0.0, 0.9, 0.9] and cache.stats().bypassed == 2


def test_bsc_bench_times_both_paths(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench", "--sizes", "500,1k", "--pairs", "20", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["n"] for r in rows] == [500, 1000]
    for row in rows:
        assert row["lookups_per_series"] == 20 and 0 < row["exact_hit_us"] < row["semantic_lookup_us"]
        assert row["native_scan_us"] > 0 and row["embedding_us"] > 0
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["bench", "--sizes", "ten"])
    assert exit_info.value.code == 2
