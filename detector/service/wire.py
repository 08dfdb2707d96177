"""What travels over Kafka between the roles: entity windows and entity states, as bytes.

Where it stands: between the sensor role (capture -> windows -> `encode_window`) and the
scorer role (`decode_window` -> scorer -> incidents), and between scorers (`encode_state`
before an offset commit, `decode_state` when a partition is assigned). Both are versioned;
a reader refuses a version it does not know with WireError (counted, never fatal).

Entity window record, little-endian (the message value; the key is `sensor/entity`):

    offset  size  field
    0       4     magic b"NWIN"
    4       2     format version (3)
    6       2     feature schema version
    8       8     window start, ns since the epoch (int64)
    16      8     window end, ns (int64)
    24      2     bins (uint16)
    26      2     features (uint16)
    28      ...   six strings, each a uint16 byte length then UTF-8: sensor id, sensor
                  hostname, interface (or flow exporter), entity, entity class, schema name
    ...     4*B*F features, float32, bin-major (bin 0's features, then bin 1's...)
    ...     4     evidence length (uint32), then that many bytes of compact JSON
                  ({"top_peers": [...], "top_ports": [...], "top_flows": [...]}; 0 = none)
    ...     ...   (version 2) a string as above: the host whose requests were all this host
                  answered (WindowBatch.requested_by; empty: none)
    ...     2     (version 3) the sensor's home_net: its count of networks N (uint16; 0xFFFF =
                  not known), then N strings as above, as its config names them. A scorer
                  refuses the windows of a sensor whose networks are not its model's
    ...     2     (version 2) the link's hosts (contracts.LinkHosts): their count K (uint16;
                  0xFFFF = none, every entity but the link), then K strings as above (the
                  hosts), then 4*(K+1)*F float32: the K hosts' values, then the news row

A window of 6 bins x 16 features with typical evidence is about 0.8 KiB. A version 1 record
is read as one with no requester and whose link hosts are not known; a version 1 or 2 record
as one whose sensor's home_net is not known (not checked: a scorer upgraded before its
sensors reads their windows as before).

Entity state record (the value on the compacted state topic, key `sensor/entity`; an
empty value is a tombstone), little-endian:

    0       4     magic b"NSTA"
    4       2     format version (1)
    6       2     state rows L (uint16; LSTM layers; 1: the state is a vector)
    8       2     state width H (uint16; hidden size)
    10      8     windows scored (int64; the warm-up count)
    18      8     end of the last window scored, ns (int64): a redelivered window that ends
                  no later was scored already
    26      4     metadata length (uint32), then compact JSON: {"entity_class", "model_version",
                  "tracker": the entity's streak and open incident, or null}
    ...     4*L*H h, float32; then 4*L*H c, float32 (the carried encoder state)
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from detector.contracts import LinkHosts, WindowEvidence

WINDOW_MAGIC = b"NWIN"
WINDOW_VERSION = 3
STATE_MAGIC = b"NSTA"
STATE_VERSION = 1
_HEADER = struct.Struct("<4sHHqqHH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_STATE = struct.Struct("<4sHHHqqI")
_NONE = 0xFFFF  # a count that stands for None (no link hosts, a home_net not known)


class WireError(ValueError):
    """A record this netad cannot read (damaged, or written in an unknown format)."""


@dataclass
class WindowRecord:
    sensor: str
    hostname: str
    interface: str
    entity: str
    entity_class: str
    schema_name: str
    schema_version: int
    window_start_ns: int
    window_end_ns: int
    features: np.ndarray  # float32 (bins, features)
    evidence: WindowEvidence | None
    link_hosts: LinkHosts | None = None  # the link's window only
    requested_by: str = ""  # a host's: WindowBatch.requested_by ("": none)
    home_net: tuple[str, ...] | None = None  # the sensor's networks (None: a record from before version 3)

    @property
    def key(self) -> bytes:
        return entity_key(self.sensor, self.entity)

    @property
    def observer(self) -> dict[str, str]:
        return {"name": self.sensor, "hostname": self.hostname, "interface": self.interface}


def entity_key(sensor: str, entity: str) -> bytes:
    """The message key: one entity of one sensor is one time series, so it always lands on
    one partition (two sensors that see the same host send two series)."""
    return f"{sensor}/{entity}".encode()


def encode_window(rec: WindowRecord) -> bytes:
    feats = np.ascontiguousarray(rec.features, dtype="<f4")
    bins, n_features = feats.shape
    parts = [_HEADER.pack(WINDOW_MAGIC, WINDOW_VERSION, rec.schema_version, rec.window_start_ns, rec.window_end_ns,
                          bins, n_features)]
    for text in (rec.sensor, rec.hostname, rec.interface, rec.entity, rec.entity_class, rec.schema_name):
        parts += _string(text)
    parts.append(feats.tobytes())
    evidence = b"" if rec.evidence is None else json.dumps(asdict(rec.evidence), separators=(",", ":")).encode()
    parts += [_U32.pack(len(evidence)), evidence]
    networks = rec.home_net or ()
    if len(networks) >= _NONE:
        raise WireError(f"too many home_net networks for a window record: {len(networks)}")
    parts += _string(rec.requested_by)
    parts.append(_U16.pack(len(networks) if rec.home_net is not None else _NONE))
    for network in networks:
        parts += _string(network)
    hosts = rec.link_hosts
    if hosts is None:
        parts.append(_U16.pack(_NONE))
        return b"".join(parts)
    if len(hosts.hosts) >= _NONE:
        raise WireError(f"too many link hosts for a window record: {len(hosts.hosts)}")
    parts.append(_U16.pack(len(hosts.hosts)))
    for name in hosts.hosts:
        parts += _string(name)
    parts.append(np.ascontiguousarray(np.vstack([hosts.known.reshape(-1, n_features), hosts.news[None]]), dtype="<f4").tobytes())
    return b"".join(parts)


def _string(text: str) -> list[bytes]:
    """A string as a record holds it: a uint16 byte length, then UTF-8."""
    raw = text.encode()
    if len(raw) > 0xFFFF:
        raise WireError(f"string too long for a window record: {len(raw)} bytes")
    return [_U16.pack(len(raw)), raw]


def decode_window(data: bytes) -> WindowRecord:
    view = memoryview(data)
    try:
        magic, version, schema_version, start_ns, end_ns, bins, n_features = _HEADER.unpack_from(view, 0)
        if magic != WINDOW_MAGIC:
            raise WireError("not a netad window record (bad magic)")
        if version not in (1, 2, WINDOW_VERSION):
            raise WireError(f"window record format version {version}; this netad reads 1 to {WINDOW_VERSION}")
        texts, pos = _strings(view, _HEADER.size, 6)
        size = 4 * bins * n_features
        if pos + size + 4 > len(view):
            raise WireError("window record cut short")
        features = np.frombuffer(view[pos : pos + size], dtype="<f4").reshape(bins, n_features).astype(np.float32)
        pos += size
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n > len(view) or (version == 1 and pos + n != len(view)):
            raise WireError("window record has a wrong evidence length")
        evidence = WindowEvidence(**json.loads(bytes(view[pos : pos + n]))) if n else None
        pos += n
        requester, home_net, hosts = ("", None, None) if version == 1 else _tail(view, pos, n_features, version)
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise WireError(f"damaged window record: {exc}") from None
    sensor, hostname, interface, entity, entity_class, schema_name = texts
    return WindowRecord(sensor, hostname, interface, entity, entity_class, schema_name, schema_version, start_ns, end_ns,
                        features, evidence, hosts, requester, home_net)


def _strings(view: memoryview, pos: int, count: int) -> tuple[list[str], int]:
    """`count` strings from `pos`, each a uint16 byte length then UTF-8; and where they end."""
    texts = []
    for _ in range(count):
        (n,) = _U16.unpack_from(view, pos)
        pos += 2
        if pos + n > len(view):
            raise WireError("window record cut short")
        texts.append(bytes(view[pos : pos + n]).decode())
        pos += n
    return texts, pos


def _tail(view: memoryview, pos: int, n_features: int, version: int) -> tuple[str, tuple[str, ...] | None, LinkHosts | None]:
    """A version 2 or 3 record's tail from `pos`: its requester, its sensor's home_net (None:
    not known) and its link hosts (or None)."""
    (requester,), pos = _strings(view, pos, 1)
    home_net: tuple[str, ...] | None = None
    if version >= 3:
        (n,) = _U16.unpack_from(view, pos)
        pos += 2
        if n != _NONE:
            networks, pos = _strings(view, pos, n)
            home_net = tuple(networks)
    (k,) = _U16.unpack_from(view, pos)
    pos += 2
    if k == _NONE:
        if pos != len(view):
            raise WireError("window record has bytes after its end")
        return requester, home_net, None
    names, pos = _strings(view, pos, k)
    if pos + 4 * (k + 1) * n_features != len(view):
        raise WireError("window record has a wrong link hosts length")
    values = np.frombuffer(view[pos:], dtype="<f4").reshape(k + 1, n_features).astype(np.float32)
    return requester, home_net, LinkHosts(names, values[:k], values[k])


@dataclass
class EntityState:
    entity_class: str
    h: torch.Tensor
    c: torch.Tensor
    seen: int
    last_ns: int
    tracker: dict[str, Any] | None  # IncidentTracker.states_of()[entity], or None
    model_version: str
    carried: float = 0.0  # into the entity's next window, in thresholds (model.scorer)


def encode_state(state: EntityState) -> bytes:
    h = state.h.detach().to(torch.float32).contiguous().numpy()
    c = state.c.detach().to(torch.float32).contiguous().numpy()
    rows, width = h.reshape(-1, h.shape[-1]).shape
    meta = json.dumps({"entity_class": state.entity_class, "model_version": state.model_version, "tracker": state.tracker,
                       "carried": state.carried},
                      separators=(",", ":")).encode()
    return b"".join([_STATE.pack(STATE_MAGIC, STATE_VERSION, rows, width, state.seen, state.last_ns, len(meta)), meta,
                     h.astype("<f4").tobytes(), c.astype("<f4").tobytes()])


def decode_state(data: bytes) -> EntityState:
    try:
        magic, version, rows, width, seen, last_ns, n = _STATE.unpack_from(data, 0)
        if magic != STATE_MAGIC:
            raise WireError("not a netad state record (bad magic)")
        if version != STATE_VERSION:
            raise WireError(f"state record format version {version}; this netad reads {STATE_VERSION}")
        pos = _STATE.size + n
        size = 4 * rows * width
        if pos + 2 * size != len(data):
            raise WireError("state record has a wrong length")
        meta = json.loads(data[_STATE.size : pos])
        shape = (width,) if rows == 1 else (rows, width)  # one layer's state is a vector
        h = torch.from_numpy(np.frombuffer(data, "<f4", rows * width, pos).astype(np.float32).reshape(shape))
        c = torch.from_numpy(np.frombuffer(data, "<f4", rows * width, pos + size).astype(np.float32).reshape(shape))
        carried = meta.get("carried", 0.0)  # absent in a record from before accumulation
        if isinstance(carried, bool) or not isinstance(carried, (int, float)) or not 0.0 <= carried <= 1.0:
            raise WireError(f"damaged state record: carried {carried!r} is not a number in [0, 1]")
        return EntityState(meta["entity_class"], h, c, seen, last_ns, meta["tracker"], meta["model_version"], float(carried))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise WireError(f"damaged state record: {exc}") from None
