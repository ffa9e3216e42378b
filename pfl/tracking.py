"""MLflow tracking: one run per Hydra job, metrics per round, artifacts at the end.

Everything goes through MlflowClient with an explicit run id, so parallel jobs in one process
tree never share the fluent API's global "active run".
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from pfl import tables
from pfl.config import flatten
from pfl.errors import PflError
from pfl.fl.callbacks import Callback, RoundInfo

log = logging.getLogger(__name__)
_BATCH = 500  # MLflow accepts up to 1000 metrics / 100 params per log_batch call


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def _retry(fn, *args, attempts: int = 8, **kwargs):
    """SQLite allows one writer: parallel jobs on one store see 'database is locked' briefly."""
    for i in range(attempts):
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            if "locked" not in str(e).lower() or i == attempts - 1:
                raise
            time.sleep(0.2 * (i + 1) + np.random.random() * 0.2)


class MlflowTracker(Callback):
    def __init__(self, cfg: DictConfig, run_name: str, tags: dict[str, str]):
        import mlflow
        from mlflow.tracking import MlflowClient

        self.cfg, self.run_name, self.tags = cfg, run_name, tags
        self.uri = str(cfg.logger.tracking_uri)
        if self.uri.startswith("sqlite:///"):
            Path(self.uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        mlflow.set_tracking_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.run_id: str | None = None
        self.classes: list[str] = []
        self.fed_stats: dict[str, Any] | None = None
        self.extra_artifacts: list[Path] = []  # logged at the end, e.g. the provenance ledger

    def _experiment_id(self) -> str:
        name = str(self.cfg.logger.experiment_name)
        try:
            exp = _retry(self.client.get_experiment_by_name, name)
        except Exception as e:
            raise PflError(f"logger.tracking_uri={self.uri!r}: the MLflow tracking store does not answer "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); start the server, fix the URI, "
                           "or use logger=none") from None
        if exp is not None:
            return exp.experiment_id
        loc = self.cfg.logger.get("artifact_location")
        try:
            return _retry(self.client.create_experiment, name,
                          artifact_location=Path(loc).resolve().as_uri() if loc and "://" not in self.uri.replace(
                              "sqlite://", "") else None)
        except Exception:  # another job created it first
            return _retry(self.client.get_experiment_by_name, name).experiment_id

    def start(self, run_id: str | None = None) -> str:
        if run_id:
            try:
                self.client.get_run(run_id)
                self.run_id = run_id
                _retry(self.client.update_run, run_id, status="RUNNING")
                return run_id
            except Exception:
                log.warning("MLflow run %s of the checkpoint not found; starting a new run", run_id)
        run = _retry(self.client.create_run, self._experiment_id(), run_name=self.run_name, tags=self.tags)
        self.run_id = run.info.run_id
        from mlflow.entities import Param

        params = [Param(k, str(v)[:6000]) for k, v in flatten(self.cfg).items() if not k.startswith("hydra.")]
        for i in range(0, len(params), 100):
            _retry(self.client.log_batch, self.run_id, params=params[i:i + 100])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        items = [Metric(k, float(v), ts, step) for k, v in metrics.items() if v is not None and np.isfinite(v)]
        for i in range(0, len(items), _BATCH):
            _retry(self.client.log_batch, self.run_id, metrics=items[i:i + _BATCH])

    def on_round_end(self, info: RoundInfo) -> None:
        metrics = dict(info.metrics)
        metrics["clients.participating"] = len(info.updates)
        metrics["clients.dropped"] = len(info.dropped)
        metrics["clients.diverged"] = len(info.diverged)
        self.log_metrics(metrics, step=info.rnd)
        if info.dropped or info.diverged:
            _retry(self.client.log_text, self.run_id,
                   json.dumps({"dropped": info.dropped, "diverged": info.diverged}),
                   f"rounds/round_{info.rnd:04d}_clients.json")

    def on_run_end(self, result) -> None:
        from pfl import plots

        ev = result.evaluation
        rows = ev.table("test")
        with tempfile.TemporaryDirectory() as tmp:
            d = Path(tmp)
            (d / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
            (d / "final_clients.csv").write_text(tables.to_csv(rows))
            (d / "final_clients.md").write_text(tables.to_markdown(rows))
            (d / "final_metrics.json").write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
            if self.fed_stats is not None:
                (d / "partition_stats.json").write_text(json.dumps(self.fed_stats, indent=1, default=float))
            if self.cfg.logger.get("log_model", True):
                torch.save(result.global_weights, d / "global_model.pt")
            plots.confusion_matrices(ev, d / "confusion")
            plots.learning_curves(result.history, d / "learning_curves.png")
            for extra in self.extra_artifacts:
                if Path(extra).exists():
                    shutil.copy(extra, d / Path(extra).name)
            _retry(self.client.log_artifacts, self.run_id, str(d))
        _retry(self.client.set_terminated, self.run_id, "FINISHED")

    def log_artifact(self, path: Path, artifact_path: str | None = None) -> None:
        _retry(self.client.log_artifact, self.run_id, str(path), artifact_path)

    def on_exception(self, exc: BaseException) -> None:
        if self.run_id is None:
            return
        try:
            self.client.set_tag(self.run_id, "error", f"{type(exc).__name__}: {exc}"[:5000])
            self.client.set_terminated(self.run_id, "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        except Exception as e:  # the store itself may be what failed
            log.error("could not mark MLflow run %s as failed: %s", self.run_id, e)
