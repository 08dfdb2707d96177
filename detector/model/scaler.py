"""Feature scaling between real units and the model's space, and what each feature's error
counts for in a window's score.

Counts are heavy-tailed, so features go through log1p and then a robust standardisation
(median and a floored, IQR-based spread) fitted on benign training windows. The inverse
turns reconstructions back into real units for explanations ("812 ports vs 3 expected").
The streaming scorer applies the same two maps to tensors (TorchScaler), on the model's
device, without a round trip through numpy.

`error_scale` (set by training, `held_out_error_scale`) is what the model's reconstruction
error of each feature ordinarily reaches on windows it did not learn from: a window's score
counts each feature's error in those units (model.scorer), so a feature the model always
reconstructs well (new peers, RSTs) is not outweighed by one it never does (the packet and
flow counts of a bursty device). The explanation ranks the features by what the score
counted of each; the incident categories read their undivided error in scaled units: how
far each is from what was expected (WindowScore.deviations).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_SCALE = 0.25  # in log1p units: a feature that never moved in training still has a scale
CLIP = 30.0  # scaled values beyond this carry no extra information and destabilise the LSTM
# a feature's error scale is at least this: one bin one scaled unit (a robust standard
# deviation) off. Below it, a feature that never moved in the held-out windows (ICMP errors,
# a host's SYNs received) would turn a fraction of a packet into an alarm. At the cost of one
# count of such a feature (about 7.7) instead, fold B's 20-peer onset came 4 windows in on
# the link (docs/EVALUATION.md, section xv)
MIN_ERROR_SCALE = 1.0
# the held-out windows' quantile a feature's error scale is read at: the worst of what a few
# hours' (or days') windows ordinarily reach. At 0.99 the bursty counts kept more of their
# weight, and fold B's 20-peer onset came 2 and 3 windows in (section xv)
ERROR_QUANTILE = 0.999


def held_out_error_scale(errors: np.ndarray) -> np.ndarray:
    """Per feature, the ERROR_QUANTILE of the window errors `errors` (windows, features; the
    model's aligned_error, in scaled units, NaN rows ignored) of windows the model did not
    learn from, at least MIN_ERROR_SCALE."""
    rows = errors[np.isfinite(errors).all(axis=1)]
    if rows.shape[0] == 0:
        return np.full(errors.shape[1], MIN_ERROR_SCALE, np.float32)
    return np.maximum(np.quantile(rows.astype(np.float64), ERROR_QUANTILE, axis=0), MIN_ERROR_SCALE).astype(np.float32)


@dataclass
class FeatureScaler:
    center: np.ndarray  # float32 (features,)
    scale: np.ndarray  # float32 (features,)
    # float32 (features,), each >= MIN_ERROR_SCALE: what a feature's window error is counted
    # in (held_out_error_scale); None: every feature's in plain scaled units (1)
    error_scale: np.ndarray | None = None

    def weights(self) -> np.ndarray:
        """float32 (features,): what each feature's window error is multiplied by in a score."""
        if self.error_scale is None:
            return np.ones(self.center.shape[0], np.float32)
        return (1.0 / self.error_scale).astype(np.float32)

    @classmethod
    def fit(cls, features: np.ndarray) -> FeatureScaler:
        """features: (..., n_features) in real units."""
        flat = np.log1p(np.maximum(features.reshape(-1, features.shape[-1]).astype(np.float64), 0.0))
        q25, q50, q75 = np.percentile(flat, [25, 50, 75], axis=0)
        spread = (q75 - q25) / 1.349
        std = flat.std(axis=0)
        scale = np.maximum(np.maximum(spread, 0.5 * std), MIN_SCALE)
        return cls(center=q50.astype(np.float32), scale=scale.astype(np.float32))

    def transform(self, features: np.ndarray) -> np.ndarray:
        z = (np.log1p(np.maximum(features, 0.0)) - self.center) / self.scale
        return np.clip(z, -CLIP, CLIP).astype(np.float32)

    def inverse(self, scaled: np.ndarray) -> np.ndarray:
        return np.expm1(np.maximum(scaled * self.scale + self.center, 0.0)).astype(np.float32)

    def to_torch(self, device: torch.device | str) -> TorchScaler:
        return TorchScaler(torch.from_numpy(self.center).to(device, torch.float32),
                           torch.from_numpy(self.scale).to(device, torch.float32),
                           torch.from_numpy(self.weights()).to(device, torch.float32))

    def as_dict(self) -> dict[str, list[float]]:
        out = {"center": self.center.tolist(), "scale": self.scale.tolist()}
        if self.error_scale is not None:
            out["error_scale"] = self.error_scale.tolist()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> FeatureScaler:
        error_scale = data.get("error_scale")
        return cls(
            center=np.asarray(data["center"], dtype=np.float32),
            scale=np.asarray(data["scale"], dtype=np.float32),
            error_scale=None if error_scale is None else np.asarray(error_scale, dtype=np.float32),
        )


@dataclass(frozen=True)
class TorchScaler:
    """FeatureScaler's transform and inverse on float32 tensors, with center and scale already
    on the device: equal to the numpy versions within float32 rounding. At batch 1024 the
    numpy maps and their copies cost the scorer about a third of the LSTM's own time."""

    center: torch.Tensor  # float32 (features,)
    scale: torch.Tensor  # float32 (features,)
    weight: torch.Tensor  # float32 (features,): FeatureScaler.weights()

    def transform(self, features: torch.Tensor) -> torch.Tensor:
        z = features.clamp_min(0.0)  # the one new tensor; the rest runs in place
        return z.log1p_().sub_(self.center).div_(self.scale).clamp_(-CLIP, CLIP)

    def inverse_(self, scaled: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """Real units of the features `index` (batch, k) picks out of `scaled` (batch, bins,
        features), as (batch, bins, k); overwrites `scaled`. The affine step runs over all
        features (cheap, vectorised), expm1 only over the k picked."""
        z = scaled.mul_(self.scale).add_(self.center)
        picked = z.gather(2, index.unsqueeze(1).expand(-1, z.shape[1], -1))
        return picked.clamp_min_(0.0).expm1_()
