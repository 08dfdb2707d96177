"""Capture stage, file source: a pcap or pcapng file -> an iterator of PacketBatch.

Where this stands in the pipeline::

    capture file --CaptureFile--> PacketBatch, PacketBatch, ... --> FlowTable --> ...

The file is read in large chunks into one reusable buffer; the numba kernels in `_parse`
walk the record headers (offsets, lengths, timestamps) and parse the frames, so Python runs
once per batch, never once per packet. The format is sniffed from the magic number:

- pcap: microsecond (a1b2c3d4) and nanosecond (a1b23c4d) files in either byte order.
- pcapng: sections in either byte order, interfaces with their own link type, if_tsresol
  (powers of 10 and of 2) and if_tsoffset; Enhanced, Simple and obsolete Packet Blocks;
  other blocks are skipped. When interfaces differ in link type every frame is parsed with
  its own interface's link type in one pass, so rows stay in capture order (not re-sorted
  by timestamp: a multi-interface file need not be in timestamp order, and neither is the
  wire).

Open errors (missing file, not a capture, unsupported link type) raise CaptureError. Damage
inside the file (a truncated or corrupt record) is not an error: everything before it is
yielded, `damage` says what and where, and iteration ends cleanly (DESIGN.md, "Bad input
never kills the daemon").
"""

from __future__ import annotations

import queue
import struct
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from detector.capture.packets._dns import dns_answers
from detector.capture.packets._parse import (
    MAX_BLOCK_BYTES,
    MAX_CAPLEN_BYTES,
    SUPPORTED_LINKTYPES,
    WALK_BAD_BLOCK_LEN,
    WALK_BAD_CAPLEN,
    WALK_BAD_INTERFACE,
    WALK_BAD_TRAILER,
    WALK_BLOCK,
    WALK_FULL,
    WALK_NEED_MORE,
    new_columns,
    parse_frames,
    parse_into,
    tsresol_units,
    walk_pcap,
    walk_pcapng,
)
from detector.contracts import PACKET_COLUMNS, DnsAnswers, PacketBatch
from detector.errors import CaptureError

_INITIAL_BUFFER_BYTES = 16 * 1024 * 1024
# The most one read brings into the buffer: the record walk and the frame parse then find
# the bytes still in the CPU's cache (L2 is 1 MiB a core here), where the copy from the page
# cache left them. Reads filling the whole 16 MiB buffer left them in main memory, and the
# walk, a chain of dependent loads one record apart, waited on memory at every record (on a
# 790-byte-frame capture: walk + parse 490 ms per million frames with 16 MiB reads, 213 ms
# with 1 MiB reads and the bytes kept at the front of the buffer).
_READ_BYTES = 1024 * 1024
# How much of a pcapng file is read at open to learn its interfaces' link types.
_HEAD_BYTES = 1024 * 1024

_PCAP_MAGIC_USEC = 0xA1B2C3D4
_PCAP_MAGIC_NSEC = 0xA1B23C4D
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"
_WALK_SECTION_DAMAGE = 20  # a section header or interface block Python could not accept
_MAX_TSOFFSET_S = 1 << 32  # an interface's if_tsoffset beyond 136 years is damage (and would overflow ns)

_LINKTYPE_NAMES = {
    0: "NULL",
    1: "ETHERNET",
    12: "RAW (DLT 12)",
    14: "RAW (DLT 14)",
    101: "RAW",
    108: "LOOP",
    113: "LINUX_SLL",
    228: "IPV4",
    229: "IPV6",
    276: "LINUX_SLL2",
}


@dataclass
class RawRecords:
    """Every record of a capture file, unparsed: frame i is data[offsets[i] : offsets[i] +
    caplens[i]]. For tools that copy or rewrite records (splice, the pcap writer)."""

    data: np.ndarray  # uint8, the whole file
    offsets: np.ndarray  # int64, byte offset of each frame in data
    caplens: np.ndarray  # int64, captured bytes
    origlens: np.ndarray  # int64, bytes on the wire
    ts_ns: np.ndarray  # int64, ns since the Unix epoch
    linktype: int  # the file's link type (pcapng: the first interface's)
    linktypes: np.ndarray | None = None  # int64 per record, only when interfaces differ
    damage: str | None = None  # as CaptureFile.damage: the records stop before it

    def __len__(self) -> int:
        return int(self.offsets.shape[0])

    def frame(self, index: int) -> bytes:
        start = int(self.offsets[index])
        return self.data[start : start + int(self.caplens[index])].tobytes()

    def parse(self) -> PacketBatch:
        if len(self) == 0:  # also a pcapng file without interfaces, whose linktype is -1
            return PacketBatch.empty()
        linktype = self.linktypes if self.linktypes is not None else self.linktype
        return parse_frames(self.data, self.offsets, self.caplens, self.ts_ns, linktype)


class _Records:
    """Output arrays the record walk fills, one slot per record of a batch."""

    def __init__(self, capacity: int) -> None:
        self.offsets = np.empty(capacity, dtype=np.int64)
        self.caplens = np.empty(capacity, dtype=np.int64)
        self.origlens = np.empty(capacity, dtype=np.int64)
        self.ts_ns = np.empty(capacity, dtype=np.int64)
        self.iface = np.zeros(capacity, dtype=np.int64)


class _PcapWalker:
    """The record walk of a classic pcap file (one link type, fixed 16-byte headers)."""

    format_name = "pcap"
    data_start = 24

    def __init__(self, big_endian: bool, frac_ns: int, linktype: int) -> None:
        self.big_endian = big_endian
        self.frac_ns = frac_ns
        self.linktypes = [linktype]
        self._detail = 0

    def step(
        self, buf: np.ndarray, pos: int, valid: int, max_records: int, out: _Records, base: int
    ) -> tuple[int, int, int]:
        n, pos, status, self._detail = walk_pcap(
            buf, pos, valid, self.big_endian, self.frac_ns, max_records,
            out.offsets, out.caplens, out.origlens, out.ts_ns, base,
        )
        return int(n), int(pos), int(status)

    def frame_linktypes(self, iface: np.ndarray) -> int | np.ndarray:
        return self.linktypes[0]

    def damage_message(self, status: int, buf: np.ndarray, pos: int, valid: int, file_pos: int) -> str:
        if status == WALK_BAD_CAPLEN:
            return (
                f"corrupt record header at byte {file_pos}: captured length {self._detail} "
                f"exceeds the {MAX_CAPLEN_BYTES}-byte limit; stopped there"
            )
        if valid - pos < 16:
            return f"truncated: the file ends inside a record header at byte {file_pos} ({valid - pos} of 16 bytes)"
        return (
            f"truncated: the record at byte {file_pos} claims {self._detail} captured bytes, "
            f"only {valid - pos - 16} remain in the file"
        )


class _PcapngWalker:
    """The block walk of a pcapng file. The kernel walks packet and unknown blocks; section
    headers and interface descriptions (a handful per file) are read here in Python."""

    format_name = "pcapng"
    data_start = 0

    def __init__(self) -> None:
        self.big_endian = False
        self.linktypes: list[int] = []  # every interface of every section, in file order
        self._section_base = 0  # index in linktypes of the current section's interface 0
        # the current section's interfaces: rows mul, div, shift, offset_ns, snaplen; columns
        # grown by doubling, so that a file of thousands of interfaces reads in linear time
        self._if_columns = np.zeros((5, 16), dtype=np.int64)
        self._n_interfaces = 0
        self._arrays = self._interface_arrays()
        self._linktype_column = np.zeros(16, dtype=np.int64)  # every interface's, as linktypes
        self._distinct_linktypes: set[int] = set()
        self._last_ts_ns = 0
        self._detail = 0
        self._message = ""

    def step(
        self, buf: np.ndarray, pos: int, valid: int, max_records: int, out: _Records, base: int
    ) -> tuple[int, int, int]:
        total = 0
        while True:
            n, pos, status, self._last_ts_ns, self._detail = walk_pcapng(
                buf, pos, valid, self.big_endian, *self._arrays, self._section_base,
                self._last_ts_ns, max_records - total,
                out.offsets, out.caplens, out.origlens, out.ts_ns, out.iface, base + total,
            )
            total += int(n)
            pos = int(pos)
            if status != WALK_BLOCK:
                return total, pos, int(status)
            status, pos = self._read_block(buf, pos, valid)
            if status != WALK_FULL:
                return total, pos, status

    def _read_block(self, buf: np.ndarray, pos: int, valid: int) -> tuple[int, int]:
        """Read the section header or interface block at buf[pos]: (WALK_FULL, next
        position), or (WALK_NEED_MORE or _WALK_SECTION_DAMAGE, pos). Messages keep a {pos}
        placeholder: only damage_message knows the file offset of buf[pos]."""
        if valid - pos < 12:
            self._detail = 12  # at least
            return WALK_NEED_MORE, pos
        head = buf[pos : pos + 12].tobytes()
        if head[:4] == _PCAPNG_SHB:
            if head[8:12] == b"\x4d\x3c\x2b\x1a":
                big_endian = False
            elif head[8:12] == b"\x1a\x2b\x3c\x4d":
                big_endian = True
            else:
                self._message = f"bad section header at byte {{pos}}: byte-order magic {head[8:12].hex()}"
                return _WALK_SECTION_DAMAGE, pos
            endian = ">" if big_endian else "<"
            (block_len,) = struct.unpack(endian + "I", head[4:8])
            if block_len < 28 or block_len % 4 or block_len > MAX_BLOCK_BYTES:
                self._message = f"bad section header at byte {{pos}}: block length {block_len}"
                return _WALK_SECTION_DAMAGE, pos
            if valid - pos < block_len:
                self._detail = block_len
                return WALK_NEED_MORE, pos
            block = buf[pos : pos + block_len].tobytes()
            (major,) = struct.unpack(endian + "H", block[12:14])
            (trailer,) = struct.unpack(endian + "I", block[-4:])
            if major != 1 or trailer != block_len:
                self._message = f"bad section header at byte {{pos}}: version {major}, trailer {trailer}"
                return _WALK_SECTION_DAMAGE, pos
            # A new section: new byte order, and its interfaces are numbered from 0 again.
            self.big_endian = big_endian
            self._section_base = len(self.linktypes)
            self._n_interfaces = 0
        else:  # an interface description; the kernel has checked its length and trailer
            endian = ">" if self.big_endian else "<"
            (block_len,) = struct.unpack(endian + "I", head[4:8])
            block = buf[pos : pos + block_len].tobytes()
            if block_len < 20:
                self._message = f"bad interface description at byte {{pos}}: block length {block_len}"
                return _WALK_SECTION_DAMAGE, pos
            linktype, _reserved, snaplen = struct.unpack(endian + "HHI", block[8:16])
            tsresol, offset_s = _interface_options(block[16:-4], endian)
            if abs(offset_s) > _MAX_TSOFFSET_S:
                self._message = (f"bad interface description at byte {{pos}}: if_tsoffset {offset_s} s "
                                 f"(more than {_MAX_TSOFFSET_S} s from the epoch: no clock is that far off)")
                return _WALK_SECTION_DAMAGE, pos
            mul, div, shift = tsresol_units(tsresol)
            self._add_interface((mul, div, shift, offset_s * 1_000_000_000, snaplen), linktype)
        self._arrays = self._interface_arrays()
        return WALK_FULL, pos + block_len

    def _add_interface(self, columns: tuple[int, int, int, int, int], linktype: int) -> None:
        n, total = self._n_interfaces, len(self.linktypes)
        if n == self._if_columns.shape[1]:
            self._if_columns = np.concatenate([self._if_columns, np.zeros_like(self._if_columns)], axis=1)
        if total == self._linktype_column.shape[0]:
            self._linktype_column = np.concatenate([self._linktype_column, np.zeros_like(self._linktype_column)])
        self._if_columns[:, n] = columns
        self._n_interfaces = n + 1
        self._linktype_column[total] = linktype
        self.linktypes.append(linktype)
        self._distinct_linktypes.add(linktype)

    def _interface_arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(self._if_columns[k, : self._n_interfaces] for k in range(5))

    def frame_linktypes(self, iface: np.ndarray) -> int | np.ndarray:
        if len(self._distinct_linktypes) == 1 and self.linktypes[0] in SUPPORTED_LINKTYPES:
            return self.linktypes[0]  # the common case: no per-frame lookup
        return self._linktype_column[: len(self.linktypes)][iface]

    def damage_message(self, status: int, buf: np.ndarray, pos: int, valid: int, file_pos: int) -> str:
        if status == _WALK_SECTION_DAMAGE:
            return self._message.format(pos=file_pos)
        if status == WALK_BAD_BLOCK_LEN:
            return (
                f"corrupt pcapng block at byte {file_pos}: block length {self._detail} "
                f"(must be a multiple of 4, at least 12 and at most {MAX_BLOCK_BYTES}); stopped there"
            )
        if status == WALK_BAD_TRAILER:
            return (
                f"corrupt pcapng block at byte {file_pos}: trailing length {self._detail} "
                "differs from the leading one"
            )
        if status == WALK_BAD_INTERFACE:
            return (
                f"corrupt pcapng packet block at byte {file_pos}: interface {self._detail}, but its "
                f"section defines {self._n_interfaces}"
            )
        if status == WALK_BAD_CAPLEN:
            return (
                f"corrupt pcapng packet block at byte {file_pos}: captured length {self._detail} "
                f"exceeds its block or the {MAX_CAPLEN_BYTES}-byte limit"
            )
        if valid - pos < 8:
            return f"truncated: the file ends inside a block header at byte {file_pos} ({valid - pos} of 8 bytes)"
        return (
            f"truncated: the block at byte {file_pos} claims {self._detail} bytes, "
            f"only {valid - pos} remain in the file"
        )


def _interface_options(options: bytes, endian: str) -> tuple[int, int]:
    """(if_tsresol, if_tsoffset in seconds) from an interface block's options. An option
    that overruns the block ends the list: the interface itself is still usable."""
    tsresol, offset_s = 6, 0
    at = 0
    while at + 4 <= len(options):
        code, length = struct.unpack(endian + "HH", options[at : at + 4])
        value = options[at + 4 : at + 4 + length]
        if code == 0 or len(value) < length:  # opt_endofopt, or truncated
            break
        if code == 9 and length >= 1:
            tsresol = value[0]
        elif code == 14 and length == 8:
            (offset_s,) = struct.unpack(endian + "q", value)
        at += 4 + (length + 3) // 4 * 4
    return tsresol, offset_s


_Walker = _PcapWalker | _PcapngWalker


def _open_walker(path: Path) -> tuple[_Walker, tuple[int, ...]]:
    """A fresh walker for the file's format (sniffed from its first bytes) and the link
    types known at open; CaptureError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(_HEAD_BYTES)
    except FileNotFoundError:
        raise CaptureError(f"{path}: no such capture file") from None
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if head[:4] == _PCAPNG_SHB:
        return _pcapng_walker(path, head)
    for endian in "<>":
        if len(head) >= 4 and struct.unpack(endian + "I", head[:4])[0] in (_PCAP_MAGIC_USEC, _PCAP_MAGIC_NSEC):
            return _pcap_walker(path, head, endian)
    raise CaptureError(f"{path}: not a pcap or pcapng file (starts with {head[:4].hex() or 'nothing'}){_what_else(head)}")


def _what_else(head: bytes) -> str:
    """What a file given as a capture seems to be instead, as a hint for the message."""
    if head.startswith((b"#separator", b"#fields")) or head.lstrip()[:2] == b'{"':
        return ": it reads as a Zeek log; give it with --conn-log (source.type zeek)"
    if head[:2] == b"\x1f\x8b":
        return ": it is gzip-compressed; decompress it first (gunzip)"
    return ""


def _pcap_walker(path: Path, head: bytes, endian: str) -> tuple[_Walker, tuple[int, ...]]:
    if len(head) < 24:
        raise CaptureError(f"{path}: truncated pcap header ({len(head)} of 24 bytes)")
    magic, major, _minor, _zone, _sigfigs, _snaplen, linktype_field = struct.unpack(endian + "IHHiIII", head[:24])
    if major != 2:
        raise CaptureError(f"{path}: unsupported pcap version {major}")
    linktype = linktype_field & 0xFFFF  # the upper bits carry FCS information
    if linktype not in SUPPORTED_LINKTYPES:
        raise CaptureError(f"{path}: {_unsupported(linktype)}")
    frac_ns = 1 if magic == _PCAP_MAGIC_NSEC else 1000
    return _PcapWalker(big_endian=endian == ">", frac_ns=frac_ns, linktype=linktype), (linktype,)


def _pcapng_walker(path: Path, head: bytes) -> tuple[_Walker, tuple[int, ...]]:
    """Walk the head of the file once to learn the interfaces declared before the first
    packet, then hand back a fresh walker for the real pass."""
    probe = _PcapngWalker()
    buf = np.frombuffer(bytearray(head), dtype=np.uint8)  # writable: one kernel specialisation
    n, pos, status = probe.step(buf, 0, len(buf), 1, _Records(1), 0)
    if n == 0 and pos == 0 and status != WALK_FULL:
        if status == WALK_NEED_MORE and len(head) < _HEAD_BYTES:
            raise CaptureError(f"{path}: truncated pcapng section header ({len(head)} bytes)")
        if status != WALK_NEED_MORE:
            raise CaptureError(f"{path}: not a valid pcapng file: {probe.damage_message(status, buf, 0, len(buf), 0)}")
    if probe.linktypes and not SUPPORTED_LINKTYPES.intersection(probe.linktypes):
        raise CaptureError(f"{path}: {_unsupported(probe.linktypes[0])}")
    return _PcapngWalker(), tuple(probe.linktypes)


def _unsupported(linktype: int) -> str:
    supported = ", ".join(f"{_LINKTYPE_NAMES[t]} ({t})" for t in sorted(SUPPORTED_LINKTYPES))
    return f"link type {linktype} is not supported; netad reads {supported}"


# Frames walked, then parsed, per step. A group never spans more than the buffer holds after
# one read (_READ_BYTES), so its bytes are still in the cache whatever this is; larger groups
# only mean fewer Python steps: 4096 instead of 1024 took 150 instead of 171 ms per million
# 790-byte frames (111 instead of 124 ms on a demo capture's 835,000 frames).
_PARSE_GROUP_FRAMES = 4096


class _FileWindow:
    """A growable window onto a file: buf[:valid] holds the file's bytes from file_offset."""

    def __init__(self, f: BinaryIO) -> None:
        self._file = f
        self.buf = np.empty(_INITIAL_BUFFER_BYTES, dtype=np.uint8)
        self.valid = 0
        self.file_offset = 0
        self.eof = False

    def refill(self, keep_from: int) -> int:
        """Drop the bytes before keep_from, read at most _READ_BYTES more after the rest;
        returns how far the kept bytes moved towards the start.

        The kept bytes (the start of a record not yet whole in the buffer) always move to the
        front, so reads land in the same few MiB at the buffer's start, which stay in the CPU's
        cache. They are less than one record: the move costs little, and a record larger
        than one read moves once, then stays at the front while the rest of it is read."""
        keep_from = min(keep_from, self.valid)
        shift = 0
        if keep_from > 0:
            kept = self.valid - keep_from
            self.buf[:kept] = self.buf[keep_from : self.valid]
            shift, self.valid = keep_from, kept
            self.file_offset += shift
        if self.valid == self.buf.shape[0]:  # one record bigger than the buffer
            bigger = np.empty(2 * self.buf.shape[0], dtype=np.uint8)
            bigger[: self.valid] = self.buf[: self.valid]
            self.buf = bigger
        got = self._file.readinto(memoryview(self.buf)[self.valid : self.valid + _READ_BYTES])
        self.eof = not got
        self.valid += got or 0
        return shift


class CaptureFile:
    """Iterator of PacketBatch over a pcap or pcapng file (format sniffed from the magic).

    Each batch holds the IP rows of `batch_packets` frames (fewer only at the end; no rows
    at all when none of them is IP).
    `format` is "pcap" or "pcapng". Counters, current while iterating and
    final after: `packets` (frames read), `malformed`, `non_ip`, `bytes_read` (file offset
    just past the last whole record read). `damage` is None, or a message saying where and
    how the file is truncated or corrupt; everything before that point has been yielded.
    Iterating again starts over from the beginning.

    `linktype` is the file's link type (pcapng: the first interface's, -1 when the file
    declares none); `linktypes` lists every pcapng interface's (one entry for pcap).
    Raises CaptureError at construction for a missing file, a file that is not a capture,
    or an unsupported link type.
    """

    def __init__(self, path: str | Path, batch_packets: int = 65536) -> None:
        if batch_packets < 1:
            raise ValueError(f"batch_packets must be positive, not {batch_packets}")
        self.path = Path(path)
        self.batch_packets = int(batch_packets)
        walker, self.linktypes = _open_walker(self.path)
        self.format = walker.format_name
        self.linktype = self.linktypes[0] if self.linktypes else -1
        self.packets = 0
        self.malformed = 0
        self.non_ip = 0
        self.bytes_read = 0
        self.damage: str | None = None

    def __iter__(self) -> Iterator[PacketBatch]:
        self.packets = self.malformed = self.non_ip = self.bytes_read = 0
        self.damage = None
        walker, _ = _open_walker(self.path)
        try:
            f = open(self.path, "rb")
        except OSError as exc:
            raise CaptureError(f"{self.path}: cannot read: {exc.strerror or exc}") from None
        with f:
            yield from self._batches(_FileWindow(f), walker)

    def _batches(self, window: _FileWindow, walker: _Walker) -> Iterator[PacketBatch]:
        # Frames are parsed in groups right after the walk found them, while their bytes
        # are still in the CPU cache (walking a whole 65,536-frame batch first and parsing
        # it afterwards fetched every header from memory twice: 1.9 vs 4-5 M pkt/s on
        # 790-byte frames). Each group's rows go straight into the batch's columns.
        group = min(_PARSE_GROUP_FRAMES, self.batch_packets)
        records = _Records(group)
        window.refill(0)
        pos = walker.data_start
        batch = _BatchBuilder(self.batch_packets)
        while True:
            n, pos, status = walker.step(window.buf, pos, window.valid, min(group, self.batch_packets - batch.frames), records, 0)
            if n:
                self._emit(window, records, n, walker, pos, batch)
                if batch.frames >= self.batch_packets:
                    yield batch.take()
                    batch = _BatchBuilder(self.batch_packets)
            if status == WALK_FULL:
                continue
            if status == WALK_NEED_MORE and not window.eof:
                pos -= window.refill(pos)  # every frame before pos is parsed: drop its bytes
            else:
                if status != WALK_NEED_MORE or pos < window.valid:
                    self.damage = walker.damage_message(status, window.buf, pos, window.valid, window.file_offset + pos)
                break
        if batch.frames:
            yield batch.take()
        self.bytes_read = window.file_offset + pos
        self.linktypes = tuple(walker.linktypes) or self.linktypes

    def _emit(self, window: _FileWindow, records: _Records, n: int, walker: _Walker, pos: int, batch: _BatchBuilder) -> None:
        linktype = walker.frame_linktypes(records.iface[:n])
        rows, malformed, non_ip, dns_at = parse_into(window.buf, records.offsets[:n], records.caplens[:n],
                                                     records.ts_ns[:n], linktype, batch.free())
        batch.add(n, rows, malformed, non_ip, dns_answers(window.buf, records.offsets[:n], records.caplens[:n],
                                                          records.ts_ns[:n], linktype, at=dns_at))
        self.packets += n
        self.malformed += malformed
        self.non_ip += non_ip
        self.bytes_read = window.file_offset + pos
        self.linktypes = tuple(walker.linktypes) or self.linktypes  # pcapng: interfaces seen so far


class _BatchBuilder:
    """The columns of one batch, filled group by group (at most one row per frame)."""

    def __init__(self, capacity: int) -> None:
        self.columns = new_columns(capacity)
        self.frames = self.rows = self.malformed = self.non_ip = 0
        self.answers: list[DnsAnswers] = []

    def free(self) -> list[np.ndarray]:
        return [column[self.rows :] for column in self.columns]

    def add(self, frames: int, rows: int, malformed: int, non_ip: int, answers: DnsAnswers) -> None:
        self.answers.append(answers)
        self.frames += frames
        self.rows += rows
        self.malformed += malformed
        self.non_ip += non_ip

    def take(self) -> PacketBatch:
        """The batch; its columns are views of the builder's unless most of them is unused
        (the last batch of a file, mostly non-IP frames): then copies, not to hold the rest."""
        capacity = self.columns[0].shape[0]
        view = 2 * self.rows >= capacity
        cols = {name: column[: self.rows] if view else column[: self.rows].copy() for name, column in zip(PACKET_COLUMNS, self.columns, strict=True)}
        return PacketBatch(**cols, malformed=self.malformed, non_ip=self.non_ip, answers=DnsAnswers.concat(self.answers))


def read_ahead(batches: Iterable[PacketBatch], depth: int = 2) -> Iterator[PacketBatch]:
    """`batches` (a CaptureFile) read and parsed on a thread of their own, up to `depth`
    batches ahead of the consumer, handed on in order. The parse kernels release the GIL, so
    the next batch is parsed on another core while this one goes through the flow table and
    the windows: one process took 0.56 s where it took 0.69 s for the million bench packets
    (2 cores). A reader's error is raised here; closing the iterator early stops the thread.
    The capture's counters run up to `depth` batches ahead of what was handed on, until the end."""
    handoff: queue.Queue[Any] = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def read() -> None:
        try:
            for batch in batches:
                if stop.is_set():
                    return
                handoff.put(batch)
        except BaseException as exc:  # handed to the consumer, raised there
            handoff.put(_ReadFailed(exc))
        finally:
            handoff.put(end)

    reader = threading.Thread(target=read, name="netad-read-ahead", daemon=True)
    reader.start()
    try:
        while (item := handoff.get()) is not end:
            if isinstance(item, _ReadFailed):
                raise item.exc
            yield item
    finally:
        stop.set()
        while reader.is_alive():  # it may wait to hand on a batch: take them until it is done
            try:
                handoff.get(timeout=0.05)
            except queue.Empty:
                pass


@dataclass
class _ReadFailed:
    exc: BaseException


def first_timestamp_ns(path: str | Path, batch_packets: int = 1024) -> int | None:
    """The time of the first IP packet of the capture at `path` (None when it has none, or
    cannot be read: reading it says why), read a batch at a time until there is one."""
    try:
        for batch in CaptureFile(path, batch_packets=batch_packets):
            if len(batch):
                return int(batch.ts_ns.min())
    except CaptureError:
        return None
    return None


def read_capture(path: str | Path, batch_packets: int = 65536) -> PacketBatch:
    """The whole file as one PacketBatch (tests, small files). Damage is not reported here:
    use CaptureFile to see it."""
    return PacketBatch.concat(list(CaptureFile(path, batch_packets)))


def read_records(path: str | Path) -> RawRecords:
    """Every whole record of the file, unparsed, over one in-memory copy of the file. Stops
    at damage like CaptureFile (RawRecords.damage)."""
    path = Path(path)
    walker, _ = _open_walker(path)
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise CaptureError(f"{path}: cannot read: {exc.strerror or exc}") from None
    chunk = min(1 << 20, data.shape[0] // 16 + 1)
    parts: list[tuple[_Records, int]] = []
    pos = walker.data_start
    while True:
        records = _Records(chunk)
        n, pos, status = walker.step(data, pos, data.shape[0], chunk, records, 0)
        parts.append((records, n))
        if status != WALK_FULL:
            break
    damage = None
    if status != WALK_NEED_MORE or pos < data.shape[0]:
        damage = walker.damage_message(status, data, pos, data.shape[0], pos)

    def column(name: str) -> np.ndarray:
        return np.concatenate([getattr(records, name)[:n] for records, n in parts])

    per_record = walker.frame_linktypes(column("iface"))
    linktypes = per_record if isinstance(per_record, np.ndarray) else None
    return RawRecords(
        data=data,
        offsets=column("offsets"),
        caplens=column("caplens"),
        origlens=column("origlens"),
        ts_ns=column("ts_ns"),
        linktype=walker.linktypes[0] if walker.linktypes else -1,
        linktypes=linktypes,
        damage=damage,
    )
