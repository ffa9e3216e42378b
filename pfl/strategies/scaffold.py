"""`scaffold`: SCAFFOLD (Karimireddy et al., ICML 2020), option II control variates.

Server state c and client state c_i correct each local SGD step: y <- y - lr (g(y) + c - c_i),
written as the linear loss term <c - c_i, y> so the trainer needs nothing special. After K
steps: c_i+ = c_i - c + (x - y) / (K lr); the client sends y and c_i+ - c_i; the server sets
x <- x + global_lr * mean(y - x) and c <- c + |S|/N * mean(c_i+ - c_i). Local steps are plain
SGD at `lr` (the control-variate estimate assumes SGD).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.fl.aggregate import fedavg
from pfl.strategies.base import Strategy, Update, Weights, parameters


class Scaffold(Strategy):
    label = "SCAFFOLD"
    order = 50
    paper = "Karimireddy et al., ICML 2020"
    personalizes = False

    def __init__(self, lr: float = 0.01, global_lr: float = 1.0):
        self.lr = v.positive("strategy.lr", lr)
        self.global_lr = v.positive("strategy.global_lr", global_lr)

    def init_server_state(self, global_weights: Weights) -> dict[str, Any]:
        names = [n for n, _ in self.ctx.model_factory().named_parameters()]
        return {"c": {n: torch.zeros_like(global_weights[n]) for n in names}}

    def _ci(self, state: dict[str, Any]) -> dict[str, torch.Tensor]:
        return state.get("c_i") or {n: torch.zeros_like(t) for n, t in self.server_state["c"].items()}

    def penalty(self, model: nn.Module, anchor: Weights, state: dict[str, Any]) -> torch.Tensor:
        c, ci = self.server_state["c"], self._ci(state)
        return sum((p * (c[n] - ci[n])).sum() for n, p in model.named_parameters())

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        sgd = functools.partial(torch.optim.SGD, lr=self.lr)
        module = self.ctx.fit(model, client, rnd, "local", loss=self.objective(anchor, state), optimizer=sgd,
                              **self.ctx.work)
        if module.steps:
            c, ci, y = self.server_state["c"], self._ci(state), parameters(model)
            state["c_i"] = {n: ci[n] - c[n] + (anchor[n] - y[n]) / (module.steps * self.lr) for n in c}
        return {"train_loss": module.mean_loss, "steps": module.steps}

    def local_update(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> Update:
        before = self._ci(state)
        update = super().local_update(model, client, state, rnd)
        after = self._ci(update.state)
        update.extra = {f"delta_c.{n}": after[n] - before[n] for n in before}
        return update

    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        w = self.weights_of(updates)
        avg = fedavg([u.weights for u in updates], w)
        out = dict(global_weights)
        for k, t in avg.items():
            out[k] = global_weights[k] + self.global_lr * (t - global_weights[k]) if torch.is_floating_point(t) else t
        delta = fedavg([{k.removeprefix("delta_c."): t for k, t in u.extra.items()} for u in updates], w)
        share = len(updates) / max(self.ctx.n_clients, 1)
        self.server_state = {"c": {n: c + share * delta[n] for n, c in self.server_state["c"].items()}}
        return out
