"""Handing back the memory pages of an array's rows that are no longer in use.

Where this stands: a helper of the capture stages whose tables are preallocated at their
bound (the flow table's dense rows). Such a table uses a prefix of its rows; a flood pushes
the prefix far out, and when it ends the rows past the live ones are free again but their
pages stay resident: written once, a page is the process's until it is unmapped or dropped.
"""

from __future__ import annotations

import ctypes
import mmap
import sys

import numpy as np

_MADV_DONTNEED = 4  # Linux: the pages read back as zeros, as a fresh np.zeros would


def _madvise() -> object | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


_MADVISE = _madvise()


def drop_pages_after(arr: np.ndarray, start_byte: int) -> int:
    """Drop the whole pages of `arr`'s buffer from `start_byte` on: they read back as zeros
    and take no memory until written again. Only pages entirely inside the buffer are
    dropped (never the allocator's bookkeeping next to it). Returns the bytes dropped; 0
    where the system has no madvise."""
    if _MADVISE is None or not arr.flags.c_contiguous or arr.base is not None:
        return 0
    page = mmap.PAGESIZE
    address = arr.ctypes.data
    first = -(-(address + start_byte) // page) * page
    last = (address + arr.nbytes) // page * page
    if last <= first:
        return 0
    if _MADVISE(first, last - first, _MADV_DONTNEED) != 0:  # type: ignore[operator]
        return 0
    return last - first
