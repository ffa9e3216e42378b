"""pfl-report: the tables' numbers against runs the tests create, by hand and by training."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest
from compose import make_cfg
from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

from pfl.report import main
from pfl.run import train
from pfl.tracking import open_client


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as fh:
        return list(csv.DictReader(fh))


def _log_run(client, exp_id, *, strategy, seed, metrics, mode="federated", status="FINISHED", start=None,
             extra_params=None):
    # pfl records the strategy class's label, order and role as tags; the report reads them.
    label, order = {"none": ("FedAvg", 10), "finetune": ("FedAvg+FT", 20), "perfedavg": ("Per-FedAvg", 30)}[strategy]
    run = client.create_run(exp_id, start_time=start, run_name=f"{strategy}-s{seed}",
                            tags={"strategy": strategy, "seed": str(seed), "mode": mode, "clients": "a,b",
                                  "strategy_label": label, "strategy_order": str(order),
                                  "strategy_baseline": str(strategy == "none").lower()})
    params = {"strategy.name": strategy, "seed": seed, "mode": mode, "partition.name": "patient",
              # differs in every run but does not change results: must not split arms
              "paths.output_dir": f"/tmp/out{seed}{strategy}", **(extra_params or {})}
    client.log_batch(run.info.run_id, params=[Param(k, str(v)) for k, v in params.items()],
                     # An earlier round scored better (and later in wall time): the report
                     # must take the last round's numbers, never the best.
                     metrics=[Metric(k, v + 0.1, 5, 1) for k, v in metrics.items()]
                     + [Metric(k, v, 0, 2) for k, v in metrics.items()],
                     tags=[RunTag("study", "tables")])
    client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def _metrics(acc_g: dict[str, float], acc_p: dict[str, float], f1_g: float, f1_p: float) -> dict[str, float]:
    m = {}
    for cid in acc_g:
        m[f"client.{cid}.test.global.acc"] = acc_g[cid]
        m[f"client.{cid}.test.personal.acc"] = acc_p[cid]
        m[f"client.{cid}.test.global.f1"] = acc_g[cid] - 0.3
        m[f"client.{cid}.test.personal.f1"] = acc_p[cid] - 0.3
    m["test.global.acc.mean"] = statistics.mean(acc_g.values())
    m["test.personal.acc.mean"] = statistics.mean(acc_p.values())
    m["test.global.f1.mean"], m["test.personal.f1.mean"] = f1_g, f1_p
    m["test.personal.f1.pooled"] = f1_p + 0.01
    m["test.personal.f1.worst"] = f1_p - 0.05
    m["test.personal.f1.std"] = 0.02
    return m


@pytest.fixture
def hand_store(tmp_path):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client = open_client(uri)
    exp = client.create_experiment("tables")
    ids = {}
    # FedAvg (none), three seeds: client a's accuracy 0.80, 0.90, 0.85 -> mean 0.85, sample std 0.05.
    for seed, (a, b) in enumerate([(0.80, 0.60), (0.90, 0.70), (0.85, 0.65)]):
        ids[("none", seed)] = _log_run(client, exp, strategy="none", seed=seed,
                                       metrics=_metrics({"a": a, "b": b}, {"a": a, "b": b}, 0.50 + seed / 100,
                                                        0.50 + seed / 100))
    # Per-FedAvg, three seeds; client a global 0.70, 0.80, 0.75 and personalized 0.90, 0.92, 0.94.
    pf = [((0.70, 0.50), (0.90, 0.60), 0.40, 0.60), ((0.80, 0.55), (0.92, 0.62), 0.42, 0.64),
          ((0.75, 0.52), (0.94, 0.61), 0.44, 0.62)]
    for seed, (g, p, fg, fp) in enumerate(pf):
        ids[("perfedavg", seed)] = _log_run(
            client, exp, strategy="perfedavg", seed=seed, start=10_000_000 + seed,
            metrics=_metrics({"a": g[0], "b": g[1]}, {"a": p[0], "b": p[1]}, fg, fp), extra_params={"strategy.alpha": 0.01})
    # An older run of seed 0 (superseded by the one above) and a failed run: both left out.
    _log_run(client, exp, strategy="perfedavg", seed=0, start=1, metrics=_metrics({"a": 0.0, "b": 0.0},
             {"a": 0.0, "b": 0.0}, 0.0, 0.0), extra_params={"strategy.alpha": 0.01})
    _log_run(client, exp, strategy="perfedavg", seed=3, status="FAILED", metrics={"test.global.acc.mean": 0.0},
             extra_params={"strategy.alpha": 0.01})
    # Centralized training, two seeds (0 and 1): client a 0.95, 0.97.
    for seed, a in enumerate([0.95, 0.97]):
        ids[("centralized", seed)] = _log_run(client, exp, strategy="none", seed=seed, mode="centralized",
                                              metrics=_metrics({"a": a, "b": 0.9}, {"a": a, "b": 0.9}, 0.7, 0.7))
    return uri, ids


def test_report_tables_are_the_logged_numbers_as_mean_and_sample_std(hand_store, tmp_path, capsys):
    uri, ids = hand_store
    out = tmp_path / "report"
    assert main(["--experiment", "tables", "--tracking-uri", uri, "--out", str(out)]) == 0
    stdout = capsys.readouterr().out

    t1 = {(r["strategy"], r["client"]): r for r in _rows(out / "table1_accuracy.csv")}
    assert set(t1) >= {("FedAvg", "a"), ("FedAvg", "b"), ("FedAvg", "mean"), ("Per-FedAvg", "a"),
                       ("Centralized", "a")}
    fedavg_a = t1[("FedAvg", "a")]
    assert float(fedavg_a["global_mean"]) == pytest.approx(0.85)
    assert float(fedavg_a["global_std"]) == pytest.approx(0.05)  # ddof=1: sqrt((.05² + .05² + 0) / 2)
    assert float(fedavg_a["change_mean"]) == 0 and fedavg_a["seeds"] == "3"
    pf_a = t1[("Per-FedAvg", "a")]
    assert float(pf_a["global_mean"]) == pytest.approx(0.75)
    assert float(pf_a["personal_mean"]) == pytest.approx(0.92)
    assert float(pf_a["personal_std"]) == pytest.approx(0.02)
    # The change is taken per seed (0.20, 0.12, 0.19), then averaged.
    assert float(pf_a["change_mean"]) == pytest.approx(0.17)
    assert float(pf_a["change_std"]) == pytest.approx(math.sqrt((0.03 ** 2 + 0.05 ** 2 + 0.02 ** 2) / 2))
    assert float(t1[("Per-FedAvg", "mean")]["personal_mean"]) == pytest.approx(statistics.mean(
        [(0.90 + 0.60) / 2, (0.92 + 0.62) / 2, (0.94 + 0.61) / 2]))
    cen = t1[("Centralized", "a")]
    assert float(cen["global_mean"]) == pytest.approx(0.96) and cen["seeds"] == "2"

    t2 = {(r["strategy"], r["client"]): r for r in _rows(out / "table2_macro_f1.csv")}
    assert float(t2[("Per-FedAvg", "mean")]["global_mean"]) == pytest.approx(0.42)
    assert float(t2[("Per-FedAvg", "mean")]["personal_std"]) == pytest.approx(0.02)

    summary = {(r["strategy"], r["key"]): r for r in _rows(out / "summary.csv")}
    pooled = summary[("Per-FedAvg", "test.personal.f1.pooled")]
    assert float(pooled["mean"]) == pytest.approx(0.63) and float(pooled["std"]) == pytest.approx(0.02)
    assert float(summary[("Per-FedAvg", "test.personal.f1.worst")]["mean"]) == pytest.approx(0.57)
    assert float(summary[("Per-FedAvg", "test.personal.f1.std")]["mean"]) == pytest.approx(0.02)
    delta = summary[("Per-FedAvg", "test.personal.f1.mean - test.global.f1.mean")]
    assert float(delta["mean"]) == pytest.approx(0.20) and float(delta["std"]) == pytest.approx(0.02)

    # Centralized vs FedAvg: seeds 0 and 1 pair up for the change.
    cvf = {(r["client"], r["metric"]): r for r in _rows(out / "centralized_vs_fedavg.csv")}
    a = cvf[("a", "acc")]
    assert float(a["centralized_mean"]) == pytest.approx(0.96) and float(a["fedavg_mean"]) == pytest.approx(0.85)
    assert float(a["change_mean"]) == pytest.approx(statistics.mean([0.80 - 0.95, 0.90 - 0.97]))

    used = {r["run id"] for r in _rows(out / "runs.csv")}
    assert used == set(ids.values())  # not the superseded or the failed run

    md = (out / "report.md").read_text()
    assert md.strip() == stdout.split("Written to")[0].strip()
    assert "| Per-FedAvg | a | 75.00 ± 5.00 | 92.00 ± 2.00 | +17.00 ± 4.36 | - | - | 3 |" in md
    assert "| FedAvg | a | 85.00 ± 5.00 | 85.00 ± 5.00 | +0.00 ± 0.00 | - | - | 3 |" in md
    assert "sample standard deviation (ddof=1)" in md
    assert "1 failed (left out)" in md and "1 older run(s)" in md
    for png in ("summary.png", "clients_acc.png", "clients_f1.png", "centralized_vs_fedavg.png"):
        assert (out / png).stat().st_size > 1000, png


def test_report_on_trained_runs_matches_their_results(synthetic_db, tmp_path, capsys):
    results = {}
    for strategy, seed in (("none", 0), ("finetune", 0), ("finetune", 1)):
        cfg = make_cfg(synthetic_db, tmp_path, "logger=mlflow", "study=trained", f"strategy={strategy}",
                       f"seed={seed}", "federation.rounds=1")
        results[(strategy, seed)] = train(cfg)
    out = tmp_path / "rep"
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    assert main(["--tracking-uri", uri, "--out", str(out)]) == 0  # default: the latest run's experiment
    assert "# Report: trained" in capsys.readouterr().out

    t2 = {(r["strategy"], r["client"]): r for r in _rows(out / "table2_macro_f1.csv")}
    ft = [results[("finetune", s)].evaluation.scores for s in (0, 1)]
    for cid in ("s01", "s04"):
        personal = [sc[("test", "personal")][cid]["f1"] for sc in ft]
        change = [sc[("test", "personal")][cid]["f1"] - sc[("test", "global")][cid]["f1"] for sc in ft]
        row = t2[("FedAvg+FT", cid)]
        assert float(row["personal_mean"]) == pytest.approx(statistics.mean(personal), rel=1e-12)
        assert float(row["personal_std"]) == pytest.approx(statistics.stdev(personal), rel=1e-9, abs=1e-15)
        assert float(row["change_mean"]) == pytest.approx(statistics.mean(change), rel=1e-9, abs=1e-15)
        none = t2[("FedAvg", cid)]
        assert float(none["global_mean"]) == results[("none", 0)].evaluation.scores[("test", "global")][cid]["f1"]
        assert none["global_std"] == "" and none["seeds"] == "1"  # one seed: no std
    summary = {(r["strategy"], r["key"]): r for r in _rows(out / "summary.csv")}
    for key in ("test.personal.f1.pooled", "test.personal.f1.worst", "test.global.acc.mean"):
        assert float(summary[("FedAvg+FT", key)]["mean"]) == pytest.approx(
            statistics.mean(results[("finetune", s)].metrics[key] for s in (0, 1)), rel=1e-12)
    assert [r["client"] for r in _rows(out / "table1_accuracy.csv") if r["strategy"] == "FedAvg"] == [
        "s01", "s02", "s03", "s04", "s05", "s06", "mean"]


def test_report_errors_are_one_clear_line(hand_store, tmp_path, capsys):
    uri, _ = hand_store
    assert main(["--experiment", "nope", "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --experiment='nope': no such MLflow experiment") and "tables" in err

    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("unfinished")
    client.create_run(exp)  # left RUNNING
    assert main(["--experiment", "unfinished", "--tracking-uri", uri, "--out", str(tmp_path / "x")]) == 2
    assert "has no finished runs (1 RUNNING)" in capsys.readouterr().err

    missing = f"sqlite:///{tmp_path}/nowhere/mlflow.db"
    assert main(["--tracking-uri", missing]) == 2
    assert "no MLflow store at" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_arms_are_configs_that_differ_in_more_than_the_seed():
    from pfl.report import RunData, group_runs

    def run(strategy, seed, start=0, **params):
        params = {"strategy.name": strategy, "seed": str(seed), "mode": "federated",
                  "paths.output_dir": f"/o/{seed}/{start}", **params}
        label, order = {"none": ("FedAvg", 10), "perfedavg": ("Per-FedAvg", 30)}[strategy]
        return RunData(f"{strategy}{seed}{start}{sorted(params.items())}", "n", seed, strategy, "federated", start,
                       1.0, params, {}, [], set(), label=label, order=order, baseline=strategy == "none")

    hosp = {"partition.name": "hospitals", "partition.fractions.train": "0.5"}
    arms = group_runs([
        run("none", 0, **{"partition.name": "patient", "partition.train_minutes": "5"}),
        run("none", 1, **{"partition.name": "patient", "partition.train_minutes": "5"}),
        run("none", 1, start=5, **{"partition.name": "patient", "partition.train_minutes": "5"}),  # a rerun
        run("none", 0, **hosp), run("none", 0, **{**hosp, "partition.fractions.train": "0.6"}),
        run("perfedavg", 0, **hosp, **{"strategy.alpha": "0.01"}),
        run("perfedavg", 0, **hosp, **{"strategy.alpha": "0.05"}),
    ])
    labels = {a.label: a for a in arms}
    assert list(labels) == ["FedAvg (partition=hospitals, partition.fractions.train=0.5)",
                            "FedAvg (partition=hospitals, partition.fractions.train=0.6)",
                            "FedAvg (partition=patient)", "Per-FedAvg (alpha=0.01)", "Per-FedAvg (alpha=0.05)"]
    patient = labels["FedAvg (partition=patient)"]
    assert patient.seeds == [0, 1] and patient.superseded == 1
    assert [r.start_time for r in patient.runs] == [0, 5]  # the latest run of seed 1 counts


def test_curves_are_each_rounds_mean_and_sample_std_over_the_seeds_that_logged_it(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/store/mlflow.db"
    client = open_client(uri)
    exp = client.create_experiment("curves")
    val = {("none", 0): [0.50, 0.60, 0.70], ("none", 1): [0.52, 0.64, 0.66],
           ("finetune", 0): [0.40, 0.80, 0.90], ("finetune", 1): [0.44, 0.70, 0.86], ("finetune", 2): [0.42, None, 0.88]}
    for (strategy, seed), values in val.items():
        run_id = _log_run(client, exp, strategy=strategy, seed=seed, metrics={"test.personal.f1.mean": values[-1]})
        rows = [Metric("val.personal.f1.mean", v, 100 + step, step) for step, v in enumerate(values, 1) if v is not None]
        rows += [Metric("train_loss", 2.0 - step / 4 + seed / 100, 100 + step, step) for step in (1, 2, 3)]
        if (strategy, seed) == ("none", 0):  # round 3 logged again later (a resumed run): the later value counts
            rows += [Metric("val.personal.f1.mean", 0.74, 50, 3), Metric("val.personal.f1.mean", 0.72, 900, 3)]
        client.log_batch(run_id, metrics=rows)
    out = tmp_path / "rep"
    assert main(["--experiment", "curves", "--tracking-uri", uri, "--out", str(out), "--curves", "val.*.f1.mean",
                 "train_loss", "--bar", "val.personal.f1.mean=0.8"]) == 0
    md = capsys.readouterr().out
    got = {(r["strategy"], r["metric"], int(r["round"])): r for r in _rows(out / "curves.csv")}
    expected = {("FedAvg", 3): [0.72, 0.66], ("FedAvg+FT", 1): [0.40, 0.44, 0.42], ("FedAvg+FT", 2): [0.80, 0.70],
                ("FedAvg+FT", 3): [0.90, 0.86, 0.88], ("FedAvg", 1): [0.50, 0.52]}
    for (label, step), values in expected.items():
        row = got[(label, "val.personal.f1.mean", step)]
        assert float(row["mean"]) == pytest.approx(statistics.mean(values))
        assert float(row["std"]) == pytest.approx(statistics.stdev(values))
        assert int(row["seeds"]) == len(values)
    loss = got[("FedAvg+FT", "train_loss", 2)]
    assert float(loss["mean"]) == pytest.approx(1.5 + 0.01) and float(loss["std"]) == pytest.approx(0.01)
    assert len(got) == 2 * 3 + 3 * 2  # two metrics x three rounds x two arms; test.* was not asked for
    # Fractions in percent, like the other tables; the loss in its own units.
    assert "| FedAvg+FT | 2 | 75.00 ± 7.07 | 1.5100 ± 0.0100 |" in md
    assert (out / "curves.png").stat().st_size > 1000


@pytest.mark.parametrize("args, message", [
    (["--curves", "val.nosuch"], "--curves='val.nosuch': no run logged a metric of that name; the runs logged "),
    (["--curves", "test.global.acc.mean", "--bar", "test.global.acc.mean=high"], "--bar='test.global.acc.mean=high': "
     "expected METRIC=NUMBER"),
    (["--curves", "test.global.acc.mean", "--bar", "test.global.f1.mean=0.8"], "--bar='test.global.f1.mean=0.8': "
     "'test.global.f1.mean' is not one of the curves drawn (a key as logged, no wildcards): test.global.acc.mean"),
    (["--bar", "test.global.f1.mean=0.8"], "is not one of the curves drawn (a key as logged, no wildcards): none "
     "(give --curves)"),
    (["--curves", "test.global.f1.mean", "--bar", "test.global.f1.mean=0.8", "--bar", "test.global.f1.mean=0.7"],
     "--bar='test.global.f1.mean=0.7': test.global.f1.mean already has a bar (0.8); give one per metric"),
    (["--curves", "test.global.f1.mean", "--bar", "test.global.f1.mean=64.6"], "--bar='test.global.f1.mean=64.6': "
     "test.global.f1.mean is logged as a fraction; expected a number in [0, 1] (e.g. 0.646 for 64.6%)"),
])
def test_bad_curves_are_one_clear_error_and_write_nothing(hand_store, tmp_path, capsys, args, message):
    uri, _ = hand_store
    out = tmp_path / "rep"
    assert main(["--experiment", "tables", "--tracking-uri", uri, "--out", str(out), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
