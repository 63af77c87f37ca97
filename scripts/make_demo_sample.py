"""Write the QQP sample that ``bsc demo`` replays by default.

    python scripts/make_demo_sample.py ../shared/data/qqp/dev.jsonl.gz

Takes 400 pairs of the dev split, chosen by a seeded shuffle, in their original order, and writes
them to ``packages/bsc/src/bsc/data/qqp_sample.jsonl.gz`` (gzip with a fixed mtime, so the
output is byte-for-byte the same on every run).
"""

from __future__ import annotations

import argparse
import gzip
import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "packages" / "bsc" / "src" / "bsc" / "data" / "qqp_sample.jsonl.gz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dev", type=Path, help="path to qqp/dev.jsonl.gz")
    parser.add_argument("--pairs", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2026)
    args = parser.parse_args()
    with gzip.open(args.dev, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    chosen = sorted(random.Random(args.seed).sample(range(len(rows)), args.pairs))
    lines = "".join(json.dumps(rows[i], ensure_ascii=False, sort_keys=True) + "\n" for i in chosen)
    with OUT.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(lines.encode("utf-8"))
    duplicates = sum(rows[i]["label"] for i in chosen)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {args.pairs} pairs, {duplicates} duplicates")


if __name__ == "__main__":
    main()
