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
    """A memfd for a ring slot (the workers get it at start: subprocess's pass_fds)."""
    return os.memfd_create("netad-batches")  # close-on-exec: only the workers' pass_fds hand it on


class SharedArrays:
    """A memfd that two processes map: one writes a few arrays into it (`put`, growing it
    when they do not fit), the other reads them as views (`get`) until the next `put`. A
    capture worker's answer to "close": its window's aggregates, several MB, which pickling
    copied four times (into the message, the socket, out of it, out of the message)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._size = 0
        self._map: mmap.mmap | None = None
        self._remap(max(os.fstat(fd).st_size, 64))

    def _remap(self, size: int) -> None:
        if os.fstat(self.fd).st_size < size:
            os.ftruncate(self.fd, size)
        self._map = mmap.mmap(self.fd, size)  # an earlier map lives on while views of it do
        self._size = size

    def put(self, arrays: list[np.ndarray]) -> tuple[int, list[tuple[int, str, tuple[int, ...]]]]:
        """Write the arrays; returns what `get` needs: the bytes used, and per array its
        offset, dtype and shape."""
        specs, at = [], 0
        for a in arrays:
            specs.append((at, a.dtype.str, a.shape))
            at += -(-a.nbytes // 64) * 64
        if at > self._size:
            self._remap(max(at, 2 * self._size))
        for a, (offset, _, _) in zip(arrays, specs, strict=True):
            np.frombuffer(self._map, dtype=a.dtype, count=a.size, offset=offset).reshape(a.shape)[...] = a  # type: ignore[arg-type]
        return at, specs

    def get(self, used: int, specs: list[tuple[int, str, tuple[int, ...]]]) -> list[np.ndarray]:
        """Views of the arrays a `put` on the other side wrote (valid until its next put)."""
        if used > self._size:
            self._remap(os.fstat(self.fd).st_size)
        return [np.frombuffer(self._map, dtype=np.dtype(dt), count=int(np.prod(shape)), offset=offset).reshape(shape)  # type: ignore[arg-type]
                for offset, dt, shape in specs]
