"""``from bsc.embeddings.ollama import OllamaEmbedder``."""

from bsc_backends.ollama import OllamaEmbedder

__all__ = ["OllamaEmbedder"]
