"""Multirun sweeps: parallel jobs on one SQLite store, the Optuna search, the study presets."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from compose import CONF_DIR
from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from pfl.tracking import store_uri

PFL = str(Path(sys.executable).parent / "pfl")
FAST = ("partition=patient", "model=cnn", "federation.rounds=2", "federation.local_epochs=1",
        "federation.batch_size=16", "trainer.progress=false", "trainer.threads=1")


def _pfl(db: Path, root: Path, *args: str, multirun: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    proc = subprocess.run([PFL, *(["-m"] if multirun else []), f"data.root={db}", f"paths.root_dir={root}", *FAST,
                           *args],
                          capture_output=True, text=True, timeout=600, env=env, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _runs(root: Path, experiment: str):
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{root}/outputs/mlflow.db"))
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None
    runs = client.search_runs([exp.experiment_id], order_by=["tags.multirun_job ASC"])
    return client, [r for r in runs if "pfl.sweep_parent" not in r.data.tags]


def _parent(client, runs):
    """The multirun's parent run: every job is nested under the same one."""
    (parent_id,) = {r.data.tags["mlflow.parentRunId"] for r in runs}
    parent = client.get_run(parent_id)
    assert parent.data.tags["pfl.sweep_parent"] == "true" and parent.info.status == "FINISHED"
    return parent


def test_parallel_joblib_jobs_share_one_sqlite_store_and_lose_nothing(synthetic_db, tmp_path):
    # A fresh store: both jobs also race to create its schema.
    _pfl(synthetic_db, tmp_path, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "strategy=none,finetune",
         "study=parallel", multirun=True)
    client, runs = _runs(tmp_path, "parallel")
    assert len(runs) == 2
    assert {r.data.tags["strategy"] for r in runs} == {"none", "finetune"}
    assert len({r.data.tags["multirun_id"] for r in runs}) == 1
    assert sorted(r.data.tags["multirun_job"] for r in runs) == ["0", "1"]
    for run in runs:
        assert run.info.status == "FINISHED"
        # Every final metric landed, each aggregate with one point per round.
        final = json.loads(Path(client.download_artifacts(run.info.run_id, "final_metrics.json",
                                                          str(tmp_path / run.info.run_id))).read_text())
        assert len(final) > 50
        for key, value in final.items():
            assert math.isclose(run.data.metrics[key], value, rel_tol=1e-12), key
        for key in ("train_loss", "round_seconds", "test.personal.f1.mean", "val.global.acc.worst",
                    "client.s03.test.personal.f1", "clients.participating"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == [1, 2], key
        assert f"strategy={run.data.tags['strategy']}" in run.data.tags["overrides"].split()
    # MLflow's sweep layout: one parent (tagged with the sweep) holding the jobs' summary table.
    parent = _parent(client, runs)
    assert json.loads(parent.data.tags["sweep_params"]) == {"strategy": "none,finetune"}
    assert parent.data.metrics["sweep.jobs"] == 2 and parent.data.metrics["sweep.finished"] == 2
    summary = Path(client.download_artifacts(parent.info.run_id, "sweep_summary.csv", str(tmp_path)))
    rows = list(csv.DictReader(summary.open()))
    assert {r["run_id"] for r in rows} == {r.info.run_id for r in runs}
    for r in rows:
        child = next(c for c in runs if c.info.run_id == r["run_id"])
        assert float(r["test.personal.f1.mean"]) == child.data.metrics["test.personal.f1.mean"]
    # pfl-report reads the nested layout: the parent is not an arm.
    from pfl.report import main as report

    report(["--experiment", "parallel", "--tracking-uri", f"sqlite:///{tmp_path}/outputs/mlflow.db",
            "--out", str(tmp_path / "report")])
    md = next((tmp_path / "report").rglob("*.md")).read_text()
    assert "2 finished runs in 2 arms" in md


def test_tune_draws_a_strategys_categorical_search_space(synthetic_db, tmp_path):
    """FedRoD's `search:` is choices only: Optuna draws them (sampler seed 0) and every trial
    runs with the drawn values (the defaults are balanced, 0, all)."""
    _pfl(synthetic_db, tmp_path, "hparams_search=tune", "strategy=fedrod", "hydra.sweeper.n_trials=3")
    _, runs = _runs(tmp_path, "tune_fedrod")
    assert len(runs) == 3 and all(r.info.status == "FINISHED" for r in runs)
    drawn = [(r.data.params["strategy.generic_loss"], r.data.params["strategy.personal_epochs"],
              r.data.params["strategy.personal_classes"]) for r in runs]
    assert all(g in ("balanced", "criterion") and e in ("0", "5") and c in ("all", "seen") for g, e, c in drawn)
    assert any(d != ("balanced", "0", "all") for d in drawn), drawn


def test_optuna_search_tunes_alpha_and_beta_on_validation(synthetic_db, tmp_path):
    _pfl(synthetic_db, tmp_path, "hparams_search=perfedavg_optuna", "hydra.sweeper.n_trials=2", "study=search")
    client, runs = _runs(tmp_path, "search")
    assert len(runs) == 2 and all(r.info.status == "FINISHED" for r in runs)
    alphas = [float(r.data.params["strategy.alpha"]) for r in runs]
    betas = [float(r.data.params["strategy.beta"]) for r in runs]
    # The search space covers the outer step that trains (beta up to 1, log scale).
    assert all(0.001 <= a <= 0.3 for a in alphas) and all(0.001 <= b <= 1.0 for b in betas)
    assert len(set(zip(alphas, betas, strict=True))) == 2
    assert all(r.data.params["strategy.name"] == "perfedavg" for r in runs)
    # The sweeper maximized the validation objective each trial returned, never a test metric.
    (results,) = tmp_path.glob("outputs/multirun/*/optimization_results.yaml")
    best = yaml.safe_load(results.read_text())
    objective = {r.data.params["strategy.alpha"]: r.data.metrics["val.personal.f1.mean"] for r in runs}
    assert best["best_value"] == pytest.approx(max(objective.values()))
    assert best["best_value"] == pytest.approx(objective[str(best["best_params"]["strategy.alpha"])])
    # The search's parent run holds the best trial and its parameters.
    parent = _parent(client, runs)
    assert parent.data.metrics["best.val.personal.f1.mean"] == pytest.approx(best["best_value"])
    assert float(parent.data.params["best.strategy.alpha"]) == pytest.approx(best["best_params"]["strategy.alpha"])


def test_a_sweep_whose_jobs_fail_leaves_no_open_parent_run(tmp_path):
    missing = tmp_path / "no_such_db"
    proc = subprocess.run([PFL, "-m", f"data.root={missing}", "data.download=false", f"paths.root_dir={tmp_path}",
                           *FAST, "strategy=none,finetune", "study=broken"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode != 0 and str(missing) in proc.stderr, proc.stderr[-2000:]
    client = MlflowClient(tracking_uri=store_uri(f"sqlite:///{tmp_path}/outputs/mlflow.db"))
    exp = client.get_experiment_by_name("broken")
    assert exp is not None  # the parent was created, then deleted: no job got as far as a run
    assert client.search_runs([exp.experiment_id]) == []


def test_a_search_cannot_optimize_a_test_metric(synthetic_db, tmp_path):
    from compose import make_cfg

    from pfl.errors import ConfigError
    from pfl.run import train

    for bad in ("test.personal.f1.mean", "heldout.test.global.f1.mean", "unseen.val.global.f1.mean"):
        with pytest.raises(ConfigError, match=f"objective='{bad}' is not allowed"):
            train(make_cfg(synthetic_db, tmp_path, "strategy=perfedavg", f"objective={bad}"))


def _preset(name: str, *overrides: str):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides], return_hydra_config=True)


@pytest.mark.parametrize(("name", "partition", "model", "sweep"), [
    ("seed_phase1", "hospitals", "pfl.models.CNNLSTM", {"mode": "centralized,federated"}),
    ("seed_phase3", "hospitals", "pfl.models.CNNLSTM", {"strategy": "none,finetune,perfedavg"}),
    ("patient_specific", "patient", "pfl.models.CNNLSTM", {"strategy": "none,finetune,perfedavg"}),
    ("unseen_patients", "interpatient", "pfl.models.CNNLSTM", {"strategy": "none,finetune,perfedavg"}),
    ("quick", "hospitals", "pfl.models.SmallCNN", {"strategy": "none,finetune,perfedavg_quick", "seed": "0,1"}),
    ("institutions", "institutions", "pfl.models.CNNLSTM", {"strategy": "none,fedbn,finetune,ditto"}),
    ("unseen_institution", "institutions", "pfl.models.CNNLSTM", {"strategy": "none,finetune"}),
])
def test_study_presets_run_every_job_of_their_study(name, partition, model, sweep):
    cfg = _preset(name)
    assert cfg.study == name and cfg.logger.experiment_name == name
    assert cfg.hydra.mode.name == "MULTIRUN"  # `pfl experiment=NAME` runs the whole study
    assert dict(cfg.hydra.sweeper.params) == sweep
    assert cfg.partition.name == partition and cfg.model._target_ == model
    f = cfg.federation
    assert (f.batch_size, f.optimizer._target_, f.optimizer.lr) == (32, "torch.optim.Adam", 0.001)
    if name in ("institutions", "unseen_institution"):  # two databases, BatchNorm for FedBN
        assert (f.rounds, f.local_epochs) == (10, 2) and list(cfg.data.databases) == ["mitdb", "svdb"]
        assert cfg.model.norm == "batch" and cfg.partition.unseen == ("svdb" if "unseen" in name else None)
    elif name != "quick":  # the reference study's schedule
        assert (f.rounds, f.local_epochs) == (20, 5)
    if name == "seed_phase1":
        assert cfg.strategy.name == "none"


def test_the_quick_study_gives_only_per_fedavg_its_own_outer_step():
    quick = _preset("quick", "strategy=perfedavg_quick").strategy
    assert (quick.name, quick.beta, quick.alpha) == ("perfedavg", 0.2, 0.01)
    assert _preset("quick", "strategy=perfedavg").strategy.beta == 0.001  # the reference setting
    assert "beta" not in _preset("quick", "strategy=finetune").strategy
