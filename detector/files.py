"""Output files written whole and named: what a full disk (or a quota, or a read-only file
system) must not leave half-written or unnamed. The lowest layer, beside errors: the jsonl
sink (alerting), the window-score file (service) and the writers of the offline commands
use it."""

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
