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


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_live() -> Callable[[], int] | None:
    """The C heap's bytes in use, all arenas (glibc's mallinfo2, 2.33 on), or None."""
    try:
        mallinfo2 = ctypes.CDLL(None).mallinfo2
    except (OSError, AttributeError):
        return None
    mallinfo2.restype = _MallInfo2
    return lambda: int(mallinfo2().uordblks)


def resident_bytes() -> int:
    """This process's resident set size now (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


class FreedHeap:
    """Hands the C heap's free pages back to the system (glibc's malloc_trim) after each
    batch when either
    - the process has grown by a sixteenth (and 16 MiB) over the least it has been since it
      last did, or
    - the heap's live bytes have fallen by a sixteenth of the process (and 16 MiB) from the
      most they have been since it last did (glibc's mallinfo2): what was freed is still
      resident,
    and when told to (the entity tables shrank back after a flood). glibc keeps freed heap
    resident for reuse and gives back only its top by itself: once a flood has spread the
    heap wide, every later batch's arrays land on free pages scattered through it, and those
    pages stay resident after the arrays are freed. On the 5 h demo's flood bench, with a
    trim only when the tables shrank: live data back to the byte after the flood
    (tracemalloc), RSS +45 % for good. A sixteenth, because the process's size after a flood
    is meant to come back within 10 % of before: what the heap may hold free on top of what
    it needs must be less.

    The second rule: a window closing after a burst of the capture frees its tallies (on the
    5 h demo, the heap's live bytes 252 MiB -> 156 MiB). Growth alone missed that: the trim
    that the burst's growth asked for ran amid the burst, so the least size since was the
    burst's, and the 96 MiB it freed stayed resident, below the line, until the next burst
    (RSS 600-620 MiB where 510-550 was the need; per batch, `mallinfo2`). Which heap pages a
    burst's frees leave below the top is the allocator's layout, so it decided by chance
    whether a replay held them: the flood bench's BEFORE read 498 to 608 MiB for the same
    work. A trim took 3-6 ms there (20 to 80 per pass of twenty 5 h replays); mallinfo2,
    which walks the free lists, well under one (README "Flood").
    Process-wide, as the heap is (`HEAP`)."""

    GROWTH = 1 / 16
    AT_LEAST = 16 << 20

    def __init__(self) -> None:
        self._trim = _malloc_trim()
        self._live = _heap_live()
        self.floor = resident_bytes()  # the least resident bytes since the last hand-back
        self.live_high = self._live() if self._live is not None else 0  # the most live heap bytes since
        self.trims = 0
        self.trim_s = 0.0  # spent handing back, in all

    def check(self) -> None:
        """Hand back if the process has grown, or its heap has freed, enough since the last time (per batch)."""
        if self._trim is None:
            return
        rss = resident_bytes()
        live = self._live() if self._live is not None else 0
        self.live_high = max(self.live_high, live)
        if rss > self.floor + max(self.floor * self.GROWTH, self.AT_LEAST) or \
                self.live_high - live > max(rss * self.GROWTH, self.AT_LEAST):
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
        self.live_high = self._live() if self._live is not None else 0


HEAP = FreedHeap()
