"""Faults: a client that diverges, clients that drop out, checkpoints that are torn or carry code."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from compose import make_cfg

import pfl.run
from pfl.errors import ConfigError, PflError
from pfl.fl.evaluate import all_finite
from pfl.fl.server import DivergenceError, Server
from pfl.ledger import LAST, LEDGER, main, read_entries
from pfl.run import train
from pfl.strategies import Strategy
from pfl.strategies.fedavg import FedAvg

RUN = ("data.download=false", "data.records=[s01,s02,s03]", "trainer.threads=1", "federation.rounds=2")


def mlflow_statuses(root: Path) -> list[str]:
    db = root / "outputs" / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        return [s for (s,) in con.execute("select status from runs")]


@pytest.fixture
def poison(monkeypatch):
    """Put a NaN into the training beats of the given clients, so their loss turns non-finite."""
    def apply(*cids: str) -> None:
        load = pfl.run.load_federation

        def poisoned(cfg):
            fed = load(cfg)
            for c in fed.clients:
                if c.cid in cids:
                    c.train.x[0, 0, 0] = float("nan")
            return fed

        monkeypatch.setattr(pfl.run, "load_federation", poisoned)
    return apply


def test_divergence_fails_the_run_naming_round_and_client(_synthetic_db_template, tmp_path, poison):
    poison("s02")
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "logger=mlflow")
    with pytest.raises(DivergenceError, match=r"round 1: client 's02' diverged .*on_divergence=drop"):
        train(cfg)
    assert mlflow_statuses(tmp_path) == ["FAILED"]  # never left RUNNING
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    assert read_entries(ckpt_dir / LEDGER) == [] and not (ckpt_dir / LAST).exists()


def test_divergence_drop_leaves_the_update_out_and_logs_it(_synthetic_db_template, tmp_path, poison, caplog):
    poison("s02")
    with caplog.at_level("WARNING", logger="pfl.fl.server"):
        result = train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.on_divergence=drop"))
    assert all_finite(result.global_weights)  # no NaN averaged in
    assert "round 1: client s02 diverged; its update is dropped" in caplog.text
    assert "round 2: client s02 diverged; its update is dropped" in caplog.text
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    for e in read_entries(ckpt_dir / LEDGER):
        assert e["diverged"] == ["s02"]
        assert [u["client"] for u in e["updates"]] == ["s01", "s03"]
    assert main([str(ckpt_dir)]) == 0


def test_every_client_diverging_is_an_error_even_with_drop(_synthetic_db_template, tmp_path, poison):
    poison("s01", "s02", "s03")
    with pytest.raises(DivergenceError, match="round 1: every client update diverged"):
        train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.on_divergence=drop"))


class NaNWeights(FedAvg):
    """Finite loss, but client s03's weights come back non-finite in round 2."""

    def local_update(self, model, client, state, rnd):
        update = super().local_update(model, client, state, rnd)
        if (rnd, client.cid) == (2, "s03"):
            name = next(k for k, v in update.weights.items() if v.is_floating_point())
            update.weights[name] = update.weights[name] * float("inf")
        return update


def test_non_finite_weights_with_a_finite_loss_are_caught(_synthetic_db_template, tmp_path):
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, f"strategy._target_={__name__}.NaNWeights")
    with pytest.raises(DivergenceError, match=r"round 2: client 's03' diverged"):
        train(cfg)
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    assert [e["round"] for e in read_entries(ckpt_dir / LEDGER)] == [1]  # round 2 never recorded


# --------------------------------------------------------------------------- dropout


def _server(n: int, *, dropout: float, clients_per_round: int | None = None, seed: int = 0) -> Server:
    clients = [SimpleNamespace(cid=f"c{i}") for i in range(n)]
    return Server(Strategy(), lambda: None, clients, clients, ["N"], rounds=10, seed=seed,
                  clients_per_round=clients_per_round, dropout=dropout)


def test_dropout_is_seeded_and_drops_the_configured_fraction():
    server = _server(10, dropout=0.3)
    seen = set()
    for rnd in range(1, 11):
        survivors, dropped = server.sample(rnd)
        assert len(dropped) == 3 and len(survivors) == 7
        assert {c.cid for c in survivors}.isdisjoint(dropped)
        assert server.sample(rnd) == (survivors, dropped)  # same seed and round, same clients
        seen.add(tuple(dropped))
    assert len(seen) > 1  # a different set each round, not one unlucky client
    assert [_server(10, dropout=0.3, seed=1).sample(r)[1] for r in range(1, 11)] != [
        server.sample(r)[1] for r in range(1, 11)]
    survivors, dropped = _server(10, dropout=0.5, clients_per_round=4).sample(1)
    assert len(survivors) == 2 and len(dropped) == 2  # a fraction of the sampled clients


@pytest.mark.parametrize("n, k, dropout", [(3, 1, 0.6), (3, 2, 0.75), (5, None, 0.95)])
def test_a_dropout_that_leaves_nobody_is_refused_before_training(n, k, dropout):
    with pytest.raises(ConfigError, match=r"federation.dropout=.*leaves at least one"):
        _server(n, dropout=dropout, clients_per_round=k)


def test_dropout_run_aggregates_the_survivors_and_logs_who_dropped(_synthetic_db_template, tmp_path, caplog):
    with caplog.at_level("INFO", logger="pfl.fl.server"):
        result = train(make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.dropout=0.34"))
    assert all_finite(result.global_weights)
    (ckpt_dir,) = (tmp_path / "outputs" / "checkpoints").iterdir()
    entries = read_entries(ckpt_dir / LEDGER)
    assert len(entries) == 2
    for e in entries:
        assert len(e["dropped"]) == 1
        assert sorted([u["client"] for u in e["updates"]] + e["dropped"]) == ["s01", "s02", "s03"]
        assert f"round {e['round']}: clients dropped out: {e['dropped'][0]}" in caplog.text
    assert main([str(ckpt_dir)]) == 0


# --------------------------------------------------------------------------- checkpoints


class Payload:
    """Unpickling this runs a shell command: what a malicious checkpoint would carry."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def valid_ckpt(_synthetic_db_template, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one_round")
    train(make_cfg(_synthetic_db_template, root, *RUN, "federation.rounds=1"))
    (path,) = (root / "outputs" / "checkpoints").glob(f"*/{LAST}")
    return path


def test_a_checkpoint_carrying_code_is_refused(_synthetic_db_template, tmp_path, valid_ckpt):
    marker = tmp_path / "payload-ran"
    evil = tmp_path / "evil.pt"
    real = torch.load(valid_ckpt, weights_only=True)
    torch.save({**real, "meta": {"note": Payload(marker)}}, evil)  # right config hash, plus code
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=1", f"resume={evil}")
    with pytest.raises(PflError, match=r"refused to load checkpoint.*could run code.*weights_only=True"):
        train(cfg)
    assert not marker.exists()
    assert not (tmp_path / "outputs" / "checkpoints").exists()  # nothing started


@pytest.mark.parametrize("damage, message", [
    (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "not a readable checkpoint"),
    (lambda p: p.write_bytes(b""), "not a readable checkpoint"),
    (lambda p: torch.save({"w": torch.zeros(2)}, p), "not a pfl checkpoint"),
], ids=["truncated", "empty", "foreign"])
def test_a_damaged_checkpoint_is_a_clear_error(_synthetic_db_template, tmp_path, valid_ckpt, damage, message):
    path = tmp_path / "damaged.pt"
    path.write_bytes(valid_ckpt.read_bytes())
    damage(path)
    cfg = make_cfg(_synthetic_db_template, tmp_path, *RUN, "federation.rounds=1", f"resume={path}")
    with pytest.raises(PflError, match=message):
        train(cfg)
