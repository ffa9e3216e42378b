"""logger=none leaves the run's tables, figures and final metrics in the run directory, the
same files an MLflow run uploads."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from compose import make_cfg
from mlflow.tracking import MlflowClient

from pfl.artifacts import run_directory
from pfl.config import config_hash
from pfl.run import train


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()}


def test_logger_none_writes_what_an_mlflow_run_uploads(synthetic_db, tmp_path):
    before = torch.get_num_threads()
    try:
        cfg_none = make_cfg(synthetic_db, tmp_path / "none", "logger=none")
        res_none = train(cfg_none)
        cfg_ml = make_cfg(synthetic_db, tmp_path / "ml", "logger=mlflow")
        train(cfg_ml)
    finally:
        torch.set_num_threads(before)
    local = run_directory(cfg_none, config_hash(cfg_none))
    assert local.is_relative_to(tmp_path / "none")
    got = _files(local)
    for name in ("config.yaml", "final_clients.csv", "final_clients.md", "final_metrics.json", "history.json",
                 "partition_stats.json", "global_model.pt", "learning_curves.png", "ledger.jsonl"):
        assert name in got, name
    # One figure holds every client's confusion matrices, not one file per client.
    assert "confusion_test.png" in got and not any(p.startswith("confusion/") for p in got)
    from pfl.plots import confusion_grid

    clients = [k.split(".")[1] for k in res_none.metrics if k.startswith("client.") and k.endswith(".test.n")]
    panels = confusion_grid(res_none.evaluation, tmp_path / "grid.png")
    assert sorted(panels) == sorted((c, m) for c in clients for m in ("global", "personal"))
    assert json.loads((local / "final_metrics.json").read_text()) == res_none.metrics
    client = MlflowClient(tracking_uri=str(cfg_ml.logger.tracking_uri))
    run = client.search_runs([client.get_experiment_by_name(str(cfg_ml.logger.experiment_name)).experiment_id])[0]
    dl = Path(client.download_artifacts(run.info.run_id, "", str(tmp_path / "dl")))
    uploaded = {p for p in _files(dl) if not p.startswith("model/")}  # the MLflow model: MLflow only
    assert uploaded == got
    # Same config and seed: the same numbers, whichever logger.
    for name in ("final_clients.csv", "final_metrics.json", "history.json"):
        a, b = (local / name).read_text(), (dl / name).read_text()
        if name == "history.json":  # wall-clock seconds per round differ, nothing else
            a, b = ([{k: v for k, v in r.items() if k != "round_seconds"} for r in json.loads(x)] for x in (a, b))
        assert a == b, name


def test_a_figure_that_fails_fails_the_run_with_its_error(synthetic_db, tmp_path, monkeypatch):
    """The figures are drawn in a child process; its error reaches the run, which fails."""
    import pytest

    from pfl import plots

    def broken(history, path):
        raise ValueError("no curves today")

    monkeypatch.setattr(plots, "learning_curves", broken)
    before = torch.get_num_threads()
    try:
        with pytest.raises(RuntimeError, match="no curves today"):
            train(make_cfg(synthetic_db, tmp_path, "logger=none", "federation.rounds=1"))
    finally:
        torch.set_num_threads(before)


def test_in_order_runs_calls_in_order_and_raises_the_first_error():
    import threading

    import pytest

    from pfl.background import InOrder

    q, seen, main = InOrder("t"), [], threading.get_ident()
    for i in range(50):
        q.submit(lambda i=i: seen.append((i, threading.get_ident())))
    q.close()
    assert [i for i, _ in seen] == list(range(50))
    assert {t for _, t in seen} != {main}  # ran in the background thread

    def fail(msg):
        raise OSError(msg)

    gate = threading.Event()
    q.submit(gate.wait)  # both calls below are queued before the first of them runs
    q.submit(fail, "disk full")
    q.submit(seen.append, "after")  # not run: an earlier call failed
    gate.set()
    with pytest.raises(OSError, match="disk full"):
        q.close()
    assert seen[-1] != "after"
    with pytest.raises(OSError, match="disk full"):  # failed for good: nothing more runs
        q.submit(seen.append, "later")
    assert seen[-1] != "later"
