"""Checkpoints: what the daemon must not forget across a restart.

Where it stands: beside the Scoring stage (service.scoring), whose entity states and
incidents it writes and reads back as typed records (EntityStates, Checkpoint); the Kafka
scorer keeps the same EntityStates in its state topic instead (service.wire).

Hidden states of every entity (safetensors), each entity's peer history (the window stage's,
safetensors), what a followed conn.log's reader counted of the long connections still open
(capture.flowrecords.zeeklog.LongConnections, safetensors), open incidents and the daemon's meta (which
source, where a replay stands or where a followed conn.log was read to, which model; JSON), written atomically: a temporary directory
is filled, every file in it and the directory fsynced, then renamed over the previous
checkpoint, so a SIGKILL or a power cut at any moment leaves either the old or the new
checkpoint whole. Undelivered incident events need no checkpoint: the sinks' spools are
already durable. One daemon per state directory, held with a lock (`lock_state_dir`).

Reading one back checks its structure (CheckpointError says what is wrong): a checkpoint the
daemon cannot use is moved aside (`move_aside`), kept for a post-mortem, and the daemon
starts fresh rather than refusing to start.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import structlog
import torch
from safetensors import SafetensorError
from safetensors.numpy import load_file as load_arrays
from safetensors.numpy import save_file as save_arrays
from safetensors.torch import load_file, save_file

from detector.errors import CheckpointError, ConfigError
from detector.model.meta import save_safetensors

log = structlog.get_logger()

CHECKPOINT_DIR = "checkpoint"  # under state_dir
STATE_JSON = "state.json"
LOCK_NAME = ".lock"
STATE_TENSORS = "hidden.safetensors"
HISTORY_ARRAYS = "history.safetensors"  # the window stage's peer history (capture.windows._history)
LONG_CONNECTIONS_ARRAYS = "long_connections.safetensors"  # a conn.log reader's LongConnections
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
    carried: list[float] | None = None  # into each entity's next window, in thresholds (model.scorer); None: nothing

    def __len__(self) -> int:
        return len(self.entities)

    @classmethod
    def of(cls, entry: dict[str, Any]) -> EntityStates:
        """From the scorer's dict form."""
        carried = entry.get("carried")
        return cls(list(entry["entities"]), entry["h"], entry["c"], [int(v) for v in entry["seen"]],
                   [int(v) for v in entry["last_ns"]], None if carried is None else [float(v) for v in carried])

    def as_scorer_dict(self) -> dict[str, Any]:
        return {"entities": self.entities, "h": self.h, "c": self.c, "seen": self.seen, "last_ns": self.last_ns,
                "carried": self.carried}

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
    position: Any = None  # a followed conn.log: the file and offset after the last line read (its dns.log's: `dns`)
    replay_complete: bool = False
    model: ModelRef = field(default_factory=ModelRef)
    exporters: Any = None  # a NetFlow collector's: its exporters' templates and sampling (NetflowParser.state_dict)

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
    history: dict[str, np.ndarray] | None = None  # PeerHistory.state_dict(); None in one written before it
    long_connections: dict[str, np.ndarray] | None = None  # LongConnections.state_dict(); None: no conn.log read, or before it
    path: Path | None = field(default=None, compare=False)  # the directory it was read from

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
            banks[cls] = {"entities": entry.entities, "seen": entry.seen, "last_ns": entry.last_ns, "carried": entry.carried}
        if tensors:
            save_safetensors(save_file, tensors, tmp / STATE_TENSORS)
            _fsync(tmp / STATE_TENSORS)  # safetensors closes the file unsynced: on disk before the rename
        if checkpoint.history is not None:
            save_safetensors(save_arrays, {k: np.ascontiguousarray(v) for k, v in checkpoint.history.items()},
                             tmp / HISTORY_ARRAYS)
            _fsync(tmp / HISTORY_ARRAYS)
        if checkpoint.long_connections is not None:
            save_safetensors(save_arrays, {k: np.ascontiguousarray(v) for k, v in checkpoint.long_connections.items()},
                             tmp / LONG_CONNECTIONS_ARRAYS)
            _fsync(tmp / LONG_CONNECTIONS_ARRAYS)
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


def checkpoint_in_use(directory: Path) -> Path | None:
    """The directory a restart reads: the checkpoint, or the previous one when a crash came
    between save_checkpoint's two renames; None when there is neither."""
    directory = Path(directory)
    if (directory / STATE_JSON).is_file():
        return directory
    old = directory.with_name(f".{directory.name}.old")
    return old if (old / STATE_JSON).is_file() else None


def load_checkpoint(directory: Path) -> Checkpoint | None:
    """The checkpoint, None when there is none (or one of another format), or CheckpointError
    when one is there but cannot be used: unreadable, not JSON, missing tensors, tensors whose
    shapes do not match the entities they are for, values that are not finite."""
    found = checkpoint_in_use(directory)
    if found is None:
        return None
    try:
        doc = json.loads((found / STATE_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{found / STATE_JSON}: unreadable: {exc}") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{found / STATE_JSON}: a JSON {type(doc).__name__}, not an object")
    if doc.get("format") != FORMAT:
        return None
    try:
        tensors = load_file(str(found / STATE_TENSORS)) if (found / STATE_TENSORS).is_file() else {}
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{found / STATE_TENSORS}: unreadable: {exc}") from None
    history, long_connections = (_arrays(found / name) for name in (HISTORY_ARRAYS, LONG_CONNECTIONS_ARRAYS))
    try:
        banks, incidents = _dict(doc, "banks"), _dict(doc, "incidents")
        states = {cls: _entity_states(cls, bank, tensors) for cls, bank in banks.items()}
        for name, entry in incidents.items():
            if not isinstance(entry, dict) or not {"streak", "streak_start_ns", "incident"} <= set(entry):
                raise ValueError(f"incidents[{name!r}]: not an incident tracker entry")
        meta = _checked_meta(_dict(doc, "meta") if "meta" in doc else {})
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{found}: {exc}") from None
    return Checkpoint(states, incidents, meta, history=history, long_connections=long_connections, path=found)


def _arrays(path: Path) -> dict[str, np.ndarray] | None:
    try:
        return load_arrays(str(path)) if path.is_file() else None
    except (OSError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: unreadable: {exc}") from None


def _dict(doc: dict[str, Any], key: str) -> dict[str, Any]:
    value = doc.get(key)
    if not isinstance(value, dict):
        raise ValueError(f"{key}: {'missing' if value is None else type(value).__name__ + ', not an object'}")
    return value


def _checked_meta(doc: dict[str, Any]) -> CheckpointMeta:
    """The meta, its types checked: each of its values steers the restart (where a replay
    resumes, which file offset a conn.log is read from, which model is used)."""
    def _int(value: Any) -> bool:
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0

    if not isinstance(doc.get("source", {}), dict):
        raise ValueError("meta.source: not an object")
    if doc.get("resume_ns") is not None and not _int(doc["resume_ns"]):
        raise ValueError(f"meta.resume_ns: {doc['resume_ns']!r} is not a time in ns")
    if not isinstance(doc.get("replay_complete", False), bool):
        raise ValueError("meta.replay_complete: not true or false")
    def _file_position(value: Any) -> bool:
        return isinstance(value, dict) and all(_int(value.get(k)) for k in ("device", "inode", "offset"))

    position = doc.get("position")  # the conn.log's, with the dns.log's and the conn_long.log's beside it as `dns`, `long`
    if position is not None and not (_file_position(position) and all(position.get(k) is None or _file_position(position[k])
                                                                      for k in ("dns", "long"))):
        raise ValueError(f"meta.position: {position!r} is not a file position (device, inode, offset)")
    read_to = position.get("read_to_ns") if isinstance(position, dict) else None
    if read_to is not None and (not isinstance(read_to, int) or isinstance(read_to, bool)):
        raise ValueError(f"meta.position.read_to_ns: {read_to!r} is not a time in ns")
    exporters = doc.get("exporters")
    if exporters is not None and not (isinstance(exporters, dict) and isinstance(exporters.get("exporters"), list)):
        raise ValueError("meta.exporters: not a list of NetFlow exporters")
    model = doc.get("model") or {}
    if not isinstance(model, dict) or not all(v is None or isinstance(v, str) for v in model.values()):
        raise ValueError("meta.model: not an object of strings")
    return CheckpointMeta.from_json(doc)


def _entity_states(cls: str, bank: Any, tensors: dict[str, torch.Tensor]) -> EntityStates:
    """One class's states, their structure checked: n entities, n rows of h and c of one
    hidden size, n counters, every value finite."""
    if not isinstance(bank, dict):
        raise ValueError(f"banks.{cls}: not an object")
    entities, seen, last_ns = bank.get("entities"), bank.get("seen"), bank.get("last_ns")
    for name, values, kind in (("entities", entities, str), ("seen", seen, int), ("last_ns", last_ns, int)):
        if not isinstance(values, list) or not all(isinstance(v, kind) and not isinstance(v, bool) for v in values):
            raise ValueError(f"banks.{cls}.{name}: not a list of {kind.__name__}")
    n = len(entities)
    if len(seen) != n or len(last_ns) != n or len(set(entities)) != n:
        raise ValueError(f"banks.{cls}: {n} entities ({len(set(entities))} distinct), {len(seen)} warm-up counts, "
                         f"{len(last_ns)} window ends")
    carried = bank.get("carried")  # absent (None) in a checkpoint from before accumulation
    if carried is not None and not (isinstance(carried, list) and len(carried) == n and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0 for v in carried)):
        raise ValueError(f"banks.{cls}.carried: not a list of {n} numbers in [0, 1]")
    h, c = tensors.get(f"{cls}.h"), tensors.get(f"{cls}.c")
    if h is None or c is None:
        raise ValueError(f"{STATE_TENSORS}: no {cls}.h or {cls}.c for the {n} entities of banks.{cls}")
    if h.ndim != 2 or h.shape != c.shape or h.shape[0] != n or h.shape[1] < 1 or not h.is_floating_point():
        raise ValueError(f"{STATE_TENSORS}: {cls}.h {tuple(h.shape)} and {cls}.c {tuple(c.shape)} "
                         f"are not ({n} entities, hidden size) float tensors")
    if not (bool(torch.isfinite(h).all()) and bool(torch.isfinite(c).all())):
        raise ValueError(f"{STATE_TENSORS}: {cls}: hidden states that are not finite")
    return EntityStates(list(entities), h, c, list(seen), list(last_ns), None if carried is None else [float(v) for v in carried])


def move_aside(directory: Path, now: dt.datetime | None = None) -> Path:
    """Rename an unusable checkpoint to `<name>.bad-<UTC time>` beside it (kept for a
    post-mortem, out of a restart's way); returns the new path."""
    directory = Path(directory)
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%dT%H%M%SZ")
    target = directory.with_name(f"{directory.name.lstrip('.')}.bad-{stamp}")
    n = 1
    while target.exists():
        n += 1
        target = directory.with_name(f"{directory.name.lstrip('.')}.bad-{stamp}-{n}")
    os.rename(directory, target)
    _fsync(directory.parent)
    return target


def set_aside(path: Path | None, reason: str) -> None:
    """An unusable checkpoint out of the way, kept for a post-mortem (move_aside), said with
    the reason; the process starts fresh."""
    if path is None:
        return
    try:
        moved = move_aside(path)
    except OSError as exc:  # the next checkpoint replaces it all the same
        log.warning("checkpoint_unusable", path=str(path), reason=reason, moved_aside=False, error=str(exc))
        return
    log.warning("checkpoint_moved_aside", path=str(path), moved_to=str(moved), reason=reason,
                consequence="starting fresh: no hidden states, open incidents or replay position restored")


class StateDirBusyError(Exception):
    """Another process holds this state directory."""


def lock_state_dir(directory: Path) -> int:
    """Hold `directory` for this process: two daemons on one state directory would
    overwrite each other's checkpoints. flock(2) on directory/.lock, which the kernel drops
    when the process dies, even by SIGKILL, so a restarted daemon takes over at once. The
    holder's pid is written into the file for the error message. Returns the fd to keep."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:  # a file in the way, no permission, a read-only file system
        raise ConfigError(f"state_dir: {directory}: cannot use it: {exc.strerror or exc}") from None
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
