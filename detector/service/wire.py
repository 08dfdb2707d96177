"""What travels over Kafka between the roles: entity windows and entity states, as bytes.

Where it stands: between the sensor role (capture -> windows -> `encode_window`) and the
scorer role (`decode_window` -> scorer -> incidents), and between scorers (`encode_state`
before an offset commit, `decode_state` when a partition is assigned). Both are versioned;
a reader refuses a version it does not know with WireError (counted, never fatal).

Entity window record, little-endian (the message value; the key is `sensor/entity`):

    offset  size  field
    0       4     magic b"NWIN"
    4       2     format version (1)
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

A window of 6 bins x 16 features with typical evidence is about 0.8 KiB.

Entity state record (the value on the compacted state topic, key `sensor/entity`): a
safetensors blob (no pickle) with tensors `h` and `c` (the entity's carried encoder state)
and string metadata: `format` ("netad-state/1"), `entity_class`, `seen` and `last_ns` (the
scorer's warm-up count and the end of the last window scored, which is how a re-delivered
window is recognised as already scored), `tracker` (JSON: the entity's streak and open
incident, or "null"), `model_version`. An empty value is a tombstone.
"""

from __future__ import annotations

import json
import struct
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from detector.contracts import WindowEvidence

WINDOW_MAGIC = b"NWIN"
WINDOW_VERSION = 1
STATE_FORMAT = "netad-state/1"
_HEADER = struct.Struct("<4sHHqqHH")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


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
                          bins, n_features)]  # fmt: skip
    for text in (rec.sensor, rec.hostname, rec.interface, rec.entity, rec.entity_class, rec.schema_name):
        raw = text.encode()
        if len(raw) > 0xFFFF:
            raise WireError(f"string too long for a window record: {len(raw)} bytes")
        parts += [_U16.pack(len(raw)), raw]
    parts.append(feats.tobytes())
    evidence = b"" if rec.evidence is None else json.dumps(asdict(rec.evidence), separators=(",", ":")).encode()
    parts += [_U32.pack(len(evidence)), evidence]
    return b"".join(parts)


def decode_window(data: bytes) -> WindowRecord:
    view = memoryview(data)
    try:
        magic, version, schema_version, start_ns, end_ns, bins, n_features = _HEADER.unpack_from(view, 0)
        if magic != WINDOW_MAGIC:
            raise WireError("not a netad window record (bad magic)")
        if version != WINDOW_VERSION:
            raise WireError(f"window record format version {version}; this netad reads {WINDOW_VERSION}")
        pos = _HEADER.size
        texts = []
        for _ in range(6):
            (n,) = _U16.unpack_from(view, pos)
            pos += 2
            if pos + n > len(view):
                raise WireError("window record cut short")
            texts.append(bytes(view[pos : pos + n]).decode())
            pos += n
        size = 4 * bins * n_features
        if pos + size + 4 > len(view):
            raise WireError("window record cut short")
        features = np.frombuffer(view[pos : pos + size], dtype="<f4").reshape(bins, n_features).astype(np.float32)
        pos += size
        (n,) = _U32.unpack_from(view, pos)
        pos += 4
        if pos + n != len(view):
            raise WireError("window record has a wrong evidence length")
        evidence = WindowEvidence(**json.loads(bytes(view[pos:]))) if n else None
    except (struct.error, UnicodeDecodeError, json.JSONDecodeError, TypeError) as exc:
        raise WireError(f"damaged window record: {exc}") from None
    sensor, hostname, interface, entity, entity_class, schema_name = texts
    return WindowRecord(sensor, hostname, interface, entity, entity_class, schema_name, schema_version, start_ns, end_ns,
                        features, evidence)  # fmt: skip


@dataclass
class EntityState:
    entity_class: str
    h: torch.Tensor
    c: torch.Tensor
    seen: int
    last_ns: int
    tracker: dict[str, Any] | None  # IncidentTracker.states_of()[entity], or None
    model_version: str


def encode_state(state: EntityState) -> bytes:
    meta = {"format": STATE_FORMAT, "entity_class": state.entity_class, "seen": str(state.seen),
            "last_ns": str(state.last_ns), "tracker": json.dumps(state.tracker), "model_version": state.model_version}  # fmt: skip
    return st_save({"h": state.h.contiguous(), "c": state.c.contiguous()}, metadata=meta)


def decode_state(data: bytes) -> EntityState:
    try:
        (n,) = struct.unpack_from("<Q", data, 0)
        meta = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        if meta.get("format") != STATE_FORMAT:
            raise WireError(f"state record format {meta.get('format')!r}; this netad reads {STATE_FORMAT}")
        tensors = st_load(bytes(data))
        return EntityState(meta["entity_class"], tensors["h"], tensors["c"], int(meta["seen"]), int(meta["last_ns"]),
                           json.loads(meta["tracker"]), meta["model_version"])  # fmt: skip
    except (struct.error, json.JSONDecodeError, KeyError, ValueError, SafetensorError) as exc:
        if isinstance(exc, WireError):
            raise
        raise WireError(f"damaged state record: {exc}") from None
