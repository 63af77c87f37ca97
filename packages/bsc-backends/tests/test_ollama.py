"""OllamaEmbedder against a real HTTP server on 127.0.0.1 speaking Ollama's /api/embed, through httpx."""

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
    ModelCannotEmbedError,
    ModelNotFoundError,
    OllamaEmbedder,
)
from bsc_backends.ollama import parse_host
from bsc_backends.testing import word_embedding


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (None, "http://127.0.0.1:11434"),
        ("", "http://127.0.0.1:11434"),
        ("0.0.0.0", "http://0.0.0.0:11434"),
        ("example.com", "http://example.com:11434"),
        ("example.com:56789", "http://example.com:56789"),
        (":56789", "http://127.0.0.1:56789"),
        ("http://example.com", "http://example.com:80"),
        ("https://example.com", "https://example.com:443"),
        ("https://example.com:8443/ollama/", "https://example.com:8443/ollama"),
        ("[::1]:9999", "http://[::1]:9999"),
    ],
)
def test_parse_host_like_the_official_client(given, expected):
    assert parse_host(given) == expected


def test_bad_hosts():
    with pytest.raises(ValueError, match="http or https"):
        parse_host("ftp://example.com")
    with pytest.raises(ValueError, match="invalid"):
        parse_host("example.com:notaport")


def test_embeds(ollama_server, make_embedder):
    e = make_embedder()
    assert isinstance(e, Embedder)
    assert e.embedding_dim == 768 and e.model_name == "nomic-embed-text"
    v = e.embed_text("Hello Local World")
    assert v.dtype == np.float32 and v.shape == (768,)
    np.testing.assert_allclose(v, word_embedding("Hello Local World", 768), atol=1e-6)
    request = ollama_server.requests[-1]
    assert request.path == "/api/embed"
    assert request.body == {"model": "nomic-embed-text", "input": ["Hello Local World"], "truncate": True}
    assert e.get_stats()["tokens"] == 3


def test_host_from_ollama_host(ollama_server, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", f"127.0.0.1:{ollama_server.port}")
    with OllamaEmbedder() as e:
        assert e.host == ollama_server.url
        e.embed_text("hi")
    assert len(ollama_server.requests) == 1


def test_batches_and_keeps_order(ollama_server, make_embedder):
    e = make_embedder(batch_size=2, keep_alive="1m")
    texts = ["one", "two", "three", "four", "five"]
    out = e.embed_texts(texts)
    assert [r.body["input"] for r in ollama_server.requests] == [["one", "two"], ["three", "four"], ["five"]]
    assert ollama_server.requests[0].body["keep_alive"] == "1m"
    for text, row in zip(texts, out, strict=True):
        np.testing.assert_allclose(row, word_embedding(text, 768), atol=1e-6)


def test_server_down(closed_port):
    with (
        OllamaEmbedder(host=f"127.0.0.1:{closed_port}") as e,
        pytest.raises(BackendUnavailableError, match="ollama serve"),
    ):
        e.embed_text("hi")


def test_model_missing_says_how_to_pull_it(ollama_server, make_embedder):
    with pytest.raises(ModelNotFoundError, match="ollama pull mxbai-embed-large"):
        make_embedder(model_name="mxbai-embed-large").embed_text("hi")


def test_model_that_cannot_embed(ollama_server, make_embedder):
    with pytest.raises(ModelCannotEmbedError, match="does not support embeddings"):
        make_embedder(model_name="llama3.2", embedding_dim=3072).embed_text("hi")
    assert len(ollama_server.requests) == 1
    # Older servers said it with a 500: still not retried.
    ollama_server.enqueue(status=500, body={"error": '"llama2" does not support embeddings'})
    with pytest.raises(ModelCannotEmbedError):
        make_embedder().embed_text("hi")
    assert len(ollama_server.requests) == 2


def test_retries_5xx_and_429_then_succeeds(ollama_server, make_embedder):
    e = make_embedder(retry_backoff=0.01)
    ollama_server.enqueue(status=503, body={"error": "server busy, please try again"})
    ollama_server.enqueue(status=429, body={"error": "too many requests"}, headers={"retry-after": "0"})
    assert e.embed_text("hi").shape == (768,)
    assert len(ollama_server.requests) == 3 and e.get_stats()["retries"] == 2


def test_gives_up_after_max_retries(ollama_server, make_embedder):
    e = make_embedder(retry_backoff=0.01, max_retries=1)
    ollama_server.enqueue(status=500, body={"error": "llama runner process has terminated"}, times=2)
    with pytest.raises(EmbeddingError, match="HTTP 500: llama runner"):
        e.embed_text("hi")
    assert len(ollama_server.requests) == 2 and e.get_stats()["errors"] == 1


def test_timeout(ollama_server, make_embedder):
    e = make_embedder(timeout=0.2)
    ollama_server.enqueue(delay=1.0)
    with pytest.raises(BackendUnavailableError, match=r"no answer within 0\.2 s"):
        e.embed_text("hi")


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ({"body": b"not json at all"}, "malformed"),
        ({"body": {"model": "nomic-embed-text"}}, "malformed"),
        ({"body": {"embeddings": [["a", "b"]]}}, "not numeric"),
        ({"vectors": lambda vs: [v[:10] for v in vs]}, "dimension 10, expected 768"),
        ({"vectors": lambda vs: [[float("nan")] * len(v) for v in vs]}, "NaN"),
        ({"vectors": lambda vs: vs + vs}, "for 1 inputs"),
    ],
)
def test_malformed_answers(ollama_server, fault, message, make_embedder):
    e = make_embedder()
    ollama_server.enqueue(**fault)
    with pytest.raises(InvalidEmbeddingError, match=message):
        e.embed_text("hi")


def test_tagged_models_learn_their_dimension(ollama_server, make_embedder):
    ollama_server.models.add("snowflake-arctic-embed:22m")
    e = make_embedder(model_name="snowflake-arctic-embed:22m")  # 384 in reality, not 1024
    with pytest.raises(EmbeddingError, match="embedding_dim"):
        _ = e.embedding_dim
    assert make_embedder(model_name="nomic-embed-text:latest").embedding_dim == 768


def test_a_server_without_api_embed_is_not_a_missing_model(ollama_server, make_embedder):
    ollama_server.enqueue(status=404, body=b"404 page not found")
    with pytest.raises(EmbeddingError, match=r"older than Ollama 0\.3") as raised:
        make_embedder().embed_text("hi")
    assert not isinstance(raised.value, ModelNotFoundError)


@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
def test_clients_of_closed_event_loops_are_dropped(ollama_server, make_embedder):
    import gc

    e = make_embedder()
    for _ in range(4):  # a loop per call, never closed by the caller
        asyncio.run(e.aembed_text("hi"))
    assert len(e._loop_clients) == 1  # only the last loop's client is still held

    async def last():
        await e.aembed_text("hi")
        await e.aclose()

    asyncio.run(last())
    assert e._loop_clients == {}
    gc.collect()


def test_unknown_dimension_is_learnt(ollama_server, make_embedder):
    e = make_embedder(model_name="custom-embed")
    with pytest.raises(EmbeddingError, match="embedding_dim"):
        _ = e.embedding_dim
    e.embed_text("hi")
    assert e.embedding_dim == 768


def test_bad_input_sends_nothing(ollama_server, make_embedder):
    e = make_embedder()
    for bad, error in [("", ValueError), ("\n", ValueError), (None, TypeError), (["list"], TypeError)]:
        with pytest.raises(error):
            e.embed_text(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        e.embed_texts("one string")  # type: ignore[arg-type]
    assert e.embed_texts([]).shape == (0, 768)
    assert ollama_server.requests == []


def test_bad_arguments(ollama_server, make_embedder):
    for kwargs in [{"batch_size": 0}, {"max_retries": -1}, {"embedding_dim": 0}, {"model_name": ""}]:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            make_embedder(**kwargs)


def test_async_twins_across_event_loops(ollama_server, make_embedder):
    e = make_embedder(retry_backoff=0.01)
    ollama_server.enqueue(status=503, body={"error": "busy"})

    async def main():
        try:
            return await asyncio.gather(e.aembed_text("alpha"), e.aembed_texts(["beta", "gamma"]))
        finally:
            await e.aclose()

    for _ in range(2):  # a second event loop gets its own connections
        one, many = asyncio.run(main())
        np.testing.assert_allclose(one, word_embedding("alpha", 768), atol=1e-6)
        assert many.shape == (2, 768)

    async def down():
        try:
            await e.aembed_text("x")
        finally:
            await e.aclose()

    ollama_server.enqueue(status=404, body={"error": 'model "nomic-embed-text" not found, try pulling it first'})
    with pytest.raises(ModelNotFoundError):
        asyncio.run(down())


def test_missing_extra_names_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "httpx", None)
    with pytest.raises(ImportError, match=r'pip install "bsc-backends\[ollama\]"'):
        OllamaEmbedder()
