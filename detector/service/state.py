"""Checkpoints: what the daemon must not forget across a restart.

Where it stands: beside the Scoring stage (service.scoring), whose entity states and
incidents it writes and reads back as typed records (EntityStates, Checkpoint); the Kafka
scorer keeps the same EntityStates in its state topic instead (service.wire).

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
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

STATE_JSON = "state.json"
LOCK_NAME = ".lock"
STATE_TENSORS = "hidden.safetensors"
FORMAT = 1


@dataclass
class EntityStates:
    """The carried state of some entities of one class, row i for entities[i]: hidden and cell
    state, windows seen (warm-up) and the end of the last window scored. The form
    StreamingScorer.state_dict / states_of give and load_state_dict takes, typed."""

    entities: list[str]
    h: torch.Tensor
    c: torch.Tensor
    seen: list[int]
    last_ns: list[int]

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> EntityStates:
        """From the scorer's dict form."""
        return cls(list(entry["entities"]), entry["h"], entry["c"], [int(v) for v in entry["seen"]],
                   [int(v) for v in entry["last_ns"]])

    def as_scorer_dict(self) -> dict[str, Any]:
        return {"entities": self.entities, "h": self.h, "c": self.c, "seen": self.seen, "last_ns": self.last_ns}

    @property
    def hidden_size(self) -> int:
        return int(self.h.shape[-1])


@dataclass
class ModelRef:
    """Which model a checkpoint was written with (a retrained one is resumed if its base is still configured)."""

    path: str | None = None
    version: str | None = None
    base_version: str | None = None


@dataclass
class CheckpointMeta:
    """The daemon's bookkeeping beside the states: which source, where it stood, which model."""

    source: dict[str, Any] = field(default_factory=dict)  # service._sources.source_identity
    resume_ns: int | None = None  # end of the last window scored (a replay resumes there)
    position: Any = None  # a followed conn.log: the file and offset after the last line read
    replay_complete: bool = False
    model: ModelRef = field(default_factory=ModelRef)

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> CheckpointMeta:
        known = {f.name for f in fields(cls)} - {"model"}
        model = doc.get("model") or {}
        return cls(**{k: v for k, v in doc.items() if k in known},
                   model=ModelRef(**{k: v for k, v in model.items() if k in {f.name for f in fields(ModelRef)}}))


@dataclass
class Checkpoint:
    """Everything a restart needs: per-class entity states, the incident tracker's streaks and
    open incidents (IncidentTracker.state_dict), and the meta."""

    states: dict[str, EntityStates]
    incidents: dict[str, Any]
    meta: CheckpointMeta = field(default_factory=CheckpointMeta)

    @property
    def entities(self) -> int:
        return sum(len(s) for s in self.states.values())

    @property
    def open_incidents(self) -> int:
        return sum(1 for e in self.incidents.values() if e["incident"] is not None)


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
    try:
        tensors: dict[str, torch.Tensor] = {}
        banks: dict[str, dict] = {}
        for cls, entry in checkpoint.states.items():
            tensors[f"{cls}.h"] = entry.h.contiguous()
            tensors[f"{cls}.c"] = entry.c.contiguous()
            banks[cls] = {"entities": entry.entities, "seen": entry.seen, "last_ns": entry.last_ns}
        if tensors:
            save_file(tensors, str(tmp / STATE_TENSORS))
        doc = {"format": FORMAT, "written_at": time.time(), "meta": checkpoint.meta.as_json(), "banks": banks,
               "incidents": checkpoint.incidents}
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


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint, or None when there is no usable one."""
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
    states = {
        cls: EntityStates.of({**bank, "h": tensors[f"{cls}.h"], "c": tensors[f"{cls}.c"]})
        for cls, bank in doc["banks"].items()
        if f"{cls}.h" in tensors
    }
    return Checkpoint(states, doc["incidents"], CheckpointMeta.from_json(doc.get("meta", {})))


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
