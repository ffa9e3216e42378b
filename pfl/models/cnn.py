from __future__ import annotations

import torch
from torch import nn

from pfl.models.inputs import RRBranch, check_input, split_input
from pfl.models.pooling import MaxPool1d


class SmallCNN(nn.Module):
    """A few thousand parameters: fast enough for tests and quick studies on 2 CPU cores."""

    def __init__(self, n_classes: int = 5, window: int = 256, channels: int = 16, dropout: float = 0.0,
                 in_channels: int = 1, rr_features: int = 0, rr_hidden: int = 16, norm: str = "none"):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"model.norm={norm!r} is not allowed: expected none | batch")
        check_input(in_channels, rr_features, rr_hidden)
        c = channels

        def bn(n: int) -> list[nn.Module]:  # BatchNorm after each convolution (for FedBN)
            return [nn.BatchNorm1d(n)] if norm == "batch" else []

        self.features = nn.Sequential(
            nn.Conv1d(in_channels, c, 7, padding=3), *bn(c), nn.ReLU(), MaxPool1d(4),
            nn.Conv1d(c, 2 * c, 5, padding=2), *bn(2 * c), nn.ReLU(), MaxPool1d(4),
            nn.Conv1d(2 * c, 2 * c, 3, padding=1), *bn(2 * c), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        )
        rr = RRBranch(rr_features, rr_hidden) if rr_features else None
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(2 * c + (rr.out_features if rr else 0), n_classes))
        if rr is not None:
            self.rr = rr
        self.window, self.rr_features = window, rr_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beat, rr = split_input(x, self.rr_features)
        if rr is None:
            return self.head(self.features(beat))
        z = torch.cat([self.features(beat).flatten(1), self.rr(rr)], dim=1)
        return self.head(z)
