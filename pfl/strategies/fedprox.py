"""`fedprox`: FedProx (Li et al., MLSys 2020): FedAvg with a proximal term mu/2 ||w - w_global||^2."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from pfl import validation as v
from pfl.strategies.base import Strategy, Weights, sq_distance


class FedProx(Strategy):
    label = "FedProx"
    order = 40
    paper = "Li et al., MLSys 2020"
    personalizes = False

    def __init__(self, mu: float = 0.01):
        self.mu = v.positive("strategy.mu", mu)

    def penalty(self, model: nn.Module, anchor: Weights, state: dict[str, Any]) -> torch.Tensor:
        return 0.5 * self.mu * sq_distance(model, anchor)
