"""What an address (its (hi, lo) 64-bit halves, IPv4 mapped) says by itself. Written once for
numpy (arrays) and compiled by numba for the flow table's per-packet loop."""

from __future__ import annotations

import numba
import numpy as np

_V4_HI, _V4_TAG = np.uint64(0), np.uint64(0xFFFF)
_S32, _S56 = np.uint64(32), np.uint64(56)
_V4_CLASS_D, _V4_D, _V4_ALL = np.uint64(0xF0000000), np.uint64(0xE0000000), np.uint64(0xFFFFFFFF)
_V6_MULTICAST = np.uint64(0xFF)


def _group(hi, lo):  # numpy arrays, or numba's uint64 scalars
    v4 = (hi == _V4_HI) & ((lo >> _S32) == _V4_TAG)
    v4_group = ((lo & _V4_CLASS_D) == _V4_D) | ((lo & _V4_ALL) == _V4_ALL)
    return (v4 & v4_group) | ((hi >> _S56) == _V6_MULTICAST)  # an IPv4-mapped hi is 0, never ff..


def group_address(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Whether each (hi, lo) address is a group's, not a host's: IPv4 multicast (224.0.0.0/4)
    or the limited broadcast, IPv6 multicast (ff00::/8)."""
    return _group(np.asarray(hi).astype(np.uint64), np.asarray(lo).astype(np.uint64))


group_address_jit = numba.njit(cache=True, inline="always")(_group)
