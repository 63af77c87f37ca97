from __future__ import annotations

import asyncio

import numpy as np
import pytest

import bsc_backends
from bsc_backends import Embedder, normalize


class HashEmbedder:
    """A minimal conforming embedder: deterministic vectors from the text's bytes."""

    embedding_dim = 16
    model_name = "hash-16"

    def embed_text(self, text: str) -> np.ndarray:
        return self.embed_texts([text])[0]

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        rows = [np.frombuffer(t.encode().ljust(16, b"\0")[:16], dtype=np.uint8).astype(np.float64) + 1 for t in texts]
        return normalize(np.stack(rows))

    async def aembed_text(self, text: str) -> np.ndarray:
        return self.embed_text(text)

    async def aembed_texts(self, texts: list[str]) -> np.ndarray:
        return self.embed_texts(texts)


class Incomplete:
    embedding_dim = 16

    def embed_text(self, text: str) -> np.ndarray:
        return np.zeros(16, dtype=np.float32)


def test_protocol_accepts_a_full_embedder_and_rejects_a_partial_one():
    assert isinstance(HashEmbedder(), Embedder)
    assert not isinstance(Incomplete(), Embedder)


def test_conforming_embedder_contract():
    embedder = HashEmbedder()
    one = embedder.embed_text("hello")
    many = embedder.embed_texts(["hello", "world"])
    assert one.dtype == np.float32 and one.shape == (16,)
    assert many.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_array_equal(asyncio.run(embedder.aembed_text("hello")), one)


def test_normalize_huge_and_tiny_values():
    np.testing.assert_allclose(normalize(np.full(4, 1e200)), 0.5, rtol=1e-6)
    np.testing.assert_allclose(normalize(np.full(4, 1e-200)), 0.5, rtol=1e-6)


def test_normalize():
    out = normalize([3.0, 4.0])
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(normalize(np.ones((3, 5))), axis=1), 1.0, rtol=1e-6)


@pytest.mark.parametrize(
    ("value", "message"),
    [([0.0, 0.0], "all zeros"), ([np.nan, 1.0], "NaN"), ([[[1.0]]], "shape"), ([], "shape")],
)
def test_normalize_rejects(value, message):
    with pytest.raises(ValueError, match=message):
        normalize(value)


def test_version():
    assert bsc_backends.__version__ == "0.1.0"
