"""Output files written whole and named: what a full disk (or a quota, or a read-only file
system) must not leave half-written or unnamed, and that an outside logrotate may move
away. The lowest layer, beside errors: the jsonl sink (alerting), the window-score file
(service) and the writers of the offline commands use it."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def naming(path: str | Path) -> Iterator[None]:
    """An OSError raised inside that names no file is given `path`: a write to a file already
    open (a full disk) names none, and "No space left on device" alone does not say where."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def append_whole(fd: int, data: bytes) -> None:
    """Append `data` to `fd` (opened O_APPEND) in full, or raise the OSError with none of it
    left in the file. A full disk takes what fits: that part is cut off again, so that the
    file ends where it ended and its lines stay whole for whoever reads them line by line
    (a half line would run into the next one written)."""
    end = os.fstat(fd).st_size
    view = memoryview(data)
    try:
        while view:  # os.write may write less than asked (signals, full pipes)
            view = view[os.write(fd, view) :]
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, end)  # shrinking takes no space
        raise


class AppendFile:
    """A file at `path` appended to in whole pieces (append_whole), that an outside logrotate
    may move away or delete while it is open: each append first checks that `path` still
    names the open file (its device and inode), and opens (creates) `path` again when it does
    not, so that what is written goes where the operator looks, not into the rotated file.
    `truncate` empties the file at the first open only. `size` is the open file's."""

    def __init__(self, path: Path, mode: int, truncate: bool = False) -> None:
        self.path = path
        self.mode = mode
        self._truncate = truncate
        self._fd = -1
        self._id: tuple[int, int] = (-1, -1)
        self.size = 0

    def open(self) -> None:
        """Open now if it is not: an OSError here (a directory on the way, no permission) is
        the caller's to say at start-up."""
        if self._fd < 0:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if self._truncate else 0)
            self._fd = os.open(self.path, flags, self.mode)
            self._truncate = False
            st = os.fstat(self._fd)
            self._id, self.size = (st.st_dev, st.st_ino), st.st_size

    def current(self) -> int:
        """The descriptor of the file `path` names now (opened again after a rotation)."""
        if self._fd >= 0:
            try:
                st = os.stat(self.path)
                if (st.st_dev, st.st_ino) == self._id:
                    return self._fd
            except FileNotFoundError:
                pass
            self.close()
        self.open()
        return self._fd

    def append(self, data: bytes) -> None:
        """append_whole to the current file: all of `data`, or an OSError and none of it."""
        append_whole(self.current(), data)
        self.size += len(data)

    def sync(self) -> None:
        """fsync the file last written (not one a rotation has put at the path since)."""
        if self._fd >= 0:
            os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
