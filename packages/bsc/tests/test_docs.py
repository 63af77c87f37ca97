"""The Python examples in the READMEs run as written."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from bsc.embeddings import OllamaEmbedder, OpenAIEmbeddingBackend
from bsc.testing import FakeChatUpstream, ServerThread
from bsc_backends.testing import FakeOllamaServer, FakeOpenAIServer

ROOT = Path(__file__).resolve().parents[3]
READMES = [ROOT / "README.md", *sorted((ROOT / "packages").glob("*/README.md"))]
BLOCKS = [
    pytest.param(block, id=f"{path.relative_to(ROOT)}#{i}")
    for path in READMES
    for i, block in enumerate(re.findall(r"```python\n(.*?)```", path.read_text(), re.S))
]


def test_readmes_have_examples():
    assert len(BLOCKS) >= 4


@pytest.fixture(scope="module")
def servers():
    with (
        FakeOpenAIServer(dim=1536) as openai_server,
        FakeOllamaServer(dim=768) as ollama_server,
        ServerThread(FakeChatUpstream().app) as chat_server,
    ):
        yield openai_server, ollama_server, chat_server


@pytest.mark.parametrize("block", BLOCKS)
def test_readme_example_runs(block, servers, monkeypatch, tmp_path, request):
    # Examples that use OpenAI or Ollama reach loopback servers speaking those APIs, found the way
    # a user's program finds a non-default server.
    openai_server, ollama_server, chat_server = servers
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    # Chat examples reach a loopback chat-completions API, embedding examples an embeddings one.
    chat = "chat.completions" in block
    monkeypatch.setenv("OPENAI_BASE_URL", chat_server.url + "/v1" if chat else openai_server.url)
    monkeypatch.setenv("OLLAMA_HOST", ollama_server.url)
    if "REDIS_URL" in block:  # the shared-cache example: the session's real Redis
        monkeypatch.setenv("REDIS_URL", request.getfixturevalue("redis_server").url)
    monkeypatch.chdir(tmp_path)  # examples that save a file write it here
    namespace: dict[str, object] = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(block, "<readme>", "exec"), namespace)
    for value in namespace.values():  # the examples leave HTTP clients open; close them here
        if isinstance(value, (OpenAIEmbeddingBackend, OllamaEmbedder)):
            value.close()
