"""The boundaries of the facade: one error root, the engine interface, the public preparation
of a lookup, and the original system's ``storage_mode`` argument."""

from __future__ import annotations

import asyncio
import warnings
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

import bsc
import bsc.embeddings
import bsc_backends
from bsc import BinaryEncoder, BinarySemanticCache, BscError, SemanticCache
from bsc import engine as engines
from bsc.errors import EmbeddingFailedError, embedding_failed
from bsc_backends.testing import WordEmbedder


class FailingEmbedder(WordEmbedder):
    """Embeds nothing: every call raises ``error``."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def embed_texts(self, texts: list[str]) -> npt.NDArray[np.float32]:
        raise self.error

    async def aembed_text(self, text: str) -> npt.NDArray[np.float32]:
        raise self.error


BACKEND_ERRORS = [
    bsc_backends.EmbeddingError("down"),
    bsc_backends.BackendUnavailableError("cannot connect to 127.0.0.1:9"),
    bsc_backends.ModelNotFoundError("no model 'x'"),
    bsc_backends.ModelCannotEmbedError("'x' does not embed"),
    bsc_backends.InvalidEmbeddingError("NaN in the vector"),
    bsc_backends.RateLimitError("429 after 3 retries"),
]


@pytest.mark.parametrize("error", BACKEND_ERRORS, ids=lambda e: type(e).__name__)
@pytest.mark.parametrize("call", ["lookup", "lookup_many", "store", "store_many", "alookup", "astore"])
def test_an_embedding_failure_is_a_bsc_error_and_still_the_backends_class(error: Exception, call: str) -> None:
    cache = SemanticCache(FailingEmbedder(error))
    calls: dict[str, Any] = {
        "lookup": lambda: cache.lookup("a question"),
        "lookup_many": lambda: cache.lookup_many(["a question"]),
        "store": lambda: cache.store("a question", "an answer"),
        "store_many": lambda: cache.store_many(["a question"], ["an answer"]),
        "alookup": lambda: asyncio.run(cache.alookup("a question")),
        "astore": lambda: asyncio.run(cache.astore("a question", "an answer")),
    }
    with pytest.raises(BscError) as caught:
        calls[call]()
    raised = caught.value
    assert isinstance(raised, EmbeddingFailedError) and isinstance(raised, bsc.EmbeddingFailedError)
    assert isinstance(raised, type(error))  # `except RateLimitError` still catches it
    assert isinstance(raised, bsc.embeddings.EmbeddingError)
    assert raised.__cause__ is error and str(raised) == str(error)
    assert len(cache) == 0


def test_a_backends_own_subclass_maps_to_the_nearest_mirror() -> None:
    class Mine(bsc_backends.RateLimitError):
        def __init__(self, message: str, retry_after: float) -> None:
            super().__init__(message)
            self.retry_after = retry_after

    mapped = embedding_failed(Mine("slow down", 2.5))
    assert isinstance(mapped, bsc.errors.RateLimitError) and isinstance(mapped, BscError)
    assert isinstance(mapped, Mine)  # `except Mine` still catches it
    assert str(mapped) == "slow down" and mapped.retry_after == 2.5
    assert type(embedding_failed(Mine("again", 1.0))) is type(mapped)  # one derived class per class
    assert type(embedding_failed(bsc_backends.RateLimitError("429"))) is bsc.errors.RateLimitError
    already = EmbeddingFailedError("x")
    assert embedding_failed(already) is already


def test_every_error_bsc_exports_is_a_bsc_error() -> None:
    errors = [getattr(bsc, n) for n in bsc.__all__ if n.endswith("Error")]
    errors += [getattr(bsc.errors, n) for n in bsc.errors.__all__ if n.endswith("Error")]
    assert errors and all(issubclass(e, BscError) for e in errors)


def test_the_leaf_keeps_its_own_root() -> None:
    """bsc_backends knows nothing of bsc: an embedder called directly raises its own errors."""
    embedder = FailingEmbedder(bsc_backends.RateLimitError("429"))
    with pytest.raises(bsc_backends.RateLimitError) as caught:
        embedder.embed_text("x")
    assert not isinstance(caught.value, BscError)


def test_storage_mode_memory_still_runs_and_says_it_does_nothing() -> None:
    encoder = BinaryEncoder(64, 256, 1)
    with pytest.warns(DeprecationWarning, match="storage_mode has no effect"):
        cache = BinarySemanticCache(encoder, 10, 0.8, None, "memory")
    assert len(cache) == 0 and not hasattr(cache, "storage_mode")
    with pytest.raises(ValueError, match="storage_mode must be 'memory'"):
        BinarySemanticCache(encoder, storage_mode="disk")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BinarySemanticCache(encoder)  # not given: no warning


class RecordingEngine:
    """A second implementation of the engine interface: the native one behind a wrapper that
    records every call, as a shared store would sit behind the same methods."""

    def __init__(self, inner: engines.Engine) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.inner, name)
        if callable(attribute):
            self.calls.append(name)
        return attribute

    def __len__(self) -> int:
        return len(self.inner)

    def __contains__(self, entry_id: int) -> bool:
        return entry_id in self.inner


def test_the_engine_protocol_names_what_the_native_store_has() -> None:
    members = {n for n in vars(engines.Engine) if not n.startswith("_")} | {"__len__", "__contains__"}
    store = engines.create(256, 10, "fp")
    missing = sorted(n for n in members if not hasattr(store, n))
    assert missing == []
    assert {"put", "lookup", "lookup_key", "candidates", "peek", "delete", "delete_namespace"} <= members
    assert {"purge_expired", "stats", "save", "lru_ids", "placement"} <= members


def test_a_cache_runs_on_another_engine_through_the_interface(tmp_path: Any) -> None:
    encoder = BinaryEncoder(64, 256, 1)
    engine = RecordingEngine(engines.create(256, 100, encoder.fingerprint()))
    cache = BinarySemanticCache.from_engine(engine, encoder, similarity_threshold=0.9)  # type: ignore[arg-type]
    vector = np.random.default_rng(0).standard_normal(64).astype(np.float32)
    entry = cache.put(vector, "answer", namespace="t1")
    found = cache.get(vector, namespace="t1")
    assert found is not None and found.id == entry and found.response == "answer"
    assert cache.get(vector, namespace="t2") is None
    assert cache.delete(entry) and len(cache) == 0
    cache.put(vector, "again")
    cache.save(tmp_path / "c.bsc")
    assert {"put", "lookup", "delete", "save"} <= set(engine.calls)
    reopened = BinarySemanticCache.from_engine(
        engines.open_file(tmp_path / "c.bsc", fingerprint=encoder.fingerprint()), encoder
    )
    assert reopened.get(vector) is not None
    with pytest.raises(bsc.EncoderMismatchError):
        BinarySemanticCache.from_engine(engines.create(256, 10, "another"), encoder)
    with pytest.raises(ValueError, match="128-bit codes"):
        BinarySemanticCache.from_engine(engines.create(128, 10, ""), encoder)


def test_prepare_and_lookup_prepared_are_lookup_in_two_steps() -> None:
    cache = SemanticCache(WordEmbedder())
    cache.store("the capital of France", "Paris", model="m")
    key = cache.prepare("The capital of   France", scope={"model": "m"})
    assert key is not None and key.partition.startswith("default#") and key.normalized == "The capital of France"
    exact = cache.prepare("the capital of France", scope={"model": "m"})
    hit = cache.lookup_prepared(exact)
    assert hit is not None and hit.exact and hit.response == "Paris"
    assert cache.prepare("x", scope={"temperature": 1.5}) is None  # bypasses
    assert cache.lookup_prepared(None) is None and cache.stats().bypassed == 1
    assert cache.prepare("x", scope={"prompt": "a scope value named prompt"}) is not None
    with pytest.raises(TypeError, match="ttl cannot be scope values"):
        cache.prepare("x", scope={"ttl": 3})
    hit = asyncio.run(cache.alookup_prepared(exact))
    assert hit is not None and hit.exact


def test_the_engines_dropped_lru_touches_are_in_both_stats_but_not_in_a_saved_files_report(tmp_path: Any) -> None:
    cache = SemanticCache(WordEmbedder())
    cache.store("a question", "an answer")
    assert cache.lookup("a question") is not None
    assert cache.stats().lru_touches_dropped == 0 and cache.binary.stats().lru_touches_dropped == 0
    assert "lru_touches_dropped" in cache.binary.engine.stats()
    cache.save(tmp_path / "c.bsc")
    report = bsc.semantic.describe_file(tmp_path / "c.bsc")
    assert "lru_touches_dropped" not in report and "save_errors" not in report and report["hits"] == 1


def test_store_prepared_stores_where_the_lookup_searched_whatever_the_scope_names() -> None:
    cache = SemanticCache(WordEmbedder())
    scope = {"model": "m", "namespace": "victim", "prompt": "x", "ttl": None}
    with pytest.raises(TypeError, match="ttl"):
        cache.prepare("the capital of France", namespace="mine", scope=scope)  # store() arguments stay reserved
    del scope["ttl"]
    key = cache.prepare("the capital of France", namespace="mine", scope=scope)
    assert key is not None
    entry = cache.store_prepared(key, "the capital of France", "Paris", usage=7, tags=["geo"])
    assert cache.lookup_prepared(key) is not None
    assert cache.lookup("the capital of France", namespace="victim", model="m") is None
    assert cache.binary.engine.placement(entry)[0].startswith(b"mine#")  # type: ignore[index]
    assert cache.delete_tag("geo") == 1
    with pytest.raises(ValueError, match="not the prompt this PromptKey"):
        cache.store_prepared(key, "another prompt", "x")
    with pytest.raises(TypeError, match="PromptKey"):
        cache.store_prepared(("t", "mine#", "t"), "t", "x")  # type: ignore[arg-type]
    for forged in (key._replace(partition="mine"), key._replace(partition="bad name#"), key._replace(text="x")):
        with pytest.raises(ValueError, match=r"not a partition prepare|not the prompt"):
            cache.store_prepared(forged, "the capital of France", "x")
    entry = asyncio.run(cache.astore_prepared(key, "the  capital of France ", "Paris again"))
    hit = cache.lookup_prepared(key)
    assert hit is not None and hit.id == entry and hit.response == "Paris again"


class UnreachableDimEmbedder(WordEmbedder):
    """A remote embedder that asks its server for its dimension, and cannot reach it."""

    @property
    def embedding_dim(self) -> int:
        raise bsc_backends.BackendUnavailableError("cannot reach 127.0.0.1:9 to ask the dimension")


class FailingTokenizer(WordEmbedder):
    def __init__(self) -> None:
        super().__init__(max_tokens=64)

    def token_count(self, text: str) -> int:
        raise bsc_backends.ModelNotFoundError("no tokenizer for this model")


def test_a_backend_failing_outside_the_embedding_call_is_a_bsc_error_too(tmp_path: Any) -> None:
    with pytest.raises(bsc.errors.BackendUnavailableError) as caught:
        SemanticCache(UnreachableDimEmbedder())
    assert isinstance(caught.value, BscError) and isinstance(caught.value, bsc_backends.BackendUnavailableError)
    SemanticCache(WordEmbedder()).save(tmp_path / "c.bsc")
    with pytest.raises(BscError):
        SemanticCache.load(tmp_path / "c.bsc", UnreachableDimEmbedder())
    cache = SemanticCache(FailingTokenizer())
    for call in (lambda: cache.lookup("a question"), lambda: asyncio.run(cache.alookup("a question"))):
        with pytest.raises(bsc.errors.ModelNotFoundError):
            call()
