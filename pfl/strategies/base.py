"""The hooks a personalization strategy implements. The server loop calls only these.

A strategy is one module and one YAML (`_target_` plus its hyperparameters). What the field's
algorithms differ in maps onto a few hooks, each with a FedAvg default:

- `train`: a client's local training (default: the run's local work through the Lightning
  trainer, on `objective`);
- `objective` / `penalty`: the training loss, data loss plus terms such as FedProx's proximal
  penalty or SCAFFOLD's control-variate correction;
- `is_local`: which state-dict entries stay with the client (FedPer's head, LG-FedAvg's body,
  FedBN's BatchNorm) instead of being sent and averaged;
- `init_client_state` / `Update.state`: per-client state kept across rounds, checkpoints and
  the Ray backend (a personal model, a mixing weight, a control variate);
- `init_server_state` / `state_dict` / `load_state_dict`: server state (SCAFFOLD's control
  variate), checkpointed and ledger-hashed;
- `aggregate`: the server update from the round's client updates;
- `personalize`: the model a client is evaluated with.

Evaluation-time adaptation (`adapt=finetune`) composes with any strategy: it runs on the
strategy's personalized model, so FedProx + fine-tuning needs no class of its own.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pfl.data.types import Client, Split
from pfl.fl.aggregate import fedavg
from pfl.fl.batches import BatchLoader, derive_seed
from pfl.fl.trainer import ClientTrainer, LocalModule, LossFn

Weights = dict[str, torch.Tensor]


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, y)


@dataclass
class Context:
    """What every strategy may use: the run's shared training settings."""

    trainer: ClientTrainer
    optimizer: Callable[..., torch.optim.Optimizer]  # partial over params, from federation.optimizer
    lr: float
    batch_size: int
    local_epochs: int
    seed: int
    eval_batch_size: int = 256
    #: optimizer steps per round (the paper's tau) instead of local_epochs data passes
    local_steps: int | None = None
    #: the data term of every strategy's training loss (logits, labels) -> loss
    criterion: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = cross_entropy
    #: builds a fresh model of the run's architecture (for strategies that inspect or copy it)
    model_factory: Callable[[], nn.Module] | None = None
    #: training clients of the federation (SCAFFOLD scales its server update by |S|/N)
    n_clients: int = 1
    #: keep a client's optimizer state across rounds (the centralized baseline: one optimizer)
    keep_optimizer: bool = False
    #: how training batches are drawn (federation.sampling): uniform | balanced
    sampling: str = "uniform"
    #: random distortions of training batches (augment=...; pfl.data.augment), or None
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None

    def resident(self, split: Split) -> Split:
        """The split on the trainer's device, copied there once per process (a few MB per
        client), so fits on a GPU make no host-device copies of their data."""
        device = getattr(self.trainer, "device", torch.device("cpu"))
        if device.type == "cpu" or split.x.device == device:
            return split
        cache = self.__dict__.setdefault("_resident", {})
        key = id(split)
        if key not in cache:
            cache[key] = (split, dataclasses.replace(split, x=split.x.to(device), y=split.y.to(device)))
        return cache[key][1]

    def seed_for(self, *parts: object) -> int:
        return derive_seed(self.seed, *parts)

    @property
    def work(self) -> dict[str, int]:
        """The local work of one round, as `fit` keywords: equal for every strategy."""
        return {"steps": self.local_steps} if self.local_steps else {"epochs": self.local_epochs}

    def loader(self, client: Client, rnd: int, tag: str, split: str = "train", group: int = 1,
               batch_size: int | None = None) -> BatchLoader:
        # Every training loop gets its batches here: the loss learns whose they are (per-client
        # class weights, loss.weights=client).
        use = getattr(self.criterion, "use", None)
        if use is not None and split == "train":
            use(client.cid)
        return BatchLoader(self.resident(client.split(split)), batch_size or self.batch_size,
                           seed=self.seed_for(rnd, client.cid, tag, "batches"), group=group,
                           sampling=self.sampling if split == "train" else "uniform",
                           augment=self.augment if split == "train" else None)

    def fit(self, model: nn.Module, client: Client, rnd: int, tag: str, *, epochs: int | None = None,
            steps: int = -1, optimizer: Callable[..., torch.optim.Optimizer] | None = None,
            batch_size: int | None = None, loss: LossFn | None = None,
            params: Callable[[str], bool] | None = None, optimizer_state: dict | None = None) -> LocalModule:
        """Train `model` in place on the client's training split; seeded by (round, client, tag).

        `params`: names of the parameters to train (the rest are frozen for this fit).
        """
        torch.manual_seed(self.seed_for(rnd, client.cid, tag, "torch"))
        frozen = [p for n, p in model.named_parameters() if params is not None and not params(n) and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            module = LocalModule(model, optimizer or self.optimizer,
                                 loss or (lambda m, x, y: self.criterion(m(x), y)), optimizer_state)
            self.trainer.fit(module, self.loader(client, rnd, tag, batch_size=batch_size), epochs=epochs,
                             steps=steps)
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return module

    def optimizer_with_lr(self, lr: float) -> Callable[..., torch.optim.Optimizer]:
        return functools.partial(self.optimizer, lr=lr)


@dataclass
class Update:
    """One client's contribution to a round."""

    cid: str
    weights: Weights  # the shared entries only; what the client sends
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)  # the client's state after the round
    extra: Weights = field(default_factory=dict)  # other tensors sent up (SCAFFOLD's control delta)

    @property
    def bytes_sent(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.weights.values(), *self.extra.values()))


def snapshot(model: nn.Module) -> Weights:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def parameters(model: nn.Module) -> Weights:
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def sq_distance(model: nn.Module, anchor: Weights) -> torch.Tensor:
    """||w - anchor||^2 over the model's parameters (differentiable in w)."""
    return sum(((p - anchor[n]) ** 2).sum() for n, p in model.named_parameters())


class Strategy:
    """FedAvg behaviour; subclasses override the hooks they change.

    Hyperparameters arrive as constructor keyword arguments from the strategy's YAML and are
    validated there, so a bad value fails before any training. Class attributes describe the
    strategy to reports (`label`, `order`, `paper`) and to the server (`has_global`,
    `personalizes`, `batches_per_step`).
    """

    name = "base"
    #: display name in tables, plots and reports (recorded as a run tag)
    label: str | None = None
    #: position in reports (lower first)
    order: int = 100
    #: the paper the defaults come from
    paper: str = ""
    #: the baseline that other strategies are compared with (FedAvg)
    baseline: bool = False
    #: False when no single global model exists to evaluate (FedPer, FedRep, FedBN, local)
    has_global: bool = True
    #: False when the personalized model is the global one (evaluation then runs once)
    personalizes: bool = True
    #: disjoint training batches one local step consumes (Per-FedAvg: 2 or 3)
    batches_per_step = 1
    #: aggregation weights: `samples` (training-set sizes) or `uniform`
    weighting = "samples"
    #: evaluation-time adaptation composed after `personalize` (adapt=finetune), or None
    adapter: Adapter | None = None

    def __init__(self, **hparams: Any):
        if hparams:
            raise TypeError(f"unexpected hyperparameters for strategy {self.name!r}: {sorted(hparams)}")

    # -- setup ---------------------------------------------------------------------------------
    def bind(self, ctx: Context) -> None:
        self.ctx = ctx
        self.server_state: dict[str, Any] = {}

    def check_client(self, client: Client) -> None:
        """Raise a PflError if this client cannot run the strategy (called before round 1)."""

    @property
    def display(self) -> str:
        base = self.label or self.name
        return f"{base}+{self.adapter.label}" if self.adapter is not None else base

    @property
    def evaluates_personal(self) -> bool:
        return self.personalizes or self.adapter is not None

    # -- state ---------------------------------------------------------------------------------
    def init_client_state(self, client: Client) -> dict[str, Any]:
        """Per-client state kept across rounds and checkpoints (tensors and plain values only)."""
        return {}

    def init_server_state(self, global_weights: Weights) -> dict[str, Any]:
        """Server state kept across rounds and checkpoints (tensors and plain values only)."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        return dict(self.server_state)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.server_state = dict(state)

    # -- what is shared ------------------------------------------------------------------------
    def is_local(self, key: str) -> bool:
        """True for state-dict entries that stay with the client (never sent, never averaged)."""
        return False

    def shared(self, weights: Weights) -> Weights:
        return {k: v for k, v in weights.items() if not self.is_local(k)}

    def restore_local(self, model: nn.Module, state: dict[str, Any]) -> None:
        """Put the client's own entries (kept from its last round) into `model`."""
        if state.get("local"):
            model.load_state_dict({**model.state_dict(), **state["local"]})

    # -- training ------------------------------------------------------------------------------
    def penalty(self, model: nn.Module, anchor: Weights, state: dict[str, Any]) -> torch.Tensor | None:
        """A term added to the data loss; `anchor` holds the round's global parameters."""
        return None

    def objective(self, anchor: Weights, state: dict[str, Any]) -> LossFn:
        def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            value = self.ctx.criterion(model(x), y)
            extra = self.penalty(model, anchor, state)
            return value if extra is None else value + extra
        return loss

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        """Local training of `model` in place; returns metrics (at least train_loss)."""
        opt_state = state.get("optimizer") if self.ctx.keep_optimizer else None
        module = self.ctx.fit(model, client, rnd, "local", loss=self.objective(anchor, state),
                              optimizer_state=opt_state, **self.ctx.work)
        if self.ctx.keep_optimizer:
            state["optimizer"] = module.optimizer_state()
        return {"train_loss": module.mean_loss, "steps": module.steps}

    def local_update(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> Update:
        """`model` is a working copy holding the global weights; returns what the client sends."""
        state = dict(state)
        self.restore_local(model, state)
        anchor = parameters(model)
        metrics = self.train(model, client, state, rnd, anchor)
        weights = snapshot(model)
        local = {k: v for k, v in weights.items() if self.is_local(k)}
        if local:
            state["local"] = local
        return Update(client.cid, self.shared(weights), len(client.train), metrics, state)

    # -- server --------------------------------------------------------------------------------
    def weights_of(self, updates: Sequence[Update]) -> list[float]:
        return [1.0] * len(updates) if self.weighting == "uniform" else [u.num_samples for u in updates]

    def aggregate(self, global_weights: Weights, updates: Sequence[Update]) -> Weights:
        """New global weights; entries no client sends (local ones) keep their global value."""
        sent = [u.weights for u in updates]
        if not sent or not sent[0]:
            return dict(global_weights)
        return {**global_weights, **fedavg(sent, self.weights_of(updates))}

    # -- evaluation ----------------------------------------------------------------------------
    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        """The strategy's own personalized model for this client.

        `model` is a scratch copy holding the global weights with the client's local entries
        restored; the strategy may train it in place or return another module.
        """
        return model

    def personal_model(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        """What the server evaluates as the client's personalized model.

        A client with no state of its own yet (a patient that never trained, an unseen
        client) first runs one local update on its own training data, so strategies whose
        personal part is learned locally (a head, a personal model) have one to show.
        """
        if not state and self.keeps_client_state and len(client.train):
            start = snapshot(model)
            state = self.local_update(model, client, self.init_client_state(client), rnd).state
            model.load_state_dict(start)
        self.restore_local(model, state)
        model = self.personalize(model, client, state, rnd)
        if self.adapter is not None:
            model = self.adapter.adapt(self.ctx, model, client, rnd)
        return model

    @property
    def keeps_client_state(self) -> bool:
        """Whether the personalized model depends on client state (overridden where it does)."""
        return type(self).is_local is not Strategy.is_local


class Adapter:
    """Evaluation-time adaptation composed after any strategy's `personalize` (`adapt=...`)."""

    name = "adapt"
    label = "adapt"

    def adapt(self, ctx: Context, model: nn.Module, client: Client, rnd: int) -> nn.Module:
        raise NotImplementedError


def copy_model(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model)
