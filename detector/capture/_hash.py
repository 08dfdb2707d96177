"""The one 64-bit mixing hash of the capture stages (splitmix64's finaliser): flow-table
slots, distinct-count keys and evidence tie-breaks. Written once for numpy (scalars and
arrays) and compiled by numba for the kernels."""

from __future__ import annotations

import numba
import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def mix(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: a 64-bit hash good enough for hashing keys and distinct counting."""
    x = x ^ (x >> _S30)
    x = x * _M1
    x = x ^ (x >> _S27)
    x = x * _M2
    return x ^ (x >> _S31)


mix_jit = numba.njit(cache=True, inline="always")(mix)
