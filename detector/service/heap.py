"""The C heap's freed pages, handed back to the system (glibc's malloc_trim) as the
process grows: one allocator state for the whole process, whichever role it plays."""

from __future__ import annotations

import ctypes
import gc
import os
import time
from collections.abc import Callable

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # type: ignore[no-any-return]
    except (OSError, AttributeError):  # not glibc
        return None


def resident_bytes() -> int:
    """This process's resident set size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class FreedHeap:
    """Hands the C heap's free pages back to the system (glibc's malloc_trim) once the
    process has grown by a sixteenth (and 16 MiB) over the least it has been since it last
    did, and when told to (the entity tables shrank back after a flood). glibc keeps freed
    heap resident for reuse and gives back only its top by itself: once a flood has spread
    the heap wide, every later batch's arrays land on free pages scattered through it, and
    those pages stay resident after the arrays are freed. On the 5 h demo's flood bench,
    with a trim only when the tables shrank: live data back to the byte after the flood
    (tracemalloc), RSS +45 % for good. A sixteenth, because the process's size after a flood
    is meant to come back within 10 % of before: what the heap may hold free on top of what
    it needs must be less. That bound holds for what the trim can give back: on the 5 h bench
    it was not enough while oneDNN kept a primitive for every batch size the flood brought
    (-2.0 % to +20.6 % in four runs); with the scorer's batch sizes bounded, -6.1 % to +12.6 %
    in four (README "Flood"). A trim took
    3-6 ms there (20 to 80 per pass of twenty 5 h replays: 0.07-0.40 s of 250 s), and no
    replay of the demo measured slower for it; a process that grows for real (more
    entities) meets it a few times, at sizes in geometric steps.
    Process-wide, as the heap is (`HEAP`)."""

    GROWTH = 1 / 16
    AT_LEAST = 16 << 20

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self.floor = resident_bytes()  # the least resident bytes since the last hand-back
        self.trims = 0
        self.trim_s = 0.0  # spent handing back, in all

    def check(self) -> None:
        """Hand back if the process has grown enough since the last time (per batch)."""
        if self._trim is None:
            return
        rss = resident_bytes()
        if rss > self.floor + max(self.floor * self.GROWTH, self.AT_LEAST):
            self.release(collect=False)
        else:  # measured from the least it has been since: a trim amid a batch's arrays set it high
            self.floor = min(self.floor, rss)

    def release(self, collect: bool = True) -> None:
        """Hand back now (`collect`: after a garbage collection, for a burst of freed objects)."""
        if self._trim is None:
            return
        started = time.perf_counter()
        if collect:
            gc.collect()
        self._trim(0)
        self.trims += 1
        self.trim_s += time.perf_counter() - started
        self.floor = resident_bytes()


HEAP = FreedHeap()
