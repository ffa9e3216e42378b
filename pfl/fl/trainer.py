"""Local training through pytorch_lightning.Trainer, quiet and seeded."""

from __future__ import annotations

import contextlib
import copy
import functools
import logging
import warnings
from collections.abc import Callable, Iterable

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

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

    # Only where Lightning still has the hook we replace; otherwise its own loader stays. The
    # original is kept so tests/test_fast_path.py can check both still agree.
    current = getattr(callback_connector, "_load_external_callbacks", None)
    if callable(current) and current is not _external_callbacks:
        callback_connector._pfl_original_load_external_callbacks = current
        callback_connector._load_external_callbacks = _external_callbacks


#: a training loss of the model on one batch: (model, x, y) -> scalar
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


def _cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(x), y)


class _Tally:
    __slots__ = ("loss_sum", "seen", "steps")

    def __init__(self):
        self.loss_sum, self.seen, self.steps = torch.zeros(()), 0, 0


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
        # Step counts in a plain object: nn.Module.__setattr__ costs microseconds per step.
        self._tally = _Tally()

    @property
    def loss_sum(self) -> torch.Tensor:
        return self._tally.loss_sum

    @property
    def seen(self) -> int:
        return self._tally.seen

    @property
    def steps(self) -> int:
        return self._tally.steps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = self.loss_fn(self.model, x, y)
        t = self._tally
        # Summed where the loss lives: a .cpu() per step would be a host-device sync on a GPU.
        if t.loss_sum.device != loss.device:
            t.loss_sum = t.loss_sum.to(loss.device)
        t.loss_sum = t.loss_sum + loss.detach() * len(y)
        t.seen += len(y)
        t.steps += 1
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


def manual_optimizer(module: pl.LightningModule) -> torch.optim.Optimizer:
    """The optimizer a manual-optimization module steps: Lightning's wrapper under a Trainer, its
    own (from configure_optimizers, kept as `module.optimizer`) under FabricTrainer."""
    try:
        module.trainer  # noqa: B018 - raises where no Trainer is attached
    except RuntimeError:
        return module.optimizer
    return module.optimizers()


class ClientTrainer:
    """Builds a Lightning Trainer per local fit from the `trainer` config (`trainer.engine=trainer`).

    A Trainer holds loop state tied to one fit, so it is built per fit; what that costs is
    measured in `make bench` (per-client fixed costs). `FabricTrainer` is the lighter engine.
    """

    def __init__(self, accelerator: str = "cpu", devices: int | str = 1, precision: str = "32-true",
                 deterministic: bool = True, gradient_clip_val: float | None = None, **_: object):
        quiet_lightning()
        cache_callback_discovery()
        self.kwargs = dict(
            accelerator=accelerator, devices=devices, precision=resolve_precision(precision, accelerator),
            deterministic=deterministic, gradient_clip_val=gradient_clip_val,
        )

    @property
    def device(self) -> torch.device:
        return device_of(self.kwargs["accelerator"])

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


#: client-training engines (`trainer.engine`)
ENGINES = ("trainer", "fabric")


def device_of(accelerator: str) -> torch.device:
    """The torch device of a Lightning accelerator name (cpu | gpu | cuda | mps | auto)."""
    if accelerator in ("gpu", "cuda"):
        return torch.device("cuda")
    if accelerator == "mps":
        return torch.device("mps")
    if accelerator == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device("cpu")


def cpu_supports_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX-512 BF16 or AMX). Without it oneDNN emulates
    bf16 and autocast is slower than fp32, so pfl falls back."""
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    try:
        if check is not None and not check():
            return False
    except RuntimeError:
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def resolve_precision(precision: str, accelerator: str = "cpu") -> str:
    """`precision`, or 32-true where it asks for bf16 on a CPU that cannot run it natively."""
    precision = str(precision)
    if precision.startswith("bf16") and device_of(accelerator).type == "cpu" and not cpu_supports_bf16():
        log.warning("trainer.precision=%s: this CPU has no native bfloat16 (AVX-512 BF16 / AMX); "
                    "training in fp32 (32-true) instead", precision)
        return "32-true"
    return precision


class FabricTrainer:
    """Local fits through Lightning Fabric: one Fabric per process, no Trainer per fit.

    Runs a LightningModule's `configure_optimizers` and `training_step` in a plain loop: with
    automatic optimization zero_grad, backward (Fabric's, so precision plugins apply), gradient
    clipping by norm and step, in the order Lightning's Trainer uses, so a 32-true fit gives
    the Trainer's weights bit for bit; a module with `automatic_optimization = False` steps its
    own optimizer. Epochs and `steps` end the fit as `max_epochs` / `max_steps` do.

    `compile=true` compiles each model it trains once (nn.Module.compile, in place: state-dict
    keys do not change), so the working model of a process is compiled once and reused across
    clients and rounds.
    """

    def __init__(self, accelerator: str = "cpu", devices: int | str = 1, precision: str = "32-true",
                 deterministic: bool = True, gradient_clip_val: float | None = None, compile: bool = False,
                 compile_backend: str = "inductor", **_: object):
        quiet_lightning()
        self.accelerator, self.devices = accelerator, devices
        self.precision = resolve_precision(precision, accelerator)
        self.deterministic, self.gradient_clip_val = bool(deterministic), gradient_clip_val
        self.compile, self.compile_backend = bool(compile), compile_backend
        self._fabric = None
        self._compiled: dict[type, Callable] = {}

    def __getstate__(self):  # a Fabric is rebuilt where the trainer lands (Ray actor, worker)
        state = dict(self.__dict__)
        state["_fabric"], state["_compiled"] = None, {}
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        quiet_lightning()

    @property
    def device(self) -> torch.device:
        return device_of(self.accelerator)

    @property
    def fabric(self):
        if self._fabric is None:
            from lightning_fabric import Fabric

            self._fabric = Fabric(accelerator=self.accelerator, devices=self.devices, precision=self.precision)
        return self._fabric

    def _compiled_forward(self, model: nn.Module):
        """The model's forward compiled once per process and model class: dynamo guards on the
        instance, so the working model reused across clients and rounds compiles once."""
        fn = self._compiled.get(type(model))
        if fn is None:
            fn = self._compiled[type(model)] = torch.compile(type(model).forward, backend=self.compile_backend)
        return functools.partial(fn, model)

    def fit(self, module: pl.LightningModule, loader, *, epochs: int | None = None, steps: int = -1) -> None:
        if (epochs is not None and epochs <= 0) or steps == 0 or len(loader) == 0:
            return
        fabric = self.fabric
        if self.deterministic:
            torch.use_deterministic_algorithms(True)
        module.to(fabric.device)
        inner = getattr(module, "model", None)
        if not (self.compile and isinstance(inner, nn.Module)):
            return self._fit(module, loader, epochs, steps)
        # Compiled for this fit only: a copy of the model made later (a personal model) must
        # not carry a forward bound to this one.
        inner.forward = self._compiled_forward(inner)
        try:
            return self._fit(module, loader, epochs, steps)
        finally:
            del inner.forward

    def _fit(self, module: pl.LightningModule, loader, epochs: int | None, steps: int) -> None:
        fabric = self.fabric
        opt = module.configure_optimizers()
        automatic = module.automatic_optimization
        if not automatic and self.gradient_clip_val:
            from pfl.errors import PflError

            raise PflError("trainer.gradient_clip_val is not supported for strategies that step their own "
                           "optimizer (manual optimization), as in Lightning's Trainer")
        params = [p for group in opt.param_groups for p in group["params"]]
        module.train()
        # On the CPU at full precision Fabric's device move, autocast and backward wrap plain
        # calls that do nothing more; skipping the wrappers saves microseconds a step.
        from lightning_fabric.plugins import Precision

        plain = fabric.device.type == "cpu" and type(fabric.strategy.precision) is Precision
        autocast = contextlib.nullcontext if plain else fabric.autocast
        backward = torch.Tensor.backward if plain else fabric.backward
        done, epoch = 0, 0
        while epochs is None or epoch < epochs:
            for i, batch in enumerate(loader):
                if not plain:
                    batch = fabric.to_device(batch)
                with autocast():
                    loss = module.training_step(batch, i)
                if automatic:
                    opt.zero_grad()
                    backward(loss)
                    if self.gradient_clip_val:
                        torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
                    opt.step()
                done += 1
                if 0 < steps <= done:
                    return
            epoch += 1


def fused_optimizer(factory: Callable[..., torch.optim.Optimizer], on: bool,
                    device: torch.device | str = "cpu") -> Callable[..., torch.optim.Optimizer]:
    """`factory` (a partial over params, from federation.optimizer) asking for the optimizer's
    fused implementation when `on` (trainer.fused_optimizer) and the optimizer has one on
    `device` (Adam, AdamW, SGD, Adagrad; on CPU since torch 2.4). Why: on CPU torch's default
    is a Python loop over the parameter tensors, a handful of small ops each per step; the fused
    kernel updates them all in one call. The same update up to float rounding, so the exact path
    leaves it off. The optimizer config's own `fused`, `foreach` or `differentiable` wins.
    Strategies that build their own optimizer (SCAFFOLD's corrected SGD, Per-FedAvg's and
    pFedMe's inner steps) do not go through this factory."""
    if not on:
        return factory
    import inspect

    cls = factory.func if isinstance(factory, functools.partial) else factory
    keywords = factory.keywords if isinstance(factory, functools.partial) else {}
    name = getattr(cls, "__name__", str(cls))
    try:
        accepts = "fused" in inspect.signature(cls).parameters
    except (TypeError, ValueError):
        accepts = False
    if not accepts:
        log.info("trainer.fused_optimizer: %s has no fused implementation; it runs as configured", name)
        return factory
    chosen = [k for k in ("fused", "foreach", "differentiable") if keywords.get(k) is not None
              and (k == "fused" or keywords.get(k))]
    if chosen:
        log.info("trainer.fused_optimizer: federation.optimizer sets %s; %s runs as configured", chosen[0], name)
        return factory
    fused = functools.partial(factory, fused=True)
    try:  # torch refuses a device its fused kernel does not cover (CPU before torch 2.4) when built
        fused([torch.zeros(1, device=device, requires_grad=True)])
    except (RuntimeError, ValueError) as e:
        log.info("trainer.fused_optimizer: %s has no fused kernel on %s here (%s); it runs as configured",
                 name, device, str(e).splitlines()[0][:120])
        return factory
    return fused


def build_trainer(engine: str = "trainer", **kwargs: object) -> ClientTrainer | FabricTrainer:
    """The client trainer the `trainer` config names (`trainer.engine`)."""
    if engine not in ENGINES:
        from pfl.errors import ConfigError

        raise ConfigError("trainer.engine", engine, " | ".join(ENGINES))
    return FabricTrainer(**kwargs) if engine == "fabric" else ClientTrainer(**kwargs)
