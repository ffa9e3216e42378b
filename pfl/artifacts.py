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
import threading
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
    """Writes the run's artifacts into `directory` at the end of the run, in a background
    thread that the run joins before it ends (the MLflow tracker uploads them after the join,
    then marks the run FINISHED).

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
        self.rows: list[dict[str, Any]] = []
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._warm: threading.Thread | None = None

    def write(self, result) -> Path:
        """Write (once) and return the directory."""
        self.start(result)
        return self.join()

    def start(self, result) -> None:
        """Begin writing in a background thread, so the caller can do other end-of-run work
        (the MLflow tracker logs its model meanwhile); `join` waits for it. The tables are made
        here, before the thread starts: the caller may read `rows` at once."""
        if self._thread is not None or self.written is not None:
            return
        self.rows = result.evaluation.table("test")
        # OmegaConf is not made for threads: the config is resolved here, in the run's thread.
        self._config_yaml = OmegaConf.to_yaml(self.cfg, resolve=True)
        self._log_model = bool(self.cfg.logger.get("log_model", True))
        history = self.history(result) if self.history is not None else result.history
        self._thread = threading.Thread(target=self._write, args=(result, history), name="pfl-artifacts",
                                        daemon=True)
        self._thread.start()

    def join(self) -> Path:
        """Wait for the writer; its error, if any, is raised here."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
            if self._error is not None:
                err, self._error = self._error, None
                raise err
        if self.written is None:
            raise RuntimeError("ArtifactWriter.join before start")
        return self.written

    def _write(self, result, history: list[dict[str, float]]) -> None:
        try:
            from pfl import plots

            d = self.directory
            d.mkdir(parents=True, exist_ok=True)
            (d / "config.yaml").write_text(self._config_yaml)
            (d / "final_clients.csv").write_text(tables.to_csv(self.rows))
            (d / "final_clients.md").write_text(tables.to_markdown(self.rows))
            (d / "final_metrics.json").write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
            (d / "history.json").write_text(json.dumps(result.history, indent=1, default=float))
            if self.fed_stats is not None:
                (d / "partition_stats.json").write_text(json.dumps(self.fed_stats, indent=1, default=float))
            if self._log_model:
                torch.save(result.global_weights, d / "global_model.pt")
            plots.confusion_grid(result.evaluation, d / "confusion_test.png")
            plots.learning_curves(history, d / "learning_curves.png")
            for extra in self.extra:
                if Path(extra).exists():
                    shutil.copy(extra, d / Path(extra).name)
            self.written = d
        except BaseException as e:  # noqa: BLE001 - handed to join(), in the run's thread
            self._error = e

    def on_round_end(self, info) -> None:
        self.prewarm()

    def prewarm(self) -> None:
        """Import matplotlib in a background thread while the rounds train, off the end of the
        run (about 0.3 s in a fresh process). Started after the first round, once any worker
        processes have been forked: a fork while another thread holds an import lock would leave
        the child that lock."""
        if self._warm is None:
            self._warm = threading.Thread(target=_import_plots, name="pfl-prewarm", daemon=True)
            self._warm.start()

    def on_run_end(self, result) -> None:
        d = self.write(result)
        log.info("run artifacts in %s", d)


def _import_plots() -> None:
    try:
        import pfl.plots  # noqa: F401
    except Exception:  # noqa: BLE001 - the writer imports it again and reports the error there
        pass
