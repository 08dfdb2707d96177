"""Feature scaling between real units and the model's space.

Counts are heavy-tailed, so features go through log1p and then a robust standardisation
(median and a floored, IQR-based spread) fitted on benign training windows. The inverse
turns reconstructions back into real units for explanations ("812 ports vs 3 expected").
The streaming scorer applies the same two maps to tensors (TorchScaler), on the model's
device, without a round trip through numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_SCALE = 0.25  # in log1p units: a feature that never moved in training still has a scale
CLIP = 30.0  # scaled values beyond this carry no extra information and destabilise the LSTM


@dataclass
class FeatureScaler:
    center: np.ndarray  # float32 (features,)
    scale: np.ndarray  # float32 (features,)

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
                           torch.from_numpy(self.scale).to(device, torch.float32))

    def as_dict(self) -> dict[str, list[float]]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> FeatureScaler:
        return cls(
            center=np.asarray(data["center"], dtype=np.float32),
            scale=np.asarray(data["scale"], dtype=np.float32),
        )


@dataclass(frozen=True)
class TorchScaler:
    """FeatureScaler's transform and inverse on float32 tensors, with center and scale already
    on the device: equal to the numpy versions within float32 rounding. At batch 1024 the
    numpy maps and their copies cost the scorer about a third of the LSTM's own time."""

    center: torch.Tensor  # float32 (features,)
    scale: torch.Tensor  # float32 (features,)

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
