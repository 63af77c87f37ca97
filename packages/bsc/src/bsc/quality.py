"""Answer quality: how often a cache hit is a wrong answer, and the threshold that keeps it rare.

A labelled pair ``(text_a, text_b, label)`` stands for one lookup: ``text_a`` was stored,
``text_b`` is asked, and ``label`` says whether the stored answer is right for it. A threshold
``t`` serves the pair when its similarity is at least ``t``. Over a set of pairs:

- **hit rate**: served pairs / all pairs;
- **precision**: correct served pairs / served pairs; the **false-hit rate** is 1 - precision,
  the share of served answers that are wrong;
- **recall**: correct served pairs / pairs that should be served (label 1).

:func:`calibrate_scores` picks the lowest threshold whose false-hit rate is, with the given
confidence, at most the target: it checks the upper Wilson score bound of the false-hit rate
measured on the pairs, so a threshold tuned on a few hundred pairs is not trusted beyond what
they show. The default confidence is high (99.9%, one-sided) because the threshold is picked
from thousands, the lowest that passes, and that choice favours thresholds whose pairs happened
to look good; docs/QUALITY.md shows how it was chosen (on dev, by calibrating on one half and
checking on the other) and that it keeps its targets on test.

:func:`evaluate` (``bsc eval``) scores exact float cosine and binary codes side by side,
with rescoring and with the content gate; :func:`replay` runs a workload through
:class:`~bsc.SemanticCache` (store one side of each pair, ask the other); :func:`calibrate`
returns a threshold for labelled text pairs; :func:`plot` draws precision against hit rate.
``benchmarks/quality.py`` runs all of it on the QQP splits and writes docs/QUALITY.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = [
    "Calibration",
    "CurvePoint",
    "TableEmbedder",
    "auc",
    "calibrate",
    "calibrate_scores",
    "curve",
    "embed_pairs",
    "evaluate",
    "gate_vetoes",
    "pair_scores",
    "plot",
    "replay",
    "summarise",
    "wilson_upper",
]


@dataclass(frozen=True, slots=True)
class CurvePoint:
    """The outcome of one threshold over a set of labelled pairs."""

    threshold: float
    hits: int
    hit_rate: float
    precision: float
    recall: float
    false_hit_rate: float
    f1: float


@dataclass(frozen=True, slots=True)
class Calibration:
    """A threshold chosen for a target false-hit rate (see :func:`calibrate_scores`)."""

    threshold: float
    target_false_hit_rate: float
    confidence: float
    false_hit_rate: float
    false_hit_rate_upper_bound: float
    hit_rate: float
    recall: float
    hits: int
    pairs: int
    qualified: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The default one-sided confidence of :func:`calibrate` (see the module docs).
CONFIDENCE = 0.999


def _check(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.bool_]]:
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    if s.ndim != 1 or y.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D and of one length, got {s.shape} and {y.shape}")
    if s.size == 0:
        raise ValueError("no pairs")
    if not np.isfinite(s).all():
        raise ValueError("scores must be finite")
    if not np.isin(y, (0, 1)).all():
        raise ValueError("labels must be 0 or 1")
    return s, y.astype(bool)


def wilson_upper(failures: int, trials: int, confidence: float = 0.95) -> float:
    """The upper Wilson score bound of a proportion: with ``confidence`` (one-sided), the true
    rate behind ``failures`` of ``trials`` is at most this. 1.0 for no trials."""
    for name, value in (("failures", failures), ("trials", trials)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 0 <= failures <= max(trials, 0):
        raise ValueError(f"failures must be between 0 and trials ({trials}), got {failures}")
    if trials <= 0:
        return 1.0
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    return min(1.0, float(_wilson(failures / trials, trials, _normal_quantile(confidence))))


def _wilson(p: Any, n: Any, z: float) -> Any:
    """The upper Wilson score bound of share ``p`` of ``n`` trials (scalars or arrays)."""
    return (p + z * z / (2 * n) + z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))) / (1 + z * z / n)


def lowest_threshold(scores: np.ndarray, same: np.ndarray, target: float, confidence: float) -> float | None:
    """:func:`calibrate_scores`'s threshold in one vectorised pass (a self-checking cache runs
    it after every label): the lowest score whose pairs at or above it have an upper Wilson
    bound of their wrong share (``~same``) at most ``target``, or ``None`` when none has."""
    if scores.size == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    s, wrong = scores[order], ~same[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last pair of each distinct score
    n = (last + 1).astype(np.float64)
    upper = _wilson(np.cumsum(wrong)[last] / n, n, _normal_quantile(confidence))
    ok = np.nonzero(upper <= target + 1e-12)[0]
    return float(s[last[ok[-1]]]) if ok.size else None


def _normal_quantile(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    a = (
        -39.69683028665376,
        220.9460984245205,
        -275.9285104469687,
        138.3577518672690,
        -30.66479806614716,
        2.506628277459239,
    )
    b = (-54.47609879822406, 161.5858368580409, -155.6989798598866, 66.80131188771972, -13.28068155288572)
    c = (
        -0.007784894002430293,
        -0.3223964580411365,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    )
    d = (0.007784695709041462, 0.3224671290700398, 2.445134137142996, 3.754408661907416)
    if p < 0.02425:
        q = math.sqrt(-2 * math.log(p))
        return (((((c[0] * q + c[1]) * q + c[2]) * q + c[3]) * q + c[4]) * q + c[5]) / (
            (((d[0] * q + d[1]) * q + d[2]) * q + d[3]) * q + 1
        )
    if p > 1 - 0.02425:
        return -_normal_quantile(1 - p)
    q = p - 0.5
    r = q * q
    return (
        (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5])
        * q
        / (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
    )


def curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> list[CurvePoint]:
    """One :class:`CurvePoint` per distinct score, from the highest threshold down: the
    precision-versus-hit-rate curve."""
    s, y = _check(scores, labels)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    positives = int(y.sum())
    correct = np.cumsum(y)
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last pair of each distinct score
    points = []
    for i in last:
        hits = int(i) + 1
        tp = int(correct[i])
        precision = tp / hits
        recall = tp / positives if positives else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        points.append(CurvePoint(float(s[i]), hits, hits / s.size, precision, recall, 1 - precision, f1))
    return points


def auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """The area under the ROC curve: the chance that a random duplicate pair scores above a
    random non-duplicate (ties count half)."""
    s, y = _check(scores, labels)
    positives, negatives = int(y.sum()), int((~y).sum())
    if not positives or not negatives:
        raise ValueError("AUC needs both labels")
    order = np.argsort(s, kind="stable")
    ranks = np.empty(s.size)
    sorted_scores = s[order]
    # Average ranks over ties.
    starts = np.r_[0, np.nonzero(np.diff(sorted_scores))[0] + 1]
    ends = np.r_[starts[1:], s.size]
    for start, end in zip(starts, ends, strict=True):
        ranks[order[start:end]] = (start + end + 1) / 2
    return float((ranks[y].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def calibrate_scores(
    scores: npt.ArrayLike,
    labels: npt.ArrayLike,
    target_false_hit_rate: float = 0.02,
    *,
    confidence: float = CONFIDENCE,
) -> Calibration:
    """The lowest threshold (the most hits) whose false-hit rate on these pairs has an upper
    Wilson bound at ``confidence`` of at most ``target_false_hit_rate``. If no threshold
    qualifies, ``qualified`` is False and the threshold is just above every score, at most 1.0
    (the top of a cache's range); the counts are what that threshold serves of these pairs:
    none, or at 1.0 the pairs that score 1.0."""
    if not 0 < target_false_hit_rate < 1:
        raise ValueError(f"target_false_hit_rate must be in (0, 1), got {target_false_hit_rate}")
    s, y = _check(scores, labels)
    best: CurvePoint | None = None
    bound = 1.0
    for point in curve(s, y):
        upper = wilson_upper(round(point.false_hit_rate * point.hits), point.hits, confidence)
        if upper <= target_false_hit_rate:
            best, bound = point, upper
    if best is None:
        threshold = min(1.0, math.nextafter(float(np.max(s)), math.inf))
        served = s >= threshold
        hits, wrong, right = int(served.sum()), int((served & ~y).sum()), int((served & y).sum())
        return Calibration(
            threshold,
            target_false_hit_rate,
            confidence,
            wrong / hits if hits else 0.0,
            wilson_upper(wrong, hits, confidence),
            hits / s.size,
            right / int(y.sum()) if y.any() else 0.0,
            hits,
            s.size,
            qualified=False,
        )
    return Calibration(
        best.threshold,
        target_false_hit_rate,
        confidence,
        best.false_hit_rate,
        bound,
        best.hit_rate,
        best.recall,
        best.hits,
        s.size,
    )


def _precision_at_recall(points: list[CurvePoint], recall: float) -> float:
    eligible = [p.precision for p in points if p.recall >= recall]
    return max(eligible) if eligible else 0.0


def summarise(
    scores: npt.ArrayLike, labels: npt.ArrayLike, target_false_hit_rate: float = 0.02, confidence: float = CONFIDENCE
) -> dict[str, Any]:
    """Best F1 (and its threshold), precision at recall 0.5, AUC, and the calibration for
    ``target_false_hit_rate``, for one way of scoring a set of labelled pairs."""
    points = curve(scores, labels)
    best = max(points, key=lambda p: p.f1)
    return {
        "best_f1": round(best.f1, 4),
        "best_f1_threshold": round(best.threshold, 4),
        "precision_at_recall_0.5": round(_precision_at_recall(points, 0.5), 4),
        "auc": round(auc(scores, labels), 4),
        "calibration": calibrate_scores(scores, labels, target_false_hit_rate, confidence=confidence).as_dict(),
    }


def _cosine(a: npt.NDArray[np.float64], b: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        out = np.einsum("ij,ij->i", a, b) / norms
    return np.where(norms > 0, out, -1.0)


def pair_scores(
    vectors_a: npt.ArrayLike,
    vectors_b: npt.ArrayLike,
    code_bits: tuple[int, ...] = (256,),
    seed: int = 42,
    *,
    rescore_margin: float | None = None,
) -> dict[str, npt.NDArray[np.float64]]:
    """Similarity of each pair, ``a`` stored and ``b`` asked: ``"float"`` the exact cosine of
    the embeddings, ``"int8"`` the cosine of ``a``'s int8 copy (what rescoring keeps) with
    ``b``, and for each code length ``"bits=N"`` the cosine estimated from N-bit codes,
    ``cos(pi * hamming / N)``, as the cache computes it. With ``rescore_margin``, also
    ``"bits=N+rescore"``: what a cache with rescoring serves at a threshold ``t`` is a pair whose
    code estimate reaches ``t - rescore_margin`` and whose int8 cosine reaches ``t``, so its
    score is the smaller of the int8 cosine and the estimate plus the margin."""
    from bsc.semantic import quantize
    from bsc_encoder import BinaryEncoder, hamming_to_cosine

    a = np.asarray(vectors_a, dtype=np.float64)
    b = np.asarray(vectors_b, dtype=np.float64)
    if a.ndim != 2 or a.shape != b.shape:
        raise ValueError(f"vectors must be two matrices of one shape, got {a.shape} and {b.shape}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError("vectors must be finite")
    if rescore_margin is not None and (
        isinstance(rescore_margin, bool) or not isinstance(rescore_margin, (int, float)) or not 0 <= rescore_margin <= 2
    ):
        raise ValueError(f"rescore_margin must be a number from 0 to 2, got {rescore_margin!r}")
    stored = np.stack([np.frombuffer(quantize(row), dtype=np.int8) for row in a]).astype(np.float64)
    out = {"float": _cosine(a, b), "int8": _cosine(stored, b)}
    for bits in code_bits:
        encoder = BinaryEncoder(a.shape[1], bits, seed)
        codes_a, codes_b = encoder.encode_batch(a), encoder.encode_batch(b)
        distance = np.unpackbits((codes_a ^ codes_b).view(np.uint8), axis=1).sum(axis=1)
        estimate = np.asarray(hamming_to_cosine(distance, bits), dtype=np.float64)
        out[f"bits={bits}"] = estimate
        if rescore_margin is not None:
            out[f"bits={bits}+rescore"] = np.minimum(out["int8"], estimate + rescore_margin)
    return out


def gate_vetoes(pairs: list[Any], gate: Any = None) -> dict[str, npt.NDArray[np.bool_]]:
    """For each rule of ``gate`` (default every rule), which pairs it vetoes (``b`` asked,
    ``a`` stored, both normalised, as the cache checks them), and under ``"all"`` which the
    whole gate vetoes."""
    from bsc.gate import ContentGate
    from bsc.semantic import normalize_prompt

    gate = gate or ContentGate()
    rules = [name for name, on in gate.as_dict().items() if on]
    found = [set(gate.differences(normalize_prompt(p.text_b), normalize_prompt(p.text_a))) for p in pairs]
    out = {rule: np.array([rule in f for f in found], dtype=bool) for rule in rules}
    out["all"] = np.array([bool(f) for f in found], dtype=bool)
    return out


def embed_pairs(
    pairs: list[Any], embedder: Any, cache_file: str | None = None, progress: bool = False
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """The embeddings of both sides of every pair (objects with ``text_a`` and ``text_b``), in
    batches, of the text as :class:`~bsc.SemanticCache` embeds it (:func:`~bsc.normalize_prompt`);
    with ``cache_file`` (``.npz``) they are read from it when it was made by the same model from
    the same texts, and written to it otherwise."""
    import hashlib
    import os

    from tqdm import tqdm

    from bsc.semantic import normalize_prompt

    if not pairs:
        raise ValueError("no pairs to embed")
    texts = [normalize_prompt(p.text_a) for p in pairs] + [normalize_prompt(p.text_b) for p in pairs]
    digest = hashlib.sha256("\x00".join(texts).encode("utf-8", "surrogatepass")).hexdigest()
    # Builds of one model (the local embedder's int8-dynamic and int8-weights) share its name but
    # not its vectors.
    build = getattr(embedder, "build", None)
    model = f"{embedder.model_name}#{build}" if build else embedder.model_name
    if cache_file is not None and os.path.exists(cache_file):
        with np.load(cache_file) as saved:
            if str(saved["model"]) == model and str(saved["texts"]) == digest:
                return saved["a"], saved["b"]
    rows = []
    for start in tqdm(range(0, len(texts), 256), desc="embedding", unit="batch", disable=not progress):
        rows.append(np.asarray(embedder.embed_texts(texts[start : start + 256]), dtype=np.float32))
    vectors = np.concatenate(rows)
    a, b = vectors[: len(pairs)], vectors[len(pairs) :]
    if cache_file is not None:
        np.savez(cache_file, a=a, b=b, model=model, texts=digest)
    return a, b


def evaluate(
    pairs: list[Any],
    embedder: Any,
    *,
    code_bits: tuple[int, ...] = (256,),
    seed: int = 42,
    target_false_hit_rate: float = 0.02,
    rescore_margin: float = 0.1,
    content_gate: bool = True,
    replay_threshold: float | None = None,
    plot_path: str | None = None,
    embeddings_cache: str | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Pairwise quality of every scoring side by side (:func:`summarise` for each), on labelled
    pairs: exact float cosine, the int8 copy, and for each code length the codes alone, with
    rescoring (``+rescore``, :func:`pair_scores`) and with the content gate (``+gate``: a
    vetoed pair is never served). With ``replay_threshold``, also :func:`replay` for each code
    length without and with rescoring; with ``plot_path``, the precision-against-hit-rate plot
    (:func:`plot`). Deterministic given the seed."""
    labels = np.array([int(p.label) for p in pairs])
    a, b = embed_pairs(pairs, embedder, embeddings_cache, progress)
    scores = pair_scores(a, b, code_bits, seed, rescore_margin=rescore_margin)
    if content_gate:
        vetoed = gate_vetoes(pairs)["all"]
        for bits in code_bits:
            scores[f"bits={bits}+gate"] = np.where(vetoed, -2.0, scores[f"bits={bits}"])
    report: dict[str, Any] = {
        "pairs": len(pairs),
        "duplicates": int(labels.sum()),
        "embedder": embedder.model_name,
        "seed": seed,
        "target_false_hit_rate": target_false_hit_rate,
        "rescore_margin": rescore_margin,
        "scoring": {name: summarise(s, labels, target_false_hit_rate) for name, s in scores.items()},
    }
    if replay_threshold is not None:
        report["replay"] = [
            replay(
                pairs,
                a,
                b,
                model_name=embedder.model_name,
                similarity_threshold=replay_threshold,
                code_bits=bits,
                seed=seed,
                rescore=rescore,
                rescore_margin=rescore_margin,
            )
            for bits in code_bits
            for rescore in (False, True)
        ]
    if plot_path is not None:
        plot({name: (s, labels) for name, s in scores.items() if name != "int8"}, plot_path)
    return report


def calibrate(
    pairs: list[Any],
    embedder: Any = None,
    *,
    target_false_hit_rate: float = 0.02,
    code_bits: int = 256,
    seed: int = 42,
    rescore_margin: float | None = None,
    confidence: float = CONFIDENCE,
    embeddings_cache: str | None = None,
) -> Calibration:
    """The similarity threshold for ``target_false_hit_rate`` on labelled ``pairs`` (objects
    with ``text_a``, ``text_b`` and ``label``), scored as the cache scores them: the cosine
    estimated from ``code_bits``-bit codes of ``embedder``'s vectors (default the local
    embedder), or, with ``rescore_margin``, as a cache with ``rescore=True`` and that margin
    scores them. Use it as ``SemanticCache(similarity_threshold=calibration.threshold)``; the
    encoder and rescoring settings must match the cache's."""
    if embedder is None:
        from bsc_backends import default_embedder

        embedder = default_embedder()
    labels = np.array([int(p.label) for p in pairs])
    a, b = embed_pairs(pairs, embedder, embeddings_cache)
    name = f"bits={code_bits}" if rescore_margin is None else f"bits={code_bits}+rescore"
    scores = pair_scores(a, b, (code_bits,), seed, rescore_margin=rescore_margin)[name]
    return calibrate_scores(scores, labels, target_false_hit_rate, confidence=confidence)


class TableEmbedder:
    """Embeddings computed beforehand, looked up by text: :func:`replay` runs a workload through
    :class:`~bsc.SemanticCache` without embedding it again. Texts are keyed as the cache embeds
    them (normalised); a text not in the table raises ``KeyError``."""

    def __init__(self, texts: list[str], vectors: npt.ArrayLike, model_name: str) -> None:
        from bsc.semantic import normalize_prompt

        rows = np.asarray(vectors, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[0] != len(texts):
            raise ValueError(f"{len(texts)} texts but vectors of shape {rows.shape}")
        self._table: dict[str, npt.NDArray[np.float32]] = {
            normalize_prompt(t): row for t, row in zip(texts, rows, strict=True)
        }
        self._dim = int(rows.shape[1])
        self._model_name = model_name

    @property
    def embedding_dim(self) -> int:
        return self._dim

    @property
    def model_name(self) -> str:
        return self._model_name

    def embed_text(self, text: str) -> npt.NDArray[np.float32]:
        return self._table[text]

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return np.stack([self._table[t] for t in texts]) if texts else np.empty((0, self._dim), np.float32)

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        return self.embed_text(text)

    async def aembed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        return self.embed_texts(texts)


def replay(
    pairs: list[Any],
    vectors_a: npt.ArrayLike,
    vectors_b: npt.ArrayLike,
    *,
    model_name: str,
    similarity_threshold: float = 0.80,
    code_bits: int = 256,
    seed: int = 42,
    rescore: bool = False,
    rescore_candidates: int = 4,
    rescore_margin: float = 0.1,
    content_gate: Any = False,
) -> dict[str, Any]:
    """A workload through a real :class:`~bsc.SemanticCache`: the first question of every pair
    is stored (one entry per distinct question), then the second question of every pair is
    looked up, with the embeddings given (``vectors_a``, ``vectors_b``, e.g. from
    :func:`embed_pairs`).

    A hit is **correct** when the stored question that answered is the asked one or is linked
    to it by duplicate labels (directly or through other duplicate pairs). Any other hit is
    wrong: ``wrong_labelled`` when a pair labels the two questions non-duplicates,
    ``wrong_unlabelled`` when no pair labels them (another question entirely; counted wrong, as
    nothing says its answer fits). ``wrong_hit_rate`` is wrong hits / hits; ``recall`` is the
    share of duplicate-labelled pairs whose question got a correct answer."""
    from bsc.semantic import SemanticCache, normalize_prompt

    texts_a, texts_b, embedder = _workload(pairs, vectors_a, vectors_b, model_name)
    root = _linked(pairs, texts_a, texts_b)
    non_duplicates = {frozenset((ta, tb)) for p, ta, tb in zip(pairs, texts_a, texts_b, strict=True) if not p.label}
    stored = list(dict.fromkeys(texts_a))
    cache = SemanticCache(
        embedder,
        similarity_threshold,
        max_entries=len(stored),
        code_bits=code_bits,
        seed=seed,
        rescore=rescore,
        rescore_candidates=rescore_candidates,
        rescore_margin=rescore_margin,
        content_gate=content_gate,
        persist_every=None,
        persist_interval=None,
    )
    cache.store_many(stored, [""] * len(stored))
    counts = dict.fromkeys(("hits", "exact_hits", "correct", "wrong_labelled", "wrong_unlabelled", "found"), 0)
    half = len(pairs) // 2
    late = {"hits": 0, "wrong": 0}  # the second half of the lookups
    for i, (p, tb) in enumerate(zip(pairs, texts_b, strict=True)):
        hit = cache.lookup(tb)
        if hit is None:
            continue
        counts["hits"] += 1
        counts["exact_hits"] += hit.exact
        served = normalize_prompt(hit.prompt)
        right = served == tb or root(served) == root(tb)
        if i >= half:
            late["hits"] += 1
            late["wrong"] += not right
        if right:
            counts["correct"] += 1
            counts["found"] += p.label
        elif frozenset((served, tb)) in non_duplicates:
            counts["wrong_labelled"] += 1
        else:
            counts["wrong_unlabelled"] += 1
    hits, duplicates = counts["hits"], sum(p.label for p in pairs)
    wrong = hits - counts["correct"]
    return {
        "queries": len(pairs),
        "stored": len(stored),
        "similarity_threshold": similarity_threshold,
        "code_bits": code_bits,
        "rescore": rescore,
        "content_gate": bool(content_gate),
        **{k: v for k, v in counts.items() if k != "found"},
        "hit_rate": round(hits / len(pairs), 4),
        "wrong_hit_rate": round(wrong / hits, 4) if hits else 0.0,
        "wrong_hit_rate_upper_bound": round(wilson_upper(wrong, hits), 4),
        "recall": round(counts["found"] / duplicates, 4) if duplicates else 0.0,
        "gate_vetoes": cache.stats().gate_vetoes,
        "second_half": {
            "lookups": len(pairs) - half,
            "hit_rate": round(late["hits"] / (len(pairs) - half), 4),
            "wrong_hit_rate": round(late["wrong"] / late["hits"], 4) if late["hits"] else 0.0,
        },
    }


def self_check_replay(
    pairs: list[Any],
    vectors_a: npt.ArrayLike,
    vectors_b: npt.ArrayLike,
    *,
    model_name: str,
    similarity_threshold: float = 0.80,
    target_wrong_rate: float = 0.10,
    window: int = 1000,
    seed: int = 42,
    **cache_options: Any,
) -> dict[str, Any]:
    """:func:`replay` with ``self_check`` on: the cache starts at ``similarity_threshold`` and
    learns from the answers it compares. Each stored question's answer is the group of questions
    the duplicate labels link it to, so two answers are the same exactly when the labels link the
    questions (the stand-in for comparing an upstream's answers); after a miss the asked
    question's answer is given with :meth:`~bsc.SemanticCache.check_answer` (not stored, so the
    entries are :func:`replay`'s). A hit is wrong when its question is not linked to the asked
    one (labelled or not). Returns the totals, the second half's, and after each ``window``
    lookups that window's wrong-hit rate and hit rate and the threshold (first: the start)."""
    from bsc.semantic import SelfCheck, SemanticCache, normalize_prompt

    texts_a, texts_b, embedder = _workload(pairs, vectors_a, vectors_b, model_name)
    root = _linked(pairs, texts_a, texts_b)
    stored = list(dict.fromkeys(texts_a))
    cache = SemanticCache(
        embedder,
        similarity_threshold,
        max_entries=len(stored),
        self_check=SelfCheck(target_wrong_rate=target_wrong_rate, seed=seed),
        persist_every=None,
        persist_interval=None,
        **cache_options,
    )
    cache.store_many(stored, [root(t) for t in stored])
    rows = []  # (hit, wrong, checked)
    series: list[dict[str, Any]] = [{"lookups": 0, "threshold": similarity_threshold}]
    before = 0
    for i, tb in enumerate(texts_b):
        hit = cache.lookup(tb)
        checked = cache.stats().verifications > before
        before += checked
        if hit is None:
            cache.check_answer(tb, root(tb))
            rows.append((False, False, checked))
        else:
            rows.append((True, root(normalize_prompt(hit.prompt)) != root(tb), checked))
        if (i + 1) % window == 0:  # whole windows only
            part = rows[-window:]
            hits = sum(h for h, _, _ in part)
            series.append(
                {
                    "lookups": i + 1,
                    "wrong_hit_rate": round(sum(w for _, w, _ in part) / hits, 4) if hits else 0.0,
                    "hit_rate": round(hits / len(part), 4),
                    "threshold": round(cache.learned_thresholds().get("default", similarity_threshold), 4),
                }
            )

    def summary(part: list[tuple[bool, bool, bool]]) -> dict[str, Any]:
        hits = sum(h for h, _, _ in part)
        wrong = sum(w for _, w, _ in part)
        return {
            "lookups": len(part),
            "hits": hits,
            "wrong": wrong,
            "hit_rate": round(hits / len(part), 4) if part else 0.0,
            "wrong_hit_rate": round(wrong / hits, 4) if hits else 0.0,
            "checked": sum(c for _, _, c in part),
            "checked_share": round(sum(c for _, _, c in part) / len(part), 4) if part else 0.0,
        }

    stats = cache.stats()
    return {
        "queries": len(pairs),
        "stored": len(stored),
        "start_threshold": similarity_threshold,
        "target_wrong_rate": target_wrong_rate,
        "final_threshold": round(cache.learned_thresholds().get("default", similarity_threshold), 4),
        "all": summary(rows),
        "second_half": summary(rows[len(rows) // 2 :]),
        "checks": stats.checks,
        "checks_different": stats.checks_different,
        "series": series,
    }


def _workload(
    pairs: list[Any], vectors_a: npt.ArrayLike, vectors_b: npt.ArrayLike, model_name: str
) -> tuple[list[str], list[str], TableEmbedder]:
    """A replay's questions, normalised, and the embedder that looks their vectors up."""
    from bsc.semantic import normalize_prompt

    if not pairs:
        raise ValueError("no pairs to replay")
    a, b = np.asarray(vectors_a, dtype=np.float32), np.asarray(vectors_b, dtype=np.float32)
    texts_a = [normalize_prompt(p.text_a) for p in pairs]
    texts_b = [normalize_prompt(p.text_b) for p in pairs]
    return texts_a, texts_b, TableEmbedder(texts_a + texts_b, np.concatenate([a, b]), model_name)


def _linked(pairs: list[Any], texts_a: list[str], texts_b: list[str]) -> Callable[[str], str]:
    """The representative of each question's group of duplicate-linked questions."""
    parent: dict[str, str] = {}

    def root(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for p, ta, tb in zip(pairs, texts_a, texts_b, strict=True):
        if p.label:
            parent[root(ta)] = root(tb)
    return root


def plot(
    series: dict[str, tuple[npt.ArrayLike, npt.ArrayLike]],
    path: str,
    *,
    title: str = "Precision against hit rate",
    marks: dict[str, tuple[float, float]] | None = None,
) -> None:
    """Draw precision (1 - false-hit rate) against hit rate for each named ``(scores,
    labels)`` and save it as a PNG at ``path``; ``marks`` adds labelled points ``(hit rate,
    precision)``. Needs matplotlib (``pip install 'bsc[eval]'``)."""
    if not series:
        raise ValueError("nothing to plot: series is empty")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plot needs matplotlib: pip install 'bsc[eval]'") from None
    figure, axes = plt.subplots(figsize=(7.5, 5), dpi=120)
    try:
        for name, (scores, labels) in series.items():
            points = curve(scores, labels)
            axes.plot([p.hit_rate for p in points], [p.precision for p in points], label=name, linewidth=1.4)
        for name, (x, y) in (marks or {}).items():
            axes.plot([x], [y], marker="o", color="black", markersize=4)
            axes.annotate(name, (x, y), textcoords="offset points", xytext=(6, 4), fontsize=8)
        axes.set_xlabel("hit rate (share of lookups answered from the cache)")
        axes.set_ylabel("precision (share of answers that are right)")
        axes.set_title(title)
        axes.set_xlim(0, 1)
        axes.set_ylim(0.3, 1.0)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="lower left", fontsize=8)
        figure.tight_layout()
        figure.savefig(path, format="png", metadata={"Software": None})
    finally:
        plt.close(figure)
