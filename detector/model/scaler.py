"""Feature scaling between real units and the model's space.

Counts are heavy-tailed, so features go through log1p and then a robust standardisation
(median and a floored, IQR-based spread) fitted on benign training windows. The inverse
turns reconstructions back into real units for explanations ("812 ports vs 3 expected").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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

    def as_dict(self) -> dict[str, list[float]]:
        return {"center": self.center.tolist(), "scale": self.scale.tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, list[float]]) -> FeatureScaler:
        return cls(
            center=np.asarray(data["center"], dtype=np.float32),
            scale=np.asarray(data["scale"], dtype=np.float32),
        )
