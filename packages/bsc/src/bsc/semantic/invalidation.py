"""Invalidation by tag: the index from each tag to the ids of the entries stored with it.

Tags live in the records, so after a load the index is rebuilt from them on first need (and
again, in the background, when ids of entries removed otherwise make up most of it).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from bsc.engine import Engine
from bsc.semantic.metrics import Metrics
from bsc.semantic.records import Hit, unpack

logger = logging.getLogger("bsc")

__all__ = ["TagIndex", "report_wrong"]


def report_wrong(hit: Hit | int, engine: Engine, delete: Callable[[int], bool], metrics: Metrics) -> bool:
    """``SemanticCache.mark_wrong``: removes the entry with ``delete`` and counts the report."""
    if isinstance(hit, int) and not isinstance(hit, bool):
        placement = engine.placement(hit) if hit >= 0 else None
        removed = delete(hit)
        if removed:
            metrics.add("false_hit_reports")
            partition = b"?" if placement is None else placement[0]
            logger.warning(
                "bsc: false hit reported in %s: entry %d removed",
                partition.decode("utf-8", "replace").split("#", 1)[0],
                hit,
            )
        return removed
    if not isinstance(hit, Hit):
        raise TypeError(f"mark_wrong takes a bsc.Hit or an entry id (int), got {type(hit).__name__}")
    metrics.add("false_hit_reports")
    logger.warning(
        "bsc: false hit reported in %s: entry %d (similarity %.3f, %s) removed",
        hit.namespace,
        hit.id,
        hit.similarity,
        "exact" if hit.exact else "semantic",
    )
    return delete(hit.id)


class TagIndex:
    """Tag -> entry ids, for one engine. ``empty``: the engine holds no entry yet (no rebuild
    needed)."""

    def __init__(self, engine: Engine, *, empty: bool) -> None:
        self._engine = engine
        self._tags: dict[str, set[int]] | None = {} if empty else None
        # While the index is rebuilt from the records, stores also note their tags here, so
        # that none made during the scan is lost.
        self._stored_meanwhile: list[tuple[int, tuple[str, ...]]] | None = None
        # Tag memberships in the index now and right after the last rebuild (see _stale).
        self._members = self._baseline = 0
        self._rebuild_started = False
        self._lock = threading.Lock()
        self._rebuild_lock = threading.Lock()
        self._delete_lock = threading.Lock()

    def refresh(self, *, stale: bool = False) -> None:
        """Builds the tag index (tag -> ids) from the stored records: on first need after a load,
        or (``stale``) to drop the ids of entries removed since without ``delete_tag`` (evicted,
        expired, deleted by id or namespace). Stores made during the scan note their tags in
        ``_stored_meanwhile``, so none is lost."""
        with self._rebuild_lock:
            with self._lock:
                if self._tags is not None and not (stale and self._stale()):
                    return
                self._stored_meanwhile = []
            index: dict[str, set[int]] = {}
            try:
                for entry_id in self._engine.lru_ids().tolist():
                    found = self._engine.peek(entry_id)
                    if found is None:
                        continue
                    for tag in unpack(found[2]).tags:
                        index.setdefault(tag, set()).add(entry_id)
            finally:
                with self._lock:
                    for entry_id, entry_tags in self._stored_meanwhile or []:
                        if entry_id in self._engine:  # not already evicted or deleted
                            for tag in entry_tags:
                                index.setdefault(tag, set()).add(entry_id)
                    self._stored_meanwhile = None
                    self._tags = index
                    self._members = self._baseline = sum(map(len, index.values()))
                    self._rebuild_started = False

    def _stale(self) -> bool:
        """Whether the index has grown to more than twice (plus 1024) its size at the last
        rebuild: ids of removed entries may then make up most of it. (Under ``_lock``.)"""
        return self._members > 2 * self._baseline + 1024

    def note(self, entry_id: int, tags: tuple[str, ...]) -> None:
        with self._lock:
            if self._tags is not None:
                for tag in tags:
                    self._tags.setdefault(tag, set()).add(entry_id)
                self._members += len(tags)
            if self._stored_meanwhile is not None:
                self._stored_meanwhile.append((entry_id, tags))
            start = self._tags is not None and self._stale() and not self._rebuild_started
            if start:
                self._rebuild_started = True
        if start:
            # O(entries), so off the caller's thread; amortised O(1) per tag stored.
            threading.Thread(target=self.refresh, kwargs={"stale": True}, name="bsc-tag-index", daemon=True).start()

    def note_record(self, entry_id: int, record: bytes) -> None:
        """:meth:`note` for an entry stored elsewhere (another process sharing the engine)."""
        tags = unpack(record).tags
        if tags:
            self.note(entry_id, tags)

    def delete_tag(self, tag: str, delete: Callable[[int], bool]) -> int:
        """Removes every entry stored with ``tag`` with ``delete(id)``; how many were removed."""
        # One delete_tag at a time: a second call must not return while the first still deletes
        # entries it popped from the index.
        with self._delete_lock:
            self.refresh()
            with self._lock:
                ids = self._tags.pop(tag, set()) if self._tags is not None else set()
                self._members -= len(ids)
            return sum(delete(entry_id) for entry_id in ids)

    def clear(self, clear_entries: Callable[[], None]) -> None:
        """Runs ``clear_entries()`` and empties the index, under the index's lock, so that a
        store between the two steps cannot lose its tags."""
        with self._lock:
            clear_entries()
            self._tags = {}
            self._baseline = 0
