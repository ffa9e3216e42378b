"""Config checks before any data is loaded or any model trained, and the run's identity."""

from __future__ import annotations

import hashlib
import json

from omegaconf import DictConfig, OmegaConf

from pfl import validation as v
from pfl.errors import ConfigError

#: keys that do not change results: left out of the config hash that names checkpoints
VOLATILE = ("resume", "logger", "paths", "study", "objective", "hydra", "data.root", "data.cache_dir",
            "data.download", "federation.backend", "federation.ray_address", "federation.eval_batch_size", "trainer.threads",
            "trainer.progress", "strategy.search", "trainer.engine", "trainer.workers")

#: keys that change results only when set away from these values: left out of the hash at them,
#: so adding such a key kept every earlier run's identity
NEUTRAL = {"trainer.compile": False, "trainer.compile_backend": "inductor", "trainer.fused_optimizer": False,
           "trainer.spread_threads": False,
           "federation.test_every": None, "data.rr.standardize": False, "data.rr.irregular_beats": 32,
           "loss.max_weight": None, "partition.val_records": [], "partition.ds1_extra": [],
           "partition.common_records": [], "partition.common_per_class": None,
           # no augmentation: runs from before the augment group keep their hash
           "augment.name": "none", "augment.shift": 0, "augment.scale": 0.0, "augment.wander": 0.0,
           "augment.noise": 0.0}


#: what an objective (model selection, searches) may read: validation metrics only
OBJECTIVE_PREFIXES = ("val.", "heldout.val.")

#: logger.model_format: how mlflow.pytorch.log_model stores the run's final model
MODEL_FORMATS = ("pt2", "pickle")

#: the keys of these groups; a key added with `+group.key=...` would otherwise be ignored silently
KNOWN_KEYS = {
    "federation": {"rounds", "local_epochs", "local_steps", "clients_per_round", "eval_every", "test_every",
                   "batch_size", "eval_batch_size",
                   "optimizer", "dropout", "on_divergence", "backend", "ray_address", "sampling"},
    "trainer": {"engine", "accelerator", "devices", "precision", "deterministic", "gradient_clip_val", "compile",
                "compile_backend", "fused_optimizer", "spread_threads", "threads", "workers", "progress"},
    "augment": {"name", "shift", "scale", "wander", "noise"},
}


def validate(cfg: DictConfig) -> None:
    for group, known in KNOWN_KEYS.items():
        unknown = sorted(set(cfg.get(group) or ()) - known)
        if unknown:
            raise ConfigError(f"{group}.{unknown[0]}", cfg[group][unknown[0]], f"a key of {group}: " + ", ".join(sorted(known)))
    v.choice("mode", cfg.mode, ("federated", "centralized"))
    if cfg.get("logger") and "model_format" in cfg.logger:  # before anything trains or is written
        v.choice("logger.model_format", cfg.logger.model_format, MODEL_FORMATS)
    if cfg.get("logger") and cfg.logger.get("flush_every_s") is not None:
        v.non_negative("logger.flush_every_s", cfg.logger.flush_every_s, "a number of seconds >= 0 (0: after every round)")
    v.integer("seed", cfg.seed, minimum=0)
    if not str(cfg.get("objective", "val.")).startswith(OBJECTIVE_PREFIXES):
        raise ConfigError("objective", cfg.objective, "a validation metric: val.* of the federated clients, or "
                          "heldout.val.* of the patients held out of training to validate "
                          "(partition.val_records); searches never tune on test, nor on the unseen clients",
                          "e.g. objective=val.personal.f1.mean")
    if not isinstance(cfg.resume, bool | str):
        raise ConfigError("resume", cfg.resume, "true, false or a checkpoint path")
    f = cfg.federation
    v.integer("federation.rounds", f.rounds, minimum=1)
    v.integer("federation.local_epochs", f.local_epochs, minimum=1)
    if f.get("local_steps") is not None:
        v.integer("federation.local_steps", f.local_steps, minimum=1)
    v.integer("federation.batch_size", f.batch_size, minimum=1)
    v.integer("federation.eval_batch_size", f.eval_batch_size, minimum=1)
    v.integer("federation.eval_every", f.eval_every, minimum=1)
    if f.get("test_every") is not None:
        v.integer("federation.test_every", f.test_every, minimum=1)
    if f.clients_per_round is not None:
        v.integer("federation.clients_per_round", f.clients_per_round, minimum=1)
    v.fraction("federation.dropout", f.dropout)
    v.choice("federation.on_divergence", f.on_divergence, ("fail", "drop"))
    v.choice("federation.backend", f.backend, ("serial", "ray"))
    from pfl.fl.batches import SAMPLINGS

    v.choice("federation.sampling", f.get("sampling", "uniform"), SAMPLINGS)
    from pfl.data.augment import build_augment

    win = (cfg.get("data") or {}).get("window")
    build_augment(cfg.get("augment"), window=int(win.before) + int(win.after) if win else None,
                  peak=int(win.before) if win else None)
    v.positive("federation.optimizer.lr", f.optimizer.get("lr"))
    t = cfg.trainer
    if t.get("threads") is not None:
        v.integer("trainer.threads", t.threads, minimum=1)
    from pfl.fl.trainer import ENGINES

    v.choice("trainer.engine", t.get("engine", "trainer"), ENGINES)
    v.integer("trainer.workers", t.get("workers", 1), minimum=1)
    v.choice("trainer.precision", str(t.precision), ("32-true", "32", "bf16-mixed", "bf16-true", "16-mixed",
                                                      "64-true"))
    if str(t.precision) == "16-mixed" and t.get("engine", "trainer") == "fabric":
        # fp16 needs a gradient scaler around each step; the fabric engine steps the optimizer itself
        raise ConfigError("trainer.precision", t.precision, "32-true or bf16-mixed with trainer.engine=fabric "
                          "(fp16 needs the gradient scaler that Lightning's Trainer runs)",
                          hint="use trainer.precision=bf16-mixed, or trainer.engine=trainer")
    for key in ("fused_optimizer", "spread_threads"):
        if not isinstance(t.get(key, False), bool):
            raise ConfigError(f"trainer.{key}", t[key], "true or false")
    if t.get("compile") and t.get("engine", "trainer") != "fabric":
        raise ConfigError("trainer.compile", t.compile, "false with trainer.engine=trainer (compiling is "
                          "done by the fabric engine)", hint="add trainer.engine=fabric, or use trainer=fast")
    if str(t.accelerator) in ("gpu", "cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ConfigError("trainer.accelerator", t.accelerator, "cpu on this machine: torch sees no CUDA GPU",
                              hint="drop trainer=gpu, or check the driver and a CUDA build of torch")
    if t.get("workers", 1) > 1 and str(t.accelerator) in ("gpu", "cuda", "auto"):
        raise ConfigError("trainer.workers", t.workers, f"1 with trainer.accelerator={t.accelerator} (CUDA does "
                          "not survive the fork that starts the workers)", hint="use federation.backend=ray")
    if t.get("workers", 1) > 1 and (t.get("threads") or 1) > 1:
        # GNU OpenMP (torch's on Linux) keeps the thread pool of the process it was forked from:
        # a worker forked after the run's process ran threads hangs on its first threaded op.
        raise ConfigError("trainer.threads", t.threads, f"1 with trainer.workers={t.workers} (torch's OpenMP "
                          "cannot start threads in a process forked after the run's process has run threads: "
                          "the workers would hang)",
                          hint="use trainer.spread_threads=true to give a round's left-over client every "
                               "core, or federation.backend=ray for workers of several threads")
    if t.get("workers", 1) > 1 and f.backend == "ray":
        raise ConfigError("trainer.workers", t.workers, "1 with federation.backend=ray (Ray starts its own "
                          "workers, one per trainer.threads cores)")


def prepare(cfg: DictConfig) -> DictConfig:
    validate(cfg)
    return cfg


def _drop(container: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        container = container.get(p) or {}
    if isinstance(container, dict):
        container.pop(last, None)


def config_hash(cfg: DictConfig) -> str:
    """SHA-256 of the resolved config less the keys that do not change results."""
    container = OmegaConf.to_container(cfg, resolve=True)
    trainer = container.get("trainer") or {}
    # Spread threads make a fit's thread count, and so its float sums, follow the worker count;
    # without workers they change nothing.
    workers = None
    if trainer.get("spread_threads"):
        if trainer.get("workers", 1) > 1:
            workers = trainer["workers"]
        else:
            trainer.pop("spread_threads")
    for key in VOLATILE:
        _drop(container, key)
    for key, neutral in NEUTRAL.items():
        *parents, last = key.split(".")
        node = container
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get(last, neutral) == neutral:
            node.pop(last, None)
    if container.get("augment") == {}:
        container.pop("augment")
    if workers is not None:
        container["trainer"]["workers"] = workers
    return hashlib.sha256(json.dumps(container, sort_keys=True, default=str).encode()).hexdigest()


def flatten(cfg: DictConfig | dict, prefix: str = "") -> dict[str, object]:
    container = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    out: dict[str, object] = {}
    for k, val in container.items():
        key = f"{prefix}{k}"
        if isinstance(val, dict) and val:
            out.update(flatten(val, key + "."))
        else:
            out[key] = val
    return out
