"""Transports: how a sink's encoded records leave the process (the "writer" half of a sink).

Where it stands: under sinks.py. A transport knows bytes and an endpoint, nothing of
incidents or formats; the Sink encodes, spools, retries and acknowledges. A transport's
`send` either returns (the records were accepted: written to a file or socket, or answered
2xx) or raises one of the three errors below, which tell the Sink what to do next.

This module holds the contract and the two local transports (jsonl file, stdout); network
transports live in _syslog.py and _http.py.
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from detector.files import AppendFile


class DeliveryError(Exception):
    """The records were not accepted, and trying again later may work (connection refused,
    timeout, HTTP 5xx/429). `retry_after_s` is the endpoint's own hint, when it gave one."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class EndpointError(DeliveryError):
    """The endpoint refuses every record until someone changes its or our configuration (bad
    token, wrong path, untrusted certificate): the sink is marked disabled, keeps spooling,
    and retries slowly so that a fix on the other side is picked up without a restart."""


class ReaderGone(DeliveryError):
    """Standard output's reader closed it (`netad score --incidents - | head -1`): no later
    record can be written there, and nothing is wrong with the records."""


class RejectedError(Exception):
    """The endpoint refused these records themselves (HTTP 400/413/422, a datagram too big):
    retrying them can never work. A batch is retried one by one; a single record is moved to
    the spool's dead-letter directory."""


class Transport:
    """Base class: one endpoint. `send` is called from one thread at a time."""

    #: written to local storage synchronously: no spool, no delivery thread
    local: bool = False
    #: most records one `send` takes (a batch is acknowledged as a whole)
    batch_max: int = 1

    def send(self, records: list[bytes]) -> None:
        raise NotImplementedError

    def open(self) -> None:
        """Take what sending needs now (a file), when the sink starts: what cannot be had is a
        configuration error at start-up (OSError), not an incident lost at the first send."""

    def check(self) -> str | None:
        """What would keep this transport from working, found without side effects (nothing
        created, nothing sent): `netad check-config`. None when nothing is wrong."""
        return None

    def close(self) -> None:
        """Release sockets and files; `send` may reopen them."""


def unresolvable(host: str, port: int | None) -> str | None:
    """Why `host` cannot be resolved (a network transport's check), or None."""
    try:
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError) as exc:
        return f"cannot resolve {host}: {exc.args[-1] if exc.args else exc}"
    return None


def unwritable(path: Path) -> str | None:
    """Why `path` cannot be written or created by this process, found without creating
    anything: the file itself if it exists, else the nearest existing directory above it.
    (access(2) also answers for root: a read-only filesystem is refused to root too.)"""
    if path.exists():
        if path.is_dir():
            return None if os.access(path, os.W_OK | os.X_OK) else f"{path}: directory not writable"
        return None if os.access(path, os.W_OK) else f"{path}: not writable"
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                return f"{path}: {parent} is not a directory"
            if not os.access(parent, os.W_OK | os.X_OK):
                return f"{path}: cannot be created: {parent} is not writable"
            return None
    return None


class JsonlTransport(Transport):
    """Appends one record per line to a file, with size-based rotation.

    Local, so no spool: the spool would live on the same disk, and an fsync after each
    write gives the same durability. Rotation renames path -> path.1 -> ... -> path.N (the
    oldest beyond `backups` is removed: that is the retention the operator asked for). A file
    moved away by an outside logrotate is noticed (inode check) and a new one is opened.
    """

    local = True

    def __init__(self, path: Path, *, max_bytes: int | None = None, backups: int = 5, fsync: bool = True) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.fsync = fsync
        self._file = AppendFile(path, 0o640)

    def open(self) -> None:
        """Open (and create) the file now: a path that cannot be written is a configuration
        error at start-up, not an incident lost at the first write."""
        self._file.current()

    def check(self) -> str | None:
        return unwritable(self.path)

    def _rotate(self) -> None:
        self.close()
        oldest = self.path.with_name(f"{self.path.name}.{self.backups}")
        oldest.unlink(missing_ok=True)
        for index in range(self.backups - 1, 0, -1):
            older = self.path.with_name(f"{self.path.name}.{index}")
            if older.exists():
                os.replace(older, self.path.with_name(f"{self.path.name}.{index + 1}"))
        os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
        self._file.open()

    def send(self, records: list[bytes]) -> None:
        try:
            for record in records:
                line = record + b"\n"
                self._file.current()  # a file moved away by logrotate: a new one, its size from 0
                if self.max_bytes and self._file.size > 0 and self._file.size + len(line) > self.max_bytes:
                    self._rotate()
                self._file.append(line)  # or nothing of it: a full disk leaves no half line
            if self.fsync:
                os.fsync(self._file.current())
        except OSError as exc:
            self.close()
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._file.close()


class StdoutTransport(Transport):
    """One record per line on standard output, flushed after each event (local, no spool)."""

    local = True

    def send(self, records: list[bytes]) -> None:
        stream = sys.stdout  # looked up per call: the CLI or a test may have replaced it
        try:
            for record in records:
                text = record.decode("utf-8")
                try:
                    stream.write(text + "\n")
                except UnicodeEncodeError:  # a stdout that is not UTF-8 (LANG=C in old setups)
                    stream.write(text.encode("ascii", "backslashreplace").decode("ascii") + "\n")
            stream.flush()
        except BrokenPipeError as exc:
            raise ReaderGone("standard output's reader closed it") from exc
        except (OSError, ValueError) as exc:  # ValueError: write to a closed stream
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc
