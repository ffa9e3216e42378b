from __future__ import annotations

import torch
from torch import nn

from pfl.models.inputs import RRBranch, check_input, split_input
from pfl.models.pooling import MaxPool1d


class CNNLSTM(nn.Module):
    """Convolutional blocks feeding an LSTM and a linear head.

    Sized like the reference study's 308,485-parameter CNN-LSTM (the defaults give 307,333).
    No batch norm by default (`norm="none"`, the reference model): its running statistics
    would make FedAvg average non-parameters and Per-FedAvg's functional meta-steps mutate
    buffers. `norm="batch"` adds BatchNorm1d after each convolution (for FedBN).
    `in_channels` > 1 reads several leads; `rr_features` > 0 adds an MLP over the RR features
    whose output joins the LSTM state before the head (pfl.models.inputs).
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
        in_channels: int = 1,
        rr_features: int = 0,
        rr_hidden: int = 32,
    ):
        super().__init__()
        if norm not in ("none", "batch"):
            raise ValueError(f"model.norm={norm!r} is not allowed: expected none | batch")
        check_input(in_channels, rr_features, rr_hidden)
        layers: list[nn.Module] = []
        c_in = in_channels
        for c_out in conv_channels:
            layers += [nn.Conv1d(c_in, c_out, kernel_size, padding=kernel_size // 2),
                       *([nn.BatchNorm1d(c_out)] if norm == "batch" else []), nn.ReLU(), MaxPool1d(2)]
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.lstm = nn.LSTM(c_in, lstm_hidden, batch_first=True)
        # Built after the reference layers, so that without RR features their initialization
        # (and the reference model) is unchanged.
        rr = RRBranch(rr_features, rr_hidden) if rr_features else None
        joined = lstm_hidden + (rr.out_features if rr else 0)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(joined, head_hidden), nn.ReLU(), nn.Linear(head_hidden, n_classes)
        )
        if rr is not None:
            self.rr = rr
        self.window, self.rr_features = window, rr_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beat, rr = split_input(x, self.rr_features)
        h = self.features(beat).transpose(1, 2)  # (batch, time, channels) for the LSTM
        _, (h_n, _) = self.lstm(h)
        z = h_n[-1] if rr is None else torch.cat([h_n[-1], self.rr(rr)], dim=1)
        return self.head(z)
