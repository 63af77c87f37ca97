from __future__ import annotations

import pytest

from bsc import BinaryEncoder
from bsc_backends.testing import WordEmbedder


@pytest.fixture
def encoder() -> BinaryEncoder:
    return BinaryEncoder(embedding_dim=64, code_bits=256, seed=42)


@pytest.fixture
def words() -> WordEmbedder:
    return WordEmbedder()
