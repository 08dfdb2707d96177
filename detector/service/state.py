"""Checkpoints: what the daemon must not forget across a restart.

Hidden states of every entity (safetensors), open incidents and the daemon's meta (which
source, where a replay stands or where a followed conn.log was read to, which model; JSON), written atomically: a temporary directory
is filled and fsynced, then renamed over the previous checkpoint, so a SIGKILL at any moment
leaves either the old or the new checkpoint whole. Undelivered incident events need no
checkpoint: the sinks' spools are already durable. One daemon per state directory, held
with a lock (`lock_state_dir`).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "state.json"
LOCK_NAME = ".lock"
STATE_TENSORS = "hidden.safetensors"
FORMAT = 1


def save_checkpoint(directory: Path, scorer_state: dict[str, dict], tracker_state: dict, meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors: dict[str, torch.Tensor] = {}
        banks: dict[str, dict] = {}
        for cls, entry in scorer_state.items():
            tensors[f"{cls}.h"] = entry["h"].contiguous()
            tensors[f"{cls}.c"] = entry["c"].contiguous()
            banks[cls] = {k: entry[k] for k in ("entities", "seen", "last_ns")}
        if tensors:
            save_file(tensors, str(tmp / STATE_TENSORS))
        doc = {"format": FORMAT, "written_at": time.time(), "meta": meta, "banks": banks, "incidents": tracker_state}
        with open(tmp / STATE_JSON, "w", encoding="utf-8") as fh:
            json.dump(doc, fh)
            fh.flush()
            os.fsync(fh.fileno())
        _fsync(tmp)
        old = directory.with_name(f".{directory.name}.old")
        if directory.exists():
            if old.exists():
                shutil.rmtree(old)
            os.rename(directory, old)
        os.rename(tmp, directory)
        _fsync(directory.parent)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return directory


def load_checkpoint(directory: Path) -> tuple[dict[str, dict], dict, dict[str, Any]] | None:
    """(scorer state, tracker state, meta) or None when there is no usable checkpoint."""
    directory = Path(directory)
    if not (directory / STATE_JSON).is_file():
        old = directory.with_name(f".{directory.name}.old")  # crashed between the two renames
        if (old / STATE_JSON).is_file():
            directory = old
        else:
            return None
    doc = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    if doc.get("format") != FORMAT:
        return None
    tensors = load_file(str(directory / STATE_TENSORS)) if (directory / STATE_TENSORS).is_file() else {}
    scorer_state = {
        cls: {**bank, "h": tensors[f"{cls}.h"], "c": tensors[f"{cls}.c"]}
        for cls, bank in doc["banks"].items()
        if f"{cls}.h" in tensors
    }
    return scorer_state, doc["incidents"], doc.get("meta", {})


class StateDirBusyError(Exception):
    """Another process holds this state directory."""


def lock_state_dir(directory: Path) -> int:
    """Hold `directory` for this process: two daemons on one state directory would
    overwrite each other's checkpoints. flock(2) on directory/.lock, which the kernel drops
    when the process dies, even by SIGKILL, so a restarted daemon takes over at once. The
    holder's pid is written into the file for the error message. Returns the fd to keep."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 32).decode("ascii", "replace").strip() or "?"
        os.close(fd)
        raise StateDirBusyError(f"{directory} is in use by another netad (pid {holder})") from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
