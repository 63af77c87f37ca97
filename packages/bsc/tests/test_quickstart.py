"""The seed README's Quick Start blocks, with only their import lines changed to ``bsc``.

The embedding backends arrive with their own issue; until then the backend classes the blocks
name are deterministic stand-ins injected into the block's namespace.
"""

from __future__ import annotations

import contextlib
import io

BLOCK_A = """
import os
from bsc import BinarySemanticCache, BinaryEncoder

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
    print(f"HIT: {hit.response}")
else:
    # Call LLM (Simulated)
    response = "Paris"
    cache.put(embedding, response)
    print(f"MISS: Cached '{response}'")
"""

BLOCK_B = """
from bsc import BinarySemanticCache, BinaryEncoder

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


def test_block_a_misses_then_hits(monkeypatch, fake_backend):
    # setenv records the original state, so the block's own assignment is undone afterwards.
    monkeypatch.setenv("OPENAI_API_KEY", "placeholder")
    namespace: dict[str, object] = {"OpenAIEmbeddingBackend": lambda model: fake_backend(1536)}
    assert run(BLOCK_A, namespace) == "MISS: Cached 'Paris'\n"
    # Running the lookup again against the same cache is a hit.
    cache, embedding = namespace["cache"], namespace["embedding"]
    hit = cache.get(embedding)  # type: ignore[attr-defined]
    assert hit.response == "Paris" and hit.similarity == 1.0


def test_block_b_stores(fake_backend):
    namespace: dict[str, object] = {"OllamaEmbedder": lambda model_name: fake_backend(768)}
    run(BLOCK_B, namespace)
    cache, vec = namespace["cache"], namespace["vec"]
    assert len(cache) == 1  # type: ignore[arg-type]
    assert cache.get(vec).response == "Stored Locally"  # type: ignore[attr-defined]
    assert cache.max_entries == 1000 and cache.similarity_threshold == 0.80  # type: ignore[attr-defined]
