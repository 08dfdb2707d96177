"""A sink's durable queue of undelivered incident events: spool_dir/<sink name>/.

Where it stands: between Sink.publish (the pipeline's thread) and the sink's delivery thread.
An event is on disk before publish returns and leaves the disk only after the transport
accepted it, so an outage or a crash delays delivery but never loses an event.

Design: one file per event, written atomically (temp file, fsync, rename, fsync of the
directory), named by a 20-digit sequence number so that a directory listing sorted by name is
the delivery order. Why not an append-only log with an ack offset:

- incidents are rare (a few per minute, bursts of hundreds), so a file and two fsyncs per
  event cost nothing that matters, and nothing needs compacting;
- a crash at any instant leaves either a complete file or none (a torn write is a ``.tmp``
  that is removed at start-up), and acknowledging is an unlink: there is no offset file that
  could disagree with the data;
- one corrupt file (a bad disk block) is moved to ``dead/`` and costs one event, not the
  queue behind it.

A file holds the event itself as JSON ({"v": 1, "event": {...}}), not the encoded bytes: the
sink re-encodes it at delivery, so the backlog survives a change of format or of netad's
version, and a duplicate after a crash is the same event (same event_id) by construction.

A spool directory is held with flock(2) by one Sink at a time: two senders on one spool
would deliver everything twice. The kernel drops the lock when a process dies, even by
SIGKILL, so a restarted daemon takes over at once.
"""

from __future__ import annotations

import dataclasses
import fcntl
import json
import os
from pathlib import Path
from typing import Any

from detector.contracts import FeatureContribution, IncidentEvent, WindowEvidence

SPOOL_VERSION = 1
_SUFFIX = ".json"
_TMP_SUFFIX = ".json.tmp"
_LOCK_NAME = ".lock"
DEAD_DIR = "dead"


class SpoolBusyError(Exception):
    """Another process (or another open sink) holds this spool directory."""


class SpoolRecordError(Exception):
    """A spool file cannot be read back as an IncidentEvent."""


def _json_default(value: Any) -> Any:
    # Evidence dicts may carry numpy scalars or arrays, or other odd values from the network side.
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    return str(value)


def event_to_json(event: IncidentEvent) -> str:
    """The event as JSON; ensure_ascii keeps lone surrogates (non-UTF-8 input) intact."""
    document = {"v": SPOOL_VERSION, "event": dataclasses.asdict(event)}
    return json.dumps(document, ensure_ascii=True, default=_json_default)


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    # Fields added to the contract later have defaults; fields removed are ignored, so a
    # spool written by another netad version still reads.
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def event_from_json(text: str) -> IncidentEvent:
    """The inverse of event_to_json; SpoolRecordError if the text is not one."""
    try:
        document = json.loads(text)
        if document.get("v") != SPOOL_VERSION:
            raise SpoolRecordError(f"unknown spool record version {document.get('v')!r}")
        data = dict(document["event"])
        features = [FeatureContribution(**_known(FeatureContribution, f)) for f in data.pop("top_features")]
        evidence = WindowEvidence(**_known(WindowEvidence, data.pop("evidence")))
        return IncidentEvent(**_known(IncidentEvent, data), top_features=features, evidence=evidence)
    except SpoolRecordError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SpoolRecordError(f"{type(exc).__name__}: {exc}") from exc


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """The on-disk queue of one sink. Not thread-safe by itself: the Sink serialises
    `append` (pipeline thread) against `load`/`ack`/`dead_letter` (delivery thread) only in
    the sense that they touch different sequence numbers, which is all that is needed."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(self.directory / _LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SpoolBusyError(f"spool {self.directory} is held by another process or sink") from None
        for torn in self.directory.glob("*" + _TMP_SUFFIX):
            torn.unlink(missing_ok=True)  # a write that a crash interrupted; never acknowledged
        self._backlog = sorted(self._seq_of(p) for p in self.directory.glob("*" + _SUFFIX) if self._seq_of(p) >= 0)
        self._next_seq = (self._backlog[-1] + 1) if self._backlog else 0

    @staticmethod
    def _seq_of(path: Path) -> int:
        stem = path.name[: -len(_SUFFIX)]
        return int(stem) if stem.isdigit() else -1

    def _path(self, seq: int) -> Path:
        return self.directory / f"{seq:020d}{_SUFFIX}"

    def backlog(self) -> list[int]:
        """Sequence numbers found at start-up, oldest first: the previous run's undelivered."""
        return list(self._backlog)

    def append(self, event: IncidentEvent) -> int:
        """Write the event durably; its sequence number once it is on disk (OSError if not)."""
        seq = self._next_seq
        self._next_seq += 1
        final = self._path(seq)
        tmp = final.with_name(final.name[: -len(_SUFFIX)] + _TMP_SUFFIX)
        data = event_to_json(event).encode("ascii")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        os.replace(tmp, final)
        _fsync_dir(self.directory)  # the rename itself must survive a power cut
        return seq

    def load(self, seq: int) -> IncidentEvent:
        try:
            text = self._path(seq).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpoolRecordError(f"{type(exc).__name__}: {exc}") from exc
        return event_from_json(text)

    def ack(self, seqs: list[int]) -> None:
        """Forget delivered events. No directory fsync: if a crash undoes an unlink, the event
        is delivered again with the same event_id, which at-least-once allows."""
        for seq in seqs:
            self._path(seq).unlink(missing_ok=True)

    def dead_letter(self, seq: int) -> Path:
        """Move an event that can never be delivered out of the queue, kept for an operator."""
        dead = self.directory / DEAD_DIR
        dead.mkdir(exist_ok=True)
        target = dead / self._path(seq).name
        os.replace(self._path(seq), target)
        return target

    def close(self) -> None:
        if self._lock_fd >= 0:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = -1
