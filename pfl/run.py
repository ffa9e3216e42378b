"""One training run from a composed config: data, partition, strategy, server, tracking."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig

from pfl import config as cfgmod
from pfl import tables
from pfl.background import InOrder
from pfl.data.types import Client, Federation, Split
from pfl.errors import ConfigError
from pfl.fl.callbacks import Callback
from pfl.fl.checkpoint import LAST, Checkpointer, RunContext, load_checkpoint
from pfl.fl.server import Result, Server
from pfl.fl.trainer import build_trainer
from pfl.strategies import Context, build_strategy

log = logging.getLogger(__name__)


def pooled_client(clients: list[Client]) -> Client:
    """Centralized baseline: all federated clients' training (and val) data in one client."""
    def cat(split: str) -> Split:
        return Split(torch.cat([c.split(split).x for c in clients]), torch.cat([c.split(split).y for c in clients]))
    return Client("pooled", cat("train"), cat("val"), cat("test"), [r for c in clients for r in c.records])


def load_federation(cfg: DictConfig) -> Federation:
    """The partitioned federation as the models see it (RR features standardized by the
    training clients' statistics where `data.rr.standardize` asks; pfl.data.rr.standardize)."""
    from pfl.data.partitions import build_federation
    from pfl.data.rr import parse_rr, standardize
    from pfl.data.sources import load_beats

    beats = load_beats(cfg.data)
    fed = build_federation(beats, cfg.partition, cfg.seed)
    if beats.rr_features and parse_rr(cfg.data.get("rr")).get("standardize"):
        fed = standardize(fed, beats.rr_features)
    return fed


def _augment(cfg: DictConfig, fed: Federation):
    """After check_input, which makes the model's RR feature count the data's."""
    from pfl.data.augment import build_augment

    return build_augment(cfg.get("augment"), rr_features=cfg.model.get("rr_features", 0), window=fed.window,
                         peak=int(cfg.data.window.before))


def check_input(cfg: DictConfig, fed: Federation) -> None:
    """The model reads what the data holds: its lead channels and its RR features (a model
    that got this wrong would read RR intervals as signal, or signal as RR, without an error)."""
    x = next((c.train.x for c in fed.clients if len(c.train)), None)
    if x is None or x.ndim != 3:
        return
    channels, rr = cfg.model.get("in_channels", 1), cfg.model.get("rr_features", 0)
    if int(x.shape[1]) != channels:
        raise ConfigError("model.in_channels", channels, f"{x.shape[1]}, the lead channels of the data "
                          "(1 + len(data.extra_leads))")
    if fed.window is not None and int(x.shape[-1]) != fed.window + rr:
        raise ConfigError("model.rr_features", rr, f"{int(x.shape[-1]) - fed.window}, the RR features after each "
                          "window (data.features, data.rr.features)")


def default_run_name(cfg: DictConfig) -> str:
    name = str(cfg.strategy.name)
    adapt = cfg.get("adapt") or {}
    if adapt.get("_target_"):
        name += f"+{adapt.get('name', 'adapt')}"
    if cfg.mode == "centralized":
        name = f"{cfg.mode}-{name}"
    try:
        from hydra.core.hydra_config import HydraConfig

        # Keys that change results name the run; paths, logging and the like do not.
        skip = ("seed=", "strategy=", "adapt=", "experiment=", "hparams_search=", "mode=", "hydra",
                *cfgmod.VOLATILE)
        overrides = [o for o in HydraConfig.get().overrides.task
                     if not o.lstrip("+~").startswith(skip)]
        if overrides:
            # federation.optimizer.lr=0.01 -> lr=0.01: the last key part is readable enough
            name += "-" + ",".join(k.split(".")[-1] + eq + v for k, eq, v in (o.partition("=") for o in overrides))
    except ValueError:  # not under a Hydra app (tests, API use)
        pass
    return f"{name}-s{cfg.seed}"


def run_tags(cfg: DictConfig, config_hash: str, strategy=None) -> dict[str, str]:
    """Run tags; with the built strategy, its display label, order and role for reports."""
    from pfl.tracking import git_commit

    tags = {"strategy": str(cfg.strategy.name), "adapt": str((cfg.get("adapt") or {}).get("name", "none")),
            "partition": str(cfg.partition.get("name", "")),
            "model": str(cfg.model._target_).rsplit(".", 1)[-1], "seed": str(cfg.seed), "mode": str(cfg.mode),
            "study": str(cfg.study), "git_commit": git_commit(), "config_hash": config_hash}
    if strategy is not None:
        tags.update(strategy_label=strategy.display, strategy_order=str(strategy.order),
                    strategy_baseline=str(bool(strategy.baseline and strategy.adapter is None)).lower(),
                    strategy_has_global=str(bool(strategy.has_global)).lower())
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name == "MULTIRUN":
            tags["multirun_id"] = Path(hc.sweep.dir).name
            tags["multirun_job"] = str(hc.job.num)
        tags["overrides"] = " ".join(hc.overrides.task)[:5000]
    except ValueError:
        pass
    return tags


def train(cfg: DictConfig, console=None, callbacks: Sequence[Callback] = ()) -> Result:
    """Validate, load, train, evaluate, track. Raises PflError for anything the user can fix.

    `callbacks`: observers (pfl.fl.callbacks.Callback) that see every hook before pfl's own
    tracking, ledger and checkpoints do."""
    from pfl.metrics import get_inference_precision, set_inference_precision

    before = get_inference_precision()
    try:
        return _train(cfg, console, callbacks)
    finally:  # the next run in this process (a sweep, the tests) starts from where it was
        set_inference_precision(before)


def _train(cfg: DictConfig, console, callbacks: Sequence[Callback]) -> Result:
    cfgmod.prepare(cfg)
    strategy = build_strategy(cfg.strategy, cfg.get("adapt"))  # bad hyperparameters fail before data loads
    from pfl.losses import build_loss

    # The same for the loss: its settings checked on placeholder counts, before data loads.
    build_loss(cfg.get("loss"), list(cfg.data.classes), [1] * len(cfg.data.classes))
    workers = int(cfg.trainer.get("workers", 1))
    # null: the cores this process may run on (a Slurm job's or container's CPU set, not the
    # node's); with worker processes, one thread each.
    torch.set_num_threads(cfg.trainer.get("threads") or (1 if workers > 1 else len(os.sched_getaffinity(0))))
    trainer = build_trainer(**cfg.trainer)
    from pfl.fl.trainer import fused_optimizer, resolve_precision
    from pfl.metrics import set_inference_precision

    set_inference_precision(resolve_precision(cfg.trainer.get("precision", "32-true"),
                                              cfg.trainer.get("accelerator", "cpu")))
    fed = load_federation(cfg)
    check_input(cfg, fed)
    device = trainer.device
    train_clients = fed.training_clients if cfg.mode == "federated" else [pooled_client(fed.training_clients)]

    fcfg = cfg.federation
    optimizer = fused_optimizer(hydra.utils.instantiate(fcfg.optimizer), cfg.trainer.get("fused_optimizer", False),
                                device)

    def model_factory():
        return hydra.utils.instantiate(cfg.model).to(device)

    # Class weights (loss.weights=balanced) come from the training clients' labels.
    counts = np.bincount(np.concatenate([c.train.y.numpy() for c in train_clients]), minlength=len(fed.classes))
    per_client = {c.cid: np.bincount(c.train.y.numpy(), minlength=len(fed.classes)).tolist()
                  for c in [*train_clients, *fed.clients]}
    criterion = build_loss(cfg.get("loss"), fed.classes, counts.tolist(), per_client)
    # Centralized: one optimizer over rounds x local_epochs epochs of the pooled data, its
    # state carried from round to round (rounds only mark evaluations).
    ctx = Context(trainer=trainer, optimizer=optimizer, lr=float(fcfg.optimizer.lr),
                  criterion=criterion,
                  batch_size=fcfg.batch_size, local_epochs=fcfg.local_epochs, seed=cfg.seed,
                  eval_batch_size=fcfg.eval_batch_size, local_steps=fcfg.get("local_steps"),
                  model_factory=model_factory, n_clients=len(train_clients),
                  keep_optimizer=cfg.mode == "centralized", sampling=str(fcfg.get("sampling", "uniform")),
                  augment=_augment(cfg, fed))
    strategy.bind(ctx)

    chash = cfgmod.config_hash(cfg)
    digest = fed.digest()
    ckpt_dir = Path(cfg.paths.checkpoint_dir) / chash
    # unlogged: metrics of the last rounds that a killed run may not have logged to MLflow yet
    state, meta, unlogged, path = None, {}, [], ckpt_dir / LAST
    if cfg.resume:
        path = path if cfg.resume is True else Path(str(cfg.resume))
        if cfg.resume is True and not path.exists():
            log.info("resume=true: no checkpoint for this config yet (%s); starting fresh", path)
        else:
            state, meta, unlogged = load_checkpoint(path, chash, digest)
            log.info("resuming after round %d from %s", state.rnd, path)

    observers, callbacks = list(callbacks), []
    backend = None
    if fcfg.backend == "ray":
        from pfl.fl.ray_backend import RayBackend

        backend = RayBackend(address=fcfg.get("ray_address"), threads=cfg.trainer.get("threads"),
                             gpus=1.0 if device.type == "cuda" else 0.0)
    elif workers > 1:
        from pfl.fl.workers import ProcessBackend

        backend = ProcessBackend(workers, threads=cfg.trainer.get("threads") or 1,
                                 spread_threads=cfg.trainer.get("spread_threads", False))
    server = Server(strategy, model_factory, train_clients, fed.clients, fed.classes, rounds=fcfg.rounds,
                    seed=cfg.seed, clients_per_round=fcfg.clients_per_round, eval_every=fcfg.eval_every,
                    test_every=fcfg.get("test_every"),
                    dropout=fcfg.dropout, on_divergence=fcfg.on_divergence, eval_batch_size=fcfg.eval_batch_size,
                    backend=backend)
    # The tracker comes after every check the server makes, so a rejected config opens no MLflow
    # store and leaves no run behind.
    from pfl.artifacts import ArtifactWriter, run_directory
    from pfl.data.stats import federation_stats
    from pfl.ledger import Ledger

    # The ledger sits beside the checkpoints so a resumed run extends the same chain.
    durable = InOrder("pfl-durable")  # the ledger's entries, then the round's checkpoint, in order
    ledger = Ledger(ckpt_dir / "ledger.jsonl", chash, digest, resume_round=state.rnd if state else 0,
                    resume_weights=state.global_weights if state else None,
                    source=path.parent / "ledger.jsonl" if state else None, writer=durable)
    stats = _jsonable(federation_stats(fed))
    if fed.rr_stats:
        stats["rr_standardize"] = fed.rr_stats
    artifacts = ArtifactWriter(cfg, run_directory(cfg, chash), stats, [ledger.path])
    tracker = None
    if cfg.logger.get("enabled", False):
        from pfl.tracking import MlflowTracker

        tracker = MlflowTracker(cfg, cfg.logger.get("run_name") or default_run_name(cfg), run_tags(cfg, chash, strategy),
                                artifacts=artifacts, rr_stats=fed.rr_stats)
    # Everything a component needs is known before it is built: the MLflow run (a resumed run
    # continues its own), the directories and the ledger's chain.
    run = RunContext(chash, digest, ckpt_dir, artifacts.directory,
                     run_id=tracker.start(meta.get("mlflow_run_id"), unlogged) if tracker else None,
                     resuming=state is not None)
    ckpt = Checkpointer(run, ledger, meta, writer=durable, unlogged=tracker.unlogged if tracker else None)
    # Ledger before checkpoint: a checkpoint never exists for a round the ledger lacks. Both
    # before the artifacts and the tracker: at the end their writes are on disk (flushed) before
    # the ledger is copied into the run's artifacts and the run is marked FINISHED.
    callbacks += [ledger, ckpt, tracker if tracker is not None else artifacts]
    try:  # from here on an error must end the MLflow run as FAILED, not leave it RUNNING
        if cfg.trainer.get("progress", True):
            from pfl.fl.progress import RichProgress

            callbacks.insert(0, RichProgress(fcfg.rounds, len(fed.clients), console))
        callbacks[:0] = observers
        server.callbacks = callbacks
        result = server.run(state)
    except BaseException as exc:
        for cb in callbacks:  # each one, whatever the others do: the run must end FAILED, flushed
            try:
                cb.on_exception(exc)
            except Exception as e:  # noqa: BLE001 - the run's own error is the one to raise
                log.error("%s.on_exception: %s", type(cb).__name__, e)
        raise
    finally:
        if backend is not None:  # Ray actors hold CPUs the next job of a sweep needs
            backend.close()
    title = (f"{cfg.mode} {cfg.strategy.name} on {cfg.partition.get('name', '')}, seed {cfg.seed}, "
             f"round {fcfg.rounds}: test, global vs personalized")
    tables.render(result.evaluation.table("test"), title, console)
    return result


def _jsonable(obj):
    import dataclasses

    import numpy as np

    if dataclasses.is_dataclass(obj):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj
