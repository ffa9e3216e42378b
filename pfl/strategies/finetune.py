"""`finetune`: each client fine-tunes a copy of the global model for its own evaluation."""

from __future__ import annotations

from typing import Any

from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.strategies.base import Strategy
from pfl.strategies.registry import register


@register("finetune")
class FineTune(Strategy):
    def __init__(self, epochs: int = 3, lr_scale: float = 0.1):
        self.epochs = v.integer("strategy.epochs", epochs, minimum=0)
        self.lr_scale = v.positive("strategy.lr_scale", lr_scale)

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        # Same optimizer as local training, a fraction of its learning rate; the copy is never
        # sent back, so the federation trains exactly as FedAvg does.
        opt = self.ctx.optimizer_with_lr(self.ctx.lr * self.lr_scale)
        self.ctx.fit(model, client, rnd, "finetune", epochs=self.epochs, optimizer=opt)
        return model
