"""The local offline embedder against fixed fp32 reference vectors of all-MiniLM-L6-v2.

``data/minilm_reference.json`` was computed by ``scripts/minilm_reference.py`` from the fp32
sentence-transformers weights with a float64 numpy forward pass (no torch, no onnxruntime), so
it checks the int8 model, the tokenizer settings (truncation at 256, not the 128 stored in the
tokenizer file) and the pooling together.
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest

from bsc_backends import Embedder, LocalEmbedder, default_embedder
from bsc_backends.local import BUILDS, DEFAULT_BUILD

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text(encoding="utf-8"))
#: Least and median cosine to the fp32 reference vectors that each build must reach.
#: int8-weights: ordinary sentences agree to >= 0.9995; one-token and punctuation-only inputs
#: to >= 0.996 (measured by the script's author; see docs/EMBEDDINGS.md). int8-dynamic: measured
#: 0.9808 and 0.9959 (scripts/build_quantized_model.py prints both).
AGREEMENT = {"int8-weights": (0.995, 0.999), "int8-dynamic": (0.97, 0.993)}


@pytest.fixture(scope="module", params=BUILDS)
def embedder(request) -> LocalEmbedder:
    return LocalEmbedder(build=request.param)


def test_is_an_embedder(embedder):
    assert isinstance(embedder, Embedder)
    assert embedder.embedding_dim == 384 and embedder.model_name == "all-MiniLM-L6-v2"
    assert default_embedder() is default_embedder()
    assert default_embedder().build == (os.environ.get("BSC_LOCAL_BUILD") or DEFAULT_BUILD)


def test_matches_the_fp32_reference_vectors(embedder):
    items = REFERENCE["items"]
    assert len(items) >= 20
    vectors = embedder.embed_texts([item["text"] for item in items])
    reference = np.array([item["vector"] for item in items])
    cosines = np.sum(vectors * reference, axis=1) / np.linalg.norm(reference, axis=1)
    least, median = AGREEMENT[embedder.build]
    assert cosines.min() >= least, list(zip([i["text"][:30] for i in items], cosines.round(5), strict=True))
    assert np.median(cosines) >= median
    for item in items:
        assert embedder.token_count(item["text"]) == item["tokens"], item["text"][:40]


def test_single_and_batch_agree_and_keep_order(embedder):
    texts = ["How do I learn Python?", "x", "What is the best way to learn Python?", "A much longer text " * 20]
    batch = embedder.embed_texts(texts)
    assert batch.shape == (4, 384) and batch.dtype == np.float32
    for text, row in zip(texts, batch, strict=True):
        single = embedder.embed_text(text)
        assert float(single @ row) > 0.99999
    np.testing.assert_allclose(np.linalg.norm(batch, axis=1), 1.0, atol=1e-5)


def test_paraphrases_are_closer_than_unrelated_questions(embedder):
    a, b, c = embedder.embed_texts(
        ["How do I learn Python?", "What is the best way to learn Python?", "How tall is Mount Everest?"]
    )
    assert float(a @ b) > 0.85 > 0.2 > float(a @ c)


def test_long_input_is_truncated_at_256_word_pieces(embedder):
    head = " ".join(f"word{i}" for i in range(400))
    assert embedder.token_count(head) == 256
    # Everything past the 256th word piece is ignored: two texts that differ only there agree.
    one, two = embedder.embed_texts([head + " apples", head + " a completely different ending"])
    assert float(one @ two) > 0.99999


def test_empty_and_non_str_input_is_refused(embedder):
    for bad in ["", "   \n\t"]:
        with pytest.raises(ValueError, match="empty"):
            embedder.embed_text(bad)
    with pytest.raises(TypeError, match="str"):
        embedder.embed_text(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="single string"):
        embedder.embed_texts("not a list")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"texts\[1\]"):
        embedder.embed_texts(["fine", ""])
    assert embedder.embed_texts([]).shape == (0, 384)


def test_async_twins(embedder):
    async def main() -> tuple[np.ndarray, np.ndarray]:
        return await asyncio.gather(embedder.aembed_text("hello world"), embedder.aembed_texts(["hello world"]))

    one, many = asyncio.run(main())
    assert float(one @ many[0]) > 0.99999


def test_shared_between_threads(embedder):
    texts = [f"question number {i} about the weather" for i in range(24)]
    expected = embedder.embed_texts(texts)
    results: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        results[i] = embedder.embed_text(texts[i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(texts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, row in enumerate(expected):
        assert float(results[i] @ row) > 0.99999


def test_bad_arguments():
    with pytest.raises(ValueError, match="threads"):
        LocalEmbedder(threads=0)
    with pytest.raises(ValueError, match="batch_size"):
        LocalEmbedder(batch_size=0)
    with pytest.raises(FileNotFoundError, match=r"nowhere\.onnx"):
        LocalEmbedder(model_path="/nowhere.onnx")


def test_threads_are_set(embedder):
    assert LocalEmbedder(threads=1, build=embedder.build).threads == 1
    assert 1 <= embedder.threads <= 4


def test_length_bucketed_batches_match_single_texts(embedder):
    # 70 texts from 1 to 140 words: several batches, cut by count and by padded size.
    texts = [" ".join(["token"] * (2 * i + 1)) + f" end {i}" for i in range(70)]
    texts.reverse()
    batch = embedder.embed_texts(texts)
    for text, row in zip(texts, batch, strict=True):
        assert float(embedder.embed_text(text) @ row) > 0.99999
