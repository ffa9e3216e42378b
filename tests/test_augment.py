"""Training-time beat augmentation (pfl/data/augment.py) against numpy, one distortion at a time."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from compose import make_cfg

from pfl.data.augment import BeatAugment, build_augment
from pfl.data.types import Split
from pfl.errors import ConfigError
from pfl.fl.batches import BatchLoader

W, RR = 64, 3


def _x(n=400, c=2, seed=0):
    """Beats of W samples on c leads, then RR features on channel 0 (zeros elsewhere), as packed."""
    rng = np.random.default_rng(seed)
    beat = rng.normal(size=(n, c, W)).cumsum(-1)  # smooth enough that shifts are visible
    rr = np.zeros((n, c, RR))
    rr[:, 0] = rng.uniform(0.5, 1.5, size=(n, RR))
    return torch.tensor(np.concatenate([beat, rr], -1), dtype=torch.float32)


def _apply(aug, x, seed=1):
    return aug(x, torch.Generator().manual_seed(seed))


def test_all_zero_is_no_augmentation_and_the_rr_features_pass_through():
    assert build_augment({"name": "none", "shift": 0, "scale": 0.0, "wander": 0.0, "noise": 0.0}) is None
    assert build_augment(None) is None
    x = _x()
    out = _apply(BeatAugment(shift=3, scale=0.2, wander=0.3, noise=0.1, rr_features=RR), x)
    assert out.shape == x.shape
    assert torch.equal(out[..., W:], x[..., W:])
    assert not torch.equal(out[..., :W], x[..., :W])


def test_shift_moves_each_beat_by_a_drawn_offset_with_edges_repeated():
    x = _x()
    out = _apply(BeatAugment(shift=4, rr_features=RR), x).numpy()
    beat = x[..., :W].numpy()
    seen = set()
    for i in range(len(x)):
        matches = []
        for s in range(-4, 5):
            idx = np.clip(np.arange(W) - s, 0, W - 1)  # out[t] = beat[t - s]
            if np.array_equal(out[i, :, :W], beat[i][:, idx]):
                matches.append(s)
        assert len(matches) == 1, (i, matches)
        seen.add(matches[0])
    assert seen == set(range(-4, 5))  # 400 beats: every offset drawn


def test_scale_is_one_log_normal_gain_per_lead():
    x = _x(n=4000)
    out = _apply(BeatAugment(scale=0.2, rr_features=RR), x).numpy()
    ratio = out[..., :W] / x[..., :W].numpy()
    np.testing.assert_allclose(ratio, ratio[..., :1].repeat(W, -1), rtol=1e-5)
    logs = np.log(ratio[..., 0]).ravel()  # 8,000 draws of 0.2 * N(0, 1)
    assert abs(logs.mean()) < 0.01 and logs.std() == pytest.approx(0.2, rel=0.05)
    assert not np.allclose(ratio[:, 0, 0], ratio[:, 1, 0])  # each lead its own gain


def test_wander_adds_a_sinusoid_of_under_one_cycle_per_window_and_bounded_amplitude():
    x = _x(n=500)
    d = (_apply(BeatAugment(wander=0.3, rr_features=RR), x) - x).numpy()[..., :W].astype(np.float64)
    d = d.reshape(-1, W)
    # A sampled sinusoid obeys d[t-1] + d[t+1] = 2 cos(w) d[t]; fit cos(w) per beat.
    mid, around = d[:, 1:-1], d[:, :-2] + d[:, 2:]
    c = (mid * around).sum(1) / (2 * (mid * mid).sum(1))
    resid = around - 2 * c[:, None] * mid
    assert np.abs(resid).max() < 1e-4
    omega = np.arccos(np.clip(c, -1, 1))  # radians per sample: at most one cycle per window
    assert omega.max() <= 2 * np.pi / W + 1e-3 and omega.max() > 0.8 * 2 * np.pi / W
    amp = np.abs(d).max(1)
    assert amp.max() <= 0.3 + 1e-6 and amp.max() > 0.25


def test_noise_is_white_gaussian_of_the_set_std():
    x = _x(n=2000)
    d = (_apply(BeatAugment(noise=0.05, rr_features=RR), x) - x).numpy()[..., :W]
    assert abs(d.mean()) < 1e-3 and d.std() == pytest.approx(0.05, rel=0.02)
    lag1 = np.corrcoef(d[..., 1:].ravel(), d[..., :-1].ravel())[0, 1]
    assert abs(lag1) < 0.02
    assert abs(((d / 0.05) ** 4).mean() - 3) < 0.1  # Gaussian kurtosis


def test_the_loader_augments_reproducibly_without_changing_the_batch_order():
    y = torch.arange(400) % 5
    split = Split(_x(), y)
    aug = BeatAugment(shift=2, scale=0.1, wander=0.1, noise=0.05, rr_features=RR)
    plain = list(BatchLoader(split, 32, seed=7))
    a = list(BatchLoader(split, 32, seed=7, augment=aug))
    b = list(BatchLoader(split, 32, seed=7, augment=aug))
    other = list(BatchLoader(split, 32, seed=8, augment=aug))
    assert all(torch.equal(p[1], q[1]) for p, q in zip(plain, a, strict=True))  # same beats in the same order
    assert all(torch.equal(p[0][..., W:], q[0][..., W:]) for p, q in zip(plain, a, strict=True))
    assert all(torch.equal(p[0], q[0]) for p, q in zip(a, b, strict=True))
    assert not torch.equal(a[0][0], plain[0][0]) and not torch.equal(other[0][0][..., :W], a[0][0][..., :W])
    groups = list(BatchLoader(split, 16, seed=7, group=3, augment=aug))  # Per-FedAvg's meta-batches
    plain_groups = list(BatchLoader(split, 16, seed=7, group=3))
    assert all(torch.equal(gy, py) and not torch.equal(gx, px)
               for g, pg in zip(groups, plain_groups, strict=True) for (gx, gy), (px, py) in zip(g, pg, strict=True))


def test_a_run_augments_training_only_and_reproducibly(synthetic_db, tmp_path, monkeypatch):
    from pfl.data.augment import BeatAugment
    from pfl.run import train

    # Every call must come from a training step (gradients on): evaluation runs without them.
    calls: list[bool] = []
    original = BeatAugment.__call__

    def recording(self, x, generator):
        calls.append(torch.is_grad_enabled() and not torch.is_inference_mode_enabled())
        return original(self, x, generator)

    monkeypatch.setattr(BeatAugment, "__call__", recording)
    base = ("data.features=[beat,rr]", "strategy=fedrep", "adapt=finetune")
    plain = train(make_cfg(synthetic_db, tmp_path / "p", *base))
    assert not calls
    a = train(make_cfg(synthetic_db, tmp_path / "a", *base, "augment=ecg"))
    assert calls and all(calls)
    b = train(make_cfg(synthetic_db, tmp_path / "b", *base, "augment=ecg"))
    assert a.metrics == b.metrics
    assert all(torch.equal(a.global_weights[k], b.global_weights[k]) for k in a.global_weights)
    assert any(not torch.equal(a.global_weights[k], plain.global_weights[k]) for k in a.global_weights)
    assert plain.history[0]["local_steps"] == a.history[0]["local_steps"]


@pytest.mark.parametrize(("override", "message"), [
    ("augment.noise=-0.1", "augment.noise=-0.1 is not allowed: expected a number >= 0"),
    ("augment.scale=big", "augment.scale='big' is not allowed"),
    ("augment.shift=2.5", "augment.shift=2.5 is not allowed: expected an integer in [0, 64]"),
    ("+augment.jitter=1", "augment.jitter=1 is not allowed: expected a key of augment"),
])
def test_bad_augmentation_settings_are_refused_before_anything_runs(synthetic_db, tmp_path, override, message):
    from pfl.run import train

    with pytest.raises(ConfigError, match=re.escape(message)):
        train(make_cfg(synthetic_db, tmp_path, "augment=ecg", override))
    assert not (tmp_path / "outputs").exists()


def test_a_shift_that_would_move_the_r_peak_out_of_the_window_is_refused(synthetic_db, tmp_path):
    from pfl.run import train

    with pytest.raises(ConfigError, match=r"augment.shift=100 is not allowed: expected an integer in \[0, 64\]"):
        train(make_cfg(synthetic_db, tmp_path, "augment=ecg", "augment.shift=100"))
    assert not (tmp_path / "outputs").exists()  # refused before the data loads


def test_the_shift_limit_keeps_the_r_peak_inside_the_window(synthetic_db, tmp_path):
    from pfl.run import train

    assert BeatAugment(shift=20, window=200, peak=20).shift == 20
    with pytest.raises(ConfigError, match=re.escape("augment.shift=21 is not allowed: expected an integer in [0, 20]")):
        BeatAugment(shift=21, window=200, peak=20)
    with pytest.raises(ConfigError, match=re.escape("expected an integer in [0, 9]")):  # the peak 10 from the end
        BeatAugment(shift=10, window=200, peak=190)
    with pytest.raises(ConfigError, match=re.escape("augment.shift=30 is not allowed: expected an integer in [0, 20]")):
        train(make_cfg(synthetic_db, tmp_path, "augment=ecg", "augment.shift=30", "data.window.before=20"))
    assert not (tmp_path / "outputs").exists()
