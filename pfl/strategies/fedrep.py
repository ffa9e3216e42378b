"""`fedrep`: FedRep (Collins, Hassani, Mokhtari, Shakkottai, ICML 2021).

Each round a client first trains its own head with the body frozen (`head_epochs`), then the
shared body with its head frozen (the round's local work); only the body is averaged.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.strategies.base import Strategy, Weights


class FedRep(Strategy):
    label = "FedRep"
    order = 80
    paper = "Collins et al., ICML 2021"
    has_global = False

    def __init__(self, head: str = "head.", head_epochs: int = 10):
        self.head = str(head)
        self.head_epochs = v.integer("strategy.head_epochs", head_epochs, minimum=0)

    def is_local(self, key: str) -> bool:
        return key.startswith(self.head)

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        loss = self.objective(anchor, state)
        self.ctx.fit(model, client, rnd, "head", epochs=self.head_epochs, loss=loss, params=self.is_local)
        module = self.ctx.fit(model, client, rnd, "body", loss=loss, params=lambda n: not self.is_local(n),
                              **self.ctx.work)
        return {"train_loss": module.mean_loss, "steps": module.steps}
