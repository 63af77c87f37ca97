"""``bsc demo``: replay real questions through a cache and report what it saved and what it got wrong.

The workload is a list of labelled question pairs (QQP): every first phrasing is asked once and,
on a miss, stored with a stand-in answer; then every second phrasing is asked. A second
phrasing answered from its own pair's first phrasing is a correct hit when the pair is labelled a
duplicate and a false hit when it is not; a hit on some other pair's question is counted apart
(unlabelled), as is a first phrasing answered from an earlier pair's (a repeat). Every hit is
an LLM call saved, wrong answers included; the report says how many were wrong. The cache is a
:class:`~bsc.SemanticCache` with its defaults (rescoring and the content gate on); with
``old_defaults`` the codes alone decide, as the original system did. Embedding runs first, in
batches; the lookup times are the cache's lookup with the embedding already computed.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from bsc_backends import Embedder

T = TypeVar("T")
SAMPLE = "qqp_sample.jsonl.gz"


@dataclass(frozen=True)
class Pair:
    id: int
    text_a: str
    text_b: str
    label: int


@dataclass
class DemoReport:
    """What one replay measured. Times are in microseconds unless named otherwise."""

    data: str
    pairs: int
    duplicate_pairs: int
    embedder: str
    code_bits: int
    similarity_threshold: float
    rescore: bool
    content_gate: bool
    entries: int
    lookups: int
    hits: int
    hit_rate: float
    correct_hits: int
    false_hits: int
    other_hits: int
    repeat_hits: int
    missed_duplicates: int
    llm_calls_made: int
    llm_calls_saved: int
    lookup_median_us: float
    lookup_p99_us: float
    embed_ms_per_prompt: float
    index_bytes_per_entry: float
    memory_bytes_per_entry: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def text(self) -> str:
        hits = self.hits
        return "\n".join([
            f"bsc demo: {self.pairs} question pairs from {self.data} ({self.duplicate_pairs} duplicates)",
            f"  embedder {self.embedder}, {self.code_bits}-bit codes, similarity threshold {self.similarity_threshold},"
            f" rescoring {'on' if self.rescore else 'off'}, content gate {'on' if self.content_gate else 'off'}",
            "",
            f"  entries stored        {self.entries}",
            f"  lookups               {self.lookups}",
            f"  hit rate              {_pct(hits, self.lookups)} ({hits} hits)",
            f"  correct hits          {self.correct_hits}  (a paraphrase answered from its duplicate)",
            f"  false hits            {self.false_hits}  (a different question served this pair's answer)",
            f"  other hits            {self.other_hits}  (answered from another pair's question; unlabelled)",
            f"  repeat hits           {self.repeat_hits}  (a first phrasing answered from an earlier one; unlabelled)",
            f"  missed duplicates     {self.missed_duplicates} of {self.duplicate_pairs}",
            f"  LLM calls saved       {self.llm_calls_saved} of {self.lookups}"
            f" ({_pct(self.llm_calls_saved, self.lookups)}), {self.false_hits} of them with a wrong answer",
            f"  lookup time           median {self.lookup_median_us:.1f} us, p99 {self.lookup_p99_us:.1f} us"
            " (embedding excluded)",
            f"  embedding time        {self.embed_ms_per_prompt:.2f} ms per prompt (batches of 32)",
            f"  memory per entry      {self.index_bytes_per_entry:.0f} B code, metadata and spare capacity,"
            f" {self.memory_bytes_per_entry:.0f} B with the stored answers",
        ])  # fmt: skip


def _pct(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "n/a"


def load_pairs(path: str | Path | None = None, limit: int | None = None) -> tuple[list[Pair], str]:
    """Pairs from a QQP-style ``.jsonl`` or ``.jsonl.gz`` file, or the shipped sample when ``path`` is None."""
    if path is None:
        raw = resources.files("bsc").joinpath(f"data/{SAMPLE}").read_bytes()
        lines: Iterable[str] = gzip.decompress(raw).decode("utf-8").splitlines()
        name = f"the sample shipped with bsc ({SAMPLE})"
    else:
        file = Path(path)
        if not file.is_file():
            raise FileNotFoundError(f"no such data file: {file}")
        opener = gzip.open if file.suffix == ".gz" else open
        with opener(file, "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        name = str(file)
    pairs = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            pair = Pair(int(row["id"]), str(row["text_a"]), str(row["text_b"]), int(row["label"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{name}, line {number}: not a question pair ({exc!r})") from None
        if pair.label not in (0, 1):
            raise ValueError(f"{name}, line {number}: label must be 0 or 1, got {pair.label}")
        if pair.text_a.strip() and pair.text_b.strip():  # a few QQP questions are empty
            pairs.append(pair)
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"{name} holds no question pairs")
    return pairs, name


def _batches(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def run_demo(
    pairs: list[Pair],
    embedder: Embedder,
    *,
    data_name: str = "",
    code_bits: int = 256,
    similarity_threshold: float = 0.80,
    seed: int = 42,
    progress: bool = True,
    old_defaults: bool = False,
) -> DemoReport:
    """Replay ``pairs`` through a fresh :class:`~bsc.SemanticCache` (its defaults; with
    ``old_defaults``, no rescoring and no content gate) and measure it."""
    from tqdm import tqdm

    from bsc.quality import TableEmbedder
    from bsc.semantic import SemanticCache, normalize_prompt

    texts = [p.text_a for p in pairs] + [p.text_b for p in pairs]
    vectors = np.empty((len(texts), embedder.embedding_dim), dtype=np.float32)
    started = time.perf_counter()
    with tqdm(total=len(texts), desc="embedding", unit="prompt", disable=not progress, leave=False) as bar:
        done = 0
        for batch in _batches(texts, 32):
            vectors[done : done + len(batch)] = embedder.embed_texts(batch)
            done += len(batch)
            bar.update(len(batch))
    embed_seconds = time.perf_counter() - started

    normalized = [normalize_prompt(t) for t in texts]
    cache = SemanticCache(
        TableEmbedder(normalized, vectors, embedder.model_name),
        similarity_threshold,
        max_entries=max(1000, len(pairs)),
        code_bits=code_bits,
        seed=seed,
        rescore=not old_defaults,
        content_gate=not old_defaults,
        persist_every=None,
        persist_interval=None,
    )
    n = len(pairs)
    timings: list[int] = []
    correct = false = other = missed = repeats = 0
    with tqdm(total=2 * n, desc="replaying", unit="lookup", disable=not progress, leave=False) as bar:
        for i, pair in enumerate(pairs):  # first phrasings: ask, and on a miss "call the LLM" and store
            t0 = time.perf_counter_ns()
            hit = cache.lookup(normalized[i])
            timings.append(time.perf_counter_ns() - t0)
            if hit is not None:
                repeats += 1
            else:
                answer = {"pair": pair.id, "answer": f"(stand-in LLM answer to: {pair.text_a})"}
                cache.store(normalized[i], answer)
            bar.update()
        for i, pair in enumerate(pairs):  # second phrasings
            t0 = time.perf_counter_ns()
            hit = cache.lookup(normalized[n + i])
            timings.append(time.perf_counter_ns() - t0)
            if hit is None:
                missed += pair.label
            elif hit.response["pair"] != pair.id:
                other += 1
            elif pair.label == 1:
                correct += 1
            else:
                false += 1
            bar.update()

    stats = cache.stats()
    micros = np.array(timings) / 1000
    return DemoReport(
        data=data_name, pairs=n, duplicate_pairs=sum(p.label for p in pairs), embedder=embedder.model_name,
        code_bits=code_bits, similarity_threshold=similarity_threshold, rescore=cache.rescore,
        content_gate=cache.content_gate is not None, entries=stats.size, lookups=2 * n,
        hits=stats.hits, hit_rate=stats.hit_rate, correct_hits=correct, false_hits=false, other_hits=other,
        repeat_hits=repeats, missed_duplicates=missed, llm_calls_made=stats.misses, llm_calls_saved=stats.hits,
        lookup_median_us=float(np.median(micros)), lookup_p99_us=float(np.percentile(micros, 99)),
        embed_ms_per_prompt=1000 * embed_seconds / len(texts),
        index_bytes_per_entry=(stats.memory_bytes - stats.response_bytes) / stats.size,
        memory_bytes_per_entry=stats.memory_bytes / stats.size,
    )  # fmt: skip
