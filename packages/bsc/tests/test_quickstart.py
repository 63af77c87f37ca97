"""The seed README's Quick Start blocks, with only their import lines changed to ``bsc``.

They run against real HTTP servers on 127.0.0.1 that speak the OpenAI and Ollama wire formats
(``bsc_backends.testing``); the blocks find them the way a user's program would find a
non-default server: ``OPENAI_BASE_URL`` and ``OLLAMA_HOST``.
"""

from __future__ import annotations

import contextlib
import io

from bsc_backends.testing import FakeOllamaServer, FakeOpenAIServer

BLOCK_A = """
import os
from bsc import BinarySemanticCache, BinaryEncoder
from bsc.embeddings.openai_backend import OpenAIEmbeddingBackend

# 1. Setup Backend (Tier 1 rate limits default)
os.environ["OPENAI_API_KEY"] = "sk-..."
backend = OpenAIEmbeddingBackend(model="text-embedding-3-small")

# 2. Initialize Cache (1536 dimensions for OpenAI)
encoder = BinaryEncoder(embedding_dim=1536, code_bits=256)
cache = BinarySemanticCache(encoder=encoder, max_entries=10000)

# 3. Use
query = "What is the capital of France?"
embedding = backend.embed_text(query)

# Check Cache
if hit := cache.get(embedding):
    print(f"\u2705 HIT: {hit.response}")
else:
    # Call LLM (Simulated)
    response = "Paris"
    cache.put(embedding, response)
    print(f"\u274c MISS: Cached '{response}'")
"""

BLOCK_B = """
from bsc import BinarySemanticCache, BinaryEncoder
from bsc.embeddings import OllamaEmbedder

# 1. Setup Local Backend (Requires Ollama running with nomic-embed-text)
embedder = OllamaEmbedder(model_name="nomic-embed-text")

# 2. Initialize Cache (768 dimensions for Nomic)
encoder = BinaryEncoder(embedding_dim=768)
cache = BinarySemanticCache(encoder=encoder)

# 3. Use
vec = embedder.embed_text("Hello Local World")
cache.put(vec, "Stored Locally")
"""


def run(block: str, namespace: dict[str, object]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block, "<quickstart>", "exec"), namespace)
    return out.getvalue()


def test_block_a_misses_then_hits(monkeypatch):
    # setenv records the original state, so the block's own assignment is undone afterwards.
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    with FakeOpenAIServer(dim=1536) as server:
        monkeypatch.setenv("OPENAI_BASE_URL", server.url)
        namespace: dict[str, object] = {}
        assert run(BLOCK_A, namespace) == "\u274c MISS: Cached 'Paris'\n"
        # The block's backend called the server with the block's key and model.
        (request,) = server.requests
        assert request.headers["authorization"] == "Bearer sk-..."
        assert request.body["model"] == "text-embedding-3-small"
        # The same question embedded again by the block's backend is a hit in the block's cache.
        backend, cache = namespace["backend"], namespace["cache"]
        hit = cache.get(backend.embed_text("What is the capital of France?"))  # type: ignore[attr-defined]
        assert hit.response == "Paris" and hit.similarity == 1.0
        assert backend.get_stats()["requests"] == 2  # type: ignore[attr-defined]
        backend.close()  # type: ignore[attr-defined]


def test_block_b_stores(monkeypatch):
    with FakeOllamaServer(dim=768, models={"nomic-embed-text"}) as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url)
        namespace: dict[str, object] = {}
        run(BLOCK_B, namespace)
        (request,) = server.requests
        assert request.path == "/api/embed" and request.body["model"] == "nomic-embed-text"
        cache, vec = namespace["cache"], namespace["vec"]
        assert len(cache) == 1  # type: ignore[arg-type]
        assert cache.get(vec).response == "Stored Locally"  # type: ignore[attr-defined]
        assert cache.max_entries == 1000 and cache.similarity_threshold == 0.80  # type: ignore[attr-defined]
        namespace["embedder"].close()  # type: ignore[attr-defined]
