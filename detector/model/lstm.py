"""The LSTM autoencoder: reads a window of time bins from a carried (h, c), reconstructs it.

The encoder LSTM starts from the entity's carried state and reads the window's scaled bins;
its final (h, c) is what the caller carries to the entity's next window. The decoder sees
only the encoding (the final h, repeated per bin, plus the bin position) and reconstructs
the bins; the reconstruction error is the window's score. Because the encoding is computed
from the carried state, "normal" is judged in the context of the entity's recent past.
"""

from __future__ import annotations

import torch
from torch import nn

State = tuple[torch.Tensor, torch.Tensor]  # (h, c), each (batch, hidden)


class LSTMAutoencoder(nn.Module):
    def __init__(self, n_features: int, hidden_size: int = 32, n_bins: int = 6) -> None:
        super().__init__()
        self.n_features = n_features
        self.hidden_size = hidden_size
        self.n_bins = n_bins
        self.encoder = nn.LSTM(n_features, hidden_size, batch_first=True)
        self.decoder = nn.LSTM(hidden_size + n_bins, hidden_size, batch_first=True)
        self.output = nn.Linear(hidden_size, n_features)
        self.register_buffer("_positions", torch.eye(n_bins), persistent=False)

    def initial_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The neutral state a new entity starts from."""
        dev = device if device is not None else self.output.weight.device
        zeros = torch.zeros(batch, self.hidden_size, device=dev, dtype=self.output.weight.dtype)
        return zeros, zeros.clone()

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """x: (batch, bins, features) scaled; state: carried (h, c). Returns the
        reconstruction (same shape as x) and the encoder's final state."""
        h0, c0 = state
        _, (h_n, c_n) = self.encoder(x, (h0.unsqueeze(0), c0.unsqueeze(0)))
        return self.decode(h_n[0], x.shape[1]), (h_n[0], c_n[0])

    def decode(self, code: torch.Tensor, bins: int) -> torch.Tensor:
        """Reconstruct `bins` bins from encodings (batch, hidden)."""
        batch = code.shape[0]
        pos = self._positions[:bins].unsqueeze(0).expand(batch, bins, self.n_bins)
        dec_in = torch.cat([code.unsqueeze(1).expand(batch, bins, self.hidden_size), pos], dim=2)
        dec_out, _ = self.decoder(dec_in)
        return self.output(dec_out)
