"""The packet columns of the last few batches in shared memory, for the capture workers.

Where this stands: inside the window stage's capture workers (capture.windows.sharded). The
parent writes each batch's columns once into a slot of this ring, and the entity slots it
found for each row beside them; every worker maps the same memory and reads the rows of
its own flows from it. Nothing per packet is pickled or sent: a message names the slot.

Each slot is an anonymous memfd (no name to leak when a process dies), made before the
workers start and handed to them as inherited file descriptors; a slot grows (ftruncate)
when a batch outgrows it, and a worker maps it again when a message says it is larger.
Columns are laid out one after another, 64-byte aligned, for the slot's row capacity.
"""

from __future__ import annotations

import mmap
import os

import numpy as np

from detector.contracts import PACKET_COLUMNS, PacketBatch

# per row, beside the packet's columns: what the parent found for it (the entity slots of
# its two ends, -1 when not a home host; whether each end is home), and a list of row
# numbers (a part of the batch whose late rows were left out)
EXTRA_COLUMNS: dict[str, type] = {"src_slot": np.int64, "dst_slot": np.int64, "rows": np.int64,
                                  "src_home": np.bool_, "dst_home": np.bool_}
_COLUMNS = {**PACKET_COLUMNS, **EXTRA_COLUMNS}
_ORDER = sorted(_COLUMNS, key=lambda name: -np.dtype(_COLUMNS[name]).itemsize)  # widest first: aligned


def _layout(capacity: int) -> tuple[dict[str, int], int]:
    """Byte offset of each column for `capacity` rows, and the slot's size."""
    offsets, at = {}, 0
    for name in _ORDER:
        offsets[name] = at
        at += -(-np.dtype(_COLUMNS[name]).itemsize * capacity // 64) * 64
    return offsets, max(at, 64)


class RingSlot:
    """One slot: its memfd, mapped, and numpy views of its columns (`cols`)."""

    def __init__(self, fd: int, capacity: int, create: bool) -> None:
        self.fd = fd
        self.capacity = 0
        self._map: mmap.mmap | None = None
        self.cols: dict[str, np.ndarray] = {}
        if create:
            os.ftruncate(fd, _layout(capacity)[1])
        self.remap(capacity)

    def remap(self, capacity: int) -> None:
        """Map the slot for `capacity` rows (it has been grown to hold them)."""
        offsets, size = _layout(capacity)
        self._map = mmap.mmap(self.fd, size)  # an earlier map lives on while views of it do
        self.capacity = capacity
        self.cols = {name: np.frombuffer(self._map, dtype=_COLUMNS[name], count=capacity, offset=offsets[name])
                     for name in _COLUMNS}

    def grow(self, rows: int) -> None:
        """Parent: room for `rows` rows (columns move: only while no worker reads the slot)."""
        capacity = max(rows, 2 * self.capacity)
        os.ftruncate(self.fd, _layout(capacity)[1])
        self.remap(capacity)

    def write(self, batch: PacketBatch) -> None:
        n = len(batch)
        if n > self.capacity:
            self.grow(n)
        for name in PACKET_COLUMNS:
            self.cols[name][:n] = getattr(batch, name)

    def batch(self, n: int) -> PacketBatch:
        """Rows 0..n as a PacketBatch of views (no copy)."""
        return PacketBatch(**{name: self.cols[name][:n] for name in PACKET_COLUMNS})


def new_slot_fd() -> int:
    """A memfd for a ring slot, inheritable (the workers get it at start)."""
    fd = os.memfd_create("netad-batches", 0)
    os.set_inheritable(fd, True)
    return fd
