"""Binary codes from embeddings: sign random projection, packing and similarity helpers."""

from bsc_encoder.encoder import ALGORITHM_VERSION, MAX_CODE_BITS, MIN_CODE_BITS, BinaryEncoder
from bsc_encoder.projection import gaussian_projection
from bsc_encoder.similarity import cosine_to_hamming, hamming_distance, hamming_radius, hamming_to_cosine

__version__ = "0.1.0"

__all__ = [
    "ALGORITHM_VERSION",
    "MAX_CODE_BITS",
    "MIN_CODE_BITS",
    "BinaryEncoder",
    "__version__",
    "cosine_to_hamming",
    "gaussian_projection",
    "hamming_distance",
    "hamming_radius",
    "hamming_to_cosine",
]
