"""Quality and speed of the local embedder's builds: int8 weights (shipped), fp32, int8-dynamic.

    uv run scripts/build_quantized_model.py          # once: the fp32 reference in benchmarks/.cache/
    nice -n 10 uv run python benchmarks/quantized_embedder.py --split dev --split test

For each model and each QQP split (``../shared/data/qqp`` beside the repo, or ``--data-dir``; tune on dev,
report on test): AUC, precision at recall 0.5 and best F1 of the cosine of the two questions'
embeddings, and the same of the 256-bit sign-random-projection estimate (``bsc_encoder``, seed
42, as the cache computes it). Every text is embedded as a lookup does it, one text per call
(``embed_text``), on 1 onnxruntime thread; the model named ``int8-dynamic`` (``--batch-check``),
whose output would depend on its batch-mates (dynamic quantisation computes one activation scale
per call), is also run as plain length-sorted batches of up to 32 texts (what ``embed_texts``
would do without its one-text-per-call rule), to measure how much that changes vectors
(max 1 - cosine) and decisions (pairs whose side of a threshold flips: 0.80, the cache's default,
and the best-F1 threshold of the single-text run). Models without dynamic quantisation are
embedded in batches only (their vectors do not depend on batch-mates beyond float rounding,
which tests/test_local.py checks).

Then ``--latency-calls`` calls of ``embed_text`` on one short prompt per model and thread count
(1 and 2), the models interleaved in rounds so they share the machine's noise: p50 and p99; and
in each round one ``embed_texts`` of 256 QQP dev questions per model (median prompts/s).

Models: ``--model NAME=PATH`` (repeatable); default the shipped int8-weights file, the fp32
reference and the packaged int8-dynamic file. Embeddings are cached under
``benchmarks/.cache/quantized_embedder`` by model sha256, split and mode. Writes JSON with machine
info to ``benchmarks/results/quantized_embedder.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from bsc_backends import LocalEmbedder
from bsc_backends.local import BUILDS, model_file
from bsc_backends.local import _sha256 as sha256
from bsc_encoder import BinaryEncoder

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / ".cache" / "quantized_embedder"
FP32 = ROOT / "benchmarks" / ".cache" / "minilm" / "all-MiniLM-L6-v2-fp32.onnx"
DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "qqp"
PROMPT = "How do I learn Python?"
THRESHOLD = 0.80  # bsc serve's and SemanticCache's default similarity threshold


def load_split(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    """The pairs of a QQP-style .jsonl.gz, those with an empty question left out (as bsc.demo does)."""
    a, b, y = [], [], []
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["text_a"].strip() and row["text_b"].strip():
                a.append(row["text_a"])
                b.append(row["text_b"])
                y.append(int(row["label"]))
    return a, b, np.array(y, dtype=bool)


def is_dynamic(path: Path) -> bool:
    """Whether the graph quantises activations at run time (its op type's name is in the file)."""
    return b"DynamicQuantizeLinear" in path.read_bytes()


def embed(path: Path, digest: str, split: str, texts: list[str], mode: str) -> np.ndarray:
    """Unit vectors of ``texts`` (unique, in order) by the model at ``path``, cached on disk."""
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    cached = CACHE / f"{split}-{digest[:16]}-{mode}-{key}.npy"
    if cached.is_file():
        return np.load(cached)
    embedder = LocalEmbedder(model_path=path, threads=1)
    started = time.perf_counter()
    # "batch" measures plain batching, so LocalEmbedder's one-text-per-call rule for dynamic models is lifted.
    embedder._one_text_per_call = False
    out = np.stack([embedder.embed_text(t) for t in texts]) if mode == "single" else embedder.embed_texts(texts)
    print(f"  embedded {len(texts)} texts ({mode}) in {time.perf_counter() - started:.0f}s", flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cached, out)
    return out


def scores_of(vectors: np.ndarray, index: dict[str, int], a: list[str], b: list[str]) -> dict[str, np.ndarray]:
    va = vectors[[index[t] for t in a]].astype(np.float64)
    vb = vectors[[index[t] for t in b]].astype(np.float64)
    encoder = BinaryEncoder(vectors.shape[1], 256, 42)
    distance = np.unpackbits((encoder.encode_batch(va) ^ encoder.encode_batch(vb)).view(np.uint8), axis=1).sum(axis=1)
    return {"cosine": np.einsum("ij,ij->i", va, vb), "bits=256": np.cos(np.pi * distance / 256)}


def summary(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Best F1 (and its threshold), precision at recall 0.5 and AUC, as bsc.quality defines them."""
    order = np.argsort(-scores, kind="stable")
    s, y = scores[order], labels[order]
    last = np.r_[np.nonzero(np.diff(s))[0], s.size - 1]  # the last pair of each distinct score
    tp = np.cumsum(y)[last]
    hits = last + 1
    precision, recall = tp / hits, tp / y.sum()
    f1 = np.where(precision + recall > 0, 2 * precision * recall / np.maximum(precision + recall, 1e-300), 0)
    best = int(np.argmax(f1))
    # AUC with ties counted half: average ranks over ties.
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    starts = np.cumsum(counts) - counts
    ranks = (starts + (counts + 1) / 2)[inverse]
    pos, neg = int(labels.sum()), int((~labels).sum())
    auc = (ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg)
    return {
        "auc": round(float(auc), 4),
        "precision_at_recall_0.5": round(float(precision[recall >= 0.5].max()), 4),
        "best_f1": round(float(f1[best]), 4),
        "best_f1_threshold": round(float(s[last[best]]), 4),
    }


def consistency(single: np.ndarray, batched: np.ndarray, pairs: dict[str, np.ndarray], thresholds: list[float]) -> dict:
    """How far embed_texts' vectors are from embed_text's, and how many pair decisions flip."""
    gap = 1 - np.einsum("ij,ij->i", single.astype(np.float64), batched.astype(np.float64))
    out: dict[str, Any] = {
        "texts": int(gap.size),
        "one_minus_cosine_max": float(gap.max()),
        "one_minus_cosine_p99": float(np.quantile(gap, 0.99)),
        "one_minus_cosine_median": float(np.median(gap)),
        "pair_cosine_abs_diff_max": float(np.abs(pairs["single"] - pairs["batch"]).max()),
    }
    for t in thresholds:
        flips = (pairs["single"] >= t) != (pairs["batch"] >= t)
        out[f"flips_at_{t:.4f}"] = int(flips.sum())
    return out


def quality(
    models: dict[str, Path], digests: dict[str, str], split: str, path: Path, batch_check: set[str]
) -> dict[str, Any]:
    a, b, labels = load_split(path)
    texts = list(dict.fromkeys(a + b))
    index = {t: i for i, t in enumerate(texts)}
    print(f"{split}: {labels.size} pairs ({int(labels.sum())} duplicates), {len(texts)} distinct texts", flush=True)
    rows: dict[str, Any] = {"pairs": int(labels.size), "duplicates": int(labels.sum()), "models": {}}
    reference = None
    for name, model in models.items():
        print(f" {name}", flush=True)
        dynamic = is_dynamic(model)
        modes = (["single", "batch"] if name in batch_check else ["single"]) if dynamic else ["batch"]
        vectors = {mode: embed(model, digests[name], split, texts, mode) for mode in modes}
        main = vectors[modes[0]]
        scored = scores_of(main, index, a, b)
        row: dict[str, Any] = {"mode": modes[0], **{k: summary(v, labels) for k, v in scored.items()}}
        if name == "fp32":
            reference = scored["cosine"]
        if reference is not None and name != "fp32":
            diff = np.abs(scored["cosine"] - reference)
            row["pair_cosine_vs_fp32"] = {
                "abs_diff_max": float(diff.max()),
                "abs_diff_p99": float(np.quantile(diff, 0.99)),
            }
        if len(modes) == 2:
            batched = scores_of(vectors["batch"], index, a, b)
            row["batch"] = {k: summary(v, labels) for k, v in batched.items()}
            row["batch_consistency"] = consistency(
                vectors["single"],
                vectors["batch"],
                {"single": scored["cosine"], "batch": batched["cosine"]},
                [THRESHOLD, row["cosine"]["best_f1_threshold"]],
            )
        rows["models"][name] = row
        c, h = row["cosine"], row["bits=256"]
        print(
            f"  cosine AUC {c['auc']:.4f} P@R0.5 {c['precision_at_recall_0.5']:.4f} best F1 {c['best_f1']:.4f}"
            f" | 256-bit P@R0.5 {h['precision_at_recall_0.5']:.4f}"
            + (f" | batch P@R0.5 {row['batch']['cosine']['precision_at_recall_0.5']:.4f}" if "batch" in row else ""),
            flush=True,
        )
    return rows


def latency(
    models: dict[str, Path], threads: int, calls: int, rounds: int, texts: list[str]
) -> dict[str, dict[str, float]]:
    embedders = {name: LocalEmbedder(model_path=path, threads=threads) for name, path in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    bulk: dict[str, list[float]] = {name: [] for name in models}
    for e in embedders.values():
        for _ in range(50):
            e.embed_text(PROMPT)
    for _ in range(rounds):
        for name, e in embedders.items():
            for _ in range(calls // rounds):
                started = time.perf_counter()
                e.embed_text(PROMPT)
                times[name].append(time.perf_counter() - started)
            started = time.perf_counter()
            e.embed_texts(texts)
            bulk[name].append(len(texts) / (time.perf_counter() - started))
    out = {}
    for name, t in times.items():
        ms = np.array(t) * 1000
        out[name] = {
            "p50_ms": round(float(np.median(ms)), 3),
            "p99_ms": round(float(np.quantile(ms, 0.99)), 3),
            "mean_ms": round(statistics.fmean(ms), 3),
            "calls": len(t),
            "embed_texts_prompts_per_second_median": round(statistics.median(bulk[name]), 1),
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="a model (repeatable)")
    parser.add_argument("--split", action="append", default=[], choices=["dev", "test"], help="QQP split(s)")
    parser.add_argument("--data-dir", type=Path, default=DATA)
    parser.add_argument(
        "--batch-check",
        action="append",
        metavar="NAME",
        help="dynamic models also run through embed_texts batches (default: the one named int8-dynamic)",
    )
    parser.add_argument("--latency-calls", type=int, default=2000, help="embed_text calls per model and threads")
    parser.add_argument("--latency-threads", default="1,2")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "quantized_embedder.json")
    args = parser.parse_args()
    if args.model:
        models = {name: Path(path) for name, path in (m.split("=", 1) for m in args.model)}
    else:
        models = {"int8-weights": model_file("int8-weights"), "fp32": FP32, "int8-dynamic": model_file("int8-dynamic")}
    for name, path in models.items():
        if not path.is_file():
            raise SystemExit(f"{name}: {path} not found (the fp32 file: uv run scripts/build_quantized_model.py)")
    digests = {name: sha256(path) for name, path in models.items()}
    results: dict[str, Any] = {
        "machine": machine_info(["bsc-backends", "bsc-encoder", "onnxruntime", "tokenizers", "numpy"]),
        "command": " ".join(sys.argv),
        "models": {name: {"path": str(path), "sha256": digests[name]} for name, path in models.items()},
        "packaged_builds": sorted(BUILDS),
        "quality": {},
        "latency": {},
    }
    for split in args.split:
        results["quality"][split] = quality(
            models, digests, split, args.data_dir / f"{split}.jsonl.gz", set(args.batch_check or ["int8-dynamic"])
        )
    if args.latency_calls:
        a, b, _ = load_split(args.data_dir / "dev.jsonl.gz")
        bulk_texts = a[:128] + b[:128]
        for threads in (int(t) for t in args.latency_threads.split(",")):
            rows = latency(models, threads, args.latency_calls, 10, bulk_texts)
            results["latency"][f"threads={threads}"] = rows
            for name, row in rows.items():
                print(
                    f"threads={threads} {name:<14} p50 {row['p50_ms']:.3f} ms  p99 {row['p99_ms']:.3f} ms  "
                    f"embed_texts {row['embed_texts_prompts_per_second_median']:.0f} prompts/s",
                    flush=True,
                )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
