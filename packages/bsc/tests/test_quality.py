"""bsc.quality: curve, AUC, the Wilson bound and calibration (issue 8 groundwork)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bsc.quality import auc, calibrate_scores, curve, wilson_upper


def test_curve_counts_hits_precision_and_recall() -> None:
    points = curve([0.9, 0.8, 0.8, 0.5], [1, 0, 1, 1])
    assert [p.threshold for p in points] == [0.9, 0.8, 0.5]
    assert [p.hits for p in points] == [1, 3, 4]
    assert points[1].precision == pytest.approx(2 / 3) and points[1].recall == pytest.approx(2 / 3)
    assert points[2].false_hit_rate == pytest.approx(0.25) and points[2].hit_rate == 1.0


def test_auc_matches_counting_every_pair() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.normal(size=300), 1)  # ties included
    labels = (rng.random(300) < 0.4).astype(int)
    pos, neg = scores[labels == 1], scores[labels == 0]
    brute = np.mean([1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg)])
    assert auc(scores, labels) == pytest.approx(brute)


def test_wilson_upper_bound() -> None:
    assert wilson_upper(0, 0) == 1.0
    assert 0 < wilson_upper(0, 100) < 0.04
    assert wilson_upper(5, 100) > 0.05
    assert wilson_upper(50, 1000) < wilson_upper(5, 100)  # more evidence, tighter bound
    # One-sided 95%: a true rate of 2% exceeds the bound of its own samples about 5% of the time.
    rng = np.random.default_rng(1)
    misses = sum(wilson_upper(int(rng.binomial(500, 0.02)), 500) < 0.02 for _ in range(2000))
    assert misses / 2000 < 0.08


def test_calibration_meets_its_target_on_held_out_pairs() -> None:
    rng = np.random.default_rng(2)

    def pairs(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = (rng.random(n) < 0.4).astype(int)
        scores = np.where(labels == 1, rng.normal(0.85, 0.07, n), rng.normal(0.55, 0.08, n))
        return scores, labels

    tune_scores, tune_labels = pairs(20_000)
    result = calibrate_scores(tune_scores, tune_labels, 0.02)
    assert result.false_hit_rate <= result.false_hit_rate_upper_bound <= 0.02
    assert 0 < result.hit_rate < 0.4 and result.hits > 1000
    test_scores, test_labels = pairs(20_000)
    served = test_scores >= result.threshold
    assert 1 - test_labels[served].mean() <= 0.02 + 0.005
    looser = calibrate_scores(tune_scores, tune_labels, 0.10)
    assert looser.threshold < result.threshold and looser.hit_rate > result.hit_rate


def test_calibration_refuses_to_serve_when_nothing_qualifies() -> None:
    result = calibrate_scores([0.9, 0.8], [0, 1], 0.02)
    assert result.hits == 0 and result.threshold > 0.9 and not result.qualified
    at_top = calibrate_scores([1.0, 1.0, 0.5, 0.4], [0, 0, 1, 1], 0.1)
    assert at_top.threshold == 1.0 and not at_top.qualified  # never above a cache's range
    assert (at_top.hits, at_top.false_hit_rate, at_top.hit_rate) == (2, 1.0, 0.5)  # what 1.0 serves
    assert calibrate_scores(np.full(5000, 0.9), np.ones(5000), 0.02).qualified


@pytest.mark.parametrize(
    ("scores", "labels", "message"),
    [([], [], "no pairs"), ([0.1], [2], "0 or 1"), ([np.nan], [1], "finite"), ([0.1, 0.2], [1], "one length")],
)
def test_bad_input(scores: list[float], labels: list[int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        curve(scores, labels)
    with pytest.raises(ValueError, match="target"):
        calibrate_scores([0.5], [1], 0.0)


def test_evaluate_scores_float_and_binary_side_by_side_and_reuses_embeddings(tmp_path: Path) -> None:
    from bsc.demo import Pair
    from bsc.quality import evaluate
    from bsc_backends.testing import WordEmbedder

    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(50)]
    pairs = []
    for i in range(300):
        base = list(rng.choice(words, 6))
        same = i % 2 == 0
        other = [*base[:5], str(rng.choice(words))] if same else list(rng.choice(words, 6))
        pairs.append(Pair(i, " ".join(base), " ".join(other), int(same)))
    embedder = WordEmbedder(32)
    cache = str(tmp_path / "emb.npz")
    report = evaluate(pairs, embedder, code_bits=(64, 256), target_false_hit_rate=0.05, embeddings_cache=cache)
    assert set(report["scoring"]) == {
        "float",
        "int8",
        *(f"bits={n}{kind}" for n in (64, 256) for kind in ("", "+rescore", "+gate")),
    }
    assert report["pairs"] == 300 and report["duplicates"] == 150
    for row in report["scoring"].values():
        assert 0.5 < row["auc"] <= 1 and 0 < row["best_f1"] <= 1
        assert row["calibration"]["false_hit_rate_upper_bound"] <= 0.05 or not row["calibration"]["qualified"]
    calls = embedder.calls
    again = evaluate(pairs, embedder, code_bits=(64, 256), target_false_hit_rate=0.05, embeddings_cache=cache)
    assert embedder.calls == calls and again == report  # read back from the cache: same report


def test_bsc_eval_prints_a_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bsc.cli import main

    assert main(["eval", "--limit", "60", "--bits", "128,256", "--json", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 60
    assert {"float", "int8", "bits=128", "bits=256+rescore", "bits=256+gate"} <= set(report["scoring"])
    assert json.loads((tmp_path / "r.json").read_text()) == report
    with pytest.raises(SystemExit):
        main(["eval", "--target", "1.5"])


def test_calibrate_on_text_pairs_gives_a_cache_threshold() -> None:
    from bsc import BinaryEncoder, BinarySemanticCache, SemanticCache
    from bsc.demo import Pair
    from bsc.quality import calibrate
    from bsc_backends.testing import WordEmbedder

    words = [f"w{i}" for i in range(40)]
    rng = np.random.default_rng(4)
    pairs = []
    for i in range(400):
        base = [str(w) for w in rng.choice(words, 5)]
        other = [*base[:4], "extra"] if i % 2 else [str(w) for w in rng.choice(words, 5)]
        pairs.append(Pair(i, " ".join(base), " ".join(other), i % 2))
    embedder = WordEmbedder(32)
    result = calibrate(pairs, embedder, target_false_hit_rate=0.05)
    assert result.hits > 0 and result.false_hit_rate_upper_bound <= 0.05 and result.qualified
    rescored = calibrate(pairs, embedder, target_false_hit_rate=0.05, rescore_margin=0.1)
    assert rescored.qualified and rescored.threshold != result.threshold
    BinarySemanticCache(BinaryEncoder(32, 256), similarity_threshold=result.threshold)  # the seed API takes it too
    cache = SemanticCache(embedder, similarity_threshold=result.threshold)
    assert cache.similarity_threshold == result.threshold


def test_bad_counts_and_empty_pairs_are_refused() -> None:
    from bsc.quality import evaluate
    from bsc_backends.testing import WordEmbedder

    with pytest.raises(ValueError, match="between 0 and trials"):
        wilson_upper(-1, 10)
    with pytest.raises(ValueError, match="between 0 and trials"):
        wilson_upper(11, 10)
    with pytest.raises(TypeError, match="failures must be an int"):
        wilson_upper(1.5, 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no pairs"):
        evaluate([], WordEmbedder())


def _word_pairs(n: int, seed: int) -> list[Any]:
    from bsc.demo import Pair

    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(60)]
    pairs = []
    for i in range(n):
        base = [str(w) for w in rng.choice(words, 6)]
        other = [*base[:5], str(rng.choice(words))] if i % 2 == 0 else [str(w) for w in rng.choice(words, 6)]
        pairs.append(Pair(i, " ".join(base), " ".join(other), int(i % 2 == 0)))
    return pairs


def test_pair_scores_with_rescoring_follow_the_cache_rule() -> None:
    from bsc.quality import pair_scores

    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((200, 32)), rng.standard_normal((200, 32))
    b[:100] = a[:100] + 0.3 * b[:100]  # half the pairs close
    scores = pair_scores(a, b, (128,), rescore_margin=0.1)
    assert np.abs(scores["int8"] - scores["float"]).max() < 0.01
    expected = np.minimum(scores["int8"], scores["bits=128"] + 0.1)
    assert np.array_equal(scores["bits=128+rescore"], expected)
    assert "bits=128+rescore" not in pair_scores(a, b, (128,))
    for margin in (-0.1, float("nan"), 3, "0.1"):
        with pytest.raises(ValueError, match="rescore_margin"):
            pair_scores(a, b, (128,), rescore_margin=margin)  # type: ignore[arg-type]
    bad = a.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        pair_scores(bad, b)


def test_replay_counts_right_and_wrong_hits() -> None:
    from bsc.demo import Pair
    from bsc.quality import replay

    e = np.eye(8, dtype=np.float32)
    pairs = [
        Pair(0, "q0", "q0 again", 1),  # duplicates, near: a right hit
        Pair(1, "q1", "q1 other", 0),  # labelled non-duplicates, near: a wrong (labelled) hit
        Pair(2, "q2", "q2 far", 1),  # duplicates, far: a miss
        Pair(3, "q3", "q3 near q4", 0),  # near another pair's stored question: wrong (unlinked)
        Pair(4, "q4", "q0 again", 1),  # linked to q0 through pair 0? no: to q4; the asked text is q0's
        Pair(5, "q5", "q5", 1),  # the same text: an exact hit
    ]
    near = lambda i, j: (e[i] + 0.05 * e[j]).astype(np.float32)  # noqa: E731
    a = np.stack([e[0], e[1], e[2], e[3], e[4], e[5]])
    b = np.stack([near(0, 7), near(1, 7), e[6], near(4, 7), near(0, 7), e[5]])
    report = replay(pairs, a, b, model_name="table", similarity_threshold=0.8, code_bits=256)
    assert report["queries"] == 6 and report["stored"] == 6
    assert report["hits"] == 5 and report["exact_hits"] == 1
    # q0 answers "q0 again" twice: right for pair 0 and, through the duplicate links
    # q4 ~ "q0 again" ~ q0, right for pair 4 too.
    assert report["correct"] == 3 and report["wrong_labelled"] == 1 and report["wrong_unlabelled"] == 1
    assert report["wrong_hit_rate"] == pytest.approx(2 / 5, abs=1e-4)
    assert report["recall"] == pytest.approx(3 / 4, abs=1e-4)
    with pytest.raises(ValueError, match="no pairs"):
        replay([], a[:0], b[:0], model_name="table")


def test_replay_with_rescoring_and_the_gate_runs_the_real_cache() -> None:
    from bsc.quality import embed_pairs, replay
    from bsc_backends.testing import WordEmbedder

    pairs = _word_pairs(120, 9)
    a, b = embed_pairs(pairs, WordEmbedder(32))
    plain = replay(pairs, a, b, model_name="test-words", similarity_threshold=0.7)
    rescored = replay(pairs, a, b, model_name="test-words", similarity_threshold=0.7, rescore=True)
    gated = replay(pairs, a, b, model_name="test-words", similarity_threshold=0.7, content_gate=True)
    assert plain["hits"] > 0 and rescored["rescore"] and gated["content_gate"]
    assert gated["hits"] <= plain["hits"]


def test_the_embeddings_cache_tells_builds_of_one_model_apart(tmp_path: Path) -> None:
    from bsc.quality import embed_pairs
    from bsc_backends.testing import WordEmbedder

    class Build(WordEmbedder):
        def __init__(self, dim: int, build: str, scale: float) -> None:
            super().__init__(dim)
            self.build, self.scale = build, scale

        def embed_texts(self, texts: list[str]) -> Any:
            return super().embed_texts(texts) * self.scale

    pairs = _word_pairs(20, 3)
    cache = str(tmp_path / "e.npz")
    first, _ = embed_pairs(pairs, Build(16, "one", 1.0), cache)
    again, _ = embed_pairs(pairs, Build(16, "one", 2.0), cache)  # read back: the same build
    other, _ = embed_pairs(pairs, Build(16, "two", 2.0), cache)  # recomputed: another build
    assert np.array_equal(again, first) and np.allclose(other, 2 * first)


def test_plot_writes_a_png(tmp_path: Path) -> None:
    from bsc.quality import plot

    rng = np.random.default_rng(0)
    labels = (rng.random(500) < 0.4).astype(int)
    scores = np.where(labels == 1, rng.normal(0.8, 0.1, 500), rng.normal(0.6, 0.1, 500))
    out = tmp_path / "p.png"
    plot({"a": (scores, labels), "b": (scores + 0.01, labels)}, str(out), marks={"default": (0.4, 0.8)})
    with pytest.raises(ValueError, match="series is empty"):
        plot({}, str(tmp_path / "none.png"))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_bsc_eval_replays_and_plots(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bsc.cli import main

    png = tmp_path / "q.png"
    assert main(["eval", "--limit", "80", "--replay", "0.8", "--plot", str(png), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "replay 256-bit at 0.8" in out and "replay 256-bit + rescore at 0.8" in out
    assert "bits=256+gate" in out and png.exists()
