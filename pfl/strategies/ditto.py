"""`ditto`: Ditto (Li, Hu, Beirami, Smith, ICML 2021).

Each round a client trains the global model as in FedAvg and, separately, its personal model
v on f(v) + lam/2 ||v - w_global||^2; v stays with the client and is what it is evaluated with.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.strategies.base import Strategy, Weights, copy_model, snapshot, sq_distance


class Ditto(Strategy):
    label = "Ditto"
    order = 60
    paper = "Li et al., ICML 2021"
    keeps_client_state = True

    def __init__(self, lam: float = 0.1, personal_epochs: int | None = None):
        self.lam = v.positive("strategy.lam", lam)
        self.personal_epochs = None if personal_epochs is None else v.integer(
            "strategy.personal_epochs", personal_epochs, minimum=1)

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        personal = copy_model(model)
        if "personal" in state:
            personal.load_state_dict(state["personal"])

        def loss(m, x, y):
            return self.ctx.criterion(m(x), y) + 0.5 * self.lam * sq_distance(m, anchor)

        work = {"epochs": self.personal_epochs} if self.personal_epochs else self.ctx.work
        self.ctx.fit(personal, client, rnd, "personal", loss=loss, **work)
        state["personal"] = snapshot(personal)
        return super().train(model, client, state, rnd, anchor)

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        if "personal" in state:
            model.load_state_dict(state["personal"])
        return model
