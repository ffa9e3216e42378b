"""The run's artifacts on disk, whatever the logger: tables, figures, final metrics, config.

`ArtifactWriter` writes them into the run directory (Hydra's output directory of the job, or
`paths.output_dir/runs/<config hash>` outside Hydra) once the run ends. With `logger=mlflow`
the tracker is handed the writer and uploads the same directory, so `logger=none` leaves the
same files an MLflow run has.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import sys
import threading
import traceback
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
    """Writes the run's artifacts into `directory` at the end of the run; the figures are drawn
    in a child process that the run joins before it ends (the MLflow tracker logs its model
    meanwhile, uploads the directory after the join, then marks the run FINISHED).

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
        self._figures: _Figures | None = None
        self._warm: threading.Thread | None = None

    def write(self, result) -> Path:
        """Write (once) and return the directory."""
        self.start(result)
        return self.join()

    def start(self, result) -> None:
        """Write the tables, metrics, config and weights now, and start drawing the figures in
        a child process (`_Figures`), so the caller's other end-of-run work (the MLflow tracker
        logs its model) runs beside them on another core; `join` waits for them."""
        if self._figures is not None or self.written is not None:
            return
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        self.rows = result.evaluation.table("test")
        (d / "config.yaml").write_text(OmegaConf.to_yaml(self.cfg, resolve=True))
        (d / "final_clients.csv").write_text(tables.to_csv(self.rows))
        (d / "final_clients.md").write_text(tables.to_markdown(self.rows))
        (d / "final_metrics.json").write_text(json.dumps(result.metrics, indent=1, sort_keys=True))
        (d / "history.json").write_text(json.dumps(result.history, indent=1, default=float))
        if self.fed_stats is not None:
            (d / "partition_stats.json").write_text(json.dumps(self.fed_stats, indent=1, default=float))
        if self.cfg.logger.get("log_model", True):
            torch.save(result.global_weights, d / "global_model.pt")
        history = self.history(result) if self.history is not None else result.history
        self.join_prewarm(timeout=None)  # no import may be under way in another thread when we fork
        self._figures = _Figures(functools.partial(_draw, result.evaluation, history, d))

    def join(self) -> Path:
        """Wait for the figures (their error, if any, is raised here); copy the extra files."""
        if self.written is not None:
            return self.written
        if self._figures is None:
            raise RuntimeError("ArtifactWriter.join before start")
        figures, self._figures = self._figures, None
        figures.wait()
        for extra in self.extra:
            if Path(extra).exists():
                shutil.copy(extra, self.directory / Path(extra).name)
        self.written = self.directory
        return self.written

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

    def on_exception(self, exc: BaseException) -> None:
        self.join_prewarm()

    def join_prewarm(self, timeout: float | None = 30) -> None:
        """No import may still run in a thread when this process forks again (the next run's
        workers, in a sweep or the tests)."""
        if self._warm is not None:
            self._warm.join(timeout)


def _draw(ev, history: list[dict[str, float]], d: Path) -> None:
    from pfl import plots

    plots.confusion_grid(ev, d / "confusion_test.png")
    plots.learning_curves(history, d / "learning_curves.png")


class _Figures:
    """Figures drawn in a forked child process. Matplotlib holds the GIL while it draws, so a
    thread would only take turns with the run's own end-of-run work; a child draws on another
    core. Drawn at once, in this process, where fork is missing or unsafe (Windows; a process
    that runs Ray's driver, whose threads a fork would strand)."""

    def __init__(self, draw: Callable[[], None]):
        self.pid: int | None = None
        if not hasattr(os, "fork") or _ray_running():
            draw()
            return
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: draw, report, leave without running the parent's exit handlers
            os.close(r)
            code = 0
            try:
                draw()
            except BaseException:  # noqa: BLE001 - reported to the parent through the pipe
                os.write(w, traceback.format_exc()[-8000:].encode())
                code = 1
            finally:
                os._exit(code)
        os.close(w)
        self.pid, self._read = pid, r

    def wait(self, timeout: float = 600) -> None:
        if self.pid is None:
            return
        import select

        with os.fdopen(self._read, "rb") as fh:
            ready, _, _ = select.select([fh], [], [], timeout)
            if not ready:  # a child that hangs must not hang the run
                os.kill(self.pid, 9)
                os.waitpid(self.pid, 0)
                self.pid = None
                raise RuntimeError(f"drawing the run's figures took over {timeout:g} s; the child was stopped")
            why = fh.read().decode(errors="replace")
        _, status = os.waitpid(self.pid, 0)
        self.pid = None
        code = os.waitstatus_to_exitcode(status)
        if code != 0:
            raise RuntimeError(f"drawing the run's figures failed (exit {code}): {why or 'no message'}")


def _ray_running() -> bool:
    ray = sys.modules.get("ray")
    return bool(ray is not None and getattr(ray, "is_initialized", lambda: False)())


def _import_plots() -> None:
    try:
        import pfl.plots  # noqa: F401
    except Exception:  # noqa: BLE001 - the writer imports it again and reports the error there
        pass
