"""Capture stage, live source: a network interface -> an iterator of PacketBatch.

Where this stands in the pipeline::

    interface --libpcap (TPACKET_V3 ring)--> LiveCapture --> PacketBatch --> FlowTable --> ...

The live twin of `pcap.CaptureFile`: the same `parse_frames` turns the same bytes into the
same columns, so watching a link and replaying a capture of it give the same windows
(DESIGN.md, "one code path for live and offline"). Only the timestamps differ: here they
are the kernel's capture times (microseconds: pcapy-ng gives no nanosecond stamps).

How packets travel, and why:

- libpcap is opened through pcapy-ng with `create()` + settings + `activate()`, so the ring
  size (`buffer_mb`), snap length and promiscuous mode are ours to set, and the handle is
  non-blocking: the loop waits in `select()` on the handle's fd with a timeout, never inside
  libpcap, so `stop` and the wall clock are honoured on an idle link.
- `next_batch(n)` (pcapy-ng >= 2.0) drains up to n frames from the ring in one call and
  returns them as one bytes object plus packed (sec, usec, offset, caplen) records: no
  Python object per packet. Measured through pcapy-ng's offline handle on the bench
  capture (libpcap's own file reading included), one core: next_batch 0.6 µs per packet;
  dispatch() with a Python callback that copies each frame into the buffer 2.1 µs; next()
  0.8 µs before any copying. At 1 Mpkt/s the whole budget is 1 µs.
- Frames are copied into a preallocated frame buffer with offsets/caplens/ts arrays and
  parsed once per buffer fill. The buffer is small (4 MiB) on purpose: frames are parsed
  while they are still in the CPU cache (the parse is bound by one cache miss per frame).
  Copy + parse + join of 1,024-frame chunks of the bench capture (790-byte frames), one
  core, one run: 4 MiB buffer 5.5 Mpkt/s, 2 MiB 5.5, 1 MiB 4.6 (more parse calls),
  16 MiB 3.2, 64 MiB 3.1. The parsed columns (about 50 bytes per packet) are then joined
  into batches of up to `batch_packets` rows.
- A batch is handed on when it is full or every `poll_s`, whichever comes first; when the
  link is idle an EMPTY batch comes every `poll_s`, so the daemon can close windows on the
  wall clock (DESIGN.md, "Time").
- Kernel drops (ring full: the reader is too slow) and interface drops are polled from
  pcap_stats about once a second; a change is logged as `capture_drops_changed`.

- With `fanout_group`, the socket joins that AF_PACKET fanout group in PACKET_FANOUT_HASH
  mode (capture.packets.fanout: N capture workers on one interface). Since Linux 4.7
  (commit eb70db87, "packet: Use symmetric hash for PACKET_FANOUT_HASH") the kernel hashes
  the protocol, addresses and ports symmetrically, so both directions of a flow reach one
  socket, in the order they arrived; IP fragments without ports hash apart from their
  first fragment (no PACKET_FANOUT_FLAG_DEFRAG: a reassembled packet is not what one
  socket sees). Suricata's `cluster_flow` and Zeek's AF_Packet `FANOUT_HASH` are this mode.

Opening errors (no such interface, no permission, bad BPF filter, unsupported link type)
raise CaptureError at construction, with what to do about them.

An interface that goes down or away while it is captured (a cable pulled, `ip link set
down`, a USB or hot-plugged NIC removed, a VM's NIC detached: libpcap says "The interface
went down") does not end the capture. It is logged (`capture_interface_lost`), the handle is
closed, and the capture tries to open the interface again every `_REOPEN_S`, saying so every
minute it stays away (`capture_interface_still_lost`) and when it is back
(`capture_interface_back`, with the seconds it was lost); meanwhile empty batches go on
coming every `poll_s`, so windows close on the wall clock as on an idle link. An interface
that is there but down when the capture starts is waited for the same way; one that is not
there at all is still a CaptureError (a name mistyped). Before, the
error ended the iteration and the daemon with it (exit 1), and every restart failed while
the link stayed down. Suricata's AF_PACKET source does the same (it reopens a socket whose
interface went down). The kernel and interface drops are counted over every handle.
"""

from __future__ import annotations

import importlib.metadata
import os
import select
import socket
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Any

import numpy as np
import structlog

from detector.capture.packets._parse import SUPPORTED_LINKTYPES, parse_frames
from detector.contracts import PacketBatch
from detector.errors import CaptureError

log = structlog.get_logger()

# Frames are parsed once this much of them has been copied (see the module docstring).
_FRAME_BUFFER_BYTES = 4 * 1024 * 1024
# Most frames one next_batch() call may return: bounds the bytes object pcapy-ng builds
# (4,096 full-size Ethernet frames are 6 MB).
_MAX_FRAMES_PER_CALL = 4096
# TPACKET_V3 hands a ring block to user space when it is full or this old: the longest a
# packet can wait in the kernel on a slow link.
_RING_BLOCK_TIMEOUT_MS = 50
_STATS_INTERVAL_S = 1.0
_REOPEN_S = 1.0  # how often an interface that went down or away is tried again
_STILL_LOST_LOG_S = 60.0  # how often one still away is said again

# pcap_activate() results (pcap/pcap.h); negative ones are errors.
_PCAP_ERROR_NO_SUCH_DEVICE = -5
_PCAP_ERROR_PERM_DENIED = -8
_PCAP_ERROR_IFACE_NOT_UP = -9
_PCAP_ERROR_PROMISC_PERM_DENIED = -11

# linux/if_packet.h
_SOL_PACKET = 263
_PACKET_FANOUT = 18
_PACKET_FANOUT_HASH = 0


def _pcapy() -> Any:
    """pcapy-ng, imported on first use: the file source and the tests of everything else
    must not need libpcap."""
    try:
        import pcapy
    except ImportError as exc:
        raise CaptureError(f"live capture needs pcapy-ng (pip install pcapy-ng): {exc}") from None
    try:
        version = importlib.metadata.version("pcapy-ng")
    except importlib.metadata.PackageNotFoundError:
        version = "0"  # the old, unmaintained pcapy: no next_batch
    if int(version.split(".")[0]) < 2:
        raise CaptureError(f"live capture needs pcapy-ng >= 2.0 (Reader.next_batch); found version {version}")
    return pcapy


def interface_names() -> list[str]:
    """Network interfaces of this network namespace (for error messages)."""
    try:
        return sorted(os.listdir("/sys/class/net"))
    except OSError:
        return []


class _FrameBuffer:
    """Raw frames awaiting the parse: frame i is data[offsets[i] : offsets[i] + caplens[i]]."""

    def __init__(self, capacity_bytes: int, capacity_frames: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.data = np.empty(capacity_bytes, dtype=np.uint8)
        self.offsets = np.empty(capacity_frames, dtype=np.int64)
        self.caplens = np.empty(capacity_frames, dtype=np.int64)
        self.ts_ns = np.empty(capacity_frames, dtype=np.int64)
        self.used_bytes = 0
        self.frames = 0

    def fits(self, n_bytes: int, n_frames: int) -> bool:
        return self.used_bytes + n_bytes <= self.data.shape[0] and self.frames + n_frames <= self.offsets.shape[0]

    def grow(self, n_bytes: int, n_frames: int) -> None:
        """Make room for one chunk bigger than the buffer (only ever when empty); `parse`
        shrinks it back, so giant frames (GRO, jumbo) cost memory only while they pass."""
        if n_bytes > self.data.shape[0]:
            self.data = np.empty(n_bytes, dtype=np.uint8)
        if n_frames > self.offsets.shape[0]:
            self.offsets = np.empty(n_frames, dtype=np.int64)
            self.caplens = np.empty(n_frames, dtype=np.int64)
            self.ts_ns = np.empty(n_frames, dtype=np.int64)

    def add(self, chunk: bytes, meta: np.ndarray) -> None:
        """Append one next_batch() result: frame bytes and (sec, usec, offset, caplen) rows."""
        n, start, size = meta.shape[0], self.frames, len(chunk)
        self.data[self.used_bytes : self.used_bytes + size] = np.frombuffer(chunk, dtype=np.uint8)
        self.offsets[start : start + n] = meta[:, 2] + self.used_bytes
        self.caplens[start : start + n] = meta[:, 3]
        self.ts_ns[start : start + n] = meta[:, 0].astype(np.int64) * 1_000_000_000 + meta[:, 1].astype(np.int64) * 1000
        self.used_bytes += size
        self.frames += n

    def parse(self, linktype: int) -> PacketBatch:
        n = self.frames
        batch = parse_frames(self.data, self.offsets[:n], self.caplens[:n], self.ts_ns[:n], linktype)
        self.used_bytes = self.frames = 0
        if self.data.shape[0] > self.capacity_bytes:
            self.data = np.empty(self.capacity_bytes, dtype=np.uint8)
        return batch


class _InterfaceDown(CaptureError):
    """The interface is there but down: at start, waited for as if lost while captured."""


class LiveCapture:
    """Iterator of PacketBatch from a live interface, through libpcap.

    Each batch holds the IP rows of up to `batch_packets` frames; while the link is idle an
    empty batch comes every `poll_s` seconds. Iteration ends once `stop` is set to True
    (from a signal handler, or another thread), within `poll_s`; the handle is then closed.
    `stats()` gives the counters. Raises CaptureError at construction when the interface
    does not exist, capturing is not permitted, or the BPF filter does not compile.
    """

    def __init__(
        self,
        interface: str,
        snaplen: int = 262144,
        buffer_mb: int = 64,
        promisc: bool = True,
        bpf: str = "",
        batch_packets: int = 65536,
        poll_s: float = 0.2,
        fanout_group: int | None = None,
    ) -> None:
        if batch_packets < 1:
            raise ValueError(f"batch_packets must be positive, not {batch_packets}")
        if poll_s <= 0:
            raise ValueError(f"poll_s must be positive, not {poll_s}")
        self.interface = interface
        self.snaplen = int(snaplen)
        self.buffer_mb = int(buffer_mb)
        self.promisc = bool(promisc)
        self.bpf = bpf
        self.batch_packets = int(batch_packets)
        self.poll_s = float(poll_s)
        self.fanout_group = fanout_group
        self.stop = False
        self.packets = 0  # frames received from the ring (IP, non-IP and malformed)
        self.malformed = 0
        self.non_ip = 0
        self.kernel_drops = 0  # ps_drop: the ring was full, the reader fell behind
        self.interface_drops = 0  # ps_ifdrop: dropped by the interface/driver
        self.interface_lost = 0  # times the interface went down or away while captured
        self._pcap_error = _pcapy().PcapError
        self._closed = False
        self._drops_before = (0, 0)  # kernel and interface drops of the handles before this one
        self._lost_since: float | None = None  # monotonic time the interface was lost, while it is
        self._next_reopen_s = self._last_lost_log_s = 0.0
        self._buffer = _FrameBuffer(_FRAME_BUFFER_BYTES, min(self.batch_packets, _MAX_FRAMES_PER_CALL * 16))
        self._last_stats_s = time.monotonic()
        self.linktype = -1  # the interface's, once opened
        self._handle: Any = None
        self._fd = -1
        try:
            self._handle = self._open()
            self._fd = self._handle.getfd()
        except _InterfaceDown as exc:  # there, but down (a cable unplugged at boot): waited for, as once lost
            self._lose([], str(exc))

    # ---------------------------------------------------------------- opening
    def _open(self) -> Any:
        pcapy = _pcapy()
        name = self.interface
        try:
            handle = pcapy.create(name)
            handle.set_snaplen(self.snaplen)
            handle.set_promisc(1 if self.promisc else 0)
            handle.set_buffer_size(self.buffer_mb * 1024 * 1024)
            handle.set_timeout(_RING_BLOCK_TIMEOUT_MS)
            status = handle.activate()
        except pcapy.PcapError as exc:
            raise CaptureError(f"interface {name!r}: cannot open: {exc}") from None
        if status < 0:
            handle.close()
            raise (_InterfaceDown if status == _PCAP_ERROR_IFACE_NOT_UP else CaptureError)(self._activate_error(name, status))
        try:
            if self.bpf:
                handle.setfilter(self.bpf)
            handle.setnonblock(1)
            if self.fanout_group is not None:
                self._join_fanout(handle.getfd(), self.fanout_group)
        except (pcapy.PcapError, CaptureError) as exc:
            handle.close()
            if isinstance(exc, CaptureError):
                raise
            what = f"BPF filter {self.bpf!r}" if self.bpf else "setup"
            raise CaptureError(f"interface {name!r}: {what}: {exc}") from None
        # On Linux the DLT numbers of the link types the parser decodes are their LINKTYPE
        # numbers too (EN10MB 1, LINUX_SLL 113, LINUX_SLL2 276; DLT_RAW 12 is read as raw IP).
        self.linktype = int(handle.datalink())
        if self.linktype not in SUPPORTED_LINKTYPES:
            handle.close()
            raise CaptureError(
                f"interface {name!r}: link type {self.linktype} is not supported; netad reads {sorted(SUPPORTED_LINKTYPES)}"
            )
        if status > 0:  # a warning, e.g. promiscuous mode not supported: capture works
            log.warning("capture_opened_with_warning", interface=name, pcap_status=status)
        return handle

    def _join_fanout(self, fd: int, group: int) -> None:
        """Join AF_PACKET fanout group `group` (0-65535), flows hashed (module docstring)."""
        sock = socket.fromfd(fd, socket.AF_PACKET, socket.SOCK_RAW)  # a dup of libpcap's socket
        try:
            sock.setsockopt(_SOL_PACKET, _PACKET_FANOUT, (group & 0xFFFF) | (_PACKET_FANOUT_HASH << 16))
        except OSError as exc:
            raise CaptureError(f"interface {self.interface!r}: cannot join fanout group {group}: {exc}") from None
        finally:
            sock.close()

    @staticmethod
    def _activate_error(name: str, status: int) -> str:
        if status == _PCAP_ERROR_NO_SUCH_DEVICE:
            known = ", ".join(interface_names()) or "none visible"
            return f"interface {name!r} does not exist (interfaces here: {known})"
        if status in (_PCAP_ERROR_PERM_DENIED, _PCAP_ERROR_PROMISC_PERM_DENIED):
            promisc = " in promiscuous mode" if status == _PCAP_ERROR_PROMISC_PERM_DENIED else ""
            return (
                f"permission denied capturing on interface {name!r}{promisc}: run as root or grant "
                f"CAP_NET_RAW and CAP_NET_ADMIN (the systemd unit does)"
            )
        if status == _PCAP_ERROR_IFACE_NOT_UP:
            return f"interface {name!r} is down: bring it up (ip link set {name} up)"
        return f"interface {name!r}: libpcap could not activate the capture (pcap_activate status {status})"

    # ---------------------------------------------------------------- reading
    def __iter__(self) -> Iterator[PacketBatch]:
        if self._closed:
            raise CaptureError(f"interface {self.interface!r}: the capture is closed")
        try:
            yield from self._batches()
        finally:
            self._poll_stats(force=True)
            self.close()

    def _batches(self) -> Iterator[PacketBatch]:
        parts: list[PacketBatch] = []
        pending = 0  # frames in `parts` and in the frame buffer
        deadline = time.monotonic() + self.poll_s
        while not self.stop:
            if self._handle is None:
                self._reopen()
            try:
                while self._handle is not None and pending < self.batch_packets:
                    got = self._read_chunk(parts, self.batch_packets - pending)
                    if not got:
                        break
                    pending += got
            except self._pcap_error as exc:  # the interface went down or away
                self._lose(parts, str(exc))
            now = time.monotonic()
            if pending >= self.batch_packets or now >= deadline:
                yield self._emit(parts)
                parts, pending = [], 0
                deadline = now + self.poll_s
                self._poll_stats()
                continue
            # Nothing more right now: sleep until the ring hands over a block or it is time
            # to emit. Never inside libpcap: a blocking read would not see `stop`.
            if self._handle is not None:
                select.select([self._fd], [], [], deadline - now)
            else:
                time.sleep(max(0.0, min(deadline, self._next_reopen_s) - now))
        # stopping: what the ring already holds is read too, so that a SIGTERM loses no packet
        # the kernel had handed over (a stop seen right after a batch left them unread)
        try:
            while self._handle is not None and (got := self._read_chunk(parts, self.batch_packets)):
                pending += got
        except self._pcap_error as exc:
            self._lose(parts, str(exc))
        if pending:
            yield self._emit(parts)

    def _lose(self, parts: list[PacketBatch], reason: str) -> None:
        """The interface went down or away: the frames already read are kept (parsed now, in
        this handle's link type), the handle closed, and the interface tried again from now on."""
        if self._buffer.frames:
            parts.append(self._buffer.parse(self.linktype))
        self._poll_stats(force=True)
        self._drops_before = (self.kernel_drops, self.interface_drops)
        self._close_handle()
        self.interface_lost += 1
        self._lost_since = self._last_lost_log_s = time.monotonic()
        self._next_reopen_s = self._lost_since + _REOPEN_S
        log.warning("capture_interface_lost", interface=self.interface, reason=reason, packets=self.packets,
                    action=f"windows close on the clock meanwhile; opened again once it is back (tried every {_REOPEN_S:g} s)")

    def _reopen(self) -> None:
        now = time.monotonic()
        if now < self._next_reopen_s:
            return
        self._next_reopen_s = now + _REOPEN_S
        assert self._lost_since is not None
        try:
            handle = self._open()
        except CaptureError as exc:
            if now - self._last_lost_log_s >= _STILL_LOST_LOG_S:
                self._last_lost_log_s = now
                log.warning("capture_interface_still_lost", interface=self.interface, reason=str(exc),
                            lost_s=round(now - self._lost_since, 1))
            return
        self._handle, self._fd = handle, handle.getfd()
        log.info("capture_interface_back", interface=self.interface, lost_s=round(now - self._lost_since, 1))
        self._lost_since = None

    def _read_chunk(self, parts: list[PacketBatch], room: int) -> int:
        """Move up to `room` frames from the ring into the frame buffer; returns how many."""
        chunk, packed = self._handle.next_batch(min(room, _MAX_FRAMES_PER_CALL))
        if not packed:
            return 0
        meta = np.frombuffer(packed, dtype=np.uint32).reshape(-1, 4)
        n = meta.shape[0]
        buf = self._buffer
        if not buf.fits(len(chunk), n):
            if buf.frames:
                parts.append(buf.parse(self.linktype))
            if not buf.fits(len(chunk), n):
                buf.grow(len(chunk), n)
        buf.add(chunk, meta)
        self.packets += n
        return n

    def _emit(self, parts: list[PacketBatch]) -> PacketBatch:
        if self._buffer.frames:
            parts.append(self._buffer.parse(self.linktype))
        batch = parts[0] if len(parts) == 1 else PacketBatch.concat(parts)
        self.malformed += batch.malformed
        self.non_ip += batch.non_ip
        return batch

    # ---------------------------------------------------------------- counters
    def _poll_stats(self, force: bool = False) -> None:
        now = time.monotonic()
        if self._handle is None or (not force and now - self._last_stats_s < _STATS_INTERVAL_S):
            return
        self._last_stats_s = now
        try:
            _received, kernel, interface = self._handle.stats()
        except self._pcap_error:  # the interface just went away: the next read says so (_lose)
            return
        kernel, interface = kernel + self._drops_before[0], interface + self._drops_before[1]
        if (kernel, interface) != (self.kernel_drops, self.interface_drops):
            log.warning(
                "capture_drops_changed",
                interface=self.interface,
                kernel_drops=kernel,
                interface_drops=interface,
                new_kernel_drops=kernel - self.kernel_drops,
                new_interface_drops=interface - self.interface_drops,
                packets=self.packets,
            )
            self.kernel_drops, self.interface_drops = kernel, interface

    def stats(self) -> dict[str, int]:
        """Counters so far: frames received, kernel and interface drops, times the interface
        was lost, malformed, non-IP."""
        self._poll_stats(force=True)
        return {
            "packets": self.packets,
            "kernel_drops": self.kernel_drops,
            "interface_drops": self.interface_drops,
            "interface_lost": self.interface_lost,
            "malformed": self.malformed,
            "non_ip": self.non_ip,
        }

    # ---------------------------------------------------------------- lifecycle
    def close(self) -> None:
        self._closed = True
        self._close_handle()

    def _close_handle(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> LiveCapture:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
