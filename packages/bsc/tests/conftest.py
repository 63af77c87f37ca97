from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bsc import BinaryEncoder
from bsc_backends.testing import WordEmbedder


@pytest.fixture
def encoder() -> BinaryEncoder:
    return BinaryEncoder(embedding_dim=64, code_bits=256, seed=42)


@pytest.fixture
def words() -> WordEmbedder:
    return WordEmbedder()


@pytest.fixture(autouse=True)
def _close_sdk_clients(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Closes every ``openai.OpenAI`` a test made when it ends. A client left open keeps its
    pooled sockets until the garbage collector finds it, at a random point of a later test,
    where the ResourceWarning (an error under this suite's filterwarnings) fails that test."""
    try:
        import openai
    except ImportError:  # the facade's tests without the openai extra
        yield
        return
    made: list[Any] = []
    original = openai.OpenAI.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(openai.OpenAI, "__init__", init)
    yield
    for client in made:
        client.close()


def _start_redis() -> Any:
    """A real ``redis-server`` on loopback; a machine without the binary fails the test with how
    to install it (never a silent skip)."""
    from bsc.shared.testing import RedisServer

    try:
        return RedisServer()
    except RuntimeError as err:
        pytest.fail(str(err), pytrace=False)


@pytest.fixture(scope="session")
def redis_server() -> Iterator[Any]:
    """One Redis for the whole session (tests use their own key prefixes)."""
    server = _start_redis()
    yield server
    server.stop()


@pytest.fixture
def fresh_redis() -> Iterator[Any]:
    """A Redis of this test's own, which it may kill and restart."""
    server = _start_redis()
    yield server
    server.stop()


@pytest.fixture
def shared_url(redis_server: Any, request: pytest.FixtureRequest) -> str:
    """The session's Redis under a key prefix of this test's own."""
    import hashlib

    prefix = "t" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]
    return f"{redis_server.url}?prefix={prefix}"
