"""Syslog transports: UDP (RFC 5426), TCP with octet-counting framing (RFC 6587) and TLS
(RFC 5425, the same framing inside TLS).

Where it stands: under sinks.py; it moves already-encoded RFC 5424 messages. A message is
"accepted" once it is written to the socket: plain syslog has no application-level
acknowledgement, so data in flight when a receiver dies can be lost by the kernel. Two things
narrow that window: octet counting (a message can carry anything and never be split or
joined), and a check before each write that the receiver has not closed the connection
(rsyslog's omfwd does the same): a closed connection is reopened before anything is written
into it. UDP is fire-and-forget by nature; use TCP or TLS where every incident counts.
"""

from __future__ import annotations

import select
import socket
import ssl

import structlog

from detector.alerting._transport import DeliveryError, EndpointError, RejectedError, TlsFiles, Transport, unresolvable

log = structlog.get_logger()

# RFC 5426 §3.2: receivers SHOULD take 2048 octets, and senders SHOULD keep to what the
# path carries; larger datagrams are fragmented, dropped by firewalls or cut by receivers.
UDP_MAX_BYTES = 2048


def frame(record: bytes) -> bytes:
    """RFC 6587 octet-counting: "<length> <message>"."""
    return b"%d %s" % (len(record), record)


class SyslogUdpTransport(Transport):
    """One datagram per message, none longer than `max_bytes` (a longer message is refused,
    and dead-lettered by the sink: the encoder shortens what it can first)."""

    batch_max = 100

    def __init__(self, host: str, port: int, max_bytes: int = UDP_MAX_BYTES) -> None:
        self.host, self.port = host, port
        self.max_bytes = max_bytes
        self._sock: socket.socket | None = None

    def check(self) -> str | None:
        return unresolvable(self.host, self.port)

    def send(self, records: list[bytes]) -> None:
        for record in records:
            if len(record) > self.max_bytes:
                raise RejectedError(f"message of {len(record)} bytes does not fit a {self.max_bytes}-byte UDP datagram")
        try:
            if self._sock is None:
                family, kind, proto, _, address = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_DGRAM)[0]
                self._sock = socket.socket(family, kind, proto)
                self._sock.connect(address)  # connected: an ICMP "unreachable" surfaces as an error
            for record in records:
                self._sock.send(record)
        except OSError as exc:
            self.close()
            raise DeliveryError(f"{type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


class SyslogStreamTransport(Transport):
    """TCP or, with an SSL context, TLS; reconnects on the next send after any failure."""

    batch_max = 100

    def __init__(self, host: str, port: int, *, timeout_s: float, tls: TlsFiles | None = None,
                 sink_name: str = "") -> None:
        self.host, self.port = host, port
        self.timeout_s = timeout_s
        self.tls = tls
        self.sink_name = sink_name
        self._sock: socket.socket | None = None
        self._connections = 0

    def check(self) -> str | None:
        return unresolvable(self.host, self.port)

    def _connect(self) -> socket.socket:
        try:
            raw = socket.create_connection((self.host, self.port), timeout=self.timeout_s)
        except OSError as exc:
            raise DeliveryError(f"connect {self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc
        if self.tls is None:
            sock = raw
        else:
            try:
                sock = self.tls.context().wrap_socket(raw, server_hostname=self.host)
            except ssl.SSLCertVerificationError as exc:
                raw.close()
                raise EndpointError(f"TLS certificate of {self.host}:{self.port} not trusted: {exc.verify_message}") from exc
            except (OSError, ssl.SSLError) as exc:
                raw.close()
                raise DeliveryError(f"TLS handshake with {self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc
        self._connections += 1
        event = "sink_connected" if self._connections == 1 else "sink_reconnected"
        log.info(event, sink=self.sink_name, peer=f"{self.host}:{self.port}", tls=self.tls is not None)
        return sock

    def _peer_closed(self, sock: socket.socket) -> bool:
        """Whether the receiver closed (or reset) the connection since the last write.

        Syslog receivers never send, so a readable socket means EOF, an error, or TLS
        housekeeping (a TLS 1.3 session ticket) that recv() consumes without returning data.
        """
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            sock.setblocking(False)
            try:
                return sock.recv(4096) == b""
            finally:
                sock.settimeout(self.timeout_s)
        except (ssl.SSLWantReadError, ssl.SSLWantWriteError, BlockingIOError):
            return False
        except (OSError, ValueError):
            return True

    def send(self, records: list[bytes]) -> None:
        if self._sock is not None and self._peer_closed(self._sock):
            log.info("sink_connection_closed_by_peer", sink=self.sink_name, peer=f"{self.host}:{self.port}")
            self.close()
        if self._sock is None:
            self._sock = self._connect()
        try:
            self._sock.sendall(b"".join(frame(r) for r in records))
        except OSError as exc:  # includes ssl.SSLError and timeouts
            self.close()
            raise DeliveryError(f"write to {self.host}:{self.port}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        if self._sock is None:
            return
        sock, self._sock = self._sock, None
        try:
            if isinstance(sock, ssl.SSLSocket):
                # close_notify, so that the receiver sees a clean end rather than a truncation
                # attack; bounded, and pointless when the peer is already gone.
                sock.settimeout(min(self.timeout_s, 1.0))
                sock = sock.unwrap()
        except (OSError, ValueError):
            pass  # the peer reset or closed first; there is nothing left to say to it
        finally:
            sock.close()
