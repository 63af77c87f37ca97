"""``SemanticCache``: the text-level cache (prompts in, responses out).

One lookup, in order (docs/SEMANTICS.md states the rule in full):

1. the prompt, namespace and scope are checked (:mod:`bsc.semantic.keys`); a request whose
   ``temperature`` is above ``max_temperature`` bypasses the cache;
2. the **exact path**: a 64-bit hash of the normalised prompt and its partition (namespace +
   scope hash) is looked up in the engine's key table, O(1), before any embedding is computed;
   the stored prompt is compared with the query, so a hash collision can never answer;
3. the **semantic path**: the prompt is embedded (:mod:`bsc.semantic.embedding`), encoded to a
   binary code and the nearest entry *of the same partition* is found inside the engine's scan;
   it answers if its estimated cosine similarity reaches ``similarity_threshold``, after
   rescoring and the content gate when they are on (:mod:`bsc.semantic.ranking`).

Every entry is stored with its prompt, tags and usage in one record (:mod:`bsc.semantic.records`);
the engine keeps the partition, the TTL and the exact-match key beside it. This module holds
the class that ties those modules together, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from bsc.cache import BinarySemanticCache
from bsc.gate import Verifier
from bsc.semantic.chat import ChatMethods
from bsc.semantic.embedding import Embeddings, default_embedder, embedder_dim
from bsc.semantic.invalidation import TagIndex, report_wrong
from bsc.semantic.keys import (
    DEFAULT_NAMESPACE,
    PromptKey,
    check_namespace,
    check_partition,
    check_prompt,
    check_tags,
    normalize_prompt,
    prepare,
)
from bsc.semantic.metrics import Metrics, SemanticStats, build_stats, namespace_count
from bsc.semantic.ranking import Matcher, Options
from bsc.semantic.records import Hit, tokens_of
from bsc.semantic.saved import open_saved, saved_settings, settings_meta
from bsc.semantic.selfcheck import Check, Checker, SelfCheck, self_check_arg
from bsc.semantic.storing import Item, Writer
from bsc.shared.config import Shared
from bsc_backends import Embedder
from bsc_encoder import BinaryEncoder
from bsc_native import CorruptFileError

logger = logging.getLogger("bsc")

__all__ = ["SemanticCache"]


class SemanticCache(ChatMethods):
    """A semantic cache keyed by prompt text.

    ``lookup(prompt)`` answers from an earlier ``store``d response when the prompt is the same
    after normalisation (the exact path, no embedding computed) or means the same (the semantic
    path: estimated cosine similarity of the embeddings at least ``similarity_threshold``).
    ``namespace`` and keyword ``scope`` values partition the cache: a lookup only ever sees
    entries stored with the same namespace and the same scope.

    Args:
        embedder: any :class:`bsc.embeddings.Embedder`; default the offline
            :class:`~bsc.embeddings.LocalEmbedder` (all-MiniLM-L6-v2).
        similarity_threshold: minimum estimated cosine similarity for a semantic hit.
        max_entries: entries kept; the least recently used one is evicted beyond it.
        code_bits, seed: the binary encoder's code length and projection seed.
        default_ttl: seconds an entry lives when ``store`` gives no ``ttl`` (``None``: forever; at
            most :data:`bsc.MAX_TTL`, 10 years, as is ``ttl``).
        max_temperature: requests with a ``temperature`` scope value above it bypass the cache
            (``lookup`` returns ``None``, ``store`` stores nothing).
        near_miss_margin: a miss whose best candidate is within this much under the threshold
            counts as a near miss.
        max_prompt_chars: longer prompts are refused with ``ValueError``.
        rescore: (default on) keep an int8 copy of each embedding in its record (the embedder's
            dimension in bytes, 384 for the local model) and re-score the ``rescore_candidates``
            nearest binary candidates whose estimated similarity is at least
            ``similarity_threshold - rescore_margin`` with the exact cosine; the best that
            reaches the threshold answers. Precision then matches exact float cosine
            (docs/QUALITY.md); the scan stays binary.
        content_gate: (default on) ``True`` (the default rules), a :class:`~bsc.gate.ContentGate`
            or any :class:`~bsc.gate.Verifier`: a semantic candidate whose numbers, dates, units,
            negation, quoted strings or code, opposite words, word order or names conflict with
            the prompt's is vetoed, and the next candidate is tried. ``False`` turns it off.
        self_check: ``True`` or a :class:`~bsc.semantic.SelfCheck`: the cache checks hits near
            its threshold against fresh answers and learns each namespace's threshold
            (docs/QUALITY.md, "A cache that checks itself"). Off by default: checks cost
            upstream calls.
        persist_path, persist_every, persist_interval: as for :class:`BinarySemanticCache`.
        shared: a ``redis://`` URL or :class:`bsc.Shared`: every process naming the same Redis
            (and key prefix) shares this cache; lookups stay in memory (docs/SHARED.md).
    """

    def __init__(
        self,
        embedder: Embedder | None = None,
        similarity_threshold: float = 0.80,
        *,
        max_entries: int = 10_000,
        code_bits: int = 256,
        seed: int = 42,
        default_ttl: float | None = None,
        max_temperature: float = 1.0,
        near_miss_margin: float = 0.05,
        max_prompt_chars: int = 100_000,
        rescore: bool = True,
        rescore_candidates: int = 4,
        rescore_margin: float = 0.1,
        content_gate: bool | Verifier = True,
        self_check: bool | SelfCheck = False,
        persist_path: str | os.PathLike[str] | None = None,
        persist_every: int | None = 1000,
        persist_interval: float | None = 60.0,
        shared: str | Shared | None = None,
    ) -> None:
        if embedder is None:
            embedder = default_embedder()
        dim = embedder_dim(embedder)
        _check_settings(max_temperature, near_miss_margin, max_prompt_chars)
        options = Options.checked(rescore, rescore_candidates, rescore_margin, content_gate)
        checking = self_check_arg(self_check)
        encoder = BinaryEncoder(dim, code_bits, seed)
        cache = BinarySemanticCache(
            encoder,
            max_entries=max_entries,
            similarity_threshold=similarity_threshold,
            default_ttl=default_ttl,
            persist_path=persist_path,
            persist_every=persist_every,
            persist_interval=persist_interval,
            shared=shared,
        )
        self._setup(embedder, cache, max_temperature, near_miss_margin, max_prompt_chars, options, checking)

    def _setup(
        self,
        embedder: Embedder,
        cache: BinarySemanticCache,
        max_temperature: float,
        near_miss_margin: float,
        max_prompt_chars: int,
        options: Options,
        checking: SelfCheck | None = None,
    ) -> None:
        try:
            self._setup_checked(embedder, cache, max_temperature, near_miss_margin, max_prompt_chars, options, checking)
        except BaseException:
            cache.close()  # stops its background saver (nothing has changed, so nothing is saved)
            raise

    def _setup_checked(
        self,
        embedder: Embedder,
        cache: BinarySemanticCache,
        max_temperature: float,
        near_miss_margin: float,
        max_prompt_chars: int,
        options: Options,
        checking: SelfCheck | None,
    ) -> None:
        _check_settings(max_temperature, near_miss_margin, max_prompt_chars)
        saved = saved_settings(cache, embedder)
        try:
            self._metrics = Metrics(saved.get("metrics"))
        except ValueError as err:
            raise CorruptFileError(f"the file's SemanticCache metrics are malformed: {err}") from None
        self._embedder = embedder
        self._embeddings = Embeddings(embedder)
        self._cache = cache
        self._engine = cache.engine
        self._max_temperature = float(max_temperature)
        self._near_miss_margin = float(near_miss_margin)
        self._max_prompt_chars = max_prompt_chars
        self._options = options
        self._matcher = Matcher(cache, options, self._metrics, self._near_miss_margin)
        self._checker: Checker | None = None
        if checking is not None:
            try:
                self._checker = Checker(checking, self._embeddings.one, saved.get("self_check"), self._served_hits)
            except (TypeError, ValueError, KeyError) as err:
                raise CorruptFileError(f"the file's self-check state is malformed: {err}") from None
            self._matcher.checker = self._checker
        self._tags = TagIndex(self._engine, empty=not len(cache))
        listen = getattr(self._engine, "add_listener", None)
        if listen is not None:  # a shared engine: entries other processes store carry tags too
            listen(self._tags.note_record)
        self._writer = Writer(cache, options, self._tags)
        cache.set_meta_provider(self._meta)

    # -- settings ----------------------------------------------------------------------------

    @property
    def embedder(self) -> Embedder:
        return self._embedder

    @property
    def binary(self) -> BinarySemanticCache:
        """The embedding-level cache underneath (its entries hold SemanticCache records)."""
        return self._cache

    @property
    def matcher(self) -> Matcher:
        """The exact and semantic lookup paths (:mod:`bsc.semantic.ranking`), for benchmarks and
        tools that time them apart from embedding."""
        return self._matcher

    @property
    def similarity_threshold(self) -> float:
        return self._cache.similarity_threshold

    @similarity_threshold.setter
    def similarity_threshold(self, value: float) -> None:
        self._cache.similarity_threshold = value

    @property
    def max_entries(self) -> int:
        return self._cache.max_entries

    @property
    def rescore(self) -> bool:
        return self._options.rescore

    @property
    def content_gate(self) -> Verifier | None:
        return self._options.gate

    @property
    def max_temperature(self) -> float:
        return self._max_temperature

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, entry_id: object) -> bool:
        return entry_id in self._cache

    def __repr__(self) -> str:
        return (
            f"SemanticCache(embedder={self._embedder.model_name!r}, similarity_threshold={self.similarity_threshold}, "
            f"max_entries={self.max_entries}, len={len(self)})"
        )

    # -- lookup ------------------------------------------------------------------------------

    def prepare(
        self, prompt: str, *, namespace: str = DEFAULT_NAMESPACE, scope: Mapping[str, Any] | None = None
    ) -> PromptKey | None:
        """Checks a lookup (prompt, namespace, scope values, temperature) without running it: its
        :class:`~bsc.semantic.keys.PromptKey` for :meth:`lookup_prepared`, or ``None`` when the
        request bypasses the cache. ``scope`` is the mapping :meth:`lookup` takes as keywords (so
        any key, ``"prompt"`` included, can be a scope name). Raises ``TypeError``/``ValueError``
        as :meth:`lookup` does."""
        return prepare(
            prompt,
            namespace,
            {} if scope is None else scope,
            max_prompt_chars=self._max_prompt_chars,
            max_temperature=self._max_temperature,
        )

    def lookup(self, prompt: str, *, namespace: str = DEFAULT_NAMESPACE, **scope: Any) -> Hit | None:
        """The cached answer for ``prompt`` in ``namespace`` and ``scope``, or ``None``.

        ``scope``: keyword values (JSON: str, numbers, bool, None, lists, dicts) that must be equal
        for an entry to answer, e.g. ``model="gpt-4o-mini", user_id=42``; see :func:`chat_scope`
        for chat requests. Raises ``TypeError``/``ValueError`` for a bad prompt, namespace or
        scope value."""
        return self.lookup_prepared(self.prepare(prompt, namespace=namespace, scope=scope))

    def lookup_prepared(
        self, prepared: PromptKey | None, *, threshold: float | None = None, max_age: float | None = None
    ) -> Hit | None:
        """:meth:`lookup` after :meth:`prepare` (callers that checked the request already, such
        as the client wrapper and the proxy, do not check it twice; ``None`` counts a bypass).
        ``threshold``: this lookup's similarity threshold instead of the cache's; ``max_age``:
        only entries at most this many seconds old answer (HTTP ``Cache-Control: max-age``)."""
        return self._matcher.find(prepared, self._embeddings, threshold, max_age)

    def lookup_many(
        self, prompts: Sequence[str], *, namespace: str = DEFAULT_NAMESPACE, **scope: Any
    ) -> list[Hit | None]:
        """:meth:`lookup` for each prompt; the prompts the exact path does not answer are
        embedded in one batch."""
        prepared = [self.prepare(p, namespace=namespace, scope=scope) for p in _as_list(prompts, "prompts")]
        out: list[Hit | None] = [None] * len(prepared)
        todo: list[PromptKey] = []
        slots: list[int] = []
        for i, item in enumerate(prepared):
            if item is None:
                self._metrics.add("bypassed")
                continue
            out[i] = self._matcher.exact(item.partition, item.normalized)
            if out[i] is None:
                todo.append(item)
                slots.append(i)
        embeddings = self._embeddings.batch([item.text for item in todo])
        for i, item, embedding in zip(slots, todo, embeddings, strict=True):
            out[i] = self._matcher.semantic(item.text, item.partition, embedding)
        return out

    # -- store -------------------------------------------------------------------------------

    def _record(
        self, prompt: Any, response: Any, namespace: Any, ttl: Any, tags: Any, usage: Any, cost: Any, scope: Any
    ) -> Item | None:
        """Every check of a store, before anything is embedded or stored."""
        prepared = self.prepare(prompt, namespace=namespace, scope=scope)
        return self._writer.check(prepared, prompt, response, ttl, tags, usage, cost)

    def store(
        self,
        prompt: str,
        response: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **scope: Any,
    ) -> int | None:
        """Store ``response`` for ``prompt``; return the new entry's id (``None`` if the request
        bypasses the cache by its temperature).

        ``response``: ``str``, ``bytes`` or a JSON value. ``ttl``: seconds (default
        ``default_ttl``). ``tags``: names to delete it by later (:meth:`delete_tag`). ``usage``
        (tokens: an int, or the LLM's usage object or dict) and ``cost`` (any currency) are what
        a later hit saves. An entry with the same normalised prompt, namespace and scope is
        replaced. Bad input raises ``TypeError``/``ValueError`` and stores nothing."""
        item = self._record(prompt, response, namespace, ttl, tags, usage, cost, scope)
        if item is None:
            return None
        entry_id = self._writer.put(item, self._embeddings.one(item[0].text))
        self._answered(item[0], response, usage)
        return entry_id

    def store_prepared(
        self,
        prepared: PromptKey,
        prompt: str,
        response: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
    ) -> int:
        """:meth:`store` under the key :meth:`prepare` gave for ``prompt`` (``ValueError`` if it
        is another prompt's): the entry goes to the very partition the lookup searched. Scope
        values are never keywords here, so no scope name (``"namespace"``, say) can redirect it.
        What the client wrapper and the proxy store with."""
        item = self._prepared_item(prepared, prompt, response, ttl, tags, usage, cost)
        entry_id = self._writer.put(item, self._embeddings.one(item[0].text))
        self._answered(item[0], response, usage)
        return entry_id

    async def astore_prepared(
        self,
        prepared: PromptKey,
        prompt: str,
        response: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
    ) -> int:
        """Async :meth:`store_prepared`."""
        item = self._prepared_item(prepared, prompt, response, ttl, tags, usage, cost)
        embedding = await self._embeddings.aone(item[0].text)
        entry_id = await asyncio.to_thread(self._writer.put, item, embedding)
        if self._checker is not None:
            await asyncio.to_thread(self._answered, item[0], response, usage)
        return entry_id

    def _prepared_item(
        self, prepared: Any, prompt: Any, response: Any, ttl: Any, tags: Any, usage: Any, cost: Any
    ) -> Item:
        if not isinstance(prepared, PromptKey):
            raise TypeError(f"prepared must be a PromptKey from prepare(), got {type(prepared).__name__}")
        check_partition(prepared.partition)
        normalized = normalize_prompt(check_prompt(prompt, self._max_prompt_chars))
        if not normalized == prepared.normalized == prepared.text:
            raise ValueError("prompt is not the prompt this PromptKey was prepared for")
        item = self._writer.check(prepared, prompt, response, ttl, tags, usage, cost)
        assert item is not None
        return item

    def store_many(
        self,
        prompts: Sequence[str],
        responses: Sequence[Any],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        **scope: Any,
    ) -> list[int | None]:
        """:meth:`store` for each pair, embedded in one batch. Every pair is checked before any
        is stored: one bad pair stores none."""
        prompts, responses = _as_list(prompts, "prompts"), _as_list(responses, "responses")
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        tags = check_tags(tags)  # once: an iterator would be used up by the first pair
        items = [
            self._record(p, r, namespace, ttl, tags, None, None, scope) for p, r in zip(prompts, responses, strict=True)
        ]
        live = [item for item in items if item is not None]
        embeddings = iter(self._embeddings.batch([item[0].text for item in live]))
        out = [None if item is None else self._writer.put(item, next(embeddings)) for item in items]
        for item, response in zip(items, responses, strict=True):
            if item is not None:
                self._answered(item[0], response, None)
        return out

    # -- self-checking -----------------------------------------------------------------------

    def _answered(self, prepared: PromptKey, response: Any, usage: Any) -> Check | None:
        """A fresh answer for a prompt that just missed: compared with the candidate a
        self-check noted for it, if any (bsc.semantic.selfcheck)."""
        if self._checker is None:
            return None
        found = self._checker.answered(prepared.partition, prepared.text, response, self.similarity_threshold)
        if found is None:
            return None
        check, elapsed = found
        self._metrics.add("checks")
        if not check.same:
            self._metrics.add("checks_different")
        if check.paid:
            self._metrics.add("verification_seconds", elapsed)
            if usage is not None:
                self._metrics.add("verification_tokens", tokens_of(usage))
        self._cache.notify_changed()
        return check

    def check_answer(
        self, prompt: str, response: Any, *, namespace: str = DEFAULT_NAMESPACE, usage: Any = None, **scope: Any
    ) -> Check | None:
        """Give the upstream's answer for a prompt that just missed without storing it: with
        ``self_check`` on, it is compared with the candidate the lookup noted (the label, or
        ``None`` when there was none). ``store`` does this itself."""
        prepared = self.prepare(prompt, namespace=namespace, scope=scope)
        if prepared is None:
            return None
        tokens_of(usage)  # TypeError/ValueError before anything is compared
        return self._answered(prepared, response, usage)

    def _served_hits(self) -> tuple[int, int]:
        values = self._metrics.snapshot()
        return int(values["exact_hits"]), int(values["semantic_hits"])

    @property
    def self_check(self) -> SelfCheck | None:
        return None if self._checker is None else self._checker.config

    def checks(self) -> list[Check]:
        """The labelled pairs the self-check collected, oldest first (at most
        ``SelfCheck.max_labels``; ``[]`` when it is off)."""
        return [] if self._checker is None else self._checker.checks()

    def learned_thresholds(self) -> dict[str, float]:
        """Each namespace's threshold as the self-check moved it (namespaces it has not moved
        use ``similarity_threshold``)."""
        return {} if self._checker is None else self._checker.thresholds()

    def export_checks(self, path: str | os.PathLike[str]) -> int:
        """Write :meth:`checks` as JSON lines (``text_a`` stored, ``text_b`` asked, ``label`` 1
        for the same answer, ``similarity``, ...), the labelled-pairs format ``bsc eval`` and
        ``bsc calibrate`` read; returns how many."""
        import json

        rows = self.checks()
        tmp = Path(os.fspath(path) + ".tmp")
        with open(tmp, "w", encoding="utf-8") as out:
            for i, check in enumerate(rows):
                out.write(json.dumps(check.as_pair(i), ensure_ascii=False) + "\n")
        os.replace(tmp, path)
        return len(rows)

    # -- async -------------------------------------------------------------------------------

    async def alookup(self, prompt: str, *, namespace: str = DEFAULT_NAMESPACE, **scope: Any) -> Hit | None:
        """Async :meth:`lookup`: the exact path runs inline (microseconds), the embedding through
        the embedder's async method, and the native scan in a worker thread, so the event loop
        is never blocked by a scan of a large cache."""
        return await self.alookup_prepared(self.prepare(prompt, namespace=namespace, scope=scope))

    async def alookup_prepared(
        self, prepared: PromptKey | None, *, threshold: float | None = None, max_age: float | None = None
    ) -> Hit | None:
        """Async :meth:`lookup_prepared` (as :meth:`alookup` runs it)."""
        return await self._matcher.afind(prepared, self._embeddings, threshold, max_age)

    async def astore(
        self,
        prompt: str,
        response: Any,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        ttl: float | None = None,
        tags: Iterable[str] | None = None,
        usage: Any = None,
        cost: float | None = None,
        **scope: Any,
    ) -> int | None:
        """Async :meth:`store`: embedding through the embedder's async method, the native put in a
        worker thread."""
        item = self._record(prompt, response, namespace, ttl, tags, usage, cost, scope)
        if item is None:
            return None
        embedding = await self._embeddings.aone(item[0].text)
        entry_id = await asyncio.to_thread(self._writer.put, item, embedding)
        if self._checker is not None:
            await asyncio.to_thread(self._answered, item[0], response, usage)
        return entry_id

    # -- invalidation ------------------------------------------------------------------------

    def delete(self, entry_id: int) -> bool:
        """Remove an entry by id; return whether it was present."""
        return self._cache.delete(entry_id)

    def delete_namespace(self, namespace: str) -> int:
        """Remove every entry of ``namespace``, of every scope; return how many."""
        namespace = check_namespace(namespace)
        prefix = f"{namespace}#".encode()
        removed = 0
        for name in self._engine.namespaces():
            if name.startswith(prefix):
                removed += self._cache.delete_namespace(name)
        return removed

    def delete_tag(self, tag: str) -> int:
        """Remove every entry stored with ``tag``; return how many."""
        (tag,) = check_tags([tag])
        return self._tags.delete_tag(tag, self._cache.delete)

    def mark_wrong(self, hit: Hit | int) -> bool:
        """Report a wrong answer: the entry that gave it is removed, so it is never served again,
        and ``false_hit_reports`` counts it. Returns whether the entry was still there.

        ``hit``: the :class:`Hit`, or its entry id (``Hit.id``, as a proxy's ``X-Bsc-Entry``
        header gives it). A Hit is counted even if its entry is gone already; an id only when
        its entry was there (an unknown id is no report)."""
        return report_wrong(hit, self._engine, self._cache.delete, self._metrics)

    def purge_expired(self) -> int:
        return self._cache.purge_expired()

    def clear(self) -> None:
        """Remove every entry (counters are kept)."""
        self._tags.clear(self._cache.clear)

    # -- stats and persistence ---------------------------------------------------------------

    def stats(self) -> SemanticStats:
        """Counters and sizes; ``namespaces`` counts namespaces holding entries (of any scope)."""
        return build_stats(
            self._engine.stats(),
            self._metrics.snapshot(),
            namespace_count(self._engine.namespaces()),
            self._cache.save_errors,
        )

    def _meta(self) -> dict[str, Any]:
        return settings_meta(
            self._embedder.model_name,
            self._max_temperature,
            self._near_miss_margin,
            self._max_prompt_chars,
            self._options,
            self._metrics.snapshot(),
            None if self._checker is None else self._checker.state(),
        )

    @property
    def persist_path(self) -> Path | None:
        return self._cache.persist_path

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the cache to one crash-safe file (see :meth:`BinarySemanticCache.save`), with
        its settings and counters."""
        self._cache.save(path)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        embedder: Embedder | None = None,
        *,
        max_entries: int | None = None,
        similarity_threshold: float | None = None,
        verify: bool = False,
        rescore: bool | None = None,
        content_gate: bool | Verifier | None = None,
        self_check: bool | SelfCheck | None = None,
    ) -> SemanticCache:
        """Open a cache saved by :meth:`save`. ``embedder`` (default the local one) must be the
        model the file's entries were embedded by (``EncoderMismatchError`` otherwise).
        ``verify`` checks every response's checksum now (see :meth:`BinarySemanticCache.load`).
        ``rescore``, ``content_gate`` and ``self_check`` default to the file's settings (a
        comparator or verifier of your own is not saved: pass it again); entries stored without
        rescoring have no int8 copy, and keep their binary similarity when rescoring is on."""
        if embedder is None:
            embedder = default_embedder()
        cache, options, saved = open_saved(
            path, embedder, max_entries, similarity_threshold, verify, rescore, content_gate
        )
        checking = self_check_arg(self_check) if self_check is not None else None
        if self_check is None and isinstance(saved.get("self_check"), dict):
            try:
                checking = SelfCheck(**saved["self_check"].get("settings", {}))
            except (TypeError, ValueError) as err:
                cache.close()
                raise CorruptFileError(f"{path}: its self-check settings are malformed: {err}") from None
        out = cls.__new__(cls)
        out._setup(
            embedder,
            cache,
            saved.get("max_temperature", 1.0),
            saved.get("near_miss_margin", 0.05),
            saved.get("max_prompt_chars", 100_000),
            options,
            checking,
        )
        return out

    def close(self) -> None:
        """Stop background saving and save a last time (with ``persist_path``)."""
        self._cache.close()

    def __enter__(self) -> SemanticCache:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _check_settings(max_temperature: Any, near_miss_margin: Any, max_prompt_chars: Any) -> None:
    for name, value in (("max_temperature", max_temperature), ("near_miss_margin", near_miss_margin)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
            raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    if isinstance(max_prompt_chars, bool) or not isinstance(max_prompt_chars, int) or max_prompt_chars < 1:
        raise ValueError(f"max_prompt_chars must be a positive int, got {max_prompt_chars!r}")


def _as_list(values: Any, what: str) -> list[Any]:
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise TypeError(f"{what} must be a list, got {type(values).__name__}")
    return list(values)
