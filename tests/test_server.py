"""The federated loop end to end on synthetic records: strategies, determinism, baselines."""

from __future__ import annotations

import math

import pytest
import torch
from compose import make_cfg

from pfl.errors import ConfigError
from pfl.run import train


def _weights_equal(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "overrides",
    [
        ["strategy=none"],
        ["strategy=finetune"],
        ["strategy=perfedavg"],
        ["strategy=perfedavg", "variant=hf"],
    ],
    ids=["none", "finetune", "perfedavg-fo", "perfedavg-hf"],
)
def test_each_strategy_runs_and_reports(synthetic_db, tmp_path, capsys, overrides):
    result = train(make_cfg(synthetic_db, tmp_path, *overrides))
    m = result.metrics
    for split in ("val", "test"):
        for model in ("global", "personal"):
            for agg in ("mean", "wmean", "worst", "std", "pooled"):
                assert math.isfinite(m[f"{split}.{model}.acc.{agg}"])
                assert math.isfinite(m[f"{split}.{model}.f1.{agg}"])
            assert m[f"{split}.{model}.acc.worst"] <= m[f"{split}.{model}.acc.mean"]
    assert {c.cid for c in result.evaluation.clients} == {f"s0{i}" for i in range(1, 7)}
    assert [h["round"] for h in result.history] == [1, 2]
    out = capsys.readouterr().out
    assert "global vs personalized" in out and "mean" in out
    if overrides == ["strategy=none"]:
        assert m["test.personal.acc.mean"] == m["test.global.acc.mean"]


def test_same_seed_same_metrics_other_seed_differs(synthetic_db, tmp_path):
    a = train(make_cfg(synthetic_db, tmp_path / "a", "strategy=perfedavg"))
    b = train(make_cfg(synthetic_db, tmp_path / "b", "strategy=perfedavg"))
    c = train(make_cfg(synthetic_db, tmp_path / "c", "strategy=perfedavg", "seed=1"))
    assert a.metrics == b.metrics
    assert _weights_equal(a.global_weights, b.global_weights)
    assert not _weights_equal(a.global_weights, c.global_weights)


def test_finetune_leaves_the_global_model_untouched(synthetic_db, tmp_path, monkeypatch):
    from pfl.strategies.finetune import FineTune

    moved: list[float] = []
    original = FineTune.personalize

    def spy(self, model, client, state, rnd):
        before = [p.detach().clone() for p in model.parameters()]
        out = original(self, model, client, state, rnd)
        moved.append(sum(float((p.detach() - b).abs().sum()) for p, b in zip(out.parameters(), before, strict=True)))
        return out

    monkeypatch.setattr(FineTune, "personalize", spy)
    fedavg = train(make_cfg(synthetic_db, tmp_path / "n", "strategy=none"))
    ft = train(make_cfg(synthetic_db, tmp_path / "f", "strategy=finetune", "epochs=2"))
    # Fine-tuned copies are never sent back: the federation trains exactly as FedAvg does.
    assert _weights_equal(fedavg.global_weights, ft.global_weights)
    assert ft.metrics["test.global.acc.mean"] == fedavg.metrics["test.global.acc.mean"]
    # ... while each client's evaluated copy did move away from the global weights.
    assert len(moved) == 6 * 2 and all(m > 0 for m in moved)


def test_finetune_with_zero_epochs_is_fedavg(synthetic_db, tmp_path):
    ft = train(make_cfg(synthetic_db, tmp_path, "strategy=finetune", "epochs=0"))
    assert ft.metrics["test.personal.acc.mean"] == ft.metrics["test.global.acc.mean"]


def test_perfedavg_refuses_clients_too_small_for_disjoint_batches(synthetic_db, tmp_path):
    with pytest.raises(ConfigError, match="federation.batch_size=200.*disjoint batches"):
        train(make_cfg(synthetic_db, tmp_path, "strategy=perfedavg", "federation.batch_size=200"))


def test_centralized_baseline_pools_training_data_and_evaluates_per_client(synthetic_db, tmp_path):
    central = train(make_cfg(synthetic_db, tmp_path, "mode=centralized", "federation.rounds=1"))
    assert len(central.evaluation.clients) == 6
    assert [u for u in central.history[0] if u.startswith("client.")]
    assert math.isfinite(central.metrics["test.global.acc.mean"])


def test_clients_per_round_and_eval_every(synthetic_db, tmp_path):
    result = train(
        make_cfg(
            synthetic_db,
            tmp_path,
            "federation.clients_per_round=2",
            "federation.rounds=3",
            "federation.eval_every=2",
        )
    )
    evaluated = [h["round"] for h in result.history if "test.global.acc.mean" in h]
    assert evaluated == [2, 3]  # every 2 rounds, and always the last
    ledger = (
        next((tmp_path / "outputs" / "checkpoints").glob("*/ledger.jsonl")).read_text().splitlines()
    )
    import json

    rounds = [json.loads(line) for line in ledger]
    assert [len(r["updates"]) for r in rounds] == [2, 2, 2]
    assert len({tuple(u["client"] for u in r["updates"]) for r in rounds}) > 1, (
        "same clients every round"
    )


def test_clients_per_round_above_the_number_of_clients_is_an_error(synthetic_db, tmp_path):
    with pytest.raises(ConfigError, match=r"federation.clients_per_round=7.*\[1, 6\]"):
        train(make_cfg(synthetic_db, tmp_path, "federation.clients_per_round=7"))


@pytest.mark.parametrize("strategy", ["none", "fedrep"])
def test_progress_display_notes_test_accuracy_with_and_without_a_global_model(synthetic_db, tmp_path, strategy):
    # FedRep has no single global model: its rounds report personal metrics only, and the
    # progress line must show those rather than fail on the missing global ones.
    import io

    from rich.console import Console

    out = io.StringIO()
    result = train(make_cfg(synthetic_db, tmp_path, f"strategy={strategy}", "trainer.progress=true"),
                   console=Console(file=out, width=200, force_terminal=False))
    personal = f"{100 * result.metrics['test.personal.acc.mean']:.2f}"
    text = out.getvalue()
    if strategy == "none":
        assert f"test acc {100 * result.metrics['test.global.acc.mean']:.2f} -> {personal}" in text
    else:
        assert "test.global.acc.mean" not in result.metrics
        assert f"test acc {personal}" in text


@pytest.mark.parametrize("strategy", ["none", "fedrep", "ditto"])
def test_interpatient_val_records_validate_on_patients_that_never_train(synthetic_db, tmp_path, strategy):
    # s02 is held out of training to validate: its beats are all val, it never trains, and its
    # scores are reported as heldout.val.* apart from the federated clients' val.
    cfg = make_cfg(synthetic_db, tmp_path, "partition=interpatient", "partition.ds1=[s01,s02,s03,s04]",
                   "partition.ds2=[s05,s06]", "partition.val_records=[s02]", "partition.adapt_minutes=2",
                   f"strategy={strategy}", "objective=heldout.val.global.f1.mean" if strategy != "fedrep"
                   else "objective=heldout.val.personal.f1.mean")
    result = train(cfg)
    m = result.metrics
    for model in ("global", "personal") if strategy != "fedrep" else ("personal",):
        assert m[f"heldout.val.{model}.f1.mean"] == pytest.approx(m[f"client.s02.val.{model}.f1"])
        fed = [m[f"client.{c}.val.{model}.f1"] for c in ("s01", "s03", "s04")]
        assert m[f"val.{model}.f1.mean"] == pytest.approx(sum(fed) / 3)
    assert m["client.s02.val.n"] > 0 and m["client.s02.test.n"] == 0
    assert not any(k.startswith("heldout.test.") for k in m)
    assert {c.cid for c in result.evaluation.clients if c.heldout} == {"s02"}
