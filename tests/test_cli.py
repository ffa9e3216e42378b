"""The `pfl` command line: short forms, validation before training, the registry, plugins."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from compose import make_cfg

from pfl.config import prepare
from pfl.errors import ConfigError
from pfl.run import train
from pfl.strategies import Strategy, available, build_strategy

PFL = str(Path(sys.executable).parent / "pfl")


def test_short_forms_set_the_strategy_hyperparameters(synthetic_db, tmp_path):
    cfg = prepare(make_cfg(synthetic_db, tmp_path, "strategy=perfedavg", "alpha=0.005", "beta=0.02", "variant=hf",
                           "adapt_steps=5", "delta=0.01"))
    s = cfg.strategy
    assert (s.alpha, s.beta, s.variant, s.adapt_steps, s.delta) == (0.005, 0.02, "hf", 5, 0.01)
    long_form = prepare(make_cfg(synthetic_db, tmp_path, "strategy=perfedavg", "strategy.alpha=0.005"))
    assert long_form.strategy.alpha == 0.005
    ft = prepare(make_cfg(synthetic_db, tmp_path, "strategy=finetune", "epochs=4", "lr_scale=0.5"))
    assert (ft.strategy.epochs, ft.strategy.lr_scale) == (4, 0.5)


def test_a_short_form_the_strategy_lacks_is_an_error(synthetic_db, tmp_path):
    proc = _pfl(f"data.root={synthetic_db}", "strategy=none", "alpha=0.1", tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "error: alpha=0.1 is not allowed: expected a hyperparameter of strategy 'none'" in proc.stderr
    proc = _pfl(f"data.root={synthetic_db}", "strategy=fedprox", "alpha=0.1", tmp_path=tmp_path)
    assert proc.returncode == 2 and "strategy 'fedprox': mu" in proc.stderr, proc.stderr
    assert not (tmp_path / "outputs").exists()


@pytest.mark.parametrize("args, shown", [
    (("strategy=perfedavg", "alpha=0.005", "beta=0.3"), {"alpha": "0.005", "beta": "0.3"}),
    (("strategy=fedprox", "mu=0.5"), {"mu": "0.5"}),
    (("strategy=ditto", "lam=2.0", "personal_epochs=2"), {"lam": "2.0", "personal_epochs": "2"}),
])
def test_every_hydra_view_shows_the_short_form_inside_strategy(tmp_path, args, shown):
    import yaml

    proc = subprocess.run([PFL, *args, "--cfg", "job"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    for key, value in shown.items():
        assert str(cfg["strategy"][key]) == value
        assert key not in cfg, f"a top-level {key} beside strategy.{key}"


@pytest.mark.parametrize("override, key", [
    ("strategy.alpha=0", "strategy.alpha"),
    ("strategy.beta=-1", "strategy.beta"),
    ("strategy.delta=0", "strategy.delta"),
    ("strategy.variant=so", "strategy.variant"),
    ("strategy.adapt_steps=-1", "strategy.adapt_steps"),
])
def test_perfedavg_hyperparameters_are_validated(synthetic_db, tmp_path, override, key):
    cfg = prepare(make_cfg(synthetic_db, tmp_path, "strategy=perfedavg", override))
    with pytest.raises(ConfigError, match=key):
        build_strategy(cfg.strategy)


@pytest.mark.parametrize("override, key", [
    ("federation.rounds=0", "federation.rounds"),
    ("federation.local_epochs=0", "federation.local_epochs"),
    ("federation.batch_size=0", "federation.batch_size"),
    ("federation.eval_every=0", "federation.eval_every"),
    ("federation.optimizer.lr=0", "federation.optimizer.lr"),
    ("federation.optimizer.lr=-0.1", "federation.optimizer.lr"),
    ("federation.rounds=abc", "federation.rounds"),
    ("mode=distributed", "mode"),
    ("federation.dropout=1.0", "federation.dropout"),
    ("+federation.foo=1", "federation.foo"),
    ("+trainer.max_epochs=3", "trainer.max_epochs"),
])
def test_federation_settings_are_validated_before_training(synthetic_db, tmp_path, override, key):
    with pytest.raises(ConfigError, match=key):
        train(make_cfg(synthetic_db, tmp_path, override))
    assert not (tmp_path / "outputs").exists(), "a rejected config left files behind"


def test_finetune_hyperparameters_are_validated():
    with pytest.raises(ConfigError, match="strategy.epochs"):
        build_strategy({"name": "finetune", "epochs": -1})
    with pytest.raises(ConfigError, match="strategy.lr_scale"):
        build_strategy({"name": "finetune", "lr_scale": 0})


def test_unknown_strategy_lists_the_available_ones():
    zoo = {"local", "none", "finetune", "perfedavg", "fedprox", "ditto", "fedper", "fedrep", "lgfedavg", "fedbn",
           "apfl", "pfedme", "scaffold", "fedrod"}
    assert zoo <= set(available())
    with pytest.raises(ConfigError, match=r"strategy.name='nosuch'.*apfl, ditto, fedbn"):
        build_strategy({"name": "nosuch"})


def test_a_name_that_belongs_to_another_strategy_is_refused():
    """`strategy.name=fedprox` over FedAvg's config would log FedAvg runs as FedProx."""
    fedavg = {"_target_": "pfl.strategies.fedavg.FedAvg"}
    with pytest.raises(ConfigError, match=r"strategy.name='fedprox'.*pfl.strategies.fedprox.FedProx.*strategy=fedprox"):
        build_strategy({**fedavg, "name": "fedprox"})
    assert type(build_strategy({"_target_": "pfl.strategies.fedprox.FedProx", "name": "fedprox"})).__name__ == "FedProx"
    assert build_strategy({**fedavg, "name": "my_fedavg"}).name == "my_fedavg"  # a new name is a label


class FrozenServer(Strategy):
    """A user's strategy defined outside pfl: the server never moves; clients keep what they learn."""

    def __init__(self, keep: float = 1.0):
        self.keep = keep

    def init_client_state(self, client):
        return {"local": None}

    def local_update(self, model, client, state, rnd):
        upd = super().local_update(model, client, state, rnd)
        upd.state = {"local": upd.weights}
        return upd

    def aggregate(self, global_weights, updates):
        return {k: v.clone() for k, v in global_weights.items()}

    def personalize(self, model, client, state, rnd):
        if state["local"] is not None:
            model.load_state_dict(state["local"])
        return model


def test_a_plugin_strategy_from_the_users_module(synthetic_db, tmp_path):
    cfg = make_cfg(synthetic_db, tmp_path, "strategy=none", "strategy._target_=test_cli.FrozenServer",
                   "strategy.name=frozen", "+strategy.keep=0.5", "federation.rounds=1")
    init = train(make_cfg(synthetic_db, tmp_path / "init", "federation.rounds=1", "federation.local_epochs=1",
                          "federation.optimizer.lr=1e-12"))
    result = train(cfg)
    # The server kept the initial weights; clients were evaluated on their own local models.
    for k, v in result.global_weights.items():
        torch.testing.assert_close(v, init.global_weights[k], atol=1e-8, rtol=0)
    assert result.metrics["test.personal.acc.mean"] != result.metrics["test.global.acc.mean"]


def test_plugin_target_that_is_not_a_strategy_is_refused():
    with pytest.raises(ConfigError, match="strategy"):
        build_strategy({"name": "x", "_target_": "collections.OrderedDict"})
    with pytest.raises(ConfigError, match="strategy._target_='nope.Missing'"):
        build_strategy({"name": "x", "_target_": "nope.Missing"})


def _pfl(*args, tmp_path, env=None):
    return subprocess.run([PFL, *args, f"paths.root_dir={tmp_path}", "hydra.run.dir=" + str(tmp_path / "run"),
                           "hydra/job_logging=disabled"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **(env or {})})


def test_pfl_command_runs_and_prints_the_table(synthetic_db, tmp_path):
    proc = _pfl(f"data.root={synthetic_db}", "partition=patient", "model=cnn", "strategy=perfedavg", "alpha=0.005",
                "federation.rounds=1", "federation.local_epochs=1", "logger=none", "trainer.progress=false",
                tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "global vs personalized" in proc.stdout and "s06" in proc.stdout and "mean" in proc.stdout


def test_pfl_command_bad_value_is_one_line_and_nonzero(synthetic_db, tmp_path):
    proc = _pfl(f"data.root={synthetic_db}", "strategy=perfedavg", "variant=so", tmp_path=tmp_path)
    assert proc.returncode == 2
    assert "error: strategy.variant='so' is not allowed: expected one of fo, hf" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _pfl("strategy=nosuch", tmp_path=tmp_path)
    assert proc.returncode != 0 and "finetune" in proc.stderr and "scaffold" in proc.stderr


def test_the_readme_plugin_example_works(synthetic_db, tmp_path, monkeypatch):
    """The README's plugin, written to a module of its own, run by the `pfl` command."""
    import re

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    code = next(b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "my_strategies.py" in b)
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "my_strategies.py").write_text(code)
    env = {"PYTHONPATH": str(tmp_path / "plugins")}
    common = (f"data.root={synthetic_db}", "partition=patient", "model=cnn", "federation.rounds=2",
              "federation.local_epochs=3", "federation.optimizer.lr=0.01", "logger=mlflow",
              f"logger.tracking_uri=sqlite:///{tmp_path}/mlflow.db", "study=plugin", "trainer.progress=false",
              "strategy._target_=my_strategies.ProxHeads", "strategy.name=prox_heads")
    tables = {}
    for mu in ("0.0", "10.0"):
        proc = _pfl(*common, f"+strategy.mu={mu}", tmp_path=tmp_path / mu, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        tables[mu] = proc.stdout.split("global vs personalized")[1]
    # Only personalized models are reported (the global columns are empty), and the penalty
    # changes training: the tables differ between mu=0 and a strong proximal term.
    mean = next(line for line in tables["0.0"].splitlines() if "mean" in line)
    assert mean.count("-") >= 3, mean
    assert tables["0.0"] != tables["10.0"]
    # pfl-report names it by its class's label from the run tags, without importing it.
    from pfl.report import main as report

    assert report(["--experiment", "plugin", "--tracking-uri", f"sqlite:///{tmp_path}/mlflow.db",
                   "--out", str(tmp_path / "report")]) == 0
    md = (tmp_path / "report" / "report.md").read_text()
    assert "2 finished runs" in md and "ProxHeads = strategy `prox_heads`" in md
    # ... and the bench times it beside the built-ins (quick: in this process, so on sys.path).
    import bench

    monkeypatch.syspath_prepend(str(tmp_path / "plugins"))
    out = tmp_path / "bench.md"
    assert bench.main(["--quick", "--only", "strategies", "--data-dir", str(synthetic_db), "--report", str(out),
                       "--results", str(tmp_path / "bench.json"), "--work", str(tmp_path / "bench"),
                       "--strategy", "prox_heads:strategy._target_=my_strategies.ProxHeads strategy.name=prox_heads"
                       " +strategy.mu=0.1"]) == 0
    assert "| prox_heads |" in out.read_text()

