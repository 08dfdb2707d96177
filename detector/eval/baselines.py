"""Baseline detectors scored on the very windows the daemon scored, to say what the LSTM adds.

Where it stands: inside `netad eval`, beside the streaming scorer. Both baselines see the
same closed windows (the same capture -> flows -> windows stages) and are scored on the
same test windows as the LSTM autoencoder with carried state:

- `RobustZScore`: per entity class, the median and MAD of the log1p features of the
  benign training windows (over windows and bins); a window's score is the largest (or the
  mean) |z| over its features and bins. No model, no memory: what a careful analyst would
  script first.
- `stateless_scores`: the SAME trained network, but every window starts from the neutral
  state instead of the entity's carried (h, c), i.e. a plain windowed autoencoder; with
  `forget_history`, also without the entity's peer and port history (the novelty features,
  capture.windows._history, read as an empty history gives them: 0). The gap between the
  daemon's scores and the twin without either is the value of all the memory netad carries;
  the twin with its history kept isolates the (h, c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from detector.capture.windows import HISTORY_FEATURE_NAMES
from detector.contracts import FeatureSchema
from detector.model.bundle import ClassModel
from detector.model.lstm import phase_of
from detector.model.scaler import MIN_SCALE
from detector.model.scorer import reconstruct

MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_CHUNK_WINDOWS = 4096  # windows per stateless forward pass: bounds memory, not results


@dataclass
class RobustZScore:
    """Robust per-feature z-scores of log1p features; fitted per entity class."""

    center: np.ndarray  # (features,) median of log1p(feature) over training windows and bins
    scale: np.ndarray  # (features,) MAD * 1.4826, floored at the model scaler's MIN_SCALE
    reduce: Literal["max", "mean"] = "max"

    @classmethod
    def fit(cls, features: np.ndarray, reduce: Literal["max", "mean"] = "max") -> RobustZScore:
        """features: (windows, bins, features) in real units, benign training windows."""
        if features.shape[0] == 0:
            raise ValueError("no training windows to fit the z-score baseline on")
        flat = np.log1p(np.maximum(features.reshape(-1, features.shape[-1]).astype(np.float64), 0.0))
        center = np.median(flat, axis=0)
        mad = np.median(np.abs(flat - center), axis=0)
        scale = np.maximum(MAD_TO_SIGMA * mad, MIN_SCALE)
        return cls(center=center, scale=scale, reduce=reduce)

    def z(self, features: np.ndarray) -> np.ndarray:
        """|z| per window, bin and feature."""
        return np.abs((np.log1p(np.maximum(features.astype(np.float64), 0.0)) - self.center) / self.scale)

    def score(self, features: np.ndarray) -> np.ndarray:
        """(windows,) scores of (windows, bins, features) windows."""
        if features.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        z = self.z(features).reshape(features.shape[0], -1)
        return z.max(axis=1) if self.reduce == "max" else z.mean(axis=1)


def without_history(features: np.ndarray, schema: FeatureSchema) -> np.ndarray:
    """The windows as an entity with no history sees them: every novelty feature 0 (an empty
    history is never warm, so it counts nothing as new)."""
    history = [i for i, name in enumerate(schema.features) if name in HISTORY_FEATURE_NAMES]
    out = features.copy()
    out[..., history] = 0.0
    return out


def stateless_scores(model: ClassModel, features: np.ndarray, window_start_ns: np.ndarray,
                     entities: list[str] | None = None) -> np.ndarray:
    """(windows,) reconstruction errors of the trained network with the neutral initial state
    for every window: the daemon's computation (`reconstruct`, with the windows' phase, each
    score in its entity's own level: model.levels, where `entities` names the windows')
    minus the carried (h, c); `without_history(features)` takes the peer history too."""
    if model.members:  # each member's, combined as the scorer combines them
        return np.asarray(model.in_thresholds([stateless_scores(m, features, window_start_ns, entities)
                                               for m in model.members]))
    out = np.zeros(features.shape[0], dtype=np.float64)
    net = model.network
    for lo in range(0, features.shape[0], _CHUNK_WINDOWS):
        chunk = features[lo : lo + _CHUNK_WINDOWS]
        device = next(net.parameters()).device
        phase = torch.from_numpy(phase_of(window_start_ns[lo : lo + _CHUNK_WINDOWS])).to(device)
        errors, _ = reconstruct(net, model.scaler, chunk, net.initial_state(chunk.shape[0], device), phase)
        out[lo : lo + chunk.shape[0]] = errors.scores
    levels = None if entities is None else model.levels_of(entities)
    return out if levels is None else out / levels[0]
