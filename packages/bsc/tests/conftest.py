from __future__ import annotations

import pytest

from bsc import BinaryEncoder


@pytest.fixture
def encoder() -> BinaryEncoder:
    return BinaryEncoder(embedding_dim=64, code_bits=256, seed=42)
