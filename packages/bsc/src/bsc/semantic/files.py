"""Saved files read without an embedder: what ``bsc stats`` and ``bsc inspect`` print."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from bsc import engine as engines
from bsc._codec import decode_response
from bsc.persist import read_meta
from bsc.semantic.metrics import Metrics, build_stats, namespace_count
from bsc.semantic.records import unpack
from bsc.semantic.selfcheck import Check
from bsc_native import CorruptFileError

__all__ = ["describe_file", "list_entries", "saved_checks"]


def describe_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What ``bsc stats PATH`` prints: the counters and settings of a saved cache, read without
    an embedder (nothing is embedded, responses are not read)."""
    file = Path(os.fspath(path))
    store = engines.open_file(file)
    meta = read_meta(file, store.meta)
    raw = store.stats()
    report: dict[str, Any] = {"file": str(file), "file_bytes": file.stat().st_size}
    semantic = meta.get("semantic")
    encoder = meta.get("encoder") or {}
    common = {
        "bsc_version": meta.get("bsc_version"),
        "similarity_threshold": meta.get("similarity_threshold"),
        "default_ttl": meta.get("default_ttl"),
        "code_bits": store.code_bits,
        "embedding_dim": encoder.get("embedding_dim"),
    }
    if isinstance(semantic, dict):
        try:
            metrics = Metrics(semantic.get("metrics")).snapshot()
        except ValueError as err:
            raise CorruptFileError(f"{file}: its SemanticCache metrics are malformed: {err}") from None
        stats = build_stats(raw, metrics, namespace_count(store.namespaces())).as_dict()
        # Counts of the process that saved, not kept in the file.
        del stats["save_errors"], stats["lru_touches_dropped"]
        report.update(
            kind="SemanticCache",
            embedder=semantic.get("embedder"),
            **common,
            rescore=bool(semantic.get("rescore", False)),
            content_gate=semantic.get("content_gate"),
            **stats,
        )
        checking = semantic.get("self_check")
        if isinstance(checking, dict):
            report["self_check_target"] = (checking.get("settings") or {}).get("target_wrong_rate")
            report["learned_thresholds"] = checking.get("thresholds") or {}
    else:
        lookups = raw["hits"] + raw["misses"]
        report.update(
            kind="BinarySemanticCache",
            **common,
            size=raw["size"],
            max_size=raw["max_entries"],
            lookups=lookups,
            hits=raw["hits"],
            misses=raw["misses"],
            hit_rate=raw["hits"] / lookups if lookups else 0.0,
            evictions=raw["evictions"],
            expirations=raw["expirations"],
            namespaces=raw["namespaces"],
            memory_bytes=raw["memory_bytes"],
            response_bytes=raw["response_bytes"],
        )
    return report


def list_entries(
    path: str | os.PathLike[str], *, namespace: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    """The entries of a saved cache, most recently used first (what ``bsc inspect`` prints):
    id, namespace, times, uses, expiry, the stored prompt (``None`` for a BinarySemanticCache
    entry) and the response. Read without an embedder."""
    file = Path(os.fspath(path))
    store = engines.open_file(file)
    semantic = isinstance(read_meta(file, store.meta).get("semantic"), dict)
    out: list[dict[str, Any]] = []
    for entry_id in store.lru_ids().tolist():
        if limit is not None and len(out) >= limit:
            break
        found, placement = store.peek(entry_id), store.placement(entry_id)
        if found is None or placement is None:
            continue
        partition = placement[0].decode("utf-8", "replace")
        name = partition.split("#", 1)[0] if semantic else partition
        if namespace is not None and name != namespace:
            continue
        _, _, payload, created_at, last_accessed, access_count = found
        record = unpack(payload) if semantic else None
        response = decode_response(record.response if record else payload)
        out.append(
            {
                "id": entry_id,
                "namespace": name,
                "created_at": created_at,
                "last_accessed": last_accessed,
                "access_count": access_count,
                "expires_at": placement[1],
                "prompt": record.prompt if record else None,
                "tags": list(record.tags) if record else [],
                "response": response
                if isinstance(response, (str, int, float, bool, dict, list)) or response is None
                else repr(response),
            }
        )
    return out


def saved_checks(path: str | os.PathLike[str]) -> list[Check]:
    """The self-check's labelled pairs kept in a saved ``SemanticCache`` file (``bsc checks``),
    read without an embedder; ``[]`` when it checked nothing."""
    file = Path(os.fspath(path))
    store = engines.open_file(file)
    semantic = read_meta(file, store.meta).get("semantic")
    checking = semantic.get("self_check") if isinstance(semantic, dict) else None
    if not isinstance(checking, dict):
        return []
    try:
        return [Check(*row) for row in checking.get("checks", [])]
    except TypeError as err:
        raise CorruptFileError(f"{file}: its self-check labels are malformed: {err}") from None
