"""Model bundle I/O: a directory with safetensors weights and a JSON description. Never pickle.

    <dir>/model.safetensors   one LSTMAutoencoder per entity class, keys "<class>.<param>"; a
                              class of several members (ClassModel.members): the first
                              member's as these, member i's as "<class>#<i>.<param>"
    <dir>/model.json          feature schema, window geometry, scalers, thresholds, training
                              summary, versions, the SHA-256 of the weights file and the
                              SHA-256 of this JSON itself (`meta_sha256`, see meta_digest),
                              and the host groups it was trained with (model.groups), if any
    <dir>/history.safetensors the peer history the training span ended with (CarriedHistory:
                              each entity's peers and ports, addresses included), which the
                              streams the bundle scores start from; its SHA-256 in model.json

Written atomically (a sibling temporary directory, fsynced, then renamed over the old one), so
a crash never leaves half a bundle. Loading verifies both hashes (a corrupted or edited file is
refused, not loaded), then every value the scorer relies on (finite positive thresholds,
scalers of the schema's width with finite centers and scales of at least MIN_SCALE, weights
that fit the model and are finite, the entity classes the caller needs), and refuses a bundle
whose feature schema differs from the running code's. Every problem is a ModelError naming
the file and the reason, never a traceback: a hash is no defence against someone who can
rewrite the bundle, so the values are checked even when the hashes match.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import platform
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from detector import __version__
from detector.config import check_groups
from detector.contracts import ENTITY_HOST, CarriedHistory, FeatureSchema
from detector.errors import ModelError
from detector.model.lstm import LSTMAutoencoder
from detector.model.meta import (
    FORMAT_VERSION,
    MAX_BINS,
    MAX_HIDDEN_SIZE,
    MAX_MEMBERS,
    META,
    META_DIGEST_KEY,
    WEIGHTS,
    history_meta,
    integer_in,
    meta_digest,
    number_in,
    read_history,
    read_meta,
    require_field,
    save_safetensors,
    schema_mismatch,
    sha256_of,
    vector_of,
)
from detector.model.scaler import MIN_ERROR_SCALE, MIN_SCALE, FeatureScaler
from detector.model.threshold import Threshold


@dataclass
class ClassModel:
    """The model of one entity class (global, host): shared weights, its scaler and threshold.

    A class of several members (`members`, all of them, the first one's network and scaler
    being `network` and `scaler`) is an ensemble: networks trained alike from their own seeds,
    each with its own error scales and threshold. Its window score is the members' median score
    in their own thresholds, times the mean of those thresholds (the class's `threshold` as
    trained): see `in_thresholds`. The median, not the mean: one member whose calibration
    failed (a threshold 4.8 times too low, docs/EVALUATION.md section xxx) moves a mean of
    three by a third of its error and a median not at all."""

    network: LSTMAutoencoder
    scaler: FeatureScaler
    threshold: Threshold
    members: list[ClassModel] = field(default_factory=list)

    def in_thresholds(self, member_scores: list[Any]) -> Any:
        """The class's window scores from its members' (one array per member, each in its own
        units): the median of each member's score over its own threshold, in the unit of the
        class's threshold (members_threshold). A class of one member: its scores as they are."""
        if not self.members:
            return member_scores[0]
        shares = [s / m.threshold.value for s, m in zip(member_scores, self.members, strict=True)]
        return np.median(np.stack(shares), axis=0) * self.members_threshold()

    def levels_of(self, entities: list[str]) -> np.ndarray | None:
        """Each member's level (model.levels) of each of `entities` (members or 1, entities),
        float32, 1 where it has none; None where no member has any (nothing to divide)."""
        own = self.members or [self]
        if not any(m.threshold.levels for m in own):
            return None
        return np.array([[m.threshold.levels.get(e, 1.0) for e in entities] for m in own], dtype=np.float32)

    def members_threshold(self) -> float:
        """The mean of the members' thresholds: the unit the class's scores are in (and its
        threshold, as trained; a threshold refit moves the threshold, not the unit)."""
        return sum(m.threshold.value for m in self.members) / len(self.members) if self.members else self.threshold.value


@dataclass
class ModelBundle:
    schema: FeatureSchema
    bin_s: float
    bins: int
    hidden_size: int
    classes: dict[str, ClassModel]
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # short hash of the weights: the model version incidents carry
    # the peer history the training span ended with: the scored streams start from it
    history: CarriedHistory | None = None
    members: int = 1  # networks per class (ClassModel.members); each entity carries hidden_size per member
    # home hosts modelled apart (model.groups): group -> networks, each group a class of `classes`
    host_groups: dict[str, list[str]] = field(default_factory=dict)

    @property
    def state_size(self) -> int:
        """The width of an entity's carried (h, c): every member's state side by side."""
        return self.hidden_size * self.members

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            tensors = {
                f"{_member_key(cls, i)}.{name}": t.detach().cpu().contiguous()
                for cls, cm in self.classes.items()
                for i, member in enumerate(cm.members or [cm])
                for name, t in member.network.state_dict().items()
            }
            save_safetensors(save_file, tensors, tmp / WEIGHTS)
            digest = sha256_of(tmp / WEIGHTS)
            self.version = digest[:12]
            meta = {
                "format_version": FORMAT_VERSION,
                "netad_version": __version__,
                "torch_version": torch.__version__,
                "python_version": platform.python_version(),
                "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                "weights_sha256": digest,
                "schema": self.schema.as_dict(),
                "window": {"bin_s": self.bin_s, "bins": self.bins},
                "hidden_size": self.hidden_size,
                "members": self.members,
                "classes": {
                    cls: {"scaler": cm.scaler.as_dict(), "threshold": cm.threshold.as_dict(),
                          **({"members": [{"scaler": m.scaler.as_dict(), "threshold": m.threshold.as_dict()}
                                          for m in cm.members]} if cm.members else {})}
                    for cls, cm in self.classes.items()
                },
                "training": self.training,
            }
            if self.host_groups:
                meta["host_groups"] = self.host_groups
            if self.history is not None:
                meta["history"] = history_meta(tmp, self.history)
            meta[META_DIGEST_KEY] = meta_digest(meta)
            with open(tmp / META, "w", encoding="utf-8") as fh:
                json.dump(meta, fh, indent=2)
                fh.flush()
                os.fsync(fh.fileno())
            _fsync_dir(tmp)
            old = None
            if path.exists():
                old = path.with_name(f".{path.name}.old")
                if old.exists():
                    shutil.rmtree(old)
                os.rename(path, old)
            os.rename(tmp, path)
            _fsync_dir(path.parent)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | Path, expected_schema: FeatureSchema | None = None,
             classes: Iterable[str] = ()) -> ModelBundle:
        """The bundle at `path`, verified (see the module docstring); `classes`: the entity
        classes the caller will score, each of which must have its model. Raises ModelError."""
        path = Path(path)
        meta_path, weights_path = path / META, path / WEIGHTS
        if not meta_path.is_file() or not weights_path.is_file():
            raise ModelError(f"{path}: not a model bundle (needs {META} and {WEIGHTS}); train one with `netad train`")
        meta = read_meta(meta_path)
        digest = sha256_of(weights_path)
        if digest != meta.get("weights_sha256"):
            raise ModelError(f"{weights_path}: SHA-256 mismatch (file corrupted or replaced); refusing to load")
        try:
            described_schema = require_field(meta, "schema", dict)
        except ValueError as exc:
            raise ModelError(f"{meta_path}: invalid bundle: {exc}") from None
        try:
            schema = FeatureSchema.from_dict(described_schema)
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"{meta_path}: invalid bundle: schema: {exc!r}") from None
        mismatch = None if expected_schema is None else schema_mismatch(path, schema, expected_schema)
        if mismatch:
            raise ModelError(mismatch)
        try:
            window = require_field(meta, "window", dict)
            bin_s = number_in(window, "bin_s", "window.bin_s", low=0.0, high=86_400.0)
            bins = integer_in(window, "bins", "window.bins", 1, MAX_BINS)
            hidden = integer_in(meta, "hidden_size", "hidden_size", 2, MAX_HIDDEN_SIZE)
            members = integer_in(meta, "members", "members", 1, MAX_MEMBERS) if "members" in meta else 1
            training = require_field(meta, "training", dict) if "training" in meta else {}
            described = require_field(meta, "classes", dict)
            if not described:
                raise ValueError("classes: none (a bundle holds at least one entity class's model)")
            missing = [c for c in classes if c not in described]
            if missing:
                why = ("every home host of its training span was in a host group, and a host outside them would go "
                       "unscored: leave hosts outside the groups (model.groups)" if "host_groups" in meta and
                       missing == [ENTITY_HOST] else "the config scores these entities: retrain with this config")
                raise ValueError(f"classes: no model for {', '.join(missing)} (it has {', '.join(sorted(described))}); {why}")
            host_groups = _host_groups(meta, described)
            parts = {name: _class_parts(name, info, len(schema.features)) for name, info in described.items()}
            member_parts = {name: _member_parts(name, info, len(schema.features), members) for name, info in described.items()}
        except ValueError as exc:
            raise ModelError(f"{meta_path}: invalid bundle: {exc}") from None
        try:
            tensors = load_file(str(weights_path))
        except (OSError, SafetensorError) as exc:
            raise ModelError(f"{weights_path}: unreadable weights: {exc}") from None
        models = {}
        for name, (scaler, threshold) in parts.items():
            nets = [_network_of(tensors, weights_path, _member_key(name, i), len(schema.features), hidden, bins)
                    for i in range(members)]
            own = [ClassModel(network=net, scaler=s, threshold=t) for net, (s, t) in zip(nets, member_parts[name], strict=False)]
            models[name] = ClassModel(network=nets[0], scaler=own[0].scaler if own else scaler, threshold=threshold, members=own)
        return cls(schema=schema, bin_s=bin_s, bins=bins, hidden_size=hidden, classes=models, training=training,
                   version=digest[:12], history=read_history(path, meta), members=members, host_groups=host_groups)


def _host_groups(meta: dict[str, Any], classes: dict[str, Any]) -> dict[str, list[str]]:
    """The bundle's host groups (model.groups), checked: each names its networks and has its
    class's model. Raises ValueError."""
    groups = require_field(meta, "host_groups", dict) if "host_groups" in meta else {}
    if not all(isinstance(nets, list) and all(isinstance(n, str) for n in nets) for nets in groups.values()):
        raise ValueError("host_groups: each group is a list of networks")
    check_groups(groups)
    missing = [name for name in groups if name not in classes]
    if missing:
        raise ValueError(f"host_groups: no model for {', '.join(missing)}")
    return {str(name): list(nets) for name, nets in groups.items()}


def _member_key(cls: str, member: int) -> str:
    """The weights' key prefix of one member of a class: the class's name for the first."""
    return cls if member == 0 else f"{cls}#{member}"


def _network_of(tensors: dict[str, torch.Tensor], weights_path: Path, prefix: str, features: int, hidden: int,
                bins: int) -> LSTMAutoencoder:
    """The network whose weights are keyed "<prefix>.<param>", checked to fit and be finite."""
    net = LSTMAutoencoder(features, hidden, bins)
    state = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(f"{prefix}.")}
    name = prefix.replace("#", " member ")
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:  # torch: "Error(s) in loading state_dict for ...:" then what does not fit
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        reason = lines[1] if len(lines) > 1 else (lines[0] if lines else repr(exc))
        raise ModelError(f"{weights_path}: class {name}: the weights do not fit a {hidden}-unit model of "
                         f"{features} features over {bins} bins: {reason}") from None
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ModelError(f"{weights_path}: class {name}: weights {', '.join(sorted(bad)[:3])}{more} are not finite")
    net.eval()
    return net


def _member_parts(name: str, info: dict, width: int, members: int) -> list[tuple[FeatureScaler, Threshold]]:
    """A class's members' scalers and thresholds (none for a class of one member), checked."""
    if members == 1:
        if "members" in info:
            raise ValueError(f"classes.{name}.members: present, but the bundle's `members` is 1")
        return []
    described = info.get("members")
    if not isinstance(described, list) or len(described) != members:
        raise ValueError(f"classes.{name}.members: needs a list of {members} members' scalers and thresholds")
    return [_class_parts(f"{name}.members[{i}]", m, width) for i, m in enumerate(described)]


def _class_parts(name: str, info: Any, width: int) -> tuple[FeatureScaler, Threshold]:
    """One class's scaler and threshold, checked; ValueError says what is wrong."""
    where = f"classes.{name}"
    if not isinstance(info, dict):
        raise ValueError(f"{where}: not an object")
    scaler = info.get("scaler")
    if not isinstance(scaler, dict):
        raise ValueError(f"{where}.scaler: missing or not an object")
    center = vector_of(scaler.get("center"), f"{where}.scaler.center", width)
    scale = vector_of(scaler.get("scale"), f"{where}.scaler.scale", width)
    # every fitted scale is floored at MIN_SCALE: below it one count's change reads as an anomaly, and 0 divides by zero
    if min(scale) < MIN_SCALE:
        raise ValueError(f"{where}.scaler.scale: {min(scale)!r} is below {MIN_SCALE} (degenerate)")
    error_scale = None  # absent in bundles from before it was learned: every feature's error counts as it is
    if "error_scale" in scaler:
        error_scale = vector_of(scaler.get("error_scale"), f"{where}.scaler.error_scale", width)
        if min(error_scale) < MIN_ERROR_SCALE:  # a smaller one would turn one packet into an alarm
            raise ValueError(f"{where}.scaler.error_scale: {min(error_scale)!r} is below {MIN_ERROR_SCALE}")
    threshold = info.get("threshold")
    if not isinstance(threshold, dict):
        raise ValueError(f"{where}.threshold: missing or not an object")
    value = number_in(threshold, "value", f"{where}.threshold.value", low=0.0, high=math.inf)
    if "allowance" in threshold:  # absent in bundles from before it was chosen: Threshold's default
        threshold = {**threshold, "allowance": number_in(threshold, "allowance", f"{where}.threshold.allowance", low=0.0, high=1.0)}
    if "levels" in threshold:  # absent in bundles from before levels were read (model.levels): none
        levels = threshold["levels"]
        if not isinstance(levels, dict):
            raise ValueError(f"{where}.threshold.levels: not an object of entities' levels")
        threshold = {**threshold, "levels": {str(e): number_in(levels, e, f"{where}.threshold.levels[{e}]", low=1.0, high=math.inf)
                                             for e in levels}}
    try:
        th = Threshold.from_dict({**threshold, "value": value})
    except TypeError as exc:
        raise ValueError(f"{where}.threshold: {exc}") from None
    fields = {"center": center, "scale": scale} if error_scale is None else {"center": center, "scale": scale, "error_scale": error_scale}
    return FeatureScaler.from_dict(fields), th


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
