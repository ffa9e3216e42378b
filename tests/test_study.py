"""pfl-study: tuning then grid, skip of finished cells, resume of an interrupted one, RESULTS.md
numbers equal to the MLflow metrics; the paired test against scipy and by hand."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient

from pfl import study
from pfl.errors import ConfigError
from pfl.fl.checkpoint import Checkpointer
from pfl.results import paired_wilcoxon
from pfl.tracking import store_uri


def test_paired_wilcoxon_matches_scipy_and_the_exact_small_sample_value():
    from scipy.stats import wilcoxon

    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=12), rng.uniform(size=12)
    assert paired_wilcoxon(a, b) == pytest.approx(wilcoxon(a - b).pvalue)
    # Five pairs, all a > b with distinct gaps: of the 2^5 sign patterns only all-plus and all-minus
    # are as extreme, so the exact two-sided p is 2 / 32.
    assert paired_wilcoxon([1.1, 2.2, 3.3, 4.4, 5.5], [1, 2, 3, 4, 5]) == pytest.approx(2 / 32)
    assert paired_wilcoxon([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert math.isnan(paired_wilcoxon([], []))


def test_trials_start_at_the_defaults_and_stay_in_the_space():
    space = {"strategy.lam": "tag(log, interval(0.01, 2.0))", "strategy.epochs": "range(1, 4)",
             "strategy.alpha": "interval(0.0, 1.0)"}
    trials = study.sample_trials(space, 6, "ditto")
    assert trials[0] == {} and len(trials) == 6
    assert trials == study.sample_trials(space, 6, "ditto")  # seeded by the strategy's name
    assert trials != study.sample_trials(space, 6, "pfedme")
    for t in trials[1:]:
        assert 0.01 <= t["strategy.lam"] <= 2.0 and t["strategy.epochs"] in (1, 2, 3) and 0 <= t["strategy.alpha"] <= 1
    with pytest.raises(ConfigError, match=r"strategy.search='normal\(0, 1\)'.*or choice\(a, b, ...\)"):
        study.parse_space("normal(0, 1)")
    with pytest.raises(ConfigError, match="strategy.search='choice\(\)'"):
        study.parse_space("choice()")


def test_categorical_trials_draw_from_the_choices():
    space = {"strategy.generic_loss": "choice(balanced, criterion)", "strategy.personal_epochs": "choice(0, 5)"}
    trials = study.sample_trials(space, 12, "fedrod")
    assert trials[0] == {}
    losses = [t["strategy.generic_loss"] for t in trials[1:]]
    epochs = [t["strategy.personal_epochs"] for t in trials[1:]]
    assert set(losses) == {"balanced", "criterion"} and set(epochs) == {0, 5}  # both drawn, numbers as numbers
    assert trials == study.sample_trials(space, 12, "fedrod")


def test_a_bad_grid_names_the_value_and_what_is_allowed(tmp_path):
    bad = tmp_path / "g.yaml"
    bad.write_text(yaml.safe_dump({"federations": {"p": ["partition=patient"]}, "strategies": ["fedavgx"]}))
    with pytest.raises(ConfigError, match="fedavgx.*a strategy of conf/strategy/: apfl, ditto"):
        study.load_grid(str(bad))
    with pytest.raises(ConfigError, match="grid.*nosuch.*results"):
        study.load_grid("nosuch")
    bad.write_text(yaml.safe_dump({"federations": {"p": ["partition=patient"]}, "strategies": ["none"],
                                   "tune": {"budget": 2, "objective": "test.personal.f1.mean"}}))
    with pytest.raises(ConfigError, match="tune.objective.*never test"):
        study.load_grid(str(bad))


def test_study_tunes_runs_skips_resumes_and_reports_the_mlflow_numbers(synthetic_db, tmp_path, monkeypatch, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    common = [f"data.root={synthetic_db}", "data.download=false", "data.records=[s01,s02,s03]", "model=cnn",
              "federation.rounds=2", "federation.local_epochs=1", "trainer.threads=1", f"paths.root_dir={tmp_path}"]
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "name": "mini", "study": "mini", "seeds": [0], "jobs": 2, "overrides": common,
        "federations": {"patient": ["partition=patient"]}, "strategies": ["none", "finetune"],
        "tune": {"budget": 2, "federation": "patient"}, "out": str(tmp_path / "results")}))
    grid = study.load_grid(str(grid_file))
    # FedAvg's entry is already in the tuning file (committed from an earlier sitting, for these
    # settings: the config hash of its defaults trial): not tuned again.
    (tmp_path / "results").mkdir()
    trial0 = {c.strategy: c.config_hash for c in study._hash_cells(study.tune_cells(grid, {})) if c.trial == 0}
    fedavg = {"best": {}, "config_hash": trial0["none"]}
    (tmp_path / "results" / "tuning.yaml").write_text(yaml.safe_dump({"none": fedavg}))

    # An interrupted run of the FedAvg cell: its checkpoint after round 1, its MLflow run KILLED.
    (cell,) = [c for c in study.grid_cells(grid, study.load_tuning(grid)) if c.strategy == "none"]
    save = Checkpointer.on_round_end

    def stop_after_round_1(self, info):
        save(self, info)
        raise KeyboardInterrupt

    from pfl.run import train

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "on_round_end", stop_after_round_1)
        with pytest.raises(KeyboardInterrupt):
            train(study.compose([*cell.overrides, "study=mini", "resume=true", "trainer.progress=false",
                                 f"logger.tracking_uri={uri}", f"paths.checkpoint_dir={study.CHECKPOINTS}/mini"]))
    client = MlflowClient(tracking_uri=store_uri(uri))
    (killed,) = client.search_runs([client.get_experiment_by_name("mini").experiment_id])
    assert killed.info.status == "KILLED"

    assert study.main([str(grid_file), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "mini-tuning: 2 cells, 0 finished, 2 to run" in out and "mini: 2 cells, 0 finished, 2 to run" in out
    tuning = yaml.safe_load((tmp_path / "results" / "tuning.yaml").read_text())
    trials = tuning["finetune"]["trials"]
    assert len(trials) == 2 and trials[0]["values"] == {} and tuning["none"] == fedavg
    best = max(trials, key=lambda t: t["value"])
    assert tuning["finetune"]["best"] == best["values"]  # chosen on val
    runs = {r.data.tags["strategy"]: r for r in client.search_runs([client.get_experiment_by_name("mini").experiment_id])}
    assert runs["none"].info.run_id == killed.info.run_id and runs["none"].info.status == "FINISHED"  # resumed
    assert runs["finetune"].info.status == "FINISHED"
    ledger = list((tmp_path / "outputs" / "checkpoints" / "study" / "mini").glob("*/ledger.jsonl"))
    assert any(len(p.read_text().splitlines()) == 2 for p in ledger)

    # Again: nothing left to run, the same report.
    assert study.main([str(grid_file), "--tracking-uri", uri]) == 0
    out = capsys.readouterr().out
    assert "mini: 2 cells, 2 finished, 0 to run" in out and "mini-tuning" not in out

    md = (tmp_path / "results" / "RESULTS.md").read_text()
    assert "cells: 2 of 2 finished" in md
    for name, label in (("none", "FedAvg"), ("finetune", runs["finetune"].data.tags["strategy_label"])):
        row = next(line for line in md.splitlines() if line.startswith(f"| {label} | 1 |"))
        cells = [c.strip() for c in row.strip("|").split("|")]
        m = runs[name].data.metrics
        assert cells[2] == f"{100 * m['test.personal.acc.mean']:.1f}"
        assert cells[3] == f"{100 * m['test.personal.f1.mean']:.1f}"
        assert cells[4] == f"{100 * m['test.personal.f1.worst']:.1f}"
    ft = next(line for line in md.splitlines() if line.startswith(f"| {runs['finetune'].data.tags['strategy_label']} |"))
    delta = float(re.split(r"\s*\|\s*", ft.strip("| "))[10])
    expect = 100 * (runs["finetune"].data.metrics["test.personal.f1.mean"] - runs["none"].data.metrics["test.personal.f1.mean"])
    assert delta == pytest.approx(expect, abs=0.051)
    assert (tmp_path / "results" / "heatmap.png").stat().st_size > 0
    # Tuned for these settings: the entry records the config hash of its defaults trial.
    assert tuning["finetune"]["config_hash"] == trial0["finetune"]
    # The settings changed since (another preset, say): the entry no longer matches, so the
    # strategy is tuned again before its cells run; an entry that matches is kept.
    tuning["finetune"]["config_hash"] = "0" * 64
    (tmp_path / "results" / "tuning.yaml").write_text(yaml.safe_dump(tuning))
    assert study.main([str(grid_file), "--tracking-uri", uri, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "tuning: 2 trials" in out and "still to tune, whose cells change once tuned: finetune)" in out
    every = study._hash_cells(study.tune_cells(grid, {}))
    assert study.current_tuning(tuning, every) == {"none": fedavg}

    # Part of a grid: --only names a federation of the grid, nothing else.
    assert study.main([str(grid_file), "--tracking-uri", uri, "--only", "hospitalz"]) == 2
    assert "--only='hospitalz' is not allowed: expected a federation of the grid: patient" in capsys.readouterr().err


def test_f1_derived_from_a_papers_se_and_ppv_is_the_harmonic_mean():
    from pfl.results import ANCHORS, derived_f1

    d = derived_f1({"se_N": 80.0, "ppv_N": 90.0, "se_S": 50.0, "ppv_S": 50.0, "se_V": 100.0, "ppv_V": 25.0,
                    "se_F": 10.0, "ppv_F": 90.0})
    assert d["f1_N"] == pytest.approx(2 * 80 * 90 / 170) and d["f1_V"] == pytest.approx(40.0)
    assert d["f1_nsvf"] == pytest.approx(np.mean([2 * 80 * 90 / 170, 50.0, 40.0, 18.0]))
    chazal = derived_f1(ANCHORS["interpatient"][0])
    assert chazal["f1_S"] == pytest.approx(2 * 75.9 * 38.5 / (75.9 + 38.5))


def test_a_stale_tuning_entry_stays_on_disk_until_a_new_choice_replaces_it(tmp_path):
    """Re-tuning that has not finished (here: no trial ran) keeps the old entry in the file,
    while the run itself treats the strategy as untuned."""
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(yaml.safe_dump({
        "name": "mini", "study": "mini", "seeds": [0], "overrides": ["model=cnn"],
        "federations": {"patient": ["partition=patient"]}, "strategies": ["finetune"],
        "tune": {"budget": 2, "federation": "patient"}, "out": str(tmp_path / "results")}))
    grid = study.load_grid(str(grid_file))
    stale = {"finetune": {"best": {"strategy.finetune_lr": 0.01}, "config_hash": "0" * 64}}
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tuning.yaml").write_text(yaml.safe_dump(stale))
    trials = [study.Cell("tune", "patient", "finetune", 0, [], trial=t, config_hash=f"{t + 1}" * 64) for t in (0, 1)]
    current = study.current_tuning(study.load_tuning(grid), trials)
    assert current == {}  # the entry was made for other settings
    assert study.choose(grid, trials, f"sqlite:///{tmp_path}/m.db", current) == {}
    assert yaml.safe_load((tmp_path / "results" / "tuning.yaml").read_text()) == stale
