from __future__ import annotations

import torch
from torch import nn

from pfl.models.inputs import RRBranch, check_input, split_input


class _Block(nn.Module):
    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, norm: str):
        super().__init__()

        def norm_layer(c: int) -> nn.Module:
            return nn.GroupNorm(1, c) if norm == "group" else nn.BatchNorm1d(c) if norm == "batch" else nn.Identity()

        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv1d(c_in, c_out, kernel, stride=stride, padding=pad), norm_layer(c_out), nn.ReLU(),
            nn.Conv1d(c_out, c_out, kernel, padding=pad), norm_layer(c_out),
        )
        self.skip = nn.Identity() if (c_in == c_out and stride == 1) else nn.Conv1d(c_in, c_out, 1, stride=stride)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.body(x) + self.skip(x))


class ResNet1D(nn.Module):
    """A small residual 1-D CNN over the beat window(s), with an optional RR branch.

    A stem convolution, one strided residual block per entry of `channels`, global average
    pooling, the RR embedding concatenated, a linear head. `norm="group"` (GroupNorm with one
    group, the default) normalizes per beat, so there are no running statistics for FedAvg to
    average or for Per-FedAvg's functional steps to mutate; `batch` is there for FedBN.
    """

    def __init__(self, n_classes: int = 5, window: int = 256, channels: tuple[int, ...] = (16, 32, 64),
                 kernel_size: int = 7, dropout: float = 0.1, norm: str = "group", in_channels: int = 1,
                 rr_features: int = 0, rr_hidden: int = 32):
        super().__init__()
        if norm not in ("none", "group", "batch"):
            raise ValueError(f"model.norm={norm!r} is not allowed: expected none | group | batch")
        check_input(in_channels, rr_features, rr_hidden)
        channels = tuple(int(c) for c in channels)
        if not channels or min(channels) < 1:
            raise ValueError(f"model.channels={list(channels)!r} is not allowed: expected a non-empty list of integers >= 1")
        self.stem = nn.Sequential(nn.Conv1d(in_channels, channels[0], kernel_size, padding=kernel_size // 2), nn.ReLU())
        blocks, c_in = [], channels[0]
        for c in channels:
            blocks.append(_Block(c_in, c, kernel_size, 2, norm))
            c_in = c
        self.blocks = nn.Sequential(*blocks, nn.AdaptiveAvgPool1d(1), nn.Flatten())
        rr = RRBranch(rr_features, rr_hidden) if rr_features else None
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in + (rr.out_features if rr else 0), n_classes))
        if rr is not None:
            self.rr = rr
        self.window, self.rr_features = window, rr_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        beat, rr = split_input(x, self.rr_features)
        z = self.blocks(self.stem(beat))
        if rr is not None:
            z = torch.cat([z, self.rr(rr)], dim=1)
        return self.head(z)
