"""`finetune`: FedAvg, then each client fine-tunes a copy of the global model for its evaluation.

The same fine-tuning composes with any strategy as `adapt=finetune` (FedAvg's training, or
FedProx's, then fine-tuning of that strategy's personalized model).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.strategies.base import Adapter, Context, Strategy


def finetune(ctx: Context, model: nn.Module, client: Client, rnd: int, epochs: int, lr_scale: float) -> nn.Module:
    # Same optimizer as local training at a fraction of its learning rate; the copy is never
    # sent back, so the federation trains exactly as without it.
    opt = ctx.optimizer_with_lr(ctx.lr * lr_scale)
    ctx.fit(model, client, rnd, "finetune", epochs=epochs, optimizer=opt)
    return model


class FineTune(Strategy):
    label = "FedAvg+FT"
    order = 20
    paper = "local fine-tuning of the FedAvg model (e.g. Wang et al. 2019)"

    def __init__(self, epochs: int = 3, lr_scale: float = 0.1):
        self.epochs = v.integer("strategy.epochs", epochs, minimum=0)
        self.lr_scale = v.positive("strategy.lr_scale", lr_scale)

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        return finetune(self.ctx, model, client, rnd, self.epochs, self.lr_scale)


class FineTuneAdapter(Adapter):
    """`adapt=finetune`: fine-tune whatever model the strategy personalizes to."""

    label = "FT"

    def __init__(self, epochs: int = 3, lr_scale: float = 0.1):
        self.epochs = v.integer("adapt.epochs", epochs, minimum=0)
        self.lr_scale = v.positive("adapt.lr_scale", lr_scale)

    def adapt(self, ctx: Context, model: nn.Module, client: Client, rnd: int) -> nn.Module:
        return finetune(ctx, model, client, rnd, self.epochs, self.lr_scale)
