"""`perfedavg`: Per-FedAvg (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020).

Clients meta-train the global model so that one step of size `alpha` on a client's own data
personalizes it. Each meta-step draws disjoint batches from one shuffled pass over the
client's data: D (inner step), D' (outer gradient) and, for the Hessian-free variant, D''
(Hessian-vector product). Reusing one batch for the inner and outer step, as the reference
study did, turns the meta-gradient into a biased estimate of the plain gradient.

    w_tmp = w - alpha * grad f(w; D)
    g     = grad f(w_tmp; D')
    FO:  w <- w - beta * g
    HF:  w <- w - beta * (g - alpha * H(w; D'') g),
         H(w; D'') g ~ (grad f(w + delta g; D'') - grad f(w - delta g; D'')) / (2 delta)

A client smaller than `batches_per_step * batch_size` training beats cannot draw disjoint
batches; it is an error before round 1 (lower `federation.batch_size` or drop the client),
never a silent reuse of one batch.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pfl import validation as v
from pfl.data.types import Client
from pfl.errors import ConfigError
from pfl.strategies.base import Strategy, Update, snapshot
from pfl.strategies.registry import register

Batch = tuple[torch.Tensor, torch.Tensor]


def _grad(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch) -> tuple[list[torch.Tensor], torch.Tensor]:
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    x, y = batch
    loss = F.cross_entropy(functional_call(model, leaves, (x,)), y)
    return list(torch.autograd.grad(loss, list(leaves.values()))), loss.detach()


def meta_gradient(model: nn.Module, batches: Sequence[Batch], alpha: float, variant: str = "fo",
                  delta: float = 1e-3) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The Per-FedAvg meta-gradient at the model's current parameters, and the outer loss.

    Returned gradients align with `model.parameters()`.
    """
    need = 2 if variant == "fo" else 3
    if len(batches) != need:
        raise ValueError(f"Per-FedAvg {variant.upper()} needs {need} batches per step, got {len(batches)}")
    w = {k: p.detach() for k, p in model.named_parameters()}
    g_in, _ = _grad(model, w, batches[0])
    w_tmp = {k: p - alpha * g for (k, p), g in zip(w.items(), g_in, strict=True)}
    g_out, loss = _grad(model, w_tmp, batches[1])
    if variant == "fo":
        return g_out, loss
    w_plus = {k: p + delta * g for (k, p), g in zip(w.items(), g_out, strict=True)}
    w_minus = {k: p - delta * g for (k, p), g in zip(w.items(), g_out, strict=True)}
    g_plus, _ = _grad(model, w_plus, batches[2])
    g_minus, _ = _grad(model, w_minus, batches[2])
    hvp = [(a - b) / (2 * delta) for a, b in zip(g_plus, g_minus, strict=True)]
    return [g - alpha * h for g, h in zip(g_out, hvp, strict=True)], loss


class MetaModule(pl.LightningModule):
    """Per-FedAvg local training under Lightning's manual optimization: SGD at `beta`."""

    def __init__(self, model: nn.Module, alpha: float, beta: float, variant: str, delta: float):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.alpha, self.beta, self.variant, self.delta = model, alpha, beta, variant, delta
        self.loss_sum = torch.zeros(())
        self.steps = 0

    def training_step(self, batches, batch_idx):
        grads, loss = meta_gradient(self.model, batches, self.alpha, self.variant, self.delta)
        opt = self.optimizers()
        opt.zero_grad()
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = g
        opt.step()
        self.loss_sum = self.loss_sum + loss.cpu()
        self.steps += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.model.parameters(), lr=self.beta)

    @property
    def mean_loss(self) -> float:
        return float(self.loss_sum / max(self.steps, 1))


@register("perfedavg")
class PerFedAvg(Strategy):
    def __init__(self, variant: str = "fo", alpha: float = 0.01, beta: float = 0.001, delta: float = 0.001,
                 adapt_steps: int = 3):
        self.variant = v.choice("strategy.variant", variant, ("fo", "hf"))
        self.alpha = v.positive("strategy.alpha", alpha)
        self.beta = v.positive("strategy.beta", beta)
        self.delta = v.positive("strategy.delta", delta)
        self.adapt_steps = v.integer("strategy.adapt_steps", adapt_steps, minimum=0)
        self.batches_per_step = 2 if self.variant == "fo" else 3

    def check_client(self, client: Client) -> None:
        need = self.batches_per_step * self.ctx.batch_size
        if client.federated and len(client.train) < need:
            raise ConfigError(
                "federation.batch_size", self.ctx.batch_size,
                f"at most {len(client.train) // self.batches_per_step} so client {client.cid!r} "
                f"({len(client.train)} training beats) can draw {self.batches_per_step} disjoint batches "
                f"per Per-FedAvg {self.variant.upper()} step",
            )

    def local_update(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> Update:
        torch.manual_seed(self.ctx.seed_for(rnd, client.cid, "meta", "torch"))
        module = MetaModule(model, self.alpha, self.beta, self.variant, self.delta)
        loader = self.ctx.loader(client, rnd, "meta", group=self.batches_per_step)
        self.ctx.trainer.fit(module, loader, epochs=self.ctx.local_epochs)
        return Update(client.cid, snapshot(model), len(client.train), {"train_loss": module.mean_loss}, state)

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        sgd = functools.partial(torch.optim.SGD, lr=self.alpha)
        self.ctx.fit(model, client, rnd, "adapt", steps=self.adapt_steps, optimizer=sgd)
        return model
