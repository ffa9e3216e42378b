"""The hooks a personalization strategy implements. The server loop calls only these."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from pfl.data.types import Client
from pfl.fl.aggregate import fedavg
from pfl.fl.batches import BatchLoader, derive_seed
from pfl.fl.trainer import ClientTrainer, LocalModule


@dataclass
class Context:
    """What every strategy may use: the run's shared training settings."""

    trainer: ClientTrainer
    optimizer: Callable[..., torch.optim.Optimizer]  # partial over params, from federation.optimizer
    lr: float
    batch_size: int
    local_epochs: int
    seed: int
    eval_batch_size: int = 4096

    def seed_for(self, *parts: object) -> int:
        return derive_seed(self.seed, *parts)

    def loader(self, client: Client, rnd: int, tag: str, split: str = "train", group: int = 1,
               batch_size: int | None = None) -> BatchLoader:
        return BatchLoader(client.split(split), batch_size or self.batch_size,
                           seed=self.seed_for(rnd, client.cid, tag, "batches"), group=group)

    def fit(self, model: nn.Module, client: Client, rnd: int, tag: str, *, epochs: int | None = None,
            steps: int = -1, optimizer: Callable[..., torch.optim.Optimizer] | None = None,
            batch_size: int | None = None) -> LocalModule:
        """Train `model` in place on the client's training split; seeded by (round, client, tag)."""
        torch.manual_seed(self.seed_for(rnd, client.cid, tag, "torch"))
        module = LocalModule(model, optimizer or self.optimizer)
        self.trainer.fit(module, self.loader(client, rnd, tag, batch_size=batch_size), epochs=epochs, steps=steps)
        return module

    def optimizer_with_lr(self, lr: float) -> Callable[..., torch.optim.Optimizer]:
        return functools.partial(self.optimizer, lr=lr)


@dataclass
class Update:
    """One client's contribution to a round."""

    cid: str
    weights: dict[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class Strategy:
    """FedAvg behaviour; subclasses override the hooks they change.

    Hyperparameters arrive as constructor keyword arguments from the strategy's YAML and are
    validated there, so a bad value fails before any training.
    """

    name = "base"
    #: disjoint training batches one local step consumes (Per-FedAvg: 2 or 3)
    batches_per_step = 1
    #: False when the personalized model is the global one (evaluation then runs once)
    personalizes = True

    def __init__(self, **hparams: Any):
        if hparams:
            raise TypeError(f"unexpected hyperparameters for strategy {self.name!r}: {sorted(hparams)}")

    def bind(self, ctx: Context) -> None:
        self.ctx = ctx

    def check_client(self, client: Client) -> None:
        """Raise a PflError if this client cannot run the strategy (called before round 1)."""

    def init_client_state(self, client: Client) -> dict[str, Any]:
        """Per-client state kept across rounds and checkpoints (tensors and plain values only)."""
        return {}

    def local_update(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> Update:
        """Train `model` (a working copy holding the global weights) on the client's data."""
        module = self.ctx.fit(model, client, rnd, "local", epochs=self.ctx.local_epochs)
        return Update(client.cid, snapshot(model), len(client.train), {"train_loss": module.mean_loss}, state)

    def aggregate(self, global_weights: dict[str, torch.Tensor], updates: Sequence[Update]) -> dict[str, torch.Tensor]:
        return fedavg([u.weights for u in updates], [u.num_samples for u in updates])

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        """The model evaluated as this client's personalized one.

        `model` is a scratch copy holding the global weights; the strategy may train it in place.
        The global model itself is never passed here.
        """
        return model
