"""The LSTM autoencoder: reads a window of time bins from a carried (h, c), reconstructs it.

The encoder LSTM starts from the entity's carried state and reads the window's scaled bins;
its final (h, c) is what the caller carries to the entity's next window. The decoder sees
only the encoding (the final h) and reconstructs all bins of the window at once; the
reconstruction error is the window's score. The decoder is a small MLP rather than a second
LSTM: a window is only a handful of bins, and the recurrent decoder doubled scoring time
for no measurable gain in reconstruction (the memory that matters is the encoder's). Because the encoding is computed
from the carried state, "normal" is judged in the context of the entity's recent past.
"""

from __future__ import annotations

from typing import TypeVar, cast

import numpy as np
import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (batch, hidden)

PHASE_SLOTS = 60  # minutes of the hour

_Times = TypeVar("_Times", int, np.ndarray)


def phase_of(window_start_ns: _Times) -> _Times:
    """The minute of the hour (UTC) a window starts in: the decoder's phase input."""
    return (window_start_ns // 60_000_000_000) % PHASE_SLOTS


class LSTMAutoencoder(nn.Module):
    def __init__(self, n_features: int, hidden_size: int = 32, n_bins: int = 6) -> None:
        super().__init__()
        self.n_features = n_features
        self.hidden_size = hidden_size
        self.n_bins = n_bins
        self.encoder = nn.LSTM(n_features, hidden_size, batch_first=True)
        self.decoder = nn.Sequential(
            nn.Linear(hidden_size, 2 * hidden_size),
            nn.Tanh(),
            nn.Linear(2 * hidden_size, n_bins * n_features),
        )
        # the minute of the hour the window starts in, added to the decoder's first layer
        # (a one-hot input, as a lookup): periodic jobs (a device calling home at hh:02)
        # become expected at their minute instead of alerting every hour
        self.phase = nn.Embedding(PHASE_SLOTS, 2 * hidden_size)
        nn.init.zeros_(self.phase.weight)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The neutral state a new entity starts from."""
        weight = cast(nn.Linear, self.decoder[0]).weight
        dev = device if device is not None else weight.device
        zeros = torch.zeros(batch, self.hidden_size, device=dev, dtype=weight.dtype)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State, phase: torch.Tensor | None = None) -> tuple[torch.Tensor, State]:
        """x: (batch, bins, features) scaled; state: carried (h, c); phase: (batch,) or
        scalar long, the windows' minute of the hour (phase_of). Returns the
        reconstruction (same shape as x) and the encoder's final state."""
        h0, c0 = state
        _, (h_n, c_n) = self.encoder(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return self.decode(h_n[0], x.shape[1], phase), (h_n[0], c_n[0])

    def decode(self, code: torch.Tensor, bins: int, phase: torch.Tensor | None = None) -> torch.Tensor:
        """Reconstruct `bins` bins (at most n_bins) from encodings (batch, hidden)."""
        first, act, last = self.decoder
        hidden = first(code)
        if phase is not None:
            hidden = hidden + self.phase(phase)
        out = last(act(hidden)).view(code.shape[0], self.n_bins, self.n_features)
        return out[:, :bins]
