"""model.json, the description of a model bundle, read and checked without torch: what
`netad check-config` needs to say whether `netad run` could load a bundle, answered at once.

Where it stands: under bundle.py, which loads the weights (torch) after these checks. Here:
the format, model.json's own SHA-256 and the weights' SHA-256, the feature schema, window
geometry and entity classes it describes, and the safetensors header (a little-endian u64
length, then JSON naming each tensor), which says which classes have weights without
reading them.
"""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detector.contracts import CarriedHistory, FeatureSchema
from detector.errors import ModelError

WEIGHTS = "model.safetensors"
META = "model.json"
HISTORY = "history.safetensors"  # the training span's peer history (CarriedHistory), when it kept one
# 2: the decoder's minute-of-hour phase input; 3: model.json carries its own SHA-256. A
# format-2 bundle (written before) still loads: its values are checked, its JSON cannot be
FORMAT_VERSION = 3
READABLE_FORMATS = (2, 3)
META_DIGEST_KEY = "meta_sha256"
MAX_HIDDEN_SIZE = 1024  # training.hidden_size's bound
MAX_MEMBERS = 16  # training.members' bound
MAX_BINS = 256  # windows.bins' bound
_MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit on its JSON header


@dataclass(frozen=True)
class BundleDescription:
    """What a bundle says it is, verified against its files (not its weights' values)."""

    schema: FeatureSchema
    bin_s: float
    bins: int
    classes: tuple[str, ...]
    home_net: tuple[str, ...] | None = None  # the networks it was trained with (None: not recorded)


def describe(path: str | Path) -> BundleDescription:
    """The bundle at `path` as model.json describes it, with both SHA-256s checked and every
    described class present in the weights' header. Raises ModelError naming the file."""
    path = Path(path)
    meta_path, weights_path = path / META, path / WEIGHTS
    if not meta_path.is_file() or not weights_path.is_file():
        raise ModelError(f"{path}: not a model bundle (needs {META} and {WEIGHTS}); train one with `netad train`")
    meta = read_meta(meta_path)
    if sha256_of(weights_path) != meta.get("weights_sha256"):
        raise ModelError(f"{weights_path}: SHA-256 mismatch (file corrupted or replaced); refusing to load")
    try:
        schema = require_field(meta, "schema", dict)
        name, version, features = schema.get("name"), schema.get("version"), schema.get("features")
        if not isinstance(name, str) or not isinstance(version, int) or not isinstance(features, list) or not features:
            raise ValueError("schema: needs a name, an integer version and a list of features")
        try:
            described = FeatureSchema.from_dict(schema)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"schema: {exc!r}") from None
        window = require_field(meta, "window", dict)
        bin_s = number_in(window, "bin_s", "window.bin_s", low=0.0, high=86_400.0)
        bins = integer_in(window, "bins", "window.bins", 1, MAX_BINS)
        classes = tuple(sorted(require_field(meta, "classes", dict)))
        if not classes:
            raise ValueError("classes: none (a bundle holds at least one entity class's model)")
    except ValueError as exc:
        raise ModelError(f"{meta_path}: invalid bundle: {exc}") from None
    tensors = _tensor_names(weights_path)
    missing = [c for c in classes if not any(t.startswith(f"{c}.") for t in tensors)]
    if missing:
        raise ModelError(f"{weights_path}: no weights for class {', '.join(missing)}")
    read_history(path, meta)
    return BundleDescription(described, bin_s, bins, classes, _home_net(meta))


def _home_net(meta: dict[str, Any]) -> tuple[str, ...] | None:
    training = meta.get("training")
    trained = training.get("home_net") if isinstance(training, dict) else None
    return tuple(trained) if isinstance(trained, list) and all(isinstance(n, str) for n in trained) else None


def trained_home_net(path: str | Path) -> tuple[str, ...] | None:
    """The home_net the bundle at `path` was trained with, read without torch (the Kafka
    sensor's, which builds the windows the scorers' model reads); None where there is no
    bundle or it recorded none."""
    path = Path(path)
    return _home_net(read_meta(path / META)) if (path / META).is_file() else None


def save_safetensors(save: Callable[[Any, str], Any], tensors: Mapping[str, Any], path: Path) -> None:
    """`save(tensors, path)`, a safetensors writer (torch's or numpy's), whose I/O errors (a
    full disk) come out as OSError: safetensors raises its own SafetensorError, which callers
    that keep going where a file cannot be written (the daemon's checkpoint) did not catch,
    and a daemon stopping on a full disk ended in its traceback before its sinks' flush."""
    from safetensors import SafetensorError

    try:
        save(tensors, str(path))
    except SafetensorError as exc:
        raise OSError(f"{path}: {exc}") from exc


def history_meta(path: Path, carried: CarriedHistory) -> dict[str, Any]:
    """Write the carried history's arrays into the bundle directory `path`; model.json's
    `history` entry for them (their SHA-256, the end of the training span's last window, rows)."""
    from safetensors.numpy import save_file

    save_safetensors(save_file, {k: np.ascontiguousarray(v) for k, v in carried.state.items()}, path / HISTORY)
    return {"sha256": sha256_of(path / HISTORY), "ended_ns": int(carried.ended_ns),
            "rows": {t: carried.rows(t) for t in ("entities", "peers", "ports")}}


def carried_history(path: str | Path) -> CarriedHistory | None:
    """The peer history of the bundle at `path`, read without torch (the Kafka sensor's: it
    builds windows and loads no model); None where there is no bundle, or it has none."""
    path = Path(path)
    if not (path / META).is_file():
        return None
    return read_history(path, read_meta(path / META))


def read_history(path: Path, meta: dict[str, Any]) -> CarriedHistory | None:
    """The peer history the bundle at `path` carries from its training span, its SHA-256
    checked (None for a bundle without one: trained before bundles kept it)."""
    described = meta.get("history")
    if described is None:
        return None
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    history_path = path / HISTORY
    ended_ns = described.get("ended_ns") if isinstance(described, dict) else None
    if isinstance(ended_ns, bool) or not isinstance(ended_ns, int):
        raise ModelError(f"{path / META}: invalid bundle: history.ended_ns: {ended_ns!r} is not an integer")
    if not history_path.is_file():
        raise ModelError(f"{history_path}: missing (model.json describes a peer history); retrain with `netad train`")
    if sha256_of(history_path) != described.get("sha256"):
        raise ModelError(f"{history_path}: SHA-256 mismatch (file corrupted or replaced); refusing to load")
    try:
        state = load_file(str(history_path))
    except (OSError, SafetensorError) as exc:
        raise ModelError(f"{history_path}: unreadable: {exc}") from None
    bad = sorted(k for k, v in state.items() if v.ndim != 1)
    if bad:
        raise ModelError(f"{history_path}: {', '.join(bad[:3])} not one-dimensional")
    return CarriedHistory(state, ended_ns)


def schema_mismatch(path: str | Path, schema: FeatureSchema, expected: FeatureSchema) -> str | None:
    """Why a bundle trained on `schema` cannot score the windows this netad computes
    (`expected`), or None when it can: the one message of `run` and `check-config`."""
    if schema == expected:
        return None
    return (f"{path}: trained on feature schema {schema.name} v{schema.version} ({len(schema.features)} features), "
            f"this netad computes {expected.name} v{expected.version} ({len(expected.features)}); retrain with `netad train`")


def _tensor_names(weights_path: Path) -> list[str]:
    """The tensor names in a safetensors file's header."""
    try:
        with open(weights_path, "rb") as fh:
            head = fh.read(8)
            (length,) = struct.unpack("<Q", head) if len(head) == 8 else (-1,)
            if not 0 < length <= _MAX_HEADER_BYTES:
                raise ValueError("no safetensors header")
            header = json.loads(fh.read(length))
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{weights_path}: unreadable weights: {exc}") from None
    if not isinstance(header, dict):
        raise ModelError(f"{weights_path}: unreadable weights: the header is not a JSON object")
    return [name for name in header if name != "__metadata__"]


def meta_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of model.json's content without its own digest: canonical JSON (sorted keys,
    no spaces), which a float survives exactly (json writes repr), so the digest read back
    is the digest written."""
    body = {k: v for k, v in meta.items() if k != META_DIGEST_KEY}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def read_meta(meta_path: Path) -> dict[str, Any]:
    """model.json, parsed, of a format this netad reads, its own digest verified."""
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{meta_path}: unreadable: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{meta_path}: not a model description: a JSON {type(meta).__name__}, not an object")
    if meta.get("format_version") not in READABLE_FORMATS:
        raise ModelError(f"{meta_path}: bundle format {meta.get('format_version')!r}, this netad reads {FORMAT_VERSION}:"
                         " retrain with `netad train`")
    if meta["format_version"] >= 3 and meta.get(META_DIGEST_KEY) != meta_digest(meta):
        raise ModelError(f"{meta_path}: SHA-256 mismatch (edited or corrupted); refusing to load")
    return meta


def require_field(doc: dict[str, Any], key: str, kind: type) -> Any:
    if key not in doc:
        raise ValueError(f"{key}: missing")
    value = doc[key]
    if not isinstance(value, kind):
        raise ValueError(f"{key}: {type(value).__name__}, not a JSON {'object' if kind is dict else kind.__name__}")
    return value


def number_in(doc: dict[str, Any], key: str, where: str, low: float, high: float) -> float:
    """A finite number in (low, high]."""
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{where}: {value!r} is not a number")
    if not (math.isfinite(value) and low < value <= high):
        bounds = f"above {low:g}" if math.isinf(high) else f"in ({low:g}, {high:g}]"
        raise ValueError(f"{where}: {value!r} is not a finite number {bounds}")
    return float(value)


def integer_in(doc: dict[str, Any], key: str, where: str, low: int, high: int) -> int:
    value = doc.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{where}: {value!r} is not an integer in [{low}, {high}]")
    return value


def vector_of(values: Any, where: str, width: int) -> list[float]:
    if not isinstance(values, list) or len(values) != width:
        got = f"{len(values)} values" if isinstance(values, list) else repr(values)
        raise ValueError(f"{where}: {got}, the feature schema has {width} features")
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values):
        raise ValueError(f"{where}: not all finite numbers")
    return [float(v) for v in values]


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


