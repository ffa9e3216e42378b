"""Local training through pytorch_lightning.Trainer, quiet and seeded."""

from __future__ import annotations

import copy
import functools
import logging
import warnings
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def quiet_lightning() -> None:
    """One progress display for the whole run, so Lightning's per-client chatter goes."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for pattern in (
        ".*does not have many workers.*",
        ".*number of training batches.*",
        ".*GPU available but not used.*",
        ".*predict_dataloader.*",
        ".*`training_step` returned `None`.*",
        ".*on_train_batch_end.*",
        ".*treespec.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


@functools.cache
def _callback_factories(group: str) -> tuple:
    from importlib.metadata import entry_points

    return tuple(entry_points(group=group))


def _external_callbacks(group: str) -> list:
    """Lightning's external-callback loader with the entry-point scan done once per process.

    Lightning re-reads the metadata of every installed distribution on each Trainer(); with one
    Trainer per local fit that scan was most of a fit's fixed cost (see BENCHMARKS.md). The
    factories are still called for every Trainer, as Lightning does.
    """
    callbacks: list = []
    for factory in _callback_factories(group):
        made = factory.load()()
        callbacks.extend(made if isinstance(made, list) else [made])
    return callbacks


def cache_callback_discovery() -> None:
    from pytorch_lightning.trainer.connectors import callback_connector

    # Only where Lightning still has the hook we replace; otherwise its own loader stays.
    if callable(getattr(callback_connector, "_load_external_callbacks", None)):
        callback_connector._load_external_callbacks = _external_callbacks


#: a training loss of the model on one batch: (model, x, y) -> scalar
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


class LocalModule(pl.LightningModule):
    """Training of any classifier on any loss with the optimizer it is given.

    The loss is a function of the model, so strategies add terms (a proximal penalty, a
    control-variate correction, class weights) without a LightningModule of their own.
    Only parameters with requires_grad reach the optimizer (frozen parts stay put).
    """

    def __init__(self, model: nn.Module, optimizer: OptimizerFactory, loss: LossFn | None = None,
                 optimizer_state: dict | None = None):
        super().__init__()
        self.model = model
        self.optimizer_factory = optimizer
        self.loss_fn = loss or _cross_entropy
        self.initial_optimizer_state = optimizer_state
        self.optimizer: torch.optim.Optimizer | None = None
        self.loss_sum = torch.zeros(())
        self.seen = 0
        self.steps = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.model, x, y)
        self.loss_sum = self.loss_sum + loss.detach().cpu() * len(y)
        self.seen += len(y)
        self.steps += 1
        return loss

    def configure_optimizers(self):
        self.optimizer = self.optimizer_factory([p for p in self.model.parameters() if p.requires_grad])
        if self.initial_optimizer_state:
            self.optimizer.load_state_dict(self.initial_optimizer_state)
        return self.optimizer

    def optimizer_state(self) -> dict | None:
        """The optimizer's state after the fit (to continue it next round), or None."""
        return None if self.optimizer is None else copy.deepcopy(self.optimizer.state_dict())

    @property
    def mean_loss(self) -> float:
        return float(self.loss_sum / max(self.seen, 1))


class ClientTrainer:
    """Builds a Lightning Trainer per local fit from the `trainer` config.

    A Trainer holds loop state tied to one fit, so it is built per fit; what that costs is
    measured in `make bench` (per-client fixed costs).
    """

    def __init__(self, accelerator: str = "cpu", devices: int | str = 1, precision: str = "32-true",
                 deterministic: bool = True, gradient_clip_val: float | None = None, **_: object):
        quiet_lightning()
        cache_callback_discovery()
        self.kwargs = dict(
            accelerator=accelerator, devices=devices, precision=precision, deterministic=deterministic,
            gradient_clip_val=gradient_clip_val,
        )

    def fit(self, module: pl.LightningModule, loader, *, epochs: int | None = None, steps: int = -1) -> None:
        if (epochs is not None and epochs <= 0) or steps == 0 or len(loader) == 0:
            return
        trainer = pl.Trainer(
            max_epochs=epochs if epochs is not None else -1,
            max_steps=steps,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            num_sanity_val_steps=0,
            limit_val_batches=0,
            **self.kwargs,
        )
        trainer.fit(module, train_dataloaders=loader)
