"""`pfedme`: pFedMe (T Dinh, Tran, Nguyen, NeurIPS 2020): personalization with Moreau envelopes.

For every local step on a batch D, the client approximately solves
theta = argmin f(theta; D) + lam/2 ||theta - w||^2 with K gradient steps at `personal_lr`, then
moves its local copy of the global model towards it: w <- w - eta lam (w - theta). The server
mixes: w_global <- (1 - server_beta) w_global + server_beta * mean(w_i). The client is
evaluated with its last theta.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn
from torch.func import functional_call

from pfl import validation as v
from pfl.data.types import Client
from pfl.fl.trainer import manual_optimizer
from pfl.strategies.base import Strategy, Weights, snapshot


def personal_solve(model: nn.Module, batch, w: dict[str, torch.Tensor], lam: float, k: int, lr: float,
                   criterion) -> dict[str, torch.Tensor]:
    """K gradient steps on f(theta; batch) + lam/2 ||theta - w||^2, from theta = w."""
    x, y = batch
    theta = {n: p.detach().clone() for n, p in w.items()}
    for _ in range(k):
        leaves = {n: p.requires_grad_(True) for n, p in theta.items()}
        loss = criterion(functional_call(model, leaves, (x,)), y)
        loss = loss + 0.5 * lam * sum(((leaves[n] - w[n]) ** 2).sum() for n in w)
        grads = torch.autograd.grad(loss, list(leaves.values()))
        theta = {n: (p - lr * g).detach() for (n, p), g in zip(leaves.items(), grads, strict=True)}
    return theta


class PFedMeModule(pl.LightningModule):
    """Local pFedMe steps under manual optimization: SGD at eta * lam on the gradient (w - theta)."""

    def __init__(self, model: nn.Module, lam: float, k: int, personal_lr: float, eta: float, criterion):
        super().__init__()
        self.automatic_optimization = False
        self.model, self.lam, self.k, self.personal_lr, self.eta, self.criterion = (
            model, lam, k, personal_lr, eta, criterion)
        self.theta: dict[str, torch.Tensor] | None = None
        self.loss_sum = torch.zeros(())
        self.steps = 0

    def training_step(self, batch, batch_idx):
        w = {n: p.detach() for n, p in self.model.named_parameters()}
        self.theta = personal_solve(self.model, batch, w, self.lam, self.k, self.personal_lr, self.criterion)
        opt = manual_optimizer(self)
        opt.zero_grad()
        for n, p in self.model.named_parameters():
            p.grad = p.detach() - self.theta[n]
        opt.step()
        with torch.no_grad():
            loss = self.criterion(functional_call(self.model, self.theta, (batch[0],)), batch[1])
            self.loss_sum = self.loss_sum.to(loss.device) + loss
        self.steps += 1

    def configure_optimizers(self):
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=self.eta * self.lam)
        return self.optimizer

    @property
    def mean_loss(self) -> float:
        return float(self.loss_sum / max(self.steps, 1))


class PFedMe(Strategy):
    label = "pFedMe"
    order = 120
    paper = "T Dinh, Tran, Nguyen, NeurIPS 2020"
    keeps_client_state = True

    def __init__(self, lam: float = 15.0, k: int = 5, personal_lr: float = 0.01, eta: float = 0.005,
                 server_beta: float = 1.0):
        self.lam = v.positive("strategy.lam", lam)
        self.k = v.integer("strategy.k", k, minimum=1)
        self.personal_lr = v.positive("strategy.personal_lr", personal_lr)
        self.eta = v.positive("strategy.eta", eta)
        self.server_beta = v.positive("strategy.server_beta", server_beta)

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        torch.manual_seed(self.ctx.seed_for(rnd, client.cid, "local", "torch"))
        module = PFedMeModule(model, self.lam, self.k, self.personal_lr, self.eta, self.ctx.criterion)
        self.ctx.trainer.fit(module, self.ctx.loader(client, rnd, "local"), **self.ctx.work)
        if module.theta is not None:
            state["personal"] = {**snapshot(model), **module.theta}
        return {"train_loss": module.mean_loss, "steps": module.steps}

    def aggregate(self, global_weights: Weights, updates) -> Weights:
        avg = super().aggregate(global_weights, updates)
        b = self.server_beta
        return {k: (1 - b) * global_weights[k] + b * avg[k] if torch.is_floating_point(avg[k]) else avg[k]
                for k in avg}

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        if "personal" in state:
            model.load_state_dict(state["personal"])
        return model
