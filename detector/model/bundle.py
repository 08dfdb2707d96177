"""Model bundle I/O: a directory with safetensors weights and a JSON description. Never pickle.

    <dir>/model.safetensors   one LSTMAutoencoder per entity class, keys "<class>.<param>"
    <dir>/model.json          feature schema, window geometry, scalers, thresholds, training
                              summary, versions, and the SHA-256 of the weights file

Written atomically (a sibling temporary directory, fsynced, then renamed over the old one), so
a crash never leaves half a bundle. Loading verifies the hash (a corrupted file is refused,
not loaded) and refuses a bundle whose feature schema differs from the running code's.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from detector import __version__
from detector.contracts import FeatureSchema
from detector.errors import ModelError
from detector.model.lstm import LSTMAutoencoder
from detector.model.scaler import FeatureScaler
from detector.model.threshold import Threshold

WEIGHTS = "model.safetensors"
META = "model.json"
FORMAT_VERSION = 2  # 2: the decoder's minute-of-hour phase input


@dataclass
class ClassModel:
    """The model of one entity class (global, host): shared weights, its scaler and threshold."""

    network: LSTMAutoencoder
    scaler: FeatureScaler
    threshold: Threshold


@dataclass
class ModelBundle:
    schema: FeatureSchema
    bin_s: float
    bins: int
    hidden_size: int
    classes: dict[str, ClassModel]
    training: dict[str, Any] = field(default_factory=dict)
    version: str = ""  # short hash of the weights: the model version incidents carry

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        try:
            tensors = {
                f"{cls}.{name}": t.detach().cpu().contiguous()
                for cls, cm in self.classes.items()
                for name, t in cm.network.state_dict().items()
            }
            save_file(tensors, str(tmp / WEIGHTS))
            digest = _sha256(tmp / WEIGHTS)
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
                "classes": {
                    cls: {"scaler": cm.scaler.as_dict(), "threshold": cm.threshold.as_dict()}
                    for cls, cm in self.classes.items()
                },
                "training": self.training,
            }
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
    def load(cls, path: str | Path, expected_schema: FeatureSchema | None = None) -> ModelBundle:
        path = Path(path)
        meta_path, weights_path = path / META, path / WEIGHTS
        if not meta_path.is_file() or not weights_path.is_file():
            raise ModelError(f"{path}: not a model bundle (needs {META} and {WEIGHTS}); train one with `netad train`")
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{meta_path}: unreadable: {exc}") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"{meta_path}: bundle format {meta.get('format_version')!r}, this netad reads {FORMAT_VERSION}:"
                             " retrain with `netad train`")
        digest = _sha256(weights_path)
        if digest != meta.get("weights_sha256"):
            raise ModelError(f"{weights_path}: SHA-256 mismatch (file corrupted or replaced); refusing to load")
        try:
            schema = FeatureSchema.from_dict(meta["schema"])
            if expected_schema is not None and schema != expected_schema:
                raise ModelError(
                    f"{path}: trained on feature schema {schema.name} v{schema.version} "
                    f"({len(schema.features)} features), this netad computes {expected_schema.name} "
                    f"v{expected_schema.version} ({len(expected_schema.features)}); retrain with `netad train`"
                )
            tensors = load_file(str(weights_path))
            hidden = int(meta["hidden_size"])
            bins = int(meta["window"]["bins"])
            classes = {}
            for name, info in meta["classes"].items():
                net = LSTMAutoencoder(len(schema.features), hidden, bins)
                prefix = f"{name}."
                net.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
                net.eval()
                classes[name] = ClassModel(
                    network=net,
                    scaler=FeatureScaler.from_dict(info["scaler"]),
                    threshold=Threshold.from_dict(info["threshold"]),
                )
        except ModelError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: invalid bundle: {exc}") from None
        return cls(
            schema=schema,
            bin_s=float(meta["window"]["bin_s"]),
            bins=bins,
            hidden_size=hidden,
            classes=classes,
            training=meta.get("training", {}),
            version=digest[:12],
        )


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
