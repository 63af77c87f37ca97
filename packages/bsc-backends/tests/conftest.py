from __future__ import annotations

from collections.abc import Iterator

import pytest

from bsc_backends.testing import FakeOllamaServer, FakeOpenAIServer


@pytest.fixture
def openai_server() -> Iterator[FakeOpenAIServer]:
    with FakeOpenAIServer(dim=1536, models={"text-embedding-3-small", "text-embedding-3-large", "custom"}) as server:
        yield server


@pytest.fixture
def ollama_server() -> Iterator[FakeOllamaServer]:
    with FakeOllamaServer(dim=768, models={"nomic-embed-text", "custom-embed"}, chat_models={"llama3.2"}) as server:
        yield server


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def make_backend(openai_server):
    """Builds ``OpenAIEmbeddingBackend`` objects aimed at ``openai_server`` and closes them afterwards."""
    from bsc_backends import OpenAIEmbeddingBackend

    made: list[OpenAIEmbeddingBackend] = []

    def make(**kwargs):
        kwargs.setdefault("api_key", "sk-test")
        made.append(OpenAIEmbeddingBackend(base_url=openai_server.url, **kwargs))
        return made[-1]

    yield make
    for backend in made:
        backend.close()


@pytest.fixture
def make_embedder(ollama_server):
    """Builds ``OllamaEmbedder`` objects aimed at ``ollama_server`` and closes them afterwards."""
    from bsc_backends import OllamaEmbedder

    made: list[OllamaEmbedder] = []

    def make(**kwargs):
        made.append(OllamaEmbedder(host=ollama_server.url, **kwargs))
        return made[-1]

    yield make
    for embedder in made:
        embedder.close()
