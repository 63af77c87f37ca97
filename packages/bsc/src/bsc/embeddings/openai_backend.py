"""``from bsc.embeddings.openai_backend import OpenAIEmbeddingBackend``, as in the original system."""

from bsc_backends.openai_backend import OpenAIEmbeddingBackend

__all__ = ["OpenAIEmbeddingBackend"]
