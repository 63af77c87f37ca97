"""Ranking and verification: the exact path and the semantic path of a lookup.

The exact path finds the entry stored with the prompt's key (O(1)) and compares the stored
prompt, so a hash collision never answers. The semantic path scans the partition's binary codes;
with rescoring, the nearest few candidates are re-scored with the exact cosine of their int8
embeddings, and with the content gate a candidate whose numbers, dates, negation, ... differ
from the prompt's is vetoed and the next is tried.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from bsc._checks import check_threshold
from bsc.gate import ContentGate, Verifier, gate_arg
from bsc.semantic.embedding import Embeddings
from bsc.semantic.keys import PromptKey, entry_key, namespace_of, normalize_prompt
from bsc.semantic.metrics import Metrics
from bsc.semantic.records import Hit, Record, make_hit, unpack
from bsc_encoder import hamming_radius, hamming_to_cosine

if TYPE_CHECKING:
    from bsc.cache import BinarySemanticCache
    from bsc.semantic.selfcheck import Checker

logger = logging.getLogger("bsc")

__all__ = ["Matcher", "Options", "lookup_limits"]


@dataclass(frozen=True, slots=True)
class Options:
    """Rescoring and the content gate: a cache's quality options (saved in the file's META)."""

    rescore: bool
    candidates: int
    margin: float
    gate: Verifier | None

    @classmethod
    def checked(cls, rescore: Any, candidates: Any, margin: Any, content_gate: Any) -> Options:
        if not isinstance(rescore, bool):
            raise TypeError(f"rescore must be a bool, got {rescore!r}")
        if isinstance(candidates, bool) or not isinstance(candidates, int) or not 1 <= candidates <= 256:
            raise ValueError(f"rescore_candidates must be an int from 1 to 256, got {candidates!r}")
        if isinstance(margin, bool) or not isinstance(margin, (int, float)) or not 0 <= margin <= 2:
            raise ValueError(f"rescore_margin must be a number from 0 to 2, got {margin!r}")
        return cls(rescore, candidates, float(margin), gate_arg(content_gate))

    def as_meta(self) -> dict[str, Any]:
        return {
            "rescore": self.rescore,
            "rescore_candidates": self.candidates,
            "rescore_margin": self.margin,
            # A verifier of your own is not saved: pass it again to load().
            "content_gate": self.gate.as_dict() if isinstance(self.gate, ContentGate) else None,
        }

    @classmethod
    def from_meta(cls, saved: Mapping[str, Any], rescore: Any, content_gate: Any) -> Options:
        gate = saved.get("content_gate")
        if content_gate is None:
            content_gate = None if gate is None else ContentGate.from_dict(gate)
        return cls.checked(
            saved.get("rescore", False) if rescore is None else rescore,
            saved.get("rescore_candidates", 4),
            saved.get("rescore_margin", 0.1),
            content_gate,
        )


def lookup_limits(threshold: Any, max_age: Any) -> tuple[float | None, float | None]:
    """A lookup's own threshold (checked) and the oldest creation time ``max_age`` admits."""
    if threshold is not None:
        threshold = check_threshold(threshold)
    if max_age is None:
        return threshold, None
    if isinstance(max_age, bool) or not isinstance(max_age, (int, float)) or not 0 <= max_age < float("inf"):
        raise ValueError(f"max_age must be a number of seconds >= 0, got {max_age!r}")
    return threshold, time.time() - max_age


class Matcher:
    """A cache's two lookup paths over its :class:`~bsc.BinarySemanticCache` (codes, threshold
    and engine), with its quality :class:`Options`; counts what it does in ``metrics``."""

    def __init__(
        self, binary: BinarySemanticCache, options: Options, metrics: Metrics, near_miss_margin: float
    ) -> None:
        self._binary = binary
        self._engine = binary.engine
        self._options = options
        self._metrics = metrics
        self._near_miss_margin = near_miss_margin
        self.checker: Checker | None = None  # self-checking (bsc.semantic.selfcheck), when on

    def find(
        self, prepared: PromptKey | None, embeddings: Embeddings, threshold: float | None, max_age: float | None
    ) -> Hit | None:
        """One lookup of a checked prompt (``None``: a bypass, counted): the exact path, then the
        semantic path with the prompt embedded by ``embeddings``."""
        if prepared is None:
            self._metrics.add("bypassed")
            return None
        threshold, oldest = lookup_limits(threshold, max_age)
        text, partition, normalized = prepared
        hit = self.exact(partition, normalized, oldest)
        if hit is not None:
            return hit
        return self.semantic(text, partition, embeddings.one(text), threshold, oldest)

    async def afind(
        self, prepared: PromptKey | None, embeddings: Embeddings, threshold: float | None, max_age: float | None
    ) -> Hit | None:
        """Async :meth:`find`: the exact path inline (microseconds), the embedding through the
        embedder's async method, the scan in a worker thread."""
        if prepared is None:
            self._metrics.add("bypassed")
            return None
        threshold, oldest = lookup_limits(threshold, max_age)
        text, partition, normalized = prepared
        hit = self.exact(partition, normalized, oldest)
        if hit is not None:
            return hit
        embedding = await embeddings.aone(text)
        return await asyncio.to_thread(self.semantic, text, partition, embedding, threshold, oldest)

    def exact(self, partition: str, normalized: str, oldest: float | None = None) -> Hit | None:
        for part in (partition, partition + "!"):
            found = self._engine.lookup_key(entry_key(part, normalized), namespace=part)
            if found is None:
                continue
            record = unpack(found[2])
            if normalize_prompt(record.prompt) != normalized:
                continue  # a 64-bit hash collision: never answers
            if oldest is not None and found[3] < oldest:
                continue  # older than the request's max_age: the semantic path decides (and misses it)
            hit = make_hit(found, record, partition, 1.0, exact=True)
            self._metrics.add("exact_hits")
            logger.debug("bsc: exact hit in %s (entry %d)", partition, hit.id)
            self._served(record)
            return hit
        return None

    def _served(self, record: Record) -> None:
        if record.tokens:
            self._metrics.add("tokens_saved", record.tokens)
        if record.cost:
            self._metrics.add("cost_saved", record.cost)
        self._binary.notify_changed()

    def semantic(
        self,
        prompt: str,
        partition: str,
        embedding: Any,
        threshold: float | None = None,
        oldest: float | None = None,
    ) -> Hit | None:
        """The semantic path; ``threshold``: this lookup's instead of the cache's; ``oldest``:
        entries created before this time (``time.time()``) do not answer."""
        if embedding is None:  # the prompt is longer than the embedder's window
            self._metrics.add("misses")
            logger.debug("bsc: miss in %s (prompt longer than the embedder's window: exact match only)", partition)
            return None
        code = self._binary.encode(embedding)
        bits = self._binary.code_bits
        checker = self.checker
        if threshold is None and checker is not None:
            threshold = checker.threshold(namespace_of(partition), self._binary.similarity_threshold)
            radius = hamming_radius(threshold, bits)
        elif threshold is None:
            threshold, radius = self._binary.match_rule
        else:
            radius = hamming_radius(threshold, bits)
        if self._options.rescore or self._options.gate is not None or oldest is not None or checker is not None:
            return self._checked(prompt, partition, embedding, code, threshold, radius, oldest)
        found, nearest = self._engine.lookup_nearest(code, radius, namespace=partition)
        best = None if nearest is None else float(hamming_to_cosine(nearest, bits))
        if best is not None:
            self._metrics.observe(best)
        if found is None:
            self._metrics.add("misses")
            if best is not None and best >= threshold - self._near_miss_margin:
                self._metrics.add("near_misses")
            logger.debug("bsc: miss in %s (best similarity %s)", partition, best)
            return None
        record = unpack(found[2])
        hit = make_hit(found, record, partition, float(hamming_to_cosine(found[1], bits)), exact=False)
        self._metrics.add("semantic_hits")
        self._served(record)
        logger.debug("bsc: semantic hit in %s (similarity %.3f, entry %d)", partition, hit.similarity, hit.id)
        return hit

    def _checked(
        self,
        prompt: str,
        partition: str,
        embedding: Any,
        code: Any,
        threshold: float,
        radius: int,
        oldest: float | None = None,
    ) -> Hit | None:
        """The semantic path with rescoring or the content gate: the nearest binary candidates
        are read in one call, re-scored (rescoring), and the best that reaches the threshold
        and passes the gate is served."""
        options, bits, checker = self._options, self._binary.code_bits, self.checker
        query = np.asarray(embedding, dtype=np.float32).ravel()
        query_norm = float(np.linalg.norm(query))
        # Candidates down to the rescoring margin, and to the near-miss margin so that a near
        # miss is seen (and to the self-check band); only those at or above the threshold answer.
        widest = max(self._near_miss_margin, options.margin if options.rescore else 0.0)
        if checker is not None:
            widest = max(widest, checker.config.band)
        radius = max(radius, hamming_radius(max(-1.0, threshold - widest), bits))
        # With a max_age, entries too old to answer are skipped: read a few more candidates.
        k = options.candidates if oldest is None else max(options.candidates, 16)
        entries, nearest = self._engine.candidates(code, k, radius, namespace=partition)
        scored = []
        for entry in entries:
            record = unpack(entry[2])
            similarity = float(hamming_to_cosine(entry[1], bits))
            if options.rescore and len(record.vector) == query.size and query_norm > 0:
                stored = np.frombuffer(record.vector, dtype=np.int8).astype(np.float32)
                norm = float(np.linalg.norm(stored))
                similarity = float(stored @ query) / (norm * query_norm) if norm > 0 else -1.0
            scored.append((similarity, entry, record))
        scored.sort(key=lambda item: -item[0])  # stable: equal scores keep the nearer code first
        # The best candidate's score, or the nearest code's estimate when none is that near.
        best = scored[0][0] if scored else None if nearest is None else float(hamming_to_cosine(nearest, bits))
        if best is not None:
            self._metrics.observe(best)
        near = None  # the best candidate under the threshold (a self-check compares its answer)
        for similarity, entry, record in scored:
            if oldest is not None and entry[3] < oldest:
                continue  # older than the request allows
            if similarity < threshold:
                near = (similarity, entry, record)
                break
            if options.gate is not None:
                rule = options.gate.verify(prompt, normalize_prompt(record.prompt), similarity)
                if rule is not None:
                    self._metrics.add("gate_vetoes")
                    logger.debug("bsc: content gate vetoed entry %d in %s (%s differ)", entry[0], partition, rule)
                    continue
            if checker is not None and checker.blocked(entry[0], prompt):
                continue  # its answer was compared for this very prompt, and differed
            if (
                checker is not None
                and similarity < threshold + checker.config.band
                and checker.should_check(namespace_of(partition))
            ):
                # In the uncertainty band: not served this time (nor touched); the caller asks
                # the upstream as for any miss, and the fresh answer it stores is compared with
                # this one.
                checker.note(partition, prompt, entry[0], record.prompt, record.response, similarity, paid=True)
                self._metrics.add("verifications")
                self._metrics.add("misses")
                logger.debug("bsc: checking entry %d in %s (similarity %.3f)", entry[0], partition, similarity)
                return None
            served = self._engine.lookup_id(entry[0], namespace=partition)
            if served is None:
                continue  # deleted, replaced or expired since the scan: never touched
            hit = make_hit(served, record, partition, similarity, exact=False)
            self._metrics.add("semantic_hits")
            self._served(record)
            logger.debug("bsc: semantic hit in %s (similarity %.3f, entry %d)", partition, similarity, hit.id)
            return hit
        self._metrics.add("misses")
        if best is not None and threshold - self._near_miss_margin <= best < threshold:
            self._metrics.add("near_misses")
        if checker is not None and near is not None and near[0] >= threshold - checker.config.band:
            similarity, entry, record = near
            checker.note(partition, prompt, entry[0], record.prompt, record.response, similarity, paid=False)
        logger.debug("bsc: miss in %s (best similarity %s)", partition, best)
        return None
