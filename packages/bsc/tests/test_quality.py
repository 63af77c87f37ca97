"""bsc.quality: curve, AUC, the Wilson bound and calibration (issue 8 groundwork)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

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
    assert result.hits == 0 and result.threshold > 0.9


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
    assert set(report["scoring"]) == {"float", "bits=64", "bits=256"}
    assert report["pairs"] == 300 and report["duplicates"] == 150
    for row in report["scoring"].values():
        assert 0.5 < row["auc"] <= 1 and 0 < row["best_f1"] <= 1
        assert row["calibration"]["false_hit_rate_upper_bound"] <= 0.05 or row["calibration"]["hits"] == 0
    calls = embedder.calls
    again = evaluate(pairs, embedder, code_bits=(64, 256), target_false_hit_rate=0.05, embeddings_cache=cache)
    assert embedder.calls == calls and again == report  # read back from the cache: same report


def test_bsc_eval_prints_a_report(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    from bsc.cli import main

    assert main(["eval", "--limit", "60", "--bits", "128,256", "--json", "--out", str(tmp_path / "r.json")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["pairs"] == 60 and set(report["scoring"]) == {"float", "bits=128", "bits=256"}
    assert json.loads((tmp_path / "r.json").read_text()) == report
    with pytest.raises(SystemExit):
        main(["eval", "--target", "1.5"])


def test_calibrate_on_text_pairs_gives_a_cache_threshold() -> None:
    from bsc import SemanticCache
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
    assert result.hits > 0 and result.false_hit_rate_upper_bound <= 0.05
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
