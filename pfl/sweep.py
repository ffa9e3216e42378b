"""MLflow's layout for sweeps: one parent run per multirun, each job a nested child run.

A Hydra callback (registered in conf/hydra/default.yaml). At the start of a multirun it
creates the parent run (tagged with the sweep's overrides) and writes its id into the sweep
directory, where every job (in this process or a joblib / submitit worker) finds it and tags
its own run `mlflow.parentRunId`. At the end it logs the children's headline numbers as the
parent's summary table, the best trial of an Optuna search with its parameters, and closes
the parent. `pfl-report` skips parent runs, so it reads both the nested and the flat layout.
"""

from __future__ import annotations

import atexit
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger(__name__)

PARENT_FILE = "mlflow_parent_run.json"
PARENT_TAG = "pfl.sweep_parent"
#: The children's numbers the parent's summary table shows (last round, test and val).
SUMMARY = ("val.personal.f1.mean", "test.global.acc.mean", "test.personal.acc.mean", "test.global.f1.mean",
           "test.personal.f1.mean", "test.personal.f1_nsvf.mean")


def _sweep_dir(config: DictConfig) -> Path:
    return Path(str(config.hydra.sweep.dir))


def parent_of_job() -> str | None:
    """The parent run id of the current Hydra multirun job, if its sweep has one."""
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        if hc.mode.name != "MULTIRUN":
            return None
        path = Path(hc.sweep.dir) / PARENT_FILE
    except (ValueError, AttributeError):  # not under a Hydra app
        return None
    if not path.exists():
        return None
    return json.loads(path.read_text())["run_id"]


def _swept(task) -> dict[str, str]:
    """The command line's sweep overrides (`strategy=none,finetune`, `seed=range(3)`), key -> value."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([str(t) for t in task])
    return {o.get_key_element(): str(o.input_line).split("=", 1)[1] for o in parsed if o.is_sweep_override()}


class MlflowSweepCallback(Callback):
    """Parent run per multirun; a no-op with logger=none or logger.nested=false."""

    def __init__(self) -> None:
        self.client = None
        self.run_id: str | None = None

    def _enabled(self, config: DictConfig) -> bool:
        lg = config.get("logger") or {}
        return bool(lg.get("enabled", False)) and bool(lg.get("nested", True))

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if not self._enabled(config):
            return
        from mlflow.entities import RunTag

        from pfl.tracking import _retry, experiment_id, open_client

        uri = str(config.logger.tracking_uri)
        self.client = open_client(uri)
        overrides = " ".join(config.hydra.overrides.task)
        sweeper = {**dict(config.hydra.sweeper.get("params") or {}), **_swept(config.hydra.overrides.task)}
        d = _sweep_dir(config)
        name = f"sweep-{config.get('study', 'default')}-{d.name}"
        run = _retry(self.client.create_run, experiment_id(self.client, config, uri), run_name=name, tags={
            PARENT_TAG: "true", "study": str(config.get("study", "")), "multirun_id": d.name,
            "sweep_overrides": overrides[:5000], "sweep_params": json.dumps(sweeper, default=str)[:5000],
            "sweeper": str(config.hydra.sweeper.get("_target_", "")), "mlflow.source.name": "pfl -m"})
        self.run_id = run.info.run_id
        _retry(self.client.log_batch, self.run_id, tags=[RunTag("mlflow.note.content",
                                                                f"pfl multirun `{overrides}`: {sweeper}")])
        d.mkdir(parents=True, exist_ok=True)
        (d / PARENT_FILE).write_text(json.dumps({"run_id": self.run_id, "tracking_uri": uri}))
        # Hydra skips on_multirun_end when a job fails: close the parent at exit instead.
        atexit.register(self._abandon)

    def _abandon(self) -> None:
        """A sweep that stopped early: its parent ends FAILED, or is deleted if no job made a run
        (a bad config or missing data leaves nothing behind)."""
        if self.run_id is None or self.client is None:
            return
        run_id, self.run_id = self.run_id, None
        try:
            exp = self.client.get_run(run_id).info.experiment_id
            children = self.client.search_runs(
                [exp], filter_string=f"tags.`mlflow.parentRunId` = '{run_id}'", max_results=1)
            if children:
                self.client.set_terminated(run_id, "FAILED")
            else:
                self.client.delete_run(run_id)
        except Exception as e:  # noqa: BLE001 - at exit, with the store possibly gone
            log.warning("could not close the sweep's parent run %s: %s", run_id, e)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.run_id is None or self.client is None:
            return
        from mlflow.entities import Metric, Param

        from pfl.tracking import _retry

        exp = self.client.get_run(self.run_id).info.experiment_id
        children = [r for r in self.client.search_runs(
            [exp], filter_string=f"tags.`mlflow.parentRunId` = '{self.run_id}'", max_results=5000)]
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["run", "run_id", "status", "overrides", *SUMMARY])
        for r in sorted(children, key=lambda r: int(r.data.tags.get("multirun_job", "0"))):
            w.writerow([r.info.run_name, r.info.run_id, r.info.status, r.data.tags.get("overrides", ""),
                        *(r.data.metrics.get(k, "") for k in SUMMARY)])
        _retry(self.client.log_text, self.run_id, buf.getvalue(), "sweep_summary.csv")
        metrics = [Metric("sweep.jobs", float(len(children)), 0, 0),
                   Metric("sweep.finished", float(sum(r.info.status == "FINISHED" for r in children)), 0, 0)]
        params = []
        results = _sweep_dir(config) / "optimization_results.yaml"
        if results.exists():  # an Optuna search: the best trial and its parameters
            import yaml

            best = yaml.safe_load(results.read_text()) or {}
            if "best_value" in best:
                metrics.append(Metric(f"best.{config.get('objective', 'objective')}", float(best["best_value"]), 0, 0))
            params = [Param(f"best.{k}", str(v)) for k, v in (best.get("best_params") or {}).items()]
            _retry(self.client.log_text, self.run_id, results.read_text(), "optimization_results.yaml")
        _retry(self.client.log_batch, self.run_id, metrics=metrics, params=params)
        _retry(self.client.set_terminated, self.run_id, "FINISHED")
        log.info("MLflow parent run %s: %d child runs", self.run_id, len(children))
        self.run_id = None
