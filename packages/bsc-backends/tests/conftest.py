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
