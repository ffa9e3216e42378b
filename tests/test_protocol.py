"""The comparison protocol: equal local work, the centralized optimizer, tuning on val only."""

from __future__ import annotations

import pytest
import torch
from compose import make_cfg

from pfl.errors import ConfigError
from pfl.run import train


@pytest.mark.parametrize("overrides", [
    ["strategy=none"],
    ["strategy=perfedavg"],
    ["strategy=perfedavg", "variant=hf"],
    ["strategy=fedprox"],
], ids=["fedavg", "perfedavg-fo", "perfedavg-hf", "fedprox"])
def test_local_steps_give_every_strategy_the_same_optimizer_steps(synthetic_db, tmp_path, overrides):
    # 7 steps is not a multiple of any client's batches per epoch: the count is steps, not passes.
    result = train(make_cfg(synthetic_db, tmp_path, *overrides, "federation.local_steps=7",
                            "federation.batch_size=16"))
    assert [h["local_steps"] for h in result.history] == [7.0, 7.0]


def test_local_epochs_count_data_passes_so_per_fedavg_makes_fewer_steps(synthetic_db, tmp_path):
    fedavg = train(make_cfg(synthetic_db, tmp_path / "a", "strategy=none"))
    fo = train(make_cfg(synthetic_db, tmp_path / "b", "strategy=perfedavg"))
    # A meta-step eats two batches: about half of FedAvg's steps per epoch.
    a, b = fedavg.history[0]["local_steps"], fo.history[0]["local_steps"]
    assert 0.4 * a <= b <= 0.6 * a


def test_local_steps_and_a_bad_value(synthetic_db, tmp_path):
    with pytest.raises(ConfigError, match=r"federation.local_steps=0"):
        train(make_cfg(synthetic_db, tmp_path, "federation.local_steps=0"))


@pytest.mark.parametrize("objective", ["unseen.val.personal.f1.mean", "test.personal.f1.mean"])
def test_objectives_on_unseen_patients_or_test_are_refused(synthetic_db, tmp_path, objective):
    with pytest.raises(ConfigError, match=rf"objective='{objective}' is not allowed"):
        train(make_cfg(synthetic_db, tmp_path, f"objective={objective}"))


def test_centralized_keeps_one_optimizer_across_rounds(synthetic_db, tmp_path, monkeypatch):
    """Centralized training is rounds x local_epochs epochs of one Adam (its moments and step
    count carried over rounds), not a fresh Adam per round; federated clients start afresh."""
    made = []
    real = torch.optim.Adam

    class Recording(real):
        def __init__(self, *a, **k):
            made.append(self)
            super().__init__(*a, **k)

    def adam_steps(opt):
        return int(next(iter(opt.state.values()))["step"])

    monkeypatch.setattr(torch.optim, "Adam", Recording)
    central = train(make_cfg(synthetic_db, tmp_path / "c", "mode=centralized", "federation.rounds=3"))
    per_round = [h["local_steps"] for h in central.history]
    assert adam_steps(made[-1]) == sum(per_round) and len(per_round) == 3
    made.clear()
    fed = train(make_cfg(synthetic_db, tmp_path / "f", "federation.rounds=3", "federation.clients_per_round=1"))
    assert adam_steps(made[-1]) == fed.history[-1]["local_steps"]
