"""The version-stable Gaussian projection behind :class:`bsc_encoder.BinaryEncoder`.

numpy promises stable streams for its bit generators, not for ``Generator`` methods such as
``standard_normal``, whose algorithms may change between releases. So the projection is built
from raw PCG64 output with an explicit transform:

1. ``numpy.random.PCG64(seed).random_raw(m)`` gives ``m`` 64-bit words (``m`` = the entry
   count rounded up to even).
2. Each word ``w`` becomes a uniform double ``u = (w >> 11) * 2**-53`` in ``[0, 1)``.
3. Consecutive pairs ``(u1, u2)`` become two standard normals by the Box-Muller transform:
   ``r = sqrt(-2 ln(1 - u1))``, ``z1 = r cos(2 pi u2)``, ``z2 = r sin(2 pi u2)``.
4. The normals fill a ``(code_bits, dim)`` float64 matrix in row-major order.

Row ``j`` is the normal of the hyperplane that sets bit ``j`` of a code.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt


@lru_cache(maxsize=8)
def gaussian_projection(code_bits: int, dim: int, seed: int) -> npt.NDArray[np.float64]:
    """Return the read-only ``(code_bits, dim)`` projection matrix for ``seed`` (see module docs).

    The last few matrices are kept, so encoders with the same settings (a cache and the one
    it is loaded with, or several caches) share one matrix instead of each spending about 4 ms
    and ``code_bits * dim * 8`` bytes on a copy.
    """
    return _generate(code_bits, dim, seed)


def _generate(code_bits: int, dim: int, seed: int) -> npt.NDArray[np.float64]:
    count = code_bits * dim
    raw = np.random.PCG64(seed).random_raw(count + (count & 1))
    uniform = (raw >> np.uint64(11)).astype(np.float64) * (2.0**-53)
    radius = np.sqrt(-2.0 * np.log1p(-uniform[0::2]))
    angle = 2.0 * np.pi * uniform[1::2]
    normals = np.empty(uniform.shape[0], dtype=np.float64)
    normals[0::2] = radius * np.cos(angle)
    normals[1::2] = radius * np.sin(angle)
    matrix = normals[:count].reshape(code_bits, dim)
    matrix.flags.writeable = False
    return matrix
