"""The Kafka wire format (service.wire) as a property: every window record a sensor can write
reads back as written, the link's hosts, a host's requester and the sensor's home_net
included (none, or no network, is not the same as not known), and every record
cut short, or with bytes after its end, is refused with WireError, never another exception."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.contracts import LinkHosts, WindowEvidence
from detector.service.wire import WindowRecord, WireError, decode_window, encode_window

_TEXT = st.text(max_size=12)
_VALUES = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def _records(draw: st.DrawFn) -> WindowRecord:
    bins, width = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    features = np.array(draw(st.lists(_VALUES, min_size=bins * width, max_size=bins * width)), np.float32).reshape(bins, width)
    evidence = draw(st.none() | st.builds(lambda ip: WindowEvidence(top_peers=[{"ip": ip, "packets": 1, "bytes": 60}]), _TEXT))
    hosts = None
    if draw(st.booleans()):
        k = draw(st.integers(0, 3))
        values = draw(st.lists(_VALUES, min_size=(k + 1) * width, max_size=(k + 1) * width))
        table = np.array(values, np.float32).reshape(k + 1, width)
        hosts = LinkHosts(draw(st.lists(_TEXT, min_size=k, max_size=k)), table[:k], table[k])
    return WindowRecord(draw(_TEXT), draw(_TEXT), draw(_TEXT), draw(_TEXT), draw(_TEXT), draw(_TEXT), draw(st.integers(0, 0xFFFF)),
                        draw(st.integers(0, 2**62)), draw(st.integers(0, 2**62)), features, evidence, hosts, draw(_TEXT),
                        draw(st.none() | st.tuples() | st.lists(_TEXT, max_size=4).map(tuple)))


@settings(max_examples=300, deadline=None)
@given(_records(), st.data())
def test_every_window_record_reads_back_and_every_damaged_one_is_refused(rec, data):
    raw = encode_window(rec)
    back = decode_window(raw)
    assert (back.sensor, back.hostname, back.interface, back.entity, back.entity_class, back.schema_name) == (
        rec.sensor, rec.hostname, rec.interface, rec.entity, rec.entity_class, rec.schema_name)
    assert (back.schema_version, back.window_start_ns, back.window_end_ns) == (rec.schema_version, rec.window_start_ns, rec.window_end_ns)
    np.testing.assert_array_equal(back.features, rec.features)
    assert back.evidence == rec.evidence and back.requested_by == rec.requested_by and back.home_net == rec.home_net
    if rec.link_hosts is None:
        assert back.link_hosts is None
    else:
        assert back.link_hosts is not None and back.link_hosts.hosts == rec.link_hosts.hosts
        np.testing.assert_array_equal(back.link_hosts.known, rec.link_hosts.known)
        np.testing.assert_array_equal(back.link_hosts.news, rec.link_hosts.news)
    cut = data.draw(st.integers(0, len(raw) - 1))
    for damaged in (raw[:cut], raw + data.draw(st.binary(min_size=1, max_size=8))):
        with pytest.raises(WireError):
            decode_window(damaged)
