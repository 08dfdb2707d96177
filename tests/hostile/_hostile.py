"""Helpers for the hostile-input tests: the ways a model bundle or a checkpoint can be
broken on disk, each one a function that breaks a copy in place, and the checks every hostile
case shares (no traceback, the exit code, the log saying what happened).

Every kind of malformed bundle netad must refuse is in MALFORMED_BUNDLES, with the words its
refusal must contain; tests/hostile/test_hostile_bundles.py runs each one through
ModelBundle.load, through `netad run` at start-up and through a SIGHUP to a running daemon.
Every kind of damaged checkpoint is in BAD_CHECKPOINTS; test_hostile_checkpoints.py starts
the daemon on each (it moves the checkpoint aside and starts fresh).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from detector.model.bundle import META, WEIGHTS, meta_digest
from detector.service.daemon import CHECKPOINT_DIR
from detector.service.state import STATE_JSON, STATE_TENSORS
from tests.conftest import REPO

EX_CONFIG = 78


def netad_cli(*args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    """`python -m detector.cli ARGS`, whatever its exit code."""
    return subprocess.run([sys.executable, "-m", "detector.cli", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=timeout_s)


def assert_no_traceback(*outputs: str) -> None:
    for text in outputs:
        assert "Traceback" not in text, f"a traceback:\n{text[-3000:]}"


# ------------------------------------------------------------------------ model bundles
def _meta(bundle: Path) -> dict[str, Any]:
    return json.loads((bundle / META).read_text())


def _write_meta(bundle: Path, meta: Any, rehash: bool) -> None:
    """model.json as given; `rehash`: with its digest made to match, as someone who wanted the
    edit to pass would (then only the value checks stand between it and the scorer)."""
    if rehash:
        meta["meta_sha256"] = meta_digest(meta)
    (bundle / META).write_text(json.dumps(meta, indent=2))


def _edit(change: Callable[[dict[str, Any]], None], rehash: bool = True) -> Callable[[Path], None]:
    def apply(bundle: Path) -> None:
        meta = _meta(bundle)
        change(meta)
        _write_meta(bundle, meta, rehash)

    return apply


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """meta[a][b]... = value, for a dotted path (a key that is a class name included)."""

    def change(meta: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = meta
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _delete(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda meta: meta.pop(key)


def _weights(change: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    """Damage the weights file, then make model.json's weight hash (and its own) match the
    damage: the hashes pass, the damage must still be found."""

    def apply(bundle: Path) -> None:
        path = bundle / WEIGHTS
        path.write_bytes(change(path.read_bytes()))
        meta = _meta(bundle)
        meta["weights_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        _write_meta(bundle, meta, rehash=True)

    return apply


def _damage_header(data: bytes) -> bytes:
    return data[:8] + b"\x00{garbage" + data[18:]


def _nan_payload(data: bytes) -> bytes:
    header = 8 + int.from_bytes(data[:8], "little")
    return data[:header] + b"\xff" * (len(data) - header)  # 0xffffffff is a NaN in float32


def _other_shapes(bundle: Path) -> None:
    """Valid safetensors, the same tensor names, each one row short: a model of another size."""
    tensors = load_file(str(bundle / WEIGHTS))
    save_file({k: torch.zeros((max(1, v.shape[0] - 1), *v.shape[1:]), dtype=v.dtype) for k, v in tensors.items()},
              str(bundle / WEIGHTS))
    _weights(lambda data: data)(bundle)


def _scale_of(cls: str, value: Callable[[list[float]], list[float]]) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        scaler = meta["classes"][cls]["scaler"]
        scaler["scale"] = value(scaler["scale"])

    return change


def _center_of(cls: str, value: Callable[[list[float]], list[float]]) -> Callable[[dict[str, Any]], None]:
    def change(meta: dict[str, Any]) -> None:
        scaler = meta["classes"][cls]["scaler"]
        scaler["center"] = value(scaler["center"])

    return change


def _error_scale_of(cls: str, value: Callable[[list[float]], list[float]]) -> Callable[[dict[str, Any]], None]:
    """Set the class's error scale from its scale (a bundle's may have none)."""
    def change(meta: dict[str, Any]) -> None:
        scaler = meta["classes"][cls]["scaler"]
        scaler["error_scale"] = value(scaler["scale"])

    return change


@dataclass(frozen=True)
class Malformed:
    kind: str
    damage: Callable[[Path], None]
    reason: str  # words the refusal must contain
    file: str = META  # the file the refusal must name


MALFORMED_BUNDLES = [
    Malformed("no model.json", lambda b: (b / META).unlink(), "not a model bundle", ""),
    Malformed("no weights", lambda b: (b / WEIGHTS).unlink(), "not a model bundle", ""),
    Malformed("an empty directory", lambda b: [p.unlink() for p in b.iterdir()], "not a model bundle", ""),
    Malformed("model.json not JSON", lambda b: (b / META).write_text((b / META).read_text()[:200]), "unreadable"),
    Malformed("model.json binary", lambda b: (b / META).write_bytes(b"\xff\xfe\x00garbage"), "unreadable"),
    Malformed("model.json a JSON array", lambda b: (b / META).write_text("[1, 2, 3]"), "a JSON list, not an object"),
    Malformed("model.json a JSON string", lambda b: (b / META).write_text('"model"'), "a JSON str, not an object"),
    Malformed("format from the future", _edit(_set("format_version", 99)), "bundle format 99"),
    Malformed("threshold edited, hash not", _edit(_set("classes.host.threshold.value", 1e9), rehash=False),
              "SHA-256 mismatch (edited or corrupted)"),
    Malformed("scale edited, hash not", _edit(_scale_of("host", lambda s: [0.0] * len(s)), rehash=False),
              "SHA-256 mismatch (edited or corrupted)"),
    Malformed("hash removed", _edit(_delete("meta_sha256"), rehash=False), "SHA-256 mismatch (edited or corrupted)"),
    Malformed("no classes key", _edit(_delete("classes")), "classes: missing"),
    Malformed("no window key", _edit(_delete("window")), "window: missing"),
    Malformed("no schema key", _edit(_delete("schema")), "schema"),
    Malformed("classes {}", _edit(_set("classes", {})), "classes: none"),
    Malformed("no host model", _edit(lambda m: m["classes"].pop("host")), "no model for host"),
    Malformed("threshold NaN", _edit(_set("classes.host.threshold.value", float("nan"))), "classes.host.threshold.value: nan"),
    Malformed("threshold Infinity", _edit(_set("classes.global.threshold.value", float("inf"))),
              "classes.global.threshold.value: inf"),
    Malformed("threshold negative", _edit(_set("classes.host.threshold.value", -2.0)), "classes.host.threshold.value: -2.0"),
    Malformed("threshold zero", _edit(_set("classes.host.threshold.value", 0)), "classes.host.threshold.value: 0"),
    Malformed("threshold a string", _edit(_set("classes.host.threshold.value", "2.0")), "is not a number"),
    Malformed("allowance above 1", _edit(_set("classes.host.threshold.allowance", 1.5)),
              "classes.host.threshold.allowance: 1.5"),
    Malformed("allowance NaN", _edit(_set("classes.global.threshold.allowance", float("nan"))),
              "classes.global.threshold.allowance: nan"),
    Malformed("threshold unknown field", _edit(_set("classes.host.threshold.colour", "red")), "classes.host.threshold"),
    Malformed("scale zeroed", _edit(_scale_of("host", lambda s: [0.0] * len(s))), "classes.host.scaler.scale: 0.0"),
    Malformed("scale negative", _edit(_scale_of("global", lambda s: [-1.0] * len(s))), "classes.global.scaler.scale: -1.0"),
    Malformed("scale NaN", _edit(_scale_of("host", lambda s: [float("nan")] + s[1:])), "not all finite numbers"),
    Malformed("scaler of the wrong width", _edit(_scale_of("host", lambda s: s[:-1])), "the feature schema has"),
    Malformed("error scale under its floor", _edit(_error_scale_of("host", lambda s: [0.25] * len(s))),
              "classes.host.scaler.error_scale: 0.25 is below 1.0"),
    Malformed("error scale NaN", _edit(_error_scale_of("global", lambda s: [float("nan")] * len(s))),
              "classes.global.scaler.error_scale: not all finite"),
    Malformed("error scale of the wrong width", _edit(_set("classes.host.scaler.error_scale", [2.0])), "the feature schema has"),
    Malformed("center infinite", _edit(_center_of("host", lambda c: [float("inf")] + c[1:])), "classes.host.scaler.center: not all finite"),
    Malformed("no scaler", _edit(lambda m: m["classes"]["host"].pop("scaler")), "classes.host.scaler: missing"),
    Malformed("bins 0", _edit(_set("window.bins", 0)), "window.bins: 0"),
    Malformed("bin_s NaN", _edit(_set("window.bin_s", float("nan"))), "window.bin_s: nan"),
    Malformed("hidden size another", _edit(_set("hidden_size", 7)), "do not fit a 7-unit model", WEIGHTS),
    Malformed("hidden size huge", _edit(_set("hidden_size", 10**12)), "hidden_size"),
    Malformed("weights damaged", lambda b: (b / WEIGHTS).write_bytes(b"\x00" * 64), "SHA-256 mismatch (file corrupted", WEIGHTS),
    Malformed("weights header damaged, hashes edited to match", _weights(_damage_header), "unreadable weights", WEIGHTS),
    Malformed("weights truncated, hashes edited to match", _weights(lambda d: d[: len(d) // 2]), "unreadable weights", WEIGHTS),
    Malformed("weights NaN, hashes edited to match", _weights(_nan_payload), "are not finite", WEIGHTS),
    Malformed("weights of other shapes, hashes edited to match", _other_shapes, "do not fit", WEIGHTS),
]


def malformed_copy(model: Path, into: Path, case: Malformed) -> Path:
    """A copy of the bundle `model` at `into`, broken as `case` says."""
    shutil.copytree(model, into)
    case.damage(into)
    return into


# ------------------------------------------------------------------------ checkpoints
def _state_doc(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / STATE_JSON
        doc = json.loads(path.read_text())
        change(doc)
        path.write_text(json.dumps(doc))

    return apply


def _tensors(change: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]) -> Callable[[Path], None]:
    def apply(checkpoint: Path) -> None:
        path = checkpoint / STATE_TENSORS
        save_file(change(load_file(str(path))), str(path))

    return apply


def _crashed_between_renames(checkpoint: Path) -> None:
    """As if killed between save_checkpoint's two renames, and the old one damaged too."""
    old = checkpoint.with_name(f".{checkpoint.name}.old")
    checkpoint.rename(old)
    (old / STATE_JSON).write_text((old / STATE_JSON).read_text()[:100])


@dataclass(frozen=True)
class BadCheckpoint:
    kind: str
    damage: Callable[[Path], None]
    reason: str  # words the warning's reason must contain
    on_restore: bool = False  # found only when the states meet the model (load_checkpoint cannot tell)


BAD_CHECKPOINTS = [
    BadCheckpoint("state.json not JSON", lambda c: (c / STATE_JSON).write_text((c / STATE_JSON).read_text()[:100]), "unreadable"),
    BadCheckpoint("state.json binary", lambda c: (c / STATE_JSON).write_bytes(b"\x00\xff" * 50), "unreadable"),
    BadCheckpoint("state.json a JSON array", lambda c: (c / STATE_JSON).write_text("[]"), "a JSON list, not an object"),
    BadCheckpoint("no banks", _state_doc(lambda d: d.pop("banks")), "banks: missing"),
    BadCheckpoint("incidents a list", _state_doc(lambda d: d.__setitem__("incidents", [])), "incidents: list"),
    BadCheckpoint("an incident entry malformed", _state_doc(lambda d: d["incidents"].__setitem__("10.20.9.9", 5)),
                  "not an incident tracker entry"),
    BadCheckpoint("an open incident malformed",
                  _state_doc(lambda d: d["incidents"].__setitem__("10.20.9.9", {"streak": 1, "streak_start_ns": 0,
                                                                                 "incident": {"colour": "red"}})),
                  "cannot be restored", on_restore=True),
    BadCheckpoint("a resume time that is not a time", _state_doc(lambda d: d["meta"].__setitem__("resume_ns", "soon")),
                  "meta.resume_ns: 'soon'"),
    BadCheckpoint("a model reference that is not one", _state_doc(lambda d: d["meta"].__setitem__("model", "x")),
                  "meta.model: not an object"),
    BadCheckpoint("a collector's exporters that are not a list of them",
                  _state_doc(lambda d: d["meta"].__setitem__("exporters", {"exporters": "192.0.2.1"})),
                  "meta.exporters: not a list of NetFlow exporters"),
    BadCheckpoint("fewer counters than entities", _state_doc(lambda d: d["banks"]["host"]["seen"].pop()), "warm-up counts"),
    BadCheckpoint("entities not strings", _state_doc(lambda d: d["banks"]["host"]["entities"].__setitem__(0, 7)),
                  "banks.host.entities: not a list of str"),
    BadCheckpoint("carried evidence out of range",
                  _state_doc(lambda d: d["banks"]["host"].__setitem__("carried", [7.0] * len(d["banks"]["host"]["entities"]))),
                  "banks.host.carried: not a list of"),
    BadCheckpoint("no tensors file", lambda c: (c / STATE_TENSORS).unlink(), "hidden.safetensors: no "),
    BadCheckpoint("tensors damaged", lambda c: (c / STATE_TENSORS).write_bytes(b"\x08" + b"\x00" * 7 + b"{garbage}"), "unreadable"),
    BadCheckpoint("a class's tensors missing", _tensors(lambda t: {k: v for k, v in t.items() if k != "host.c"}), "no host.h or host.c"),
    BadCheckpoint("rows do not match the entities", _tensors(lambda t: {k: v[:-1] if k.startswith("host.") else v for k, v in t.items()}),
                  "are not ("),
    BadCheckpoint("h and c of different shapes", _tensors(lambda t: {**t, "host.c": t["host.c"][:, :-1].contiguous()}), "are not ("),
    BadCheckpoint("hidden states not finite", _tensors(lambda t: {**t, "host.h": torch.full_like(t["host.h"], float("nan"))}),
                  "not finite"),
    BadCheckpoint("hidden size other than the model's that wrote it",
                  _tensors(lambda t: {k: torch.zeros(v.shape[0], v.shape[1] + 3) for k, v in t.items()}),
                  "hidden states of size", on_restore=True),
    BadCheckpoint("a crash between the renames left a damaged old one", _crashed_between_renames, "unreadable"),
]


def damaged_copy(state_dir: Path, into: Path, case: BadCheckpoint) -> Path:
    """A copy of the state directory `state_dir` at `into`, its checkpoint broken as `case` says."""
    shutil.copytree(state_dir, into, ignore=shutil.ignore_patterns(".lock"))
    case.damage(into / CHECKPOINT_DIR)
    return into
