"""A BPF filter checked without opening a capture: check-config's, and the daemon's before it
opens one. Imports no numba (check-config answers at once: tests/test_cli.py)."""

from __future__ import annotations

from detector.errors import CaptureError


def bpf_problem(bpf: str, snaplen: int) -> str | None:
    """Why BPF filter `bpf` does not compile (libpcap's words), or None; compiled for
    Ethernet, opening nothing. A filter that does not compile is the config's to mend (exit
    78): opening the capture with it exited 66, which the unit (Restart=on-failure, only 78
    kept from restarting) restarts every 5 s. Raises CaptureError without a libpcap binding,
    as a live capture does."""
    if not bpf:
        return None
    try:
        import pcapy
    except ImportError as exc:
        raise CaptureError(f"live capture needs pcapy-ng (pip install pcapy-ng): {exc}") from None
    try:
        pcapy.compile(pcapy.DLT_EN10MB, snaplen, bpf, 1, 0)
    except pcapy.PcapError as exc:
        return f"{bpf!r} does not compile: {exc}"
    return None
