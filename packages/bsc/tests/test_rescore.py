"""SemanticCache(rescore=True) and SemanticCache(content_gate=True): the int8 copy in each
record, candidates re-scored with the exact cosine, vetoes, persistence and bad settings."""

from __future__ import annotations

import numpy as np
import pytest

from bsc import SemanticCache
from bsc.gate import ContentGate
from bsc.quality import TableEmbedder
from bsc.semantic import quantize
from bsc.semantic.records import pack as _pack
from bsc.semantic.records import unpack as _unpack
from bsc_encoder import BinaryEncoder, hamming_to_cosine
from bsc_native import CorruptFileError

DIM, BITS, SEED = 64, 256, 42
ENCODER = BinaryEncoder(DIM, BITS, SEED)


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _at_cosine(base: np.ndarray, cos: float, rng: np.random.Generator) -> np.ndarray:
    """A unit vector whose cosine with ``base`` (a unit vector) is exactly ``cos``."""
    other = rng.standard_normal(DIM)
    other -= other @ base * base
    return _unit(cos * base + np.sqrt(1 - cos * cos) * _unit(other))


def _estimate(x: np.ndarray, y: np.ndarray) -> float:
    codes = ENCODER.encode_batch(np.stack([x, y]))
    distance = int(np.unpackbits((codes[0] ^ codes[1]).view(np.uint8)).sum())
    return float(hamming_to_cosine(distance, BITS))


def _pair(exact: float, estimate_above: bool, threshold: float = 0.8) -> tuple[np.ndarray, np.ndarray]:
    """A stored and an asked vector at cosine ``exact`` whose code estimate lies on the given
    side of ``threshold`` (within 0.1 of it): the cases where codes and rescoring disagree."""
    rng = np.random.default_rng(7)
    for _ in range(20_000):
        stored = _unit(rng.standard_normal(DIM))
        asked = _at_cosine(stored, exact, rng)
        estimate = _estimate(stored, asked)
        if (estimate >= threshold) == estimate_above and abs(estimate - threshold) < 0.1:
            stored_int8 = np.frombuffer(quantize(stored), dtype=np.int8).astype(np.float32)
            rescored = float(stored_int8 @ asked / np.linalg.norm(stored_int8))
            if (rescored >= threshold) == (exact >= threshold):
                return stored, asked
    raise AssertionError("no such pair found")


def _cache(texts: list[str], vectors: list[np.ndarray], **kwargs: object) -> SemanticCache:
    embedder = TableEmbedder(texts, np.stack(vectors), "table")
    return SemanticCache(embedder, 0.8, code_bits=BITS, seed=SEED, persist_every=None, persist_interval=None, **kwargs)


def test_quantize_keeps_the_direction() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        v = rng.standard_normal(384).astype(np.float32)
        q = np.frombuffer(quantize(v), dtype=np.int8).astype(np.float64)
        assert np.abs(q).max() == 127
        assert q @ v / (np.linalg.norm(q) * np.linalg.norm(v)) > 0.999
    assert quantize(np.zeros(8)) == bytes(8)
    assert quantize(np.full(4, np.nan)) == bytes(4)


def test_rescoring_refuses_a_false_hit_of_the_codes() -> None:
    stored, asked = _pair(exact=0.74, estimate_above=True)
    texts = ["stored question", "asked question"]
    plain = _cache(texts, [stored, asked], rescore=False)
    plain.store("stored question", "A")
    assert plain.lookup("asked question") is not None  # the code estimate reaches 0.8
    rescored = _cache(texts, [stored, asked], rescore=True)
    rescored.store("stored question", "A")
    assert rescored.lookup("asked question") is None  # the exact cosine (0.74) does not
    assert rescored.stats().misses == 1


def test_rescoring_finds_a_hit_the_codes_missed() -> None:
    stored, asked = _pair(exact=0.86, estimate_above=False)
    texts = ["stored question", "asked question"]
    plain = _cache(texts, [stored, asked], rescore=False)
    plain.store("stored question", "A")
    assert plain.lookup("asked question") is None
    rescored = _cache(texts, [stored, asked], rescore=True)
    rescored.store("stored question", "A")
    hit = rescored.lookup("asked question")
    assert hit is not None and hit.response == "A" and not hit.exact
    assert hit.similarity == pytest.approx(0.86, abs=0.01)  # the exact cosine, not the code estimate
    assert rescored.stats().semantic_hits == 1
    assert hit.id in rescored and rescored.binary._store.peek(hit.id)[5] == 1  # served: marked used


def test_rescoring_serves_the_best_exact_candidate_not_the_nearest_code() -> None:
    rng = np.random.default_rng(3)
    for _ in range(5000):
        asked = _unit(rng.standard_normal(DIM))
        near_code, better = _at_cosine(asked, 0.85, rng), _at_cosine(asked, 0.95, rng)
        if _estimate(near_code, asked) > _estimate(better, asked):
            break
    else:
        raise AssertionError("no such pair found")
    texts = ["nearest by code", "best by cosine", "asked"]
    cache = _cache(texts, [near_code, better, asked], rescore=True)
    cache.store_many(texts[:2], ["code", "cosine"])
    hit = cache.lookup("asked")
    assert hit is not None and hit.response == "cosine"
    assert hit.similarity == pytest.approx(0.95, abs=0.01)


def test_records_carry_the_int8_copy_only_with_rescoring() -> None:
    rng = np.random.default_rng(1)
    v = _unit(rng.standard_normal(DIM))
    plain = _cache(["q"], [v], rescore=False)
    entry = plain.store("q", "A")
    assert _unpack(plain.binary._store.peek(entry)[2]).vector == b""
    rescored = _cache(["q"], [v], rescore=True)
    entry = rescored.store("q", "A")
    record = _unpack(rescored.binary._store.peek(entry)[2])
    assert record.vector == quantize(v) and len(record.vector) == DIM
    assert record.prompt == "q" and record.response == b"sA"
    assert rescored.lookup("q").exact  # type: ignore[union-attr]


def test_a_record_with_a_bad_vector_length_is_corrupt() -> None:
    good = _pack("q", (), 0, 0.0, b"sA", b"\x01" * 8)
    assert _unpack(good).vector == b"\x01" * 8
    bad = good.replace(b'"v":8', b'"v":99')
    with pytest.raises(CorruptFileError, match="not a SemanticCache record"):
        _unpack(bad)


def test_settings_are_saved_and_can_be_overridden(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stored, asked = _pair(exact=0.86, estimate_above=False)
    texts = ["stored question", "asked question"]
    embedder = TableEmbedder(texts, np.stack([stored, asked]), "table")
    gate = ContentGate(entities=False)
    path = tmp_path / "c.bsc"
    with SemanticCache(embedder, 0.8, code_bits=BITS, rescore=True, rescore_candidates=3, content_gate=gate) as cache:
        cache.store("stored question", "A")
        cache.save(path)
    loaded = SemanticCache.load(path, embedder)
    assert loaded.rescore and loaded.content_gate == gate and loaded._options.candidates == 3
    assert loaded.lookup("asked question") is not None  # rescored from the saved int8 copy
    plain = SemanticCache.load(path, embedder, rescore=False, content_gate=False)
    assert not plain.rescore and plain.content_gate is None
    assert plain.lookup("asked question") is None


def test_entries_stored_without_the_copy_keep_their_code_estimate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    stored, asked = _pair(exact=0.74, estimate_above=True)
    texts = ["stored question", "asked question"]
    embedder = TableEmbedder(texts, np.stack([stored, asked]), "table")
    path = tmp_path / "c.bsc"
    with SemanticCache(embedder, 0.8, code_bits=BITS, rescore=False) as cache:
        cache.store("stored question", "A")
        cache.save(path)
    loaded = SemanticCache.load(path, embedder, rescore=True)
    hit = loaded.lookup("asked question")
    assert hit is not None and hit.similarity >= 0.8  # no int8 copy: the code estimate answers


def test_the_gate_vetoes_the_nearest_and_serves_the_next() -> None:
    rng = np.random.default_rng(5)
    asked = _unit(rng.standard_normal(DIM))
    for _ in range(5000):
        a, b = _at_cosine(asked, 0.97, rng), _at_cosine(asked, 0.9, rng)
        if _estimate(a, asked) > _estimate(b, asked) >= 0.8:
            break
    texts = ["Price of gold in 2020?", "Gold price in 2021?", "Price of gold in 2021?"]
    cache = _cache(texts, [a, b, asked], content_gate=True)
    cache.store_many(texts[:2], ["2020 answer", "2021 answer"])
    hit = cache.lookup("Price of gold in 2021?")
    assert hit is not None and hit.response == "2021 answer"
    assert cache.stats().gate_vetoes == 1
    # The gate never blocks an exact hit, and with every candidate vetoed the lookup misses.
    assert cache.lookup("Price of gold in 2020?").response == "2020 answer"  # type: ignore[union-attr]
    cache.delete(hit.id)
    assert cache.lookup("Price of gold in 2021?") is None
    assert cache.stats().gate_vetoes == 2 and cache.stats().misses == 1


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"rescore": "yes"}, TypeError, "rescore must be a bool"),
        ({"rescore_candidates": 0}, ValueError, "rescore_candidates"),
        ({"rescore_candidates": 1.5}, ValueError, "rescore_candidates"),
        ({"rescore_margin": -0.1}, ValueError, "rescore_margin"),
        ({"rescore_margin": float("nan")}, ValueError, "rescore_margin"),
        ({"content_gate": "numbers"}, TypeError, "content_gate"),
    ],
)
def test_bad_settings(kwargs: dict[str, object], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        _cache(["q"], [np.ones(DIM, dtype=np.float32)], **kwargs)


def test_a_candidate_replaced_before_it_is_served_is_not_touched() -> None:
    rng = np.random.default_rng(11)
    stored = _unit(rng.standard_normal(DIM))
    asked = _at_cosine(stored, 0.97, rng)
    cache = _cache(["stored", "asked"], [stored, asked], rescore=True)
    first = cache.store("stored", "old answer")
    store = cache.binary._store
    real = store.candidates
    replaced: list[int] = []

    class Racing:
        """The store, with a writer that replaces the entry right after the candidates are read."""

        def __getattr__(self, name: str) -> object:
            return getattr(store, name)

        def candidates(self, *args: object, **kwargs: object) -> object:
            out = real(*args, **kwargs)
            replaced.append(cache.store("stored", "new answer"))
            return out

    cache.matcher._engine = Racing()  # type: ignore[assignment]
    assert cache.lookup("asked") is None  # the candidate read is gone: nothing stale is served
    assert replaced and replaced[0] != first and first not in cache
    assert store.peek(replaced[0])[5] == 0 and store.stats()["hits"] == 0  # the new entry is not touched
    cache.matcher._engine = store
    assert cache.lookup("asked").response == "new answer"  # type: ignore[union-attr]


@pytest.mark.parametrize("kwargs", [{"content_gate": True}, {"rescore": True, "near_miss_margin": 0.25}])
def test_near_misses_and_the_histogram_are_kept_with_rescoring_and_the_gate(kwargs: dict[str, object]) -> None:
    rng = np.random.default_rng(12)
    stored = _unit(rng.standard_normal(DIM))
    for _ in range(2000):
        asked = _at_cosine(stored, 0.7, rng)
        if 0.6 < _estimate(stored, asked) < 0.75:
            break
    plain = _cache(
        ["s", "a"], [stored, asked], rescore=False, near_miss_margin=kwargs.get("near_miss_margin", 0.05) or 0.05
    )
    checked = _cache(["s", "a"], [stored, asked], **kwargs)
    for cache in (plain, checked):
        cache.store("s", "A")
        assert cache.lookup("a") is None
    assert sum(checked.stats().similarity_histogram.values()) == 1
    if "rescore" in kwargs:
        assert checked.stats().near_misses == 1  # within 0.25 under the threshold
    else:
        assert checked.stats().near_misses == plain.stats().near_misses
        assert checked.stats().similarity_histogram == plain.stats().similarity_histogram
    far = _cache(["s", "z"], [stored, -stored], **kwargs)
    far.store("s", "A")
    assert far.lookup("z") is None and sum(far.stats().similarity_histogram.values()) == 1  # the nearest, far off


@pytest.mark.parametrize(
    "header",
    [
        b'{"p":"q","t":[],"u":0,"c":0,"v":2.7}',
        b'{"p":"q","t":[],"u":0,"c":0,"v":true}',
        b'{"p":"q","t":[],"u":0,"c":0,"v":Infinity}',
        b'{"p":5,"t":[],"u":0,"c":0,"v":1}',
        b'{"p":"q","t":[1],"u":0,"c":0,"v":1}',
        b'{"p":"q","t":[],"u":-1,"c":0,"v":1}',
        b'{"p":"q","t":[],"u":Infinity,"c":0,"v":1}',
        b'{"p":"q","t":[],"u":0,"c":NaN,"v":1}',
        b'{"p":"q","t":[],"u":0,"c":-2,"v":1}',
        b"[" * 100_000,
    ],
)
def test_hostile_records_are_corrupt(header: bytes) -> None:
    import struct

    payload = struct.pack("<BI", 2, len(header)) + header + b"xsyz"
    with pytest.raises(CorruptFileError, match="not a SemanticCache record"):
        _unpack(payload)


def test_load_refuses_bad_arguments_as_such(tmp_path) -> None:  # type: ignore[no-untyped-def]
    embedder = TableEmbedder(["q"], np.ones((1, DIM), dtype=np.float32), "table")
    path = tmp_path / "c.bsc"
    with SemanticCache(embedder) as cache:
        cache.store("q", "A")
        cache.save(path)
    with pytest.raises(TypeError, match="rescore must be a bool"):
        SemanticCache.load(path, embedder, rescore="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="content_gate must be a bool, a ContentGate or a Verifier"):
        SemanticCache.load(path, embedder, content_gate="all")  # type: ignore[arg-type]
