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
import ssl
import sys
from pathlib import Path

import structlog

from detector.files import AppendFile

log = structlog.get_logger()


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
                self._file.sync()
        except OSError as exc:
            self.close()
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._file.close()


def tls_context(*, ca_file: Path | None, insecure: bool, cert_file: Path | None = None,
                key_file: Path | None = None) -> ssl.SSLContext:
    """Client context: the system trust store, or `ca_file` (e.g. a self-signed receiver's
    certificate); `insecure` skips verification (tests, labs). A client certificate is sent
    when given, for receivers that authenticate senders (rsyslog's x509/name)."""
    context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if cert_file:
        context.load_cert_chain(str(cert_file), str(key_file) if key_file else None)
    return context


class TlsFiles:
    """A client TLS context read from files that are renewed while netad runs for months: a
    short-lived client certificate (a day with step-ca, 90 days with ACME), or the receiver's
    self-signed certificate pinned as `ca=` and replaced. `context()`, called for each new
    connection, reads the files again once any of them changed (device, inode, size,
    mtime), and says so (`sink_tls_reloaded`). Files that cannot be read or do not match
    (a renewal half written, a key without its certificate yet) keep the last good context,
    said once per change (`sink_tls_files_unusable`). Before, the files were read once, as the
    sink was built, and a SIGHUP keeps a sink whose URL did not change: only a restart took a
    renewed certificate, and the sink stayed disabled or refused until then.
    The first read raises (OSError, ValueError): the config's error at start-up."""

    def __init__(self, *, ca_file: Path | None, insecure: bool, cert_file: Path | None = None,
                 key_file: Path | None = None, sink_name: str = "") -> None:
        self._files = (ca_file, cert_file, key_file)
        self._insecure = insecure
        self.sink_name = sink_name
        self._stamp = self._stamps()
        self._context = tls_context(ca_file=ca_file, insecure=insecure, cert_file=cert_file, key_file=key_file)

    def _stamps(self) -> tuple[tuple[int, ...] | None, ...]:
        out: list[tuple[int, ...] | None] = []
        for path in self._files:
            if path is None:
                out.append(None)
                continue
            try:
                st = path.stat()
            except OSError:
                out.append((-1,))
                continue
            out.append((st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns))
        return tuple(out)

    def context(self) -> ssl.SSLContext:
        stamp = self._stamps()
        if stamp == self._stamp:
            return self._context
        self._stamp = stamp
        ca_file, cert_file, key_file = self._files
        try:
            self._context = tls_context(ca_file=ca_file, insecure=self._insecure, cert_file=cert_file, key_file=key_file)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            log.warning("sink_tls_files_unusable", sink=self.sink_name, error=str(exc),
                        files=[str(f) for f in self._files if f is not None],
                        reason="the last good certificates are kept until the files change again")
            return self._context
        log.info("sink_tls_reloaded", sink=self.sink_name, files=[str(f) for f in self._files if f is not None])
        return self._context


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
