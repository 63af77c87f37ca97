"""Storing: a store's checks, and its record written to the engine."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from bsc._codec import encode_response
from bsc.semantic.invalidation import TagIndex
from bsc.semantic.keys import PromptKey, check_entry_ttl, check_tags, entry_key
from bsc.semantic.ranking import Options
from bsc.semantic.records import check_cost, pack, quantize, tokens_of

if TYPE_CHECKING:
    from bsc.cache import BinarySemanticCache

logger = logging.getLogger("bsc")

__all__ = ["Item", "Writer"]

#: A checked store: the prompt's key, the record packer (given the int8 embedding or nothing),
#: ttl, tags.
Item = tuple[PromptKey, Callable[..., bytes], "float | None", tuple[str, ...]]


class Writer:
    """Writes records through ``binary``'s engine, noting their tags in ``tags``."""

    def __init__(self, binary: BinarySemanticCache, options: Options, tags: TagIndex) -> None:
        self._binary = binary
        self._engine = binary.engine
        self._options = options
        self._tags = tags

    def check(
        self, prepared: PromptKey | None, prompt: Any, response: Any, ttl: Any, tags: Any, usage: Any, cost: Any
    ) -> Item | None:
        """Every check of a store after its prompt's (``prepared``: ``None`` bypasses), before
        anything is embedded or stored."""
        checked_ttl = check_entry_ttl(ttl)
        checked_tags = check_tags(tags)
        tokens, price = tokens_of(usage), check_cost(cost)
        payload = encode_response(response)  # TypeError for what cannot be stored
        if prepared is None:
            return None
        # The prompt as given; the embedding's int8 copy is added by put.
        record = functools.partial(pack, prompt, checked_tags, tokens, price, payload)
        return prepared, record, checked_ttl, checked_tags

    def put(self, item: Item, embedding: Any) -> int:
        """Stores a checked item with its embedding (``None``: longer than the embedder's window)."""
        (_, partition, normalized), record_of, ttl, tags = item
        if embedding is None:
            # Longer than the embedder's window: kept apart, answered by the exact path only.
            partition += "!"
            embedding = np.zeros(self._binary.encoder.embedding_dim, dtype=np.float32)
            embedding[0] = 1.0
            record = record_of()
        else:
            record = record_of(quantize(embedding)) if self._options.rescore else record_of()
        code = self._binary.encode(embedding)
        if ttl is None:
            ttl = self._binary.default_ttl
        entry_id = int(
            self._engine.put(code, record, namespace=partition, ttl=ttl, key=entry_key(partition, normalized))
        )
        if tags:
            self._tags.note(entry_id, tags)
        self._binary.notify_changed(put=True)
        logger.debug("bsc: stored entry %d in %s", entry_id, partition)
        return entry_id
