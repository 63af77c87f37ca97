from __future__ import annotations

import hashlib

import numpy as np
import pytest

from bsc import BinaryEncoder


class FakeBackend:
    """Deterministic stand-in for an embedding backend: a random unit vector per text."""

    def __init__(self, dim: int) -> None:
        self.embedding_dim = dim

    def embed_text(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = np.random.default_rng(seed).standard_normal(self.embedding_dim)
        return (v / np.linalg.norm(v)).astype(np.float32)


@pytest.fixture
def encoder() -> BinaryEncoder:
    return BinaryEncoder(embedding_dim=64, code_bits=256, seed=42)


@pytest.fixture
def fake_backend() -> type[FakeBackend]:
    return FakeBackend
