"""`apfl`: APFL (Deng, Kamani, Mahdavi 2020): adaptive personalized federated learning.

Each client keeps a personal model v and a mixing weight alpha. Every local step trains the
global copy w on its own loss and v on the loss of the mixture alpha v + (1 - alpha) w; with
`adaptive`, alpha follows the gradient of that loss (clipped to [0, 1]). The client is
evaluated with the mixture.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.func import functional_call

from pfl import validation as v
from pfl.data.types import Client
from pfl.strategies.base import Strategy, Weights, copy_model, snapshot


class _Pair(nn.Module):
    def __init__(self, w: nn.Module, personal: nn.Module, alpha: float, adaptive: bool):
        super().__init__()
        self.w, self.v = w, personal
        self.alpha = nn.Parameter(torch.tensor(float(alpha)), requires_grad=adaptive)

    def mixed(self, detach_w: bool = True) -> dict[str, torch.Tensor]:
        a = self.alpha.clamp(0.0, 1.0)
        w = dict(self.w.named_parameters())
        return {n: a * p + (1 - a) * (w[n].detach() if detach_w else w[n]) for n, p in self.v.named_parameters()}


def mix_into(model: nn.Module, personal: dict[str, torch.Tensor], alpha: float) -> None:
    """Load alpha * personal + (1 - alpha) * model's parameters into model (buffers kept)."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(alpha * personal[n] + (1 - alpha) * p)


class APFL(Strategy):
    label = "APFL"
    order = 110
    paper = "Deng, Kamani, Mahdavi, arXiv:2003.13461, 2020"
    keeps_client_state = True

    def __init__(self, alpha: float = 0.25, adaptive: bool = True):
        self.alpha = v.fraction("strategy.alpha", alpha, high_open=False)
        if not isinstance(adaptive, bool):
            from pfl.errors import ConfigError

            raise ConfigError("strategy.adaptive", adaptive, "true or false")
        self.adaptive = adaptive

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        personal = copy_model(model)
        if "personal" in state:
            personal.load_state_dict(state["personal"])
        pair = _Pair(model, personal, state.get("mix", self.alpha), self.adaptive)
        crit = self.ctx.criterion

        def loss(m: _Pair, x, y):
            return crit(m.w(x), y) + crit(functional_call(m.v, m.mixed(), (x,)), y)

        module = self.ctx.fit(pair, client, rnd, "local", loss=loss, **self.ctx.work)
        state["personal"] = snapshot(personal)
        state["mix"] = float(pair.alpha.detach().clamp(0.0, 1.0))
        return {"train_loss": module.mean_loss, "steps": module.steps, "mix": state["mix"]}

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        if "personal" in state:
            mix_into(model, state["personal"], state["mix"])
        return model
