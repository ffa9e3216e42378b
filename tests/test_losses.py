"""Class-weighted and focal losses against hand computations, and through the strategies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from compose import make_cfg
from sklearn.utils.class_weight import compute_class_weight

from pfl.errors import ConfigError
from pfl.losses import ClassLoss, balanced_weights, build_loss

CLASSES = ["N", "S", "V", "F", "Q"]


def _batch(seed=0, n=7):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 5)) * 2, rng.integers(0, 5, size=n)


def _hand(z, y, w=None, gamma=0.0):
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    pt = p[np.arange(len(y)), y]
    per = (1 - pt) ** gamma * -np.log(pt)
    wy = np.ones(len(y)) if w is None else np.asarray(w)[y]
    return (wy * per).sum() / wy.sum()


@pytest.mark.parametrize("weights", [None, [1.0, 4.0, 2.0, 8.0, 0.5]])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_class_loss_matches_the_hand_computed_loss(weights, gamma):
    z, y = _batch()
    got = ClassLoss(weights, gamma)(torch.tensor(z, dtype=torch.float64), torch.tensor(y))
    assert float(got) == pytest.approx(_hand(z, y, weights, gamma), rel=1e-12)


def test_gamma_zero_is_torch_weighted_cross_entropy_and_focal_gradients_are_finite():
    z, y = _batch(1)
    w = [1.0, 4.0, 2.0, 8.0, 0.5]
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    ours = ClassLoss(w, 0.0)(zt, torch.tensor(y))
    ref = F.cross_entropy(zt, torch.tensor(y), weight=torch.tensor(w, dtype=torch.float64))
    assert float(ours.detach()) == pytest.approx(float(ref.detach()), rel=1e-12)
    # A confident correct beat: the focal term vanishes smoothly, the gradient stays finite.
    logits = torch.tensor([[30.0, 0, 0, 0, 0]], dtype=torch.float64, requires_grad=True)
    ClassLoss(None, 2.0)(logits, torch.tensor([0])).backward()
    assert torch.isfinite(logits.grad).all()


def test_balanced_weights_are_sklearns_and_absent_classes_get_zero():
    y = np.array([0] * 50 + [1] * 5 + [2] * 20 + [3] * 1)
    counts = np.bincount(y, minlength=5)
    sk = compute_class_weight("balanced", classes=np.arange(4), y=y)
    np.testing.assert_allclose(balanced_weights(counts)[:4], sk, rtol=1e-12)
    assert balanced_weights(counts)[4] == 0.0


@pytest.mark.parametrize("cfg, key", [
    ({"weights": "inverse"}, "loss.weights='inverse'"),
    ({"weights": [1, 2]}, r"loss.weights=\[1, 2\].*5 weights"),
    ({"weights": [0, 0, 0, 0, 0]}, r"not all 0"),
    ({"gamma": -1}, "loss.gamma=-1"),
    ({"weights": "balanced", "max_weight": 0}, "loss.max_weight=0.*> 0"),
    ({"weights": "balanced", "max_weight": "ten"}, "loss.max_weight='ten'"),
    ({"weights": None, "max_weight": 10}, r"loss.max_weight=10.0.*loss.weights is null"),
])
def test_bad_losses_are_one_clear_error(cfg, key):
    with pytest.raises(ConfigError, match=key):
        build_loss(cfg, CLASSES, [10, 1, 1, 1, 1])


@pytest.mark.parametrize("strategy", ["none", "fedprox", "perfedavg"])
def test_a_weighted_focal_loss_trains_every_strategy_and_changes_what_it_learns(synthetic_db, tmp_path, strategy):
    from pfl.run import train

    plain = train(make_cfg(synthetic_db, tmp_path / "ce", f"strategy={strategy}"))
    focal = train(make_cfg(synthetic_db, tmp_path / "fl", f"strategy={strategy}", "loss=focal",
                           "loss.weights=balanced"))
    assert np.isfinite(focal.history[-1]["train_loss"])
    # Same seed and batches, another objective: the trained weights differ.
    assert any(not torch.equal(plain.global_weights[k], focal.global_weights[k]) for k in plain.global_weights
               if torch.is_floating_point(plain.global_weights[k]))


def test_balanced_sampling_draws_every_class_equally_often_and_is_seeded():
    from pfl.data.types import Split
    from pfl.fl.batches import BatchLoader

    y = torch.tensor([0] * 180 + [1] * 15 + [2] * 5)
    split = Split(torch.arange(200, dtype=torch.float32).reshape(200, 1, 1), y)
    loader = BatchLoader(split, 20, seed=4, sampling="balanced")  # a new draw each epoch
    drawn = [yb for _ in range(30) for _, yb in loader]
    counts = np.bincount(torch.cat(drawn).numpy(), minlength=3)
    # 30 epochs x 200 draws with p = 1/3 each: a binomial std of ~37 around 2000.
    assert counts.sum() == 6000 and np.abs(counts - 2000).max() < 200, counts
    a = [xb.flatten().tolist() for xb, _ in BatchLoader(split, 20, seed=4, sampling="balanced")]
    b = [xb.flatten().tolist() for xb, _ in BatchLoader(split, 20, seed=4, sampling="balanced")]
    assert a == b and len(a) == 10
    # Per-FedAvg's groups stay disjoint within a meta-step, and the rare classes come up far
    # more often than their 2.5% share.
    groups = list(BatchLoader(split, 10, seed=4, group=3, sampling="balanced"))
    assert len(groups) == 200 // 30
    for g in groups:
        ids = [set(xb.flatten().tolist()) for xb, _ in g]
        assert len(set().union(*ids)) == 30
    rare = np.mean([float((yb == 2).float().mean()) for g in groups for _, yb in g])
    assert rare > 0.1


def test_balanced_sampling_runs_through_training_and_a_bad_value_is_refused(synthetic_db, tmp_path):
    from pfl.run import train

    uniform = train(make_cfg(synthetic_db, tmp_path / "u"))
    balanced = train(make_cfg(synthetic_db, tmp_path / "b", "federation.sampling=balanced"))
    assert uniform.history[0]["local_steps"] == balanced.history[0]["local_steps"]  # same work per epoch
    assert any(not torch.equal(uniform.global_weights[k], balanced.global_weights[k])
               for k in uniform.global_weights if torch.is_floating_point(uniform.global_weights[k]))
    with pytest.raises(ConfigError, match="federation.sampling='stratified'"):
        train(make_cfg(synthetic_db, tmp_path / "x", "federation.sampling=stratified"))


def test_client_weights_follow_the_client_that_trains():
    z, y = _batch(2, n=9)
    counts_a, counts_b, total = [50, 5, 20, 1, 0], [10, 10, 0, 2, 3], [60, 15, 20, 3, 3]
    loss = build_loss({"weights": "client"}, CLASSES, total, {"a": counts_a, "b": counts_b})
    zt, yt = torch.tensor(z, dtype=torch.float64), torch.tensor(y)
    for cid, counts in (("a", counts_a), ("b", counts_b), ("unknown", total)):
        loss.use(cid)
        w = compute_class_weight("balanced", classes=np.flatnonzero(counts), y=np.repeat(np.arange(5), counts))
        full = np.zeros(5)
        full[np.flatnonzero(counts)] = w
        assert float(loss(zt, yt)) == pytest.approx(_hand(z, y, full), rel=1e-6), cid


@pytest.mark.parametrize("weights", ["balanced", "client", [1.0, 40.0, 2.0, 300.0, 0.5]])
def test_max_weight_caps_each_class_weight(weights):
    # A federation like `hospitals` at its reference budget: 2 Q beats weigh over 300 balanced.
    z, y = _batch(3, n=11)
    counts_a, counts_b = [2631, 153, 270, 29, 2], [900, 3, 40, 0, 0]
    total = list(np.add(counts_a, counts_b))
    loss = build_loss({"weights": weights, "max_weight": 10}, CLASSES, total, {"a": counts_a, "b": counts_b})
    zt, yt = torch.tensor(z, dtype=torch.float64), torch.tensor(y)
    for cid, counts in (("a", counts_a), ("b", counts_b)):
        loss.use(cid)
        if weights == "client" or weights == "balanced":
            own = counts if weights == "client" else total
            present = np.flatnonzero(own)
            full = np.zeros(5)
            full[present] = compute_class_weight("balanced", classes=present, y=np.repeat(np.arange(5), own))
        else:
            full = np.asarray(weights)
        assert full.max() > 10  # the cap has something to cap
        assert float(loss(zt, yt)) == pytest.approx(_hand(z, y, np.minimum(full, 10.0)), rel=1e-6), cid


def test_client_weights_are_set_for_every_client_that_trains(synthetic_db, tmp_path, monkeypatch):
    from pfl.losses import PerClientLoss
    from pfl.run import train

    seen = []
    use = PerClientLoss.use

    def record(self, cid):
        seen.append((cid, self.by_client[cid].tolist()))
        use(self, cid)

    monkeypatch.setattr(PerClientLoss, "use", record)
    train(make_cfg(synthetic_db, tmp_path, "data.records=[s01,s02,s03]", "federation.rounds=1",
                   "loss=weighted", "loss.weights=client", "strategy=ditto"))
    # Ditto trains a global and a personal model per client: both under the client's own weights.
    assert sorted({c for c, _ in seen}) == ["s01", "s02", "s03"] and len(seen) == 6
    assert seen[0][1] != seen[2][1] or seen[0][1] != seen[4][1]  # the sites' class mixes differ
