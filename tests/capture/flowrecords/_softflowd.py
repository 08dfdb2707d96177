"""softflowd, a real NetFlow/IPFIX exporter, reading a capture file and exporting it over
UDP: shared by the collector tests and the daemon's flow-source tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SOFTFLOWD = shutil.which("softflowd")
needs_softflowd = pytest.mark.skipif(SOFTFLOWD is None, reason="softflowd is not installed (apt-get install softflowd)")


def run_softflowd(capture: Path, port: int, args: list[str], cwd: Path, timeout_s: float = 20) -> tuple[str, int]:
    """softflowd reads `capture` (-a: its clock follows the capture) and exports to
    127.0.0.1:`port`; returns its report and the number of records it says it exported."""
    assert SOFTFLOWD is not None
    # short relative paths for the pid file and control socket: softflowd 1.1.0 hangs at
    # exit when its control socket's path is longer than 12 characters
    done = subprocess.run([SOFTFLOWD, "-r", str(capture), "-n", f"127.0.0.1:{port}", "-a", "-d", "-p", "pid", "-c", "ctl", *args],
                          cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    assert 0 == done.returncode, done.stderr
    found = re.search(r"Flows exported: \d+ \((\d+) records\)", done.stdout)
    assert found is not None, done.stdout
    return done.stdout, int(found.group(1))


def softflowd_datagrams(capture: Path, args: list[str], cwd: Path) -> list[bytes]:
    """What softflowd exports of `capture` (run_softflowd), as the datagrams it sent, in order."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 24)
        sock.bind(("127.0.0.1", 0))
        run_softflowd(capture, sock.getsockname()[1], args, cwd)
        sock.settimeout(0.5)
        datagrams = []
        try:
            while True:
                datagrams.append(sock.recv(65535))
        except TimeoutError:
            return datagrams
