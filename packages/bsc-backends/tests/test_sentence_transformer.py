"""SentenceTransformerEmbedder. sentence-transformers needs torch, which the test environments do
not install; a stand-in module with the same ``SentenceTransformer`` surface takes its place."""

from __future__ import annotations

import asyncio
import sys
import types

import numpy as np
import pytest

from bsc_backends import Embedder, InvalidEmbeddingError, SentenceTransformerEmbedder
from bsc_backends.testing import word_embedding


class StandIn:
    def __init__(self, name: str, **kwargs) -> None:
        self.name, self.kwargs, self.calls = name, kwargs, []

    def get_sentence_embedding_dimension(self) -> int:
        return 32

    def encode(self, texts, **kwargs):
        self.calls.append(kwargs)
        if texts == ["nan please"]:
            return np.full((1, 32), np.nan, dtype=np.float32)
        return np.stack([word_embedding(t, 32) * 3 for t in texts])  # not normalised: the wrapper does it


@pytest.fixture
def fake_library(monkeypatch):
    module = types.ModuleType("sentence_transformers")
    module.SentenceTransformer = StandIn  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "sentence_transformers", module)


def test_wraps_a_model_by_name(fake_library):
    e = SentenceTransformerEmbedder("some/model", device="cpu", batch_size=8)
    assert isinstance(e, Embedder) and e.embedding_dim == 32 and e.model_name == "some/model"
    assert e._model.kwargs == {"device": "cpu"}
    out = e.embed_texts(["a b", "c"])
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(out[0], word_embedding("a b", 32), atol=1e-6)
    assert e._model.calls[-1]["batch_size"] == 8 and e._model.calls[-1]["normalize_embeddings"] is True
    assert asyncio.run(e.aembed_text("a b")).shape == (32,)
    with pytest.raises(InvalidEmbeddingError, match="NaN"):
        e.embed_text("nan please")
    with pytest.raises(ValueError, match="empty"):
        e.embed_text("")


def test_wraps_a_ready_model_with_its_name():
    e = SentenceTransformerEmbedder(StandIn("x"), name="my/model")
    assert e.embed_text("hello").shape == (32,) and e.model_name == "my/model"
    with pytest.raises(ValueError, match="name="):
        SentenceTransformerEmbedder(StandIn("x"))


def test_missing_library_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError, match=r'pip install "bsc-backends\[sentence-transformers\]"'):
        SentenceTransformerEmbedder()
