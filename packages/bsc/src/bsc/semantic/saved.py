"""The settings a ``SemanticCache`` saves with its entries, and their checks when it opens a file."""

from __future__ import annotations

import os
from typing import Any

from bsc.cache import BinarySemanticCache
from bsc.gate import gate_arg
from bsc.semantic.embedding import embedder_dim
from bsc.semantic.ranking import Options
from bsc_backends import Embedder
from bsc_native import CorruptFileError, EncoderMismatchError, NotACacheFileError

__all__ = ["open_saved", "saved_settings", "settings_meta"]

META_VERSION = 1


def saved_settings(cache: BinarySemanticCache, embedder: Embedder) -> dict[str, Any]:
    """The ``SemanticCache`` settings of the file ``cache`` was opened from (``{}`` for a new
    cache), checked: the file holds SemanticCache records, embedded by ``embedder``'s model."""
    file_meta = cache.file_meta
    saved = file_meta.get("semantic")
    if file_meta and saved is None and len(cache):
        raise NotACacheFileError(
            "the file holds a BinarySemanticCache (embedding-level entries): open it with "
            "BinarySemanticCache.load, or use another path"
        )
    if saved is not None and not isinstance(saved, dict):
        raise CorruptFileError("the file's SemanticCache settings are not a JSON object")
    saved = saved or {}
    model = saved.get("embedder")
    if model is not None and model != embedder.model_name:
        raise EncoderMismatchError(
            f"the file's entries were embedded by {model!r}, this cache's embedder is {embedder.model_name!r}: "
            "their embeddings are not comparable"
        )
    return saved


def open_saved(
    path: str | os.PathLike[str],
    embedder: Embedder,
    max_entries: int | None,
    similarity_threshold: float | None,
    verify: bool,
    rescore: bool | None,
    content_gate: Any,
) -> tuple[BinarySemanticCache, Options, dict[str, Any]]:
    """The embedding-level cache of a saved ``SemanticCache``, its quality options (the file's,
    unless given) and its saved settings (see ``SemanticCache.load``)."""
    cache = BinarySemanticCache.load(
        path, max_entries=max_entries, similarity_threshold=similarity_threshold, verify=verify
    )
    if cache.encoder.embedding_dim != embedder_dim(embedder):
        raise EncoderMismatchError(
            f"{path}: its codes come from {cache.encoder.embedding_dim}-dimensional embeddings, "
            f"this embedder makes {embedder.embedding_dim}"
        )
    saved = cache.file_meta.get("semantic") or {}
    try:
        if rescore is not None and not isinstance(rescore, bool):
            raise TypeError(f"rescore must be a bool or None, got {rescore!r}")
        gate_arg(content_gate)  # TypeError for what is not a gate setting
    except TypeError:
        cache.close()
        raise
    try:
        options = Options.from_meta(saved, rescore, content_gate)
    except (TypeError, ValueError) as err:
        cache.close()
        raise CorruptFileError(f"{path}: its SemanticCache settings are malformed: {err}") from None
    return cache, options, saved


def settings_meta(
    embedder: str,
    max_temperature: float,
    near_miss_margin: float,
    max_prompt_chars: int,
    options: Options,
    metrics: dict[str, Any],
    self_check: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """What a save adds to the file's settings."""
    return {
        "semantic": {
            "version": META_VERSION,
            "embedder": embedder,
            "max_temperature": max_temperature,
            "near_miss_margin": near_miss_margin,
            "max_prompt_chars": max_prompt_chars,
            **options.as_meta(),
            "metrics": metrics,
            **({} if self_check is None else {"self_check": self_check}),
        }
    }
