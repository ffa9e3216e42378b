"""The model input: beat window(s), optionally followed by RR features (pfl.data.rr.pack).

Every model takes one tensor (batch, channels, window + rr_features); with rr_features = k the
last k samples of channel 0 are the beat's RR features and the rest is the window. Keeping one
tensor means strategies, backends, checkpoints and the logged model's signature need not know
whether a model reads rhythm.
"""

from __future__ import annotations

import torch
from torch import nn


def split_input(x: torch.Tensor, rr_features: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    if not rr_features:
        return x, None
    return x[..., :-rr_features], x[:, 0, -rr_features:]


class RRBranch(nn.Module):
    """A small MLP over the RR features; its output joins the beat embedding before the head."""

    def __init__(self, rr_features: int, hidden: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(rr_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU())
        self.out_features = hidden

    def forward(self, rr: torch.Tensor) -> torch.Tensor:
        return self.net(rr)


def check_input(in_channels: int, rr_features: int, rr_hidden: int) -> None:
    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"model.in_channels={in_channels!r} is not allowed: expected an integer >= 1 "
                         "(1 + len(data.extra_leads))")
    if not isinstance(rr_features, int) or rr_features < 0:
        raise ValueError(f"model.rr_features={rr_features!r} is not allowed: expected an integer >= 0")
    if rr_features and rr_hidden < 1:
        raise ValueError(f"model.rr_hidden={rr_hidden!r} is not allowed: expected an integer >= 1 with RR features")


class StandardizeRR(nn.Module):
    """A model that takes the raw RR features (pfl.data.rr.pack) of a run trained on
    standardized ones (data.rr.standardize): it shifts and scales the last k input samples
    with the training clients' statistics, then calls the model. The logged MLflow model is
    wrapped in it, so serving needs nothing but the packed beats."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.as_tensor(std, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.mean.shape[0]
        return self.model(torch.cat([x[..., :-k], (x[..., -k:] - self.mean) / self.std], dim=-1))
