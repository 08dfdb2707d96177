"""systemd notify protocol (sd_notify): READY, STATUS, WATCHDOG, RELOADING, STOPPING.

Where it stands: beside the daemon's run loop, which decides *when* to say what; this module
only knows how. Datagrams go to $NOTIFY_SOCKET directly (the protocol is newline-separated
VAR=value lines in one datagram; no libsystemd needed); everything is a no-op when the
daemon was not started by systemd (or a test) with a notify socket.

The watchdog interval comes from $WATCHDOG_USEC (set by systemd from WatchdogSec=); as
sd_watchdog_enabled() does, it only applies when $WATCHDOG_PID is unset or names this
process, so a child that inherited the environment never pings for its parent.
"""

from __future__ import annotations

import os
import socket
import time


class Notifier:
    def __init__(self, address: str | None = None, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = address if address is not None else env.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._address: str | None = None
        if address:
            if address.startswith("@"):  # abstract namespace socket
                address = "\0" + address[1:]
            self._address = address
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.watchdog_interval_s: float | None = None
        usec, pid = env.get("WATCHDOG_USEC", ""), env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            # ping at half the timeout, as sd_watchdog_enabled(3) recommends
            self.watchdog_interval_s = int(usec) / 2e6

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def notify(self, *fields: str) -> None:
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto("\n".join(fields).encode(), self._address)
        except OSError:
            pass  # systemd went away or the socket is full: nothing useful to do about it

    def ready(self, status: str = "") -> None:
        self.notify("READY=1", *([f"STATUS={status}"] if status else []))

    def status(self, text: str) -> None:
        self.notify(f"STATUS={text}")

    def watchdog(self) -> None:
        self.notify("WATCHDOG=1")

    def reloading(self) -> None:
        # Type=notify-reload (systemd >= 253) wants MONOTONIC_USEC with RELOADING=1 to match
        # the reload to the request; older systemd ignores it
        self.notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")

    def stopping(self, status: str = "") -> None:
        self.notify("STOPPING=1", *([f"STATUS={status}"] if status else []))

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
