"""Embedding backends, re-exported from ``bsc_backends``."""

from bsc_backends import Embedder, normalize

__all__ = ["Embedder", "normalize"]
