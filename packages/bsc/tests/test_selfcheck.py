"""SemanticCache(self_check=...): hits near the threshold held back and compared with fresh
answers, near misses compared for free, thresholds learned per namespace, labels kept, saved
and exported, costs counted; the comparator; the proxy and the client wrapper."""

from __future__ import annotations

import json
from typing import Any

import httpx
import numpy as np
import openai
import pytest

from bsc import Check, SelfCheck, SemanticCache
from bsc._codec import encode_response
from bsc.quality import TableEmbedder, calibrate_scores
from bsc.semantic import same_answer
from bsc.semantic.selfcheck import Checker, answer_text, lowest_threshold
from bsc.server import create_app
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import WordEmbedder

DIM = 64
ALWAYS = {"initial_rate": 1.0, "min_rate": 1.0}  # every hit in the band is checked


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _table(cosines: dict[str, float]) -> TableEmbedder:
    """ "stored" and prompts at the given exact cosine to it."""
    rng = np.random.default_rng(3)
    base = _unit(rng.standard_normal(DIM))
    texts, rows = ["stored"], [base]
    for text, cos in cosines.items():
        other = rng.standard_normal(DIM)
        other -= other @ base * base
        rows.append(_unit(cos * base + np.sqrt(1 - cos * cos) * _unit(other)))
        texts.append(text)
    return TableEmbedder(texts, np.stack(rows), "table")


def _cache(embedder: Any, **check: Any) -> SemanticCache:
    return SemanticCache(
        embedder,
        0.8,
        content_gate=False,
        self_check=SelfCheck(seed=1, **check),
        persist_every=None,
        persist_interval=None,
    )


def test_a_hit_in_the_band_is_held_back_and_a_different_answer_raises_the_threshold() -> None:
    cache = _cache(_table({"close": 0.85, "far": 0.97}), **ALWAYS)
    cache.store("stored", "Paris")
    assert cache.lookup("far") is not None  # over the band: served, never checked
    assert cache.lookup("close") is None  # in [0.80, 0.90): held back, the caller asks upstream
    stats = cache.stats()
    assert stats.verifications == 1 and stats.misses == 1 and stats.checks == 0
    cache.store("close", "Lyon", usage={"total_tokens": 30})  # the fresh answer differs
    stats = cache.stats()
    assert (stats.checks, stats.checks_different, stats.verification_tokens) == (1, 1, 30)
    assert stats.verification_seconds > 0
    (check,) = cache.checks()
    assert isinstance(check, Check)
    assert (check.stored_prompt, check.asked_prompt, check.same, check.paid) == ("stored", "close", False, True)
    assert 0.8 <= check.similarity < 0.9
    assert cache.learned_thresholds()["default"] > check.similarity  # up at once, just over it


def test_a_candidate_that_answered_differently_is_never_served_again_for_that_prompt() -> None:
    cache = _cache(_table({"close": 0.85}), **ALWAYS)
    cache.store("stored", "Paris")
    assert cache.lookup("close") is None
    label = cache.check_answer("close", "Lyon")  # the fresh answer, not stored
    assert label is not None and not label.same
    cache.similarity_threshold = 0.5  # even far under the (raised) learned threshold...
    assert cache.lookup("close") is None  # ...the entry that gave another answer stays out
    assert cache.stats().verifications == 1  # and is not checked again


def test_the_same_answer_keeps_the_threshold_and_a_near_miss_is_compared_for_free() -> None:
    cache = _cache(_table({"close": 0.85, "under": 0.75, "low": 0.5}), **ALWAYS)
    cache.store("stored", "Paris")
    assert cache.lookup("close") is None
    cache.store("close", "paris.")  # the same answer after normalisation
    assert cache.checks()[-1].same
    assert cache.learned_thresholds().get("default", 0.8) <= 0.8
    assert cache.lookup("under") is None  # a near miss in [0.70, 0.80)
    assert cache.stats().verifications == 1
    cache.store("under", "Berlin")
    free = cache.checks()[-1]
    assert (free.asked_prompt, free.paid, free.same) == ("under", False, False)
    assert cache.lookup("low") is None
    assert cache.check_answer("low", "x") is None  # not near: nothing to compare


def test_the_probability_decays_with_evidence() -> None:
    checker = Checker(SelfCheck(initial_rate=1.0, min_rate=0.05, half_life=10))
    assert checker.probability("a") == 1.0
    for i in range(30):
        checker.note("a#s", f"p{i}", i, "stored", encode_response("y"), 0.85, paid=True)
    for i in range(30):
        checker.answered("a#s", f"p{i}", "x", 0.8)
    assert checker.probability("a") == pytest.approx(10 / 40)
    assert checker.probability("b") == 1.0  # per namespace


def test_thresholds_converge_toward_the_target_per_namespace() -> None:
    """Labels drawn from a known mix: the learned threshold ends where the calibration over
    those labels puts it, from below and from above, and other namespaces are untouched."""
    rng = np.random.default_rng(0)
    sims = rng.uniform(0.70, 1.0, 4000)
    same = rng.random(4000) < (sims - 0.70) / 0.30  # wrong less often the more similar
    want = calibrate_scores(sims, same, 0.10, confidence=0.95).threshold
    assert lowest_threshold(sims, same, 0.10, 0.95) == pytest.approx(want)
    stored = encode_response("cached")
    for start in (0.75, 0.99):  # from below (raised at once) and from above (lowered slowly)
        checker = Checker(SelfCheck(target_wrong_rate=0.10, lower_rate=0.2))
        for i, (s, ok) in enumerate(zip(sims, same, strict=True)):
            checker.note("ns#x", f"q{i}", i, "stored", stored, float(s), paid=True)
            checker.answered("ns#x", f"q{i}", "cached" if ok else "other", start)
        learned = checker.thresholds()["ns"]
        assert abs(learned - want) < 0.02, (start, learned, want)
        assert (~same[sims >= learned]).mean() <= 0.11
        assert "other" not in checker.thresholds()


def test_labels_thresholds_and_blocks_survive_a_save(tmp_path) -> None:  # type: ignore[no-untyped-def]
    embedder = _table({"close": 0.85})
    path = tmp_path / "c.bsc"
    cache = _cache(embedder, **ALWAYS)
    cache.store("stored", "Paris")
    assert cache.lookup("close") is None
    cache.check_answer("close", "Lyon")
    cache.save(path)
    loaded = SemanticCache.load(path, embedder)
    assert loaded.self_check is not None and loaded.self_check.initial_rate == 1.0
    assert loaded.checks() == cache.checks()
    assert loaded.learned_thresholds() == cache.learned_thresholds()
    loaded.similarity_threshold = 0.5
    assert loaded.lookup("close") is None  # still blocked
    assert loaded.stats().checks_different == 1
    off = SemanticCache.load(path, embedder, self_check=False)
    assert off.self_check is None and off.checks() == []


def test_export_writes_labelled_pairs_bsc_eval_reads(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from bsc.demo import load_pairs

    cache = _cache(_table({"close": 0.85, "under": 0.79}), **ALWAYS)
    cache.store("stored", "Paris")
    cache.lookup("close")
    cache.store("close", "Lyon")
    cache.lookup("under")
    cache.store("under", "Paris")
    out = tmp_path / "checks.jsonl"
    assert cache.export_checks(out) == 2
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["text_a"], r["text_b"], r["label"], r["paid"]) for r in rows] == [
        ("stored", "close", 0, True),
        ("stored", "under", 1, False),
    ]
    pairs, _ = load_pairs(out)
    assert [p.label for p in pairs] == [0, 1]


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="target_wrong_rate"):
        SelfCheck(target_wrong_rate=2)
    with pytest.raises(ValueError, match="half_life"):
        SelfCheck(half_life=0)
    with pytest.raises(ValueError, match="confidence"):
        SelfCheck(confidence=1.0)
    with pytest.raises(TypeError, match="comparator"):
        SelfCheck(comparator="exact")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="self_check must be a bool or a SelfCheck"):
        SemanticCache(WordEmbedder(), self_check="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="usage"):
        _cache(_table({})).check_answer("stored", "x", usage="many")


def test_the_default_comparator() -> None:
    assert same_answer("Paris", " paris. ")
    assert not same_answer("Paris", "Lyon")
    assert not same_answer("42", "42.0")  # structured: exact only
    assert not same_answer('{"a": 1}', '{"a": 2}')
    prose_a = "Python lists can be reversed in place with the reverse method, or copied reversed with slicing."
    prose_b = "Python lists can be reversed in place with the reverse method or copied in reverse order by slicing."
    words = WordEmbedder()
    assert same_answer(prose_a, prose_b, words.embed_text, similarity=0.8)
    assert not same_answer(
        prose_a, "The capital of France is Paris, a city on the Seine river in the north.", words.embed_text
    )
    completion = {"choices": [{"message": {"role": "assistant", "content": "Paris"}}]}
    assert answer_text(completion) == "Paris" and same_answer(completion, "paris")
    responses = {"output": [{"content": [{"type": "output_text", "text": "Hi"}]}]}
    assert answer_text(responses) == "Hi"


def test_the_proxy_checks_itself_and_reports_the_cost() -> None:
    fake = FakeChatUpstream()  # every answer differs ("answer N: ...")
    with ServerThread(fake.app) as up:
        cache = SemanticCache(WordEmbedder(), content_gate=False, self_check=SelfCheck(band=1.0, seed=1, **ALWAYS))
        with ServerThread(create_app(cache, up.url + "/v1")) as server:
            sdk = openai.OpenAI(base_url=server.url + "/v1", api_key="sk-test")
            ask = sdk.chat.completions.with_raw_response.create
            first = ask(model="m", messages=[{"role": "user", "content": "how do I learn python fast"}])
            assert first.headers["x-bsc-cache"] == "miss"
            second = ask(model="m", messages=[{"role": "user", "content": "how can I learn python fast"}])
            assert second.headers["x-bsc-cache"] == "miss"  # held back: the upstream answered
            assert second.parse().choices[0].message.content.startswith("answer 2")
            assert fake.requests == 2
            metrics = httpx.get(server.url + "/metrics").text
            assert "bsc_self_check_verifications 1.0" in metrics
            assert "bsc_self_check_checks_different 1.0" in metrics
        assert cache.learned_thresholds()  # moved up by the different answer


def test_the_client_wrapper_and_the_decorator_check_themselves() -> None:
    from bsc import semantic_cache
    from bsc.openai import CachedOpenAI

    fake = FakeChatUpstream()
    with ServerThread(fake.app) as up:
        cache = SemanticCache(WordEmbedder(), content_gate=False, self_check=SelfCheck(band=1.0, seed=1, **ALWAYS))
        client = CachedOpenAI(openai.OpenAI(base_url=up.url + "/v1", api_key="k", max_retries=0), cache)
        ask = client.chat.completions.create
        first = ask(model="m", messages=[{"role": "user", "content": "how do I learn python fast"}])
        second = ask(model="m", messages=[{"role": "user", "content": "how can I learn python fast"}])
        assert fake.requests == 2  # held back: the upstream answered, and that answer is returned
        assert second.choices[0].message.content != first.choices[0].message.content
        assert cache.stats().checks_different == 1 and cache.stats().verification_tokens > 0
        client.close()

    calls = []
    decorated_cache = SemanticCache(
        WordEmbedder(), content_gate=False, self_check=SelfCheck(band=1.0, seed=1, **ALWAYS)
    )

    @semantic_cache(decorated_cache)
    def answer(prompt: str) -> str:
        calls.append(prompt)
        return "the same answer"

    answer("how do I learn python fast")
    assert answer("how can I learn python fast") == "the same answer"
    assert len(calls) == 2  # checked once...
    (check,) = decorated_cache.checks()
    assert check.same and check.paid  # ...and found the same


def test_bsc_checks_and_stats_read_the_labels_from_a_saved_file(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    from bsc.cli import main

    embedder = _table({"close": 0.85})
    path = tmp_path / "c.bsc"
    cache = _cache(embedder, **ALWAYS)
    cache.store("stored", "Paris")
    cache.lookup("close")
    cache.check_answer("close", "Lyon")
    cache.save(path)
    out = tmp_path / "labels.jsonl"
    assert main(["checks", str(path), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["text_a"], r["text_b"], r["label"]) for r in rows] == [("stored", "close", 0)]
    capsys.readouterr()
    assert main(["checks", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["text_b"] == "close"
    assert main(["stats", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["self_check_target"] == 0.10 and report["learned_thresholds"]["default"] > 0.85
    assert report["verifications"] == 1 and report["checks_different"] == 1
    plain = tmp_path / "plain.bsc"
    SemanticCache(embedder, persist_every=None, persist_interval=None).save(plain)
    assert main(["checks", str(plain)]) == 0 and capsys.readouterr().out == ""
    assert main(["checks", str(tmp_path / "missing.bsc")]) != 0


def test_a_failing_comparator_never_fails_the_store(caplog: pytest.LogCaptureFixture) -> None:
    def broken(cached: Any, fresh: Any) -> bool:
        raise RuntimeError("comparator down")

    cache = _cache(_table({"close": 0.85}), comparator=broken, **ALWAYS)
    cache.store("stored", "Paris")
    assert cache.lookup("close") is None
    assert cache.store("close", "Lyon") is not None  # stored all the same
    assert cache.checks() == [] and cache.stats().checks == 0
    assert "comparator down" in caplog.text


def test_remembered_candidates_are_bounded_in_count_and_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    from bsc.semantic import selfcheck

    monkeypatch.setattr(selfcheck, "_PENDING_BYTES", 10_000)
    checker = Checker(SelfCheck(**ALWAYS))
    big = encode_response("x" * 3_000)
    for i in range(10):
        checker.note("ns#x", f"q{i}", i, "stored", big, 0.85, paid=True)
    assert checker.answered("ns#x", "q0", "y", 0.8) is None  # the oldest were forgotten
    assert checker.answered("ns#x", "q9", "y", 0.8) is not None
    assert checker._pending_bytes == sum(selfcheck._size(p) for p in checker._pending.values())


def test_labels_are_bounded_over_every_namespace() -> None:
    checker = Checker(SelfCheck(max_labels=50, **ALWAYS))
    for i in range(200):
        ns = f"n{i % 7}#x"
        checker.note(ns, f"q{i}", i, "stored", encode_response("a"), 0.85, paid=True)
        checker.answered(ns, f"q{i}", "a", 0.8)
    assert len(checker.checks()) == 50
    assert sum(len(v) for v in checker._labels.values()) == 50
    assert checker.checks()[-1].asked_prompt == "q199"
