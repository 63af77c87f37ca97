"""The packaged builds of the local embedder: the dynamically quantised ONNX's digest, what it
computes next to the fp32 reference, its batch independence, and how a build is chosen."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bsc_backends import LocalEmbedder, local
from bsc_backends.local import BUILDS, DEFAULT_BUILD, DYNAMIC_MODEL_SHA256, model_file

REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text(encoding="utf-8"))
#: The reference items that are sentences of up to 256 word pieces (the last one is the long text).
ITEMS = [item for item in REFERENCE["items"] if item["tokens"] < 256]
#: Pairs of those items whose fp32 cosine int8-dynamic must reproduce within PAIR_TOLERANCE: a
#: paraphrase (0.926), a related pair (0.638), unrelated ones (0.07, -0.04).
PAIRS = [(0, 1), (4, 5), (0, 2), (2, 3)]
#: Largest |cosine(int8-dynamic) - cosine(fp32)| allowed over every pair of ITEMS; 0.032 measured
#: (on QQP test pairs: see benchmarks/results/quantized_embedder.json).
PAIR_TOLERANCE = 0.04


@pytest.fixture(scope="module")
def dynamic() -> LocalEmbedder:
    return LocalEmbedder(build="int8-dynamic", threads=1)


def test_packaged_file_has_the_pinned_digest():
    path = model_file("int8-dynamic")
    assert path.name == "minilm-int8-dynamic.onnx" and path.parent.name == "data"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == DYNAMIC_MODEL_SHA256
    assert 15e6 < path.stat().st_size < 30e6


def test_loads_and_embeds(dynamic):
    assert dynamic.build == "int8-dynamic" and dynamic.model_path == model_file("int8-dynamic")
    vector = dynamic.embed_text("How do I learn Python?")
    assert vector.shape == (384,) and vector.dtype == np.float32
    assert abs(float(np.linalg.norm(vector)) - 1) < 1e-5
    matrix = dynamic.embed_texts(["one", "two words", "three words here"])
    assert matrix.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1.0, atol=1e-5)


def test_pair_cosines_agree_with_the_fp32_reference(dynamic):
    ours = dynamic.embed_texts([item["text"] for item in ITEMS])
    reference = np.array([item["vector"] for item in ITEMS])
    reference /= np.linalg.norm(reference, axis=1, keepdims=True)
    ours_cos, reference_cos = ours @ ours.T, reference @ reference.T
    for i, j in PAIRS:
        assert abs(ours_cos[i, j] - reference_cos[i, j]) <= 0.02, (i, j, ours_cos[i, j], reference_cos[i, j])
    upper = np.triu_indices(len(ITEMS), 1)
    worst = float(np.abs(ours_cos - reference_cos)[upper].max())
    assert worst <= PAIR_TOLERANCE, worst


def test_a_vector_does_not_depend_on_its_batch(dynamic):
    # Dynamic quantisation scales activations over a whole call (padding included); each text is
    # run on its own, so embed_texts gives exactly embed_text's vectors whatever the batch holds.
    texts = ["x", "How do I learn Python?", "?!", " ".join(f"word{i}" for i in range(300)), "A longer text " * 12]
    batch = dynamic.embed_texts(texts)
    for text, row in zip(texts, batch, strict=True):
        np.testing.assert_array_equal(dynamic.embed_text(text), row)
    alone = dynamic.embed_texts(texts[1:2])
    np.testing.assert_array_equal(alone[0], batch[1])


def test_a_dynamic_model_path_is_also_run_one_text_per_call(dynamic):
    mine = LocalEmbedder(model_path=model_file("int8-dynamic"), threads=1)
    assert mine.build is None
    texts = ["x", "A longer text " * 12]
    np.testing.assert_array_equal(mine.embed_texts(texts), dynamic.embed_texts(texts))


def test_a_tampered_file_is_refused(tmp_path, monkeypatch):
    tampered = tmp_path / "minilm-int8-dynamic.onnx"
    shutil.copyfile(model_file("int8-dynamic"), tampered)
    data = bytearray(tampered.read_bytes())
    data[len(data) // 2] ^= 1
    tampered.write_bytes(bytes(data))
    monkeypatch.setattr(local, "_dynamic_model_path", lambda: tampered)
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        LocalEmbedder(build="int8-dynamic")
    with pytest.raises(RuntimeError, match="sha256 mismatch"):
        model_file("int8-dynamic")
    tampered.unlink()
    with pytest.raises(RuntimeError, match=r"missing: .* not found"):
        LocalEmbedder(build="int8-dynamic")


def test_choosing_a_build(monkeypatch):
    assert set(BUILDS) == {"int8-weights", "int8-dynamic"} and DEFAULT_BUILD in BUILDS
    monkeypatch.delenv("BSC_LOCAL_BUILD", raising=False)
    assert LocalEmbedder().build == DEFAULT_BUILD
    for build in BUILDS:
        monkeypatch.setenv("BSC_LOCAL_BUILD", build)
        assert LocalEmbedder().build == build
        assert build in repr(LocalEmbedder())
    monkeypatch.setenv("BSC_LOCAL_BUILD", "fp16")
    with pytest.raises(ValueError, match=r"\$BSC_LOCAL_BUILD must be one of"):
        LocalEmbedder()
    assert LocalEmbedder(build="int8-weights").build == "int8-weights"  # an explicit build wins
    with pytest.raises(ValueError, match="build must be one of"):
        LocalEmbedder(build="fp32")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not both"):
        LocalEmbedder(build="int8-dynamic", model_path=model_file("int8-dynamic"))
