"""read_ahead: a capture parsed on a thread ahead of its consumer hands on the batches of
the capture itself, in order; a reader's error reaches the consumer; stopping early stops
the thread."""

from __future__ import annotations

import shutil
import threading

import pytest

from detector.capture.packets.pcap import CaptureFile, read_ahead
from detector.contracts import PACKET_COLUMNS
from detector.errors import CaptureError
from tests.conftest import shared_file


def _readers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "netad-read-ahead"]


def test_the_batches_of_the_capture_in_order_and_its_final_counters():
    """westermo/right.pcap in 1,000-frame batches: every batch equals, column for column,
    the one the capture gives read in the consumer's thread; counters are final at the end."""
    path = shared_file("westermo/right.pcap")
    plain = CaptureFile(path, batch_packets=1000)
    expected = list(plain)
    ahead = CaptureFile(path, batch_packets=1000)
    got = list(read_ahead(ahead))
    assert len(got) == len(expected) > 10
    for a, b in zip(got, expected, strict=True):
        assert all(getattr(a, c).tobytes() == getattr(b, c).tobytes() for c in PACKET_COLUMNS)
        assert (a.malformed, a.non_ip) == (b.malformed, b.non_ip)
    assert (ahead.packets, ahead.malformed, ahead.non_ip, ahead.damage) == \
        (plain.packets, plain.malformed, plain.non_ip, plain.damage)
    assert not _readers()


def test_a_readers_error_is_raised_in_the_consumer(tmp_path):
    """The file goes away between opening the capture and reading it: the consumer gets the
    reader's CaptureError (the reader thread ends)."""
    path = tmp_path / "gone.pcap"
    shutil.copy(shared_file("westermo/right.pcap"), path)
    capture = CaptureFile(path)
    path.unlink()
    with pytest.raises(CaptureError, match="gone.pcap"):
        list(read_ahead(capture))
    assert not _readers()


def test_stopping_early_stops_the_reader():
    """A consumer that stops after the first batch (a replay told to stop) leaves no thread
    behind, though the reader was blocked handing on the batches after it."""
    batches = read_ahead(CaptureFile(shared_file("westermo/right.pcap"), batch_packets=500), depth=1)
    first = next(batches)
    assert len(first) > 0 and _readers()
    batches.close()
    assert not _readers()
