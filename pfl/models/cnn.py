from __future__ import annotations

import torch
from torch import nn


class SmallCNN(nn.Module):
    """A few thousand parameters: fast enough for tests and quick studies on 2 CPU cores."""

    def __init__(self, n_classes: int = 5, window: int = 256, channels: int = 16, dropout: float = 0.0):
        super().__init__()
        c = channels
        self.features = nn.Sequential(
            nn.Conv1d(1, c, 7, padding=3), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(c, 2 * c, 5, padding=2), nn.ReLU(), nn.MaxPool1d(4),
            nn.Conv1d(2 * c, 2 * c, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool1d(1),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(2 * c, n_classes))
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
