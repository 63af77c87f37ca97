"""OpenAIEmbeddingBackend against a real HTTP server on 127.0.0.1 speaking the OpenAI wire format,
called through the real ``openai`` SDK."""

from __future__ import annotations

import asyncio
import sys

import numpy as np
import pytest

from bsc_backends import (
    BackendUnavailableError,
    Embedder,
    EmbeddingError,
    InvalidEmbeddingError,
    ModelNotFoundError,
    OpenAIEmbeddingBackend,
    RateLimitError,
)
from bsc_backends.openai_backend import MAX_INPUT_BYTES
from bsc_backends.testing import word_embedding

FAST = {"retry-after-ms": "5"}  # the SDK honours this header; keeps retry tests quick


def test_embeds_with_the_sdk(openai_server, make_backend):
    b = make_backend()
    assert isinstance(b, Embedder)
    assert b.embedding_dim == 1536 and b.model_name == "text-embedding-3-small"
    v = b.embed_text("What is the capital of France?")
    assert v.dtype == np.float32 and v.shape == (1536,)
    np.testing.assert_allclose(v, word_embedding("What is the capital of France?", 1536), atol=1e-6)
    request = openai_server.requests[-1]
    assert request.path == "/v1/embeddings" and request.headers["authorization"] == "Bearer sk-test"
    assert request.body["model"] == "text-embedding-3-small"


def test_honours_openai_base_url_and_key_from_the_environment(openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", openai_server.url)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    with OpenAIEmbeddingBackend() as b:
        b.embed_text("hello")
    assert openai_server.requests[-1].headers["authorization"] == "Bearer sk-from-env"


def test_batches_long_lists_within_the_api_limit_and_keeps_order(openai_server, make_backend):
    b = make_backend(model="text-embedding-3-large", dimensions=64)
    texts = [f"text number {i}" for i in range(4500)]
    out = b.embed_texts(texts)
    assert out.shape == (4500, 64)
    sizes = [len(r.body["input"]) for r in openai_server.requests]
    assert sizes == [2048, 2048, 404]
    for i in (0, 2047, 2048, 4499):
        np.testing.assert_allclose(out[i], word_embedding(texts[i], 64), atol=1e-6)
    stats = b.get_stats()
    assert stats["requests"] == 3 and stats["texts"] == 4500


def test_batches_by_bytes_and_truncates_long_inputs(openai_server, make_backend):
    b = make_backend()
    long = "word " * 10_000  # 50,000 bytes: cut to MAX_INPUT_BYTES
    b.embed_texts([long] * 40)
    bodies = [r.body["input"] for r in openai_server.requests]
    assert all(len(t.encode()) <= MAX_INPUT_BYTES for body in bodies for t in body)
    # At most 300,000 UTF-8 bytes per request: a token is at least a byte, so never over the API's
    # 300,000 tokens per request.
    assert [len(body) for body in bodies] == [12, 12, 12, 4]


def test_an_input_the_api_calls_too_long_is_cut_to_the_hard_bound_and_sent_again(openai_server, make_backend):
    b = make_backend()
    dense = "1 " * 10_000  # 20,000 bytes, under the first cut, but 10,000 tokens in this fake
    out = b.embed_texts(["short question", dense])
    assert out.shape == (2, 1536)
    first, second = (r.body["input"] for r in openai_server.requests)
    assert first[1] == dense and len(second[1].encode()) <= 8191 and second[0] == "short question"
    np.testing.assert_allclose(out[1], word_embedding(second[1], 1536), atol=1e-6)


def test_the_rate_limit_budget_delays_requests(openai_server, make_backend):
    b = make_backend(requests_per_minute=600, tokens_per_minute=None)
    for _ in range(600):  # spend the minute's budget
        b.limiter.acquire()
    b.embed_text("hello")  # the next request waits for 1/10 s of budget
    assert b.get_stats()["rate_limit_wait_seconds"] >= 0.09


def test_a_given_client_serves_sync_and_async_calls(openai_server, monkeypatch):
    import openai

    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with openai.OpenAI(base_url=openai_server.url, api_key="sk-mine", max_retries=0) as client:
        b = OpenAIEmbeddingBackend(client=client)
        b.embed_text("sync")

        async def main():
            try:
                return await b.aembed_text("async")
            finally:
                await b.aclose()

        asyncio.run(main())
        b.close()  # the caller's client stays open
        client.embeddings.create(model="text-embedding-3-small", input=["still open"])
    assert [r.headers["authorization"] for r in openai_server.requests] == ["Bearer sk-mine"] * 3


def test_no_api_key_is_an_embedding_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(EmbeddingError, match="api_key"):
        OpenAIEmbeddingBackend()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([{"index": 0, "embedding": [0.5, 0.5]}, {"index": 0, "embedding": [0.5, 0.5]}], "indices"),
        ([{"index": 0, "embedding": [0.5, 0.5]}, {"index": 5, "embedding": [0.5, 0.5]}], "indices"),
        ([{"index": 0, "embedding": ["1", "0"]}, {"index": 1, "embedding": ["0", "1"]}], "not numeric"),
        ([{"index": 0, "embedding": [0.5, None]}, {"index": 1, "embedding": [0.5, 0.5]}], "not numeric"),
    ],
)
def test_answers_with_bad_indices_or_non_numbers_are_refused(openai_server, data, message, make_backend):
    b = make_backend(model="custom")
    body = {"object": "list", "model": "custom", "usage": {"prompt_tokens": 4, "total_tokens": 4},
            "data": [{"object": "embedding", **item} for item in data]}  # fmt: skip
    openai_server.enqueue(body=body)
    with pytest.raises(InvalidEmbeddingError, match=message):
        b.embed_texts(["first text", "second text"])
    stats = b.get_stats()
    assert stats["errors"] == 1 and stats["requests"] == 0 and stats["tokens"] == 4


def test_smaller_batches_on_request(openai_server, make_backend):
    make_backend(max_batch_size=2).embed_texts(["a", "b", "c"])
    assert [len(r.body["input"]) for r in openai_server.requests] == [2, 1]


def test_tracks_tokens_and_cost(openai_server, make_backend):
    b = make_backend()
    b.embed_texts(["one two three", "four five"])
    stats = b.get_stats()
    assert stats["tokens"] == 5 and stats["cost_usd"] == pytest.approx(5 * 0.02 / 1_000_000)
    b.reset_stats()
    assert b.get_stats()["tokens"] == 0
    assert make_backend(model="custom").get_stats()["cost_usd"] is None
    priced = make_backend(model="custom", price_per_million_tokens=1.0, embedding_dim=1536)
    priced.embed_text("a b")
    assert priced.get_stats()["cost_usd"] == pytest.approx(2e-6)


def test_retries_429_and_5xx_with_backoff(openai_server, make_backend):
    b = make_backend()
    openai_server.enqueue(
        status=429, body={"error": {"message": "Rate limit reached", "type": "requests"}}, headers=FAST
    )
    openai_server.enqueue(status=500, body={"error": {"message": "boom", "type": "server_error"}}, headers=FAST)
    openai_server.enqueue(status=503, body=b"upstream unavailable", headers=FAST)
    assert b.embed_text("hello").shape == (1536,)
    assert len(openai_server.requests) == 4
    stats = b.get_stats()
    assert stats["throttled_responses"] == 1 and stats["server_error_responses"] == 2 and stats["requests"] == 1


def test_gives_up_after_max_retries(openai_server, make_backend):
    b = make_backend(max_retries=2)
    openai_server.enqueue(status=429, body={"error": {"message": "Rate limit reached"}}, headers=FAST, times=3)
    with pytest.raises(RateLimitError, match="429"):
        b.embed_text("hello")
    assert len(openai_server.requests) == 3
    openai_server.enqueue(status=500, body={"error": {"message": "boom"}}, headers=FAST, times=3)
    with pytest.raises(EmbeddingError, match="HTTP 500"):
        b.embed_text("hello")
    assert b.get_stats()["errors"] == 2


def test_timeout_is_backend_unavailable(openai_server, make_backend):
    b = make_backend(timeout=0.2, max_retries=0)
    openai_server.enqueue(delay=1.0)
    with pytest.raises(BackendUnavailableError, match="timed out"):
        b.embed_text("hello")


def test_server_down_is_backend_unavailable(closed_port):
    url = f"http://127.0.0.1:{closed_port}/v1"
    with (
        OpenAIEmbeddingBackend(base_url=url, api_key="k", max_retries=0) as b,
        pytest.raises(BackendUnavailableError, match="cannot connect"),
    ):
        b.embed_text("hello")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"body": b"<html>not json</html>"}, "malformed|not numeric|embeddings"),
        ({"body": {"object": "list", "data": "nope"}}, "malformed|embeddings"),
        ({"vectors": lambda vs: [v[:100] for v in vs]}, "dimension 100, expected 1536"),
        ({"vectors": lambda vs: [[float("nan")] * len(v) for v in vs]}, "NaN"),
        ({"vectors": lambda vs: [[0.0] * len(v) for v in vs]}, "zeros"),
        ({"vectors": lambda vs: vs[:-1]}, "for 2 inputs"),
    ],
)
def test_malformed_answers_are_invalid_embeddings(openai_server, fault, message, make_backend):
    b = make_backend()
    openai_server.enqueue(**fault)
    with pytest.raises(InvalidEmbeddingError, match=message):
        b.embed_texts(["first text", "second text"])


def test_unknown_model_and_bad_key(openai_server, make_backend):
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        make_backend(model="no-such-model", embedding_dim=8).embed_text("hello")
    openai_server.enqueue(status=401, body={"error": {"message": "Incorrect API key provided"}})
    with pytest.raises(EmbeddingError, match="OPENAI_API_KEY"):
        make_backend().embed_text("hello")


def test_dimensions_and_unknown_models(openai_server, make_backend):
    short = make_backend(model="text-embedding-3-large", dimensions=256)
    assert short.embedding_dim == 256 and short.model_name == "text-embedding-3-large@256"
    assert short.embed_text("hello").shape == (256,)
    assert openai_server.requests[-1].body["dimensions"] == 256
    unknown = make_backend(model="custom")
    with pytest.raises(EmbeddingError, match="embedding_dim"):
        _ = unknown.embedding_dim
    unknown.embed_text("hello")
    assert unknown.embedding_dim == 1536


def test_bad_input_sends_nothing(openai_server, make_backend):
    b = make_backend()
    for bad, error in [("", ValueError), (" ", ValueError), (None, TypeError), (42, TypeError)]:
        with pytest.raises(error):
            b.embed_text(bad)  # type: ignore[arg-type]
    assert b.embed_texts([]).shape == (0, 1536)
    assert openai_server.requests == []


def test_bad_arguments(openai_server, make_backend):
    for kwargs in [
        {"max_batch_size": 0},
        {"max_batch_size": 4096},
        {"dimensions": 0},
        {"max_retries": -1},
        {"requests_per_minute": 0},
        {"model": ""},
    ]:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            make_backend(**kwargs)


def test_async_twins(openai_server, make_backend):
    b = make_backend()
    openai_server.enqueue(status=429, body={"error": {"message": "slow down"}}, headers=FAST)

    async def main():
        try:
            return await asyncio.gather(b.aembed_text("alpha beta"), b.aembed_texts(["gamma", "delta epsilon"]))
        finally:
            await b.aclose()

    one, many = asyncio.run(main())
    np.testing.assert_allclose(one, word_embedding("alpha beta", 1536), atol=1e-6)
    assert many.shape == (2, 1536)
    stats = b.get_stats()
    assert stats["requests"] == 2 and stats["throttled_responses"] == 1


def test_async_errors_are_mapped(openai_server, make_backend):
    b = make_backend(max_retries=0)
    openai_server.enqueue(body=b"garbage")

    async def main():
        try:
            await b.aembed_text("hello")
        finally:
            await b.aclose()

    with pytest.raises(InvalidEmbeddingError):
        asyncio.run(main())


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "openai", None)
    with pytest.raises(ImportError, match=r'pip install "bsc-backends\[openai\]"'):
        OpenAIEmbeddingBackend(api_key="k")
