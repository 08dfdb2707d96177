"""A private network namespace holding a veth pair: a wire to replay captures onto.

Used by `netad bench live` and the live-capture test: tcpreplay sends on one end
(`SEND_IFACE`), LiveCapture listens on the other (`CAPTURE_IFACE`). Both ends live inside
the namespace and carry loopback-range addresses only (127.77.0.1/30, 127.77.0.2/30), IPv6
is off (so the kernel sends no router or neighbour solicitations of its own onto the wire)
and nothing is routed outside: the host's interfaces never see a replayed packet. Needs root
(or CAP_SYS_ADMIN + CAP_NET_ADMIN) and iproute2.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from types import TracebackType

SEND_IFACE = "nvsend"
CAPTURE_IFACE = "nvcap"
_SEND_ADDR = "127.77.0.1/30"
_CAPTURE_ADDR = "127.77.0.2/30"
_MTU = 9000  # larger than any frame of the captures replayed: tcpreplay fails on frames > MTU


def missing_requirements(tools: tuple[str, ...] = ("ip", "tcpreplay")) -> str | None:
    """Why a veth namespace cannot be set up here, or None when it can."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, raw capture)"
    for tool in tools:
        if shutil.which(tool) is None:
            return f"needs {tool} on PATH (apt-get install {'iproute2' if tool == 'ip' else tool})"
    return None


def _run(argv: list[str], timeout_s: float = 10.0) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")


class VethNamespace:
    """`with VethNamespace() as ns:` a fresh namespace with the pair up; removed on exit
    (deleting the namespace deletes both veth ends)."""

    def __init__(self, prefix: str = "netad") -> None:
        self.name = f"{prefix}-{secrets.token_hex(4)}"
        self.send_iface = SEND_IFACE
        self.capture_iface = CAPTURE_IFACE
        self._created = False

    def exec_argv(self, argv: list[str]) -> list[str]:
        """argv to run a command inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def __enter__(self) -> VethNamespace:
        _run(["ip", "netns", "add", self.name])
        self._created = True
        try:
            self._setup()
        except BaseException:
            self.remove()
            raise
        return self

    def _setup(self) -> None:
        # IPv6 off before the links exist, so they inherit it: no DAD, MLD or RS packets.
        for key in ("all", "default"):
            _run(self.exec_argv(["sysctl", "-q", "-w", f"net.ipv6.conf.{key}.disable_ipv6=1"]))
        ip = ["ip", "-n", self.name]
        _run([*ip, "link", "add", SEND_IFACE, "mtu", str(_MTU), "type", "veth", "peer", "name", CAPTURE_IFACE, "mtu", str(_MTU)])
        _run([*ip, "addr", "add", _SEND_ADDR, "dev", SEND_IFACE])
        _run([*ip, "addr", "add", _CAPTURE_ADDR, "dev", CAPTURE_IFACE])
        _run([*ip, "link", "set", SEND_IFACE, "up"])
        _run([*ip, "link", "set", CAPTURE_IFACE, "up"])

    def remove(self) -> None:
        if self._created:
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
            self._created = False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.remove()
