"""A vectorised writer of classic pcap files, for captures that netad makes itself.

Where it stands: beside the pipeline, not on it. The synthetic traffic generator
(`detector.synth.generate`) and tests that splice or trim captures use it; the daemon only
ever reads captures. Frames are given as one flat byte array plus per-frame offsets and
lengths, and the file is assembled with numpy in chunks of packets (record headers and frame
bytes scattered in one call each), so writing a million frames costs well under a second
plus the disk, never a Python call per packet.

A frame may be given shorter than it was on the wire (`wire_lengths`): the rest is written
as zero bytes. The synthetic generator relies on this to hand over only the header bytes
of each frame and let the payload be zeros.
"""

from __future__ import annotations

import contextlib
import itertools
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np

from detector.files import naming

LINKTYPE_ETHERNET = 1
MAGIC_MICROSECOND = 0xA1B2C3D4
MAGIC_NANOSECOND = 0xA1B23C4D
RECORD_HEADER_BYTES = 16

# Bytes of frame data per written chunk: bounds the temporary index arrays (8 bytes per
# frame byte) to a few tens of MB whatever the capture's size.
_CHUNK_FRAME_BYTES = 8 << 20


def global_header(*, linktype: int = LINKTYPE_ETHERNET, snaplen: int = 65535, nanosecond: bool = False) -> bytes:
    """The 24-byte pcap file header (little-endian, version 2.4)."""
    magic = MAGIC_NANOSECOND if nanosecond else MAGIC_MICROSECOND
    return struct.pack("<IHHiIII", magic, 2, 4, 0, 0, snaplen, linktype)


def write_pcap(
    path: Path | str | BinaryIO,
    ts_ns: np.ndarray,
    frames: np.ndarray,
    offsets: np.ndarray,
    lengths: np.ndarray,
    *,
    wire_lengths: np.ndarray | None = None,
    linktype: int = LINKTYPE_ETHERNET,
    nanosecond: bool = False,
    snaplen: int = 65535,
) -> int:
    """Write frames as a classic pcap file; returns the number of bytes written.

    Frame k is `frames[offsets[k] : offsets[k] + lengths[k]]` (frames: 1-D uint8), captured
    at `ts_ns[k]` (ns since the epoch; truncated to microseconds unless `nanosecond`). When
    `wire_lengths` is given, frame k was `wire_lengths[k] >= lengths[k]` bytes on the wire
    and the bytes past `lengths[k]` are zeros. Frames longer than `snaplen` are cut to it,
    with the original length kept in the record header, as tcpdump -s does. Records are
    written in the order given; sort by timestamp first if the capture should be ordered.
    """
    ts_ns = np.asarray(ts_ns, dtype=np.int64)
    frames = np.ascontiguousarray(frames, dtype=np.uint8).reshape(-1)
    offsets = np.asarray(offsets, dtype=np.int64)
    lengths = np.asarray(lengths, dtype=np.int64)
    n_frames = ts_ns.shape[0]
    if not (offsets.shape[0] == lengths.shape[0] == n_frames):
        raise ValueError("ts_ns, offsets and lengths must have one entry per frame")
    wire = lengths if wire_lengths is None else np.asarray(wire_lengths, dtype=np.int64)
    if wire.shape[0] != n_frames:
        raise ValueError("wire_lengths must have one entry per frame")
    if n_frames and (np.any(lengths < 0) or np.any(wire < lengths)):
        raise ValueError("need 0 <= lengths <= wire_lengths")
    if n_frames and (np.any(offsets < 0) or np.any(offsets + lengths > frames.shape[0])):
        raise ValueError("a frame lies outside the frames array")
    if snaplen <= 0:
        raise ValueError("snaplen must be positive")

    caplen = np.minimum(wire, snaplen)
    copy_len = np.minimum(lengths, caplen)
    seconds = ts_ns // 1_000_000_000
    fraction = ts_ns % 1_000_000_000 if nanosecond else (ts_ns % 1_000_000_000) // 1000
    if n_frames and (seconds.min() < 0 or seconds.max() >= 1 << 32):
        raise ValueError("timestamps must lie between 1970 and 2106 for classic pcap")

    own_file = not hasattr(path, "write")
    stream: BinaryIO = open(path, "wb") if own_file else path  # type: ignore[arg-type,assignment]
    with naming(path if own_file else getattr(stream, "name", "the pcap stream")), contextlib.ExitStack() as owned:
        if own_file:
            owned.callback(stream.close)  # its last write (a full disk) is named too
        written = stream.write(global_header(linktype=linktype, snaplen=snaplen, nanosecond=nanosecond))
        for lo, hi in _chunks(caplen):
            chunk = _chunk_bytes(
                seconds[lo:hi], fraction[lo:hi], caplen[lo:hi], wire[lo:hi], frames, offsets[lo:hi], copy_len[lo:hi]
            )
            written += stream.write(chunk)
    return written


def _chunks(caplen: np.ndarray) -> list[tuple[int, int]]:
    """[lo, hi) packet ranges of about _CHUNK_FRAME_BYTES of records each."""
    if caplen.shape[0] == 0:
        return []
    ends = np.cumsum(caplen + RECORD_HEADER_BYTES)
    cuts = np.searchsorted(ends, np.arange(_CHUNK_FRAME_BYTES, int(ends[-1]), _CHUNK_FRAME_BYTES), side="right")
    bounds = np.unique(np.concatenate([[0], cuts, [caplen.shape[0]]]))
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds) if b > a]


def _chunk_bytes(
    seconds: np.ndarray,
    fraction: np.ndarray,
    caplen: np.ndarray,
    wire: np.ndarray,
    frames: np.ndarray,
    offsets: np.ndarray,
    copy_len: np.ndarray,
) -> memoryview:
    """The records of one chunk of packets as one zero-initialised buffer, filled."""
    n_frames = caplen.shape[0]
    record_len = caplen + RECORD_HEADER_BYTES
    record_start = np.cumsum(record_len) - record_len
    out = np.zeros(int(record_len.sum()), dtype=np.uint8)

    headers = np.empty((n_frames, 4), dtype="<u4")
    headers[:, 0] = seconds
    headers[:, 1] = fraction
    headers[:, 2] = caplen
    headers[:, 3] = wire
    header_index = record_start[:, None] + np.arange(RECORD_HEADER_BYTES)
    out[header_index.reshape(-1)] = headers.view(np.uint8).reshape(-1)

    # frame byte t of the chunk (over the bytes to copy) goes from src to dst; both are t
    # plus a per-frame shift, which np.repeat spreads over the frame's bytes.
    total = int(copy_len.sum())
    if total:
        before = np.cumsum(copy_len) - copy_len
        byte_no = np.arange(total, dtype=np.int64)
        src = byte_no + np.repeat(offsets - before, copy_len)
        dst = byte_no + np.repeat(record_start + RECORD_HEADER_BYTES - before, copy_len)
        out[dst] = frames[src]
    return memoryview(out)
