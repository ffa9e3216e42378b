"""The run's artifacts on disk, whatever the logger: tables, figures, final metrics, config.

`ArtifactWriter` writes them into the run directory (Hydra's output directory of the job, or
`paths.output_dir/runs/<config hash>` outside Hydra) once the run ends. With `logger=mlflow`
the tracker is handed the writer and uploads the same directory, so `logger=none` leaves the
same files an MLflow run has.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from pfl import tables
from pfl.fl.callbacks import Callback

log = logging.getLogger(__name__)


def run_directory(cfg: DictConfig, config_hash: str) -> Path:
    """Hydra's output directory of this job, or one named by the config hash outside Hydra."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return Path(HydraConfig.get().runtime.output_dir)
    except ValueError:  # not under a Hydra app (API use, tests)
        return Path(str(cfg.paths.output_dir)) / "runs" / config_hash[:12]


class ArtifactWriter(Callback):
    """Writes the run's artifacts into `directory` at the end of the run.

    `fed_stats`: the partition's statistics (pfl.data.stats); `extra`: files copied beside the
    artifacts (the provenance ledger). `history` (optional) gives the learning curves' points
    where the result holds only part of them (a resumed run: the MLflow store holds all).
    """

    def __init__(self, cfg: DictConfig, directory: Path, fed_stats: dict[str, Any] | None = None,
                 extra: Sequence[Path] = ()):
        self.cfg, self.directory = cfg, Path(directory)
        self.fed_stats, self.extra = fed_stats, list(extra)
        self.history: Callable[[Any], list[dict[str, float]]] | None = None
        self.written: Path | None = None

    def write(self, result) -> Path:
        """Write (once) and return the directory."""
        if self.written is not None:
            return self.written
        from pfl import plots

        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        ev = result.evaluation
        rows = ev.table("test")
        (d / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        (d / "final_clients.csv").write_text(tables.to_csv(rows))
        (d / "final_clients.md").write_text(tables.to_markdown(rows))
        (d / "final_metrics.json").write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
        (d / "history.json").write_text(json.dumps(result.history, indent=1, default=float))
        if self.fed_stats is not None:
            (d / "partition_stats.json").write_text(json.dumps(self.fed_stats, indent=1, default=float))
        if self.cfg.logger.get("log_model", True):
            torch.save(result.global_weights, d / "global_model.pt")
        plots.confusion_matrices(ev, d / "confusion")
        history = self.history(result) if self.history is not None else result.history
        plots.learning_curves(history, d / "learning_curves.png")
        for extra in self.extra:
            if Path(extra).exists():
                shutil.copy(extra, d / Path(extra).name)
        self.written = d
        self.rows = rows
        return d

    def on_run_end(self, result) -> None:
        d = self.write(result)
        log.info("run artifacts in %s", d)
