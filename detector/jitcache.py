"""numba's on-disk cache of compiled kernels, kept readable: what an interrupted write or a
disk error leaves there must not stop netad at its first kernel.

numba 0.68 writes a cache file whole (to a temporary name, then a rename) but does not sync
it; a power cut can leave one empty or cut short, and a bad block can damage one. It then
raises at the kernel's first call (`UnpicklingError: pickle data was truncated`, an
EOFError) instead of compiling again (numba/numba#10434, open): every netad command, and
the daemon at each restart systemd makes, stopped there. `repair()` runs as the command line
starts, before any kernel: each index (`.nbi`) and data (`.nbc`) file in the places numba
keeps netad's (`NUMBA_CACHE_DIR`, else the `__pycache__` beside netad's modules) is read as
a pickle's opcodes, without building anything (about 10 ms for netad's 35 files), and one
that does not read to its end is removed, so numba compiles that kernel again and writes it
anew. What was removed is logged once logging is set up (`jit_cache_repaired`).
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

REMOVED: list[str] = []  # what repair() removed, for the log once it is configured


def _cache_dirs() -> list[Path]:
    env = os.environ.get("NUMBA_CACHE_DIR")
    return [Path(env)] if env else [Path(__file__).resolve().parent]


def _readable(path: Path) -> bool:
    try:
        stream = io.BytesIO(path.read_bytes())
        if path.suffix == ".nbi":
            if not isinstance(pickle.load(stream), str):  # numba's version, then the index's pickle
                return False
        for _ in pickletools.genops(stream):
            pass
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):
        return False
    return True


def repair() -> list[str]:
    """Remove the cache files that cannot be read to their end; returns their paths."""
    removed = []
    for directory in _cache_dirs():
        if not directory.is_dir():
            continue
        for path in sorted(directory.rglob("*.nb[ic]")):
            if path.is_file() and not _readable(path):
                try:
                    path.unlink()
                except OSError:  # gone meanwhile, or read-only (numba cannot write it there either)
                    continue
                removed.append(str(path))
    REMOVED.extend(removed)
    return removed
