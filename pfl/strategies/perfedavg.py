"""`perfedavg`: Per-FedAvg (Fallah, Mokhtari, Ozdaglar, NeurIPS 2020).

Clients meta-train the global model so that one step of size `alpha` on a client's own data
personalizes it. Each meta-step draws disjoint batches from one shuffled pass over the
client's data: D (inner step), D' (outer gradient) and, for the Hessian-free variant, D''
(Hessian-vector product). Reusing one batch for the inner and outer step, as the reference
study did, turns the meta-gradient into a biased estimate of the plain gradient.

    w_tmp = w - alpha * grad f(w; D)
    g     = grad f(w_tmp; D')
    FO:  w <- w - beta * g
    HF:  w <- w - beta * (g - alpha * H(w; D'') g)

H(w; D'') g is exact by default (double backward, `hvp=exact`); `hvp=fd` is the paper's
finite difference (grad f(w + delta g; D'') - grad f(w - delta g; D'')) / (2 delta). Evaluation
adapts with the `adapt_steps` (default 1, the step meta-training optimizes for) SGD steps at
alpha; aggregation is uniform over users as in the paper (`weighting` in the YAML).

A client smaller than `batches_per_step * batch_size` training beats cannot draw disjoint
batches; it is an error before round 1 (lower `federation.batch_size` or drop the client),
never a silent reuse of one batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from pfl import validation as v
from pfl.data.types import Client
from pfl.errors import ConfigError
from pfl.fl.trainer import manual_optimizer
from pfl.strategies.base import Strategy

Batch = tuple[torch.Tensor, torch.Tensor]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
HVPS = ("exact", "fd")


def _loss(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch, criterion: Criterion) -> torch.Tensor:
    x, y = batch
    return criterion(functional_call(model, params, (x,)), y)


def _grad(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch,
          criterion: Criterion = F.cross_entropy) -> tuple[list[torch.Tensor], torch.Tensor]:
    leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
    loss = _loss(model, leaves, batch, criterion)
    return list(torch.autograd.grad(loss, list(leaves.values()))), loss.detach()


def hessian_vector(model: nn.Module, params: dict[str, torch.Tensor], batch: Batch, vec: Sequence[torch.Tensor],
                   hvp: str = "exact", delta: float = 1e-3,
                   criterion: Criterion = F.cross_entropy) -> list[torch.Tensor]:
    """H(w; batch) v: exact by double backward, or the central finite difference of gradients.

    Both finite-difference passes run under one RNG state, so a model with dropout uses the
    same mask in each and the difference measures curvature, not two different masks.
    """
    if hvp == "exact":
        leaves = {k: p.detach().requires_grad_(True) for k, p in params.items()}
        grads = torch.autograd.grad(_loss(model, leaves, batch, criterion), list(leaves.values()), create_graph=True)
        dot = sum((g * v.detach()).sum() for g, v in zip(grads, vec, strict=True))
        return [h.detach() for h in torch.autograd.grad(dot, list(leaves.values()))]
    device = next(iter(params.values())).device
    get, put = ((torch.cuda.get_rng_state, torch.cuda.set_rng_state) if device.type == "cuda"
                else (torch.get_rng_state, torch.set_rng_state))
    start, out = get(), []
    for sign in (1.0, -1.0):
        put(start)  # the mask the exact product would draw here, in both passes
        shifted = {k: p + sign * delta * v for (k, p), v in zip(params.items(), vec, strict=True)}
        out.append(_grad(model, shifted, batch, criterion)[0])
    return [(a - b) / (2 * delta) for a, b in zip(*out, strict=True)]


def meta_gradient(model: nn.Module, batches: Sequence[Batch], alpha: float, variant: str = "fo",
                  delta: float = 1e-3, hvp: str = "exact",
                  criterion: Criterion = F.cross_entropy) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The Per-FedAvg meta-gradient at the model's current parameters, and the outer loss.

    Returned gradients align with `model.parameters()`.
    """
    need = 2 if variant == "fo" else 3
    if len(batches) != need:
        raise ValueError(f"Per-FedAvg {variant.upper()} needs {need} batches per step, got {len(batches)}")
    w = {k: p.detach() for k, p in model.named_parameters()}
    g_in, _ = _grad(model, w, batches[0], criterion)
    w_tmp = {k: p - alpha * g for (k, p), g in zip(w.items(), g_in, strict=True)}
    g_out, loss = _grad(model, w_tmp, batches[1], criterion)
    if variant == "fo":
        return g_out, loss
    h = hessian_vector(model, w, batches[2], g_out, hvp, delta, criterion)
    return [g - alpha * hg for g, hg in zip(g_out, h, strict=True)], loss


class MetaModule(pl.LightningModule):
    """Per-FedAvg local training under Lightning's manual optimization: SGD at `beta`."""

    def __init__(self, model: nn.Module, alpha: float, beta: float, variant: str, delta: float,
                 hvp: str = "exact", criterion: Criterion = F.cross_entropy):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.alpha, self.beta, self.variant, self.delta = model, alpha, beta, variant, delta
        self.hvp, self.criterion = hvp, criterion
        self.loss_sum = torch.zeros(())
        self.steps = 0

    def training_step(self, batches, batch_idx):
        grads, loss = meta_gradient(self.model, batches, self.alpha, self.variant, self.delta, self.hvp,
                                    self.criterion)
        opt = manual_optimizer(self)
        opt.zero_grad()
        for p, g in zip(self.model.parameters(), grads, strict=True):
            p.grad = g
        opt.step()
        self.loss_sum = self.loss_sum.to(loss.device) + loss.detach()
        self.steps += 1

    def configure_optimizers(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.beta)
        return self.optimizer

    @property
    def mean_loss(self) -> float:
        return float(self.loss_sum / max(self.steps, 1))


class PerFedAvg(Strategy):
    label = "Per-FedAvg"
    order = 30
    paper = "Fallah, Mokhtari, Ozdaglar, NeurIPS 2020"

    def __init__(self, variant: str = "fo", alpha: float = 0.01, beta: float = 0.001, delta: float = 0.001,
                 adapt_steps: int = 1, hvp: str = "exact"):
        self.variant = v.choice("strategy.variant", variant, ("fo", "hf"))
        self.alpha = v.positive("strategy.alpha", alpha)
        self.beta = v.positive("strategy.beta", beta)
        self.delta = v.positive("strategy.delta", delta)
        self.adapt_steps = v.integer("strategy.adapt_steps", adapt_steps, minimum=0)
        self.hvp = v.choice("strategy.hvp", hvp, HVPS)
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

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int, anchor) -> dict[str, float]:
        torch.manual_seed(self.ctx.seed_for(rnd, client.cid, "meta", "torch"))
        module = MetaModule(model, self.alpha, self.beta, self.variant, self.delta, self.hvp, self.ctx.criterion)
        loader = self.ctx.loader(client, rnd, "meta", group=self.batches_per_step)
        self.ctx.trainer.fit(module, loader, **self.ctx.work)
        return {"train_loss": module.mean_loss, "steps": module.steps}

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        # The step the meta-objective was trained for: adapt_steps SGD steps at alpha.
        sgd = functools.partial(torch.optim.SGD, lr=self.alpha)
        self.ctx.fit(model, client, rnd, "adapt", steps=self.adapt_steps, optimizer=sgd)
        return model
