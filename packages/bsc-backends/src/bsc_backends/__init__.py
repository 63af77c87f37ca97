"""Embedding backends for bsc.

This release holds the :class:`Embedder` protocol that every backend implements and the
``normalize`` helper they share; the OpenAI, Ollama and local offline backends come next.
"""

from bsc_backends.protocol import Embedder, normalize

__version__ = "0.1.0"

__all__ = ["Embedder", "__version__", "normalize"]
