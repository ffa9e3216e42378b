from __future__ import annotations

import torch
from torch import nn


class CNNLSTM(nn.Module):
    """Convolutional blocks feeding an LSTM and a linear head.

    Sized like the reference study's 308,485-parameter CNN-LSTM (the defaults give 307,333).
    No batch norm by default (`norm="none"`, the reference model): its running statistics
    would make FedAvg average non-parameters and Per-FedAvg's functional meta-steps mutate
    buffers. `norm="batch"` adds BatchNorm1d after each convolution (for FedBN).
    """

    def __init__(
        self,
        n_classes: int = 5,
        window: int = 256,
        conv_channels: tuple[int, ...] = (32, 64, 128),
        kernel_size: int = 5,
        lstm_hidden: int = 190,
        head_hidden: int = 64,
        dropout: float = 0.2,
        norm: str = "none",
    ):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"model.norm={norm!r} is not allowed: expected none | batch")
        layers: list[nn.Module] = []
        c_in = 1
        for c_out in conv_channels:
            layers += [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                       *([nn.BatchNorm1d(c_out)] if norm == "batch" else []), nn.ReLU(), nn.MaxPool1d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.lstm = nn.LSTM(c_in, lstm_hidden, batch_first=True)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(lstm_hidden, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_classes)
        )
        self.window = window

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x).transpose(1, 2)  # (batch, time, channels) for the LSTM
        _, (h_n, _) = self.lstm(h)
        return self.head(h_n[-1])
