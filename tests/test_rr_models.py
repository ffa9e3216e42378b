"""RR-interval features, lead channels and the models that read them.

Oracles: intervals computed beat by beat with plain Python loops from the R peaks written
into a synthetic WFDB record; parameter counts from the layer formulas by hand.
"""

from __future__ import annotations

import statistics

import numpy as np
import pytest
import torch
import wfdb
from synth import data_config
from torch import nn

from pfl.data.rr import RAW, pack, parse_rr, raw_intervals, select
from pfl.errors import ConfigError
from pfl.models import CNNLSTM, ResNet1D, SmallCNN

FS = 360


def _hand(peaks_s: list[float], i: int, causal: bool, k: int = 10, m: int = 32) -> dict[str, float]:
    """The features of beat i by the definitions in pfl/data/rr.py, one loop at a time."""
    n = len(peaks_s)
    pre = [peaks_s[1] - peaks_s[0]] + [peaks_s[j] - peaks_s[j - 1] for j in range(1, n)]
    post = [peaks_s[j + 1] - peaks_s[j] for j in range(n - 1)] + [peaks_s[-1] - peaks_s[-2]]
    if causal:
        window = [pre[j] for j in range(max(0, i - k + 1), i + 1)]
        past = [pre[j] for j in range(0, i + 1)]
        local, average = sum(window) / len(window), sum(past) / len(past)
    else:
        window = [pre[j] for j in range(max(0, i - k // 2), min(n, i - k // 2 + k))]
        local, average = sum(window) / len(window), sum(pre) / n
    sd = float(np.std(window))  # population std of the pre-RRs `local` averages
    js = range(max(0, i - m + 1), i + 1) if causal else range(max(0, i - m // 2), min(n, i - m // 2 + m))
    # changes between the window's own intervals; pre[0] is a copy of pre[1], not a change
    steps = [abs(pre[j] - pre[j - 1]) for j in js if j >= max(js.start + 1, 2)]
    irregularity = statistics.median(steps) / statistics.median([pre[j] for j in js]) if steps else 0.0
    return {"pre": pre[i], "post": post[i], "local": local, "average": average,
            "pre_local": pre[i] / local, "post_local": post[i] / local, "local_sd": sd, "local_cv": sd / local,
            "irregularity": irregularity}


@pytest.mark.parametrize("n,beats", [(25, (0, 1, 4, 12, 23, 24)), (90, (0, 1, 2, 15, 16, 17, 31, 32, 45, 73, 74, 88, 89))])
def test_raw_intervals_match_a_hand_computation_including_first_and_last_beat(n, beats):
    """25 beats: every window clipped at the record's edges; 90: full 32-beat windows too."""
    rng = np.random.default_rng(3)
    peaks = np.cumsum(rng.integers(200, 400, size=n)) + 50
    raw = raw_intervals(peaks, FS)
    t = (peaks / FS).tolist()
    for i in beats:
        for causal in (False, True):
            h = _hand(t, i, causal)
            got = dict(zip(RAW, raw[i], strict=True))
            assert got["pre"] == pytest.approx(h["pre"]) and got["post"] == pytest.approx(h["post"])
            key = "_causal" if causal else ""
            assert got["local" + key] == pytest.approx(h["local"]), (i, causal)
            assert got["average" + key] == pytest.approx(h["average"]), (i, causal)
            assert got["local_sd" + key] == pytest.approx(h["local_sd"], abs=1e-9), (i, causal)
            assert got["irregularity" + key] == pytest.approx(h["irregularity"], abs=1e-12), (i, causal)


def test_irregularity_tells_atrial_fibrillation_from_ectopic_beats_in_sinus_rhythm():
    """Sinus rhythm at 0.8 s with one premature beat (0.5 s, pause 1.1 s) every 12 beats keeps
    the median successive change at 0: most intervals repeat. Irregular intervals (uniform
    0.4-1.2 s, as in atrial fibrillation) move it to the median |difference| of the draws."""
    rng = np.random.default_rng(0)
    sinus = [0.5 if j % 12 == 6 else 1.1 if j % 12 == 7 else 0.8 for j in range(200)]
    af = rng.uniform(0.4, 1.2, 200).tolist()
    for intervals, low in ((sinus, True), (af, False)):
        peaks = np.round(np.cumsum([1.0, *intervals]) * FS).astype(np.int64)
        raw = dict(zip(RAW, raw_intervals(peaks, FS).T, strict=True))
        mid = raw["irregularity"][40:160]
        if low:
            assert mid.max() < 1e-9
        else:  # |U - U'| of two uniforms over 0.8 has median 0.8 (1 - 1/sqrt(2)); over a median RR near 0.8
            assert np.median(mid) == pytest.approx((1 - 2 ** -0.5) * 0.8 / 0.8, abs=0.08)
    # Where the ectopic beat is, the local coefficient of variation says irregular: 10 intervals
    # of 0.8 s but one 0.5 and one 1.1 have mean 0.8 and std sqrt(2 * 0.3^2 / 10).
    peaks = np.round(np.cumsum([1.0, *sinus]) * FS).astype(np.int64)
    cv = select(raw_intervals(peaks, FS), {"features": ["local_cv"], "causal": False})[:, 0]
    assert cv[40:160].max() == pytest.approx((2 * 0.3 ** 2 / 10) ** 0.5 / 0.8, rel=1e-4)


def _write_known_peaks(directory, name="k01", minutes=1.0, seed=0):
    """One two-lead record with R peaks at known, irregular samples (some premature)."""
    rng = np.random.default_rng(seed)
    n = int(minutes * 60 * FS)
    t = np.arange(n) / FS
    peaks, pos = [20], 150  # the first beat is too close to the start for its window
    while pos < n - 200:
        peaks.append(pos)
        pos += int(rng.choice([290, 300, 310, 180, 420]))
    peaks.append(n - 30)  # and the last too close to the end
    mlii = 0.02 * rng.standard_normal(n)
    v1 = 0.02 * rng.standard_normal(n)
    for p in peaks:
        mlii += np.exp(-0.5 * ((t - p / FS) / 0.012) ** 2)
        v1 -= 0.5 * np.exp(-0.5 * ((t - p / FS) / 0.02) ** 2)
    wfdb.wrsamp(name, fs=FS, units=["mV", "mV"], sig_name=["MLII", "V1"], p_signal=np.column_stack([mlii, v1]),
                fmt=["212", "212"], adc_gain=[200.0, 200.0], baseline=[1024, 1024], write_dir=str(directory))
    symbols = ["N" if i % 4 else "A" for i in range(len(peaks))]
    # A non-beat annotation between beats must not count as an R peak.
    ann = sorted([*zip(peaks, symbols, strict=True), (peaks[3] + 40, "~")])
    wfdb.wrann(name, "atr", sample=np.array([a[0] for a in ann]), symbol=[a[1] for a in ann], fs=FS,
               write_dir=str(directory))
    (directory / "RECORDS").write_text(f"{name}\n")
    return np.asarray(peaks)


@pytest.mark.parametrize("causal", [False, True])
def test_loaded_rr_features_follow_the_annotated_peaks_of_the_record(tmp_path, causal):
    from pfl.data.sources import wfdb_beats

    db = tmp_path / "db"
    db.mkdir()
    peaks = _write_known_peaks(db)
    names = ["pre", "local", "average", "pre_local", "local_sd", "local_cv", "irregularity"] + (
        [] if causal else ["post", "post_local"])
    cfg = data_config(db, tmp_path / "cache", features=["beat", "rr"], rr={"features": names, "causal": causal})
    rb = wfdb_beats(cfg).records["k01"]
    k = len(names)
    assert rb.x.shape == (len(peaks) - 2, 1, 256 + k)  # both edge beats dropped
    assert rb.sample.tolist() == peaks[1:-1].tolist()
    t = (peaks / FS).tolist()
    for row, i in ((0, 1), (1, 2), (len(peaks) - 3, len(peaks) - 2)):  # first, second and last kept beat
        h = _hand(t, i, causal)
        np.testing.assert_allclose(rb.x[row, 0, 256:], [h[f] for f in names], rtol=1e-5)
    # The window itself is the beat-only input, unchanged.
    plain = wfdb_beats(data_config(db, tmp_path / "cache")).records["k01"]
    np.testing.assert_array_equal(rb.x[:, 0, :256], plain.x)


def test_other_lead_becomes_the_second_channel(tmp_path):
    from pfl.data.sources import wfdb_beats

    db = tmp_path / "db"
    db.mkdir()
    _write_known_peaks(db)
    one = wfdb_beats(data_config(db, tmp_path / "cache")).records["k01"]
    two = wfdb_beats(data_config(db, tmp_path / "cache", extra_leads=["other"])).records["k01"]
    by_name = wfdb_beats(data_config(db, tmp_path / "c2", lead="V1")).records["k01"]
    assert two.x.shape == (len(one), 2, 256) and two.lead == "MLII+V1"
    np.testing.assert_allclose(two.x[:, 0], one.x, atol=1e-6)
    np.testing.assert_allclose(two.x[:, 1], by_name.x, atol=1e-6)
    # A second load reads the cache and gives the same arrays.
    again = wfdb_beats(data_config(db, tmp_path / "cache", extra_leads=["other"])).records["k01"]
    np.testing.assert_array_equal(again.x, two.x)
    with pytest.raises(Exception, match="extra lead 'V5' not found; available leads: MLII, V1"):
        wfdb_beats(data_config(db, tmp_path / "cache", extra_leads=["V5"]))


def test_bad_rr_settings_name_the_value_and_what_is_allowed():
    with pytest.raises(ConfigError, match="post.*causal"):
        parse_rr({"features": ["pre", "post"], "causal": True})
    with pytest.raises(ConfigError, match="data.rr.features.*'qt'"):
        parse_rr({"features": ["pre", "qt"]})
    from pfl.data.rr import parse_features

    with pytest.raises(ConfigError, match=r"data.features.*\[beat\] or \[beat, rr\]"):
        parse_features(["rr"])


def test_pack_puts_the_features_after_every_channel_window():
    x = np.arange(2 * 2 * 3, dtype=np.float32).reshape(2, 2, 3)
    f = np.array([[7, 8], [9, 10]], np.float32)
    out = pack(x, f)
    assert out.tolist() == [[[0, 1, 2, 7, 8], [3, 4, 5, 7, 8]], [[6, 7, 8, 9, 10], [9, 10, 11, 9, 10]]]
    raw = np.array([[0.5, 1.0, 0.8, 0.7, 0.9, 0.6, 0.05, 0.07, 0.02, 0.03]])
    np.testing.assert_allclose(select(raw, {"features": ["pre_local", "average", "local_cv", "irregularity"],
                                            "causal": True}), [[0.5 / 0.7, 0.6, 0.07 / 0.7, 0.03]], rtol=1e-6)
    np.testing.assert_allclose(select(raw, {"features": ["local_sd", "local_cv", "irregularity"], "causal": False}),
                               [[0.05, 0.05 / 0.8, 0.02]], rtol=1e-6)


def _conv(c_in, c_out, k):
    return c_in * c_out * k + c_out


def _lin(i, o):
    return i * o + o


def _lstm(i, h):
    return 4 * (i * h + h * h + 2 * h)


@pytest.mark.parametrize("leads, rr", [(1, 0), (2, 6)])
def test_every_model_has_its_hand_counted_parameters_and_output_shape(leads, rr):
    rr_branch = (_lin(rr, 32) + _lin(32, 32)) if rr else 0
    rr_small = (_lin(rr, 16) + _lin(16, 16)) if rr else 0
    expected = {
        SmallCNN: _conv(leads, 16, 7) + _conv(16, 32, 5) + _conv(32, 32, 3) + _lin(32 + (16 if rr else 0), 5)
        + rr_small,
        CNNLSTM: _conv(leads, 32, 5) + _conv(32, 64, 5) + _conv(64, 128, 5) + _lstm(128, 190)
        + _lin(190 + (32 if rr else 0), 64) + _lin(64, 5) + rr_branch,
        # stem, 3 blocks (two convs + two GroupNorms (2c each) + a 1x1 skip where the width changes)
        ResNet1D: _conv(leads, 16, 7)
        + sum(_conv(a, b, 7) + _conv(b, b, 7) + 4 * b + _conv(a, b, 1) for a, b in ((16, 16), (16, 32), (32, 64)))
        + _lin(64 + (32 if rr else 0), 5) + rr_branch,
    }
    for cls, n in expected.items():
        model = cls(in_channels=leads, rr_features=rr)
        assert sum(p.numel() for p in model.parameters()) == n, cls.__name__
        out = model(torch.randn(3, leads, 256 + rr))
        assert out.shape == (3, 5), cls.__name__
    if (leads, rr) == (1, 0):
        assert expected[CNNLSTM] == 307_333  # the reference model, unchanged


def test_the_rr_branch_sees_the_rr_tail_and_the_convolutions_the_window():
    torch.manual_seed(0)
    for model in (CNNLSTM(rr_features=3, in_channels=2), SmallCNN(rr_features=3, in_channels=2),
                  ResNet1D(rr_features=3, in_channels=2)):
        seen: dict[str, torch.Tensor] = {}
        first = model.features[0] if hasattr(model, "features") else model.stem[0]
        first.register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("conv", i[0]))
        model.rr.register_forward_hook(lambda m, i, o, seen=seen: seen.__setitem__("rr", i[0]))
        x = torch.randn(4, 2, 259)
        model.eval()(x)
        assert torch.equal(seen["conv"], x[..., :256]) and torch.equal(seen["rr"], x[:, 0, 256:])


def test_a_model_that_does_not_match_the_input_is_refused(synthetic_db, tmp_path):
    from compose import make_cfg

    from pfl.run import train

    rich = ("data.features=[beat,rr]", "data.extra_leads=[other]", "data.records=[s01,s02]")
    with pytest.raises(ConfigError, match=r"model.rr_features=0 .*6, the RR features"):
        train(make_cfg(synthetic_db, tmp_path, *rich, "model.rr_features=0"))
    with pytest.raises(ConfigError, match=r"model.in_channels=1 .*2, the lead channels"):
        train(make_cfg(synthetic_db, tmp_path, *rich, "model.in_channels=1"))


def test_records_with_no_or_one_beat_have_zero_intervals():
    assert raw_intervals(np.array([], dtype=np.int64), FS).shape == (0, len(RAW))
    np.testing.assert_array_equal(raw_intervals(np.array([100]), FS), np.zeros((1, len(RAW))))
    two = raw_intervals(np.array([0, 360]), FS)
    np.testing.assert_allclose(two[:, :2], [[1.0, 1.0], [1.0, 1.0]])


def test_local_beats_shapes_the_local_mean(tmp_path):
    from pfl.data.sources import wfdb_beats

    db = tmp_path / "db"
    db.mkdir()
    peaks = _write_known_peaks(db)
    names = ["local"]
    rb = wfdb_beats(data_config(db, tmp_path / "cache", features=["beat", "rr"],
                                rr={"features": names, "causal": True, "local_beats": 3})).records["k01"]
    t = (peaks / FS).tolist()
    for row, i in ((0, 1), (5, 6)):
        assert rb.x[row, 0, 256] == pytest.approx(_hand(t, i, True, k=3)["local"], rel=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_irregular_beats_sets_the_irregularity_window(tmp_path, causal):
    from pfl.data.sources import wfdb_beats

    db = tmp_path / "db"
    db.mkdir()
    peaks = _write_known_peaks(db)
    t = (peaks / FS).tolist()
    got = {}
    for m in (32, 6):
        rr = {"features": ["irregularity"], "causal": causal, "irregular_beats": m}
        got[m] = wfdb_beats(data_config(db, tmp_path / "cache", features=["beat", "rr"], rr=rr)).records["k01"]
        for row, i in ((0, 1), (7, 8), (len(peaks) - 3, len(peaks) - 2)):
            assert got[m].x[row, 0, 256] == pytest.approx(_hand(t, i, causal, m=m)["irregularity"], rel=1e-5)
    assert not np.array_equal(got[32].x[:, 0, 256], got[6].x[:, 0, 256])  # two cache entries, not one
    for bad in (1, 2.5, True, "32"):
        with pytest.raises(ConfigError, match=r"data.rr.irregular_beats=.*an integer >= 2"):
            parse_rr({"irregular_beats": bad})


@pytest.mark.parametrize("partition", ["patient", "interpatient"])
def test_time_splits_keep_their_window_gap_with_leads_and_rr_features(synthetic_db, tmp_path, partition):
    """Lead channels and RR features change the input, not which beats train, validate and test."""
    from omegaconf import OmegaConf

    from pfl.data.partitions import build_federation
    from pfl.data.sources import wfdb_beats
    from pfl.data.stats import window_overlap

    parts = {"patient": {"_target_": "pfl.data.partitions.patient", "name": "patient", "records": "all",
                         "train_minutes": 2, "val_fraction": 0.2},
             "interpatient": {"_target_": "pfl.data.partitions.interpatient", "name": "interpatient",
                              "ds1": ["s01", "s02", "s03"], "ds2": ["s04", "s05", "s06"], "split_by": "time",
                              "fractions": {"train": 0.7, "val": 0.1, "test": 0.2}, "adapt_minutes": 2,
                              "val_fraction": 0.2}}
    part = OmegaConf.create(parts[partition])
    plain = build_federation(wfdb_beats(data_config(synthetic_db, tmp_path / "c")), part, 0)
    rich = build_federation(wfdb_beats(data_config(synthetic_db, tmp_path / "c", features=["beat", "rr"],
                                                   extra_leads=["other"])), part, 0)
    assert rich.window == plain.window == 256
    for a, b in zip(plain.clients, rich.clients, strict=True):
        for split in ("train", "val", "test"):
            assert a.split(split).beat_ids() == b.split(split).beat_ids(), (a.cid, split)
        assert b.train.x.shape[1:] == (2, 256 + 6)
    overlap = window_overlap(rich)
    assert overlap["val"]["windows"] == 0.0 and overlap["test"]["windows"] == 0.0


def test_standardized_rr_features_use_the_training_clients_statistics(synthetic_db, tmp_path):
    """data.rr.standardize: every split of every client shifted and scaled by the mean and
    population std of the federated clients' training RR features (numpy by hand), the beat
    samples untouched, and the DS2-like unseen clients' own beats never set the statistics."""
    from compose import make_cfg

    from pfl import config as cfgmod
    from pfl.run import load_federation

    over = ("data.features=[beat,rr]", "partition=interpatient", "partition.ds1=[s01,s02,s03]",
            "partition.ds2=[s04,s05,s06]")
    raw = load_federation(cfgmod.prepare(make_cfg(synthetic_db, tmp_path / "a", *over)))
    std = load_federation(cfgmod.prepare(make_cfg(synthetic_db, tmp_path / "b", *over, "data.rr.standardize=true")))
    assert raw.rr_stats is None
    k = 6
    train = np.concatenate([c.train.x.numpy()[:, 0, -k:] for c in raw.clients if c.federated]).astype(np.float64)
    mean, sd = train.mean(axis=0), train.std(axis=0)
    assert np.allclose(std.rr_stats["mean"], mean) and np.allclose(std.rr_stats["std"], sd)
    assert any(not c.federated for c in raw.clients)
    for a, b in zip(raw.clients, std.clients, strict=True):
        for split in ("train", "val", "test"):
            xa, xb = a.split(split).x.numpy(), b.split(split).x.numpy()
            if not len(xa):
                continue
            np.testing.assert_array_equal(xa[..., :-k], xb[..., :-k])
            np.testing.assert_allclose(xb[..., -k:], (xa[..., -k:] - mean) / sd, rtol=1e-5, atol=1e-5)
    pooled = np.concatenate([c.train.x.numpy()[:, 0, -k:] for c in std.clients if c.federated])
    np.testing.assert_allclose(pooled.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(pooled.std(axis=0), 1, atol=1e-4)
    # Off by default, and the default leaves every earlier run's config hash (made before the key
    # existed) as it was.
    cfg = make_cfg(synthetic_db, tmp_path / "c", *over)
    assert cfgmod.config_hash(cfg) == cfgmod.config_hash(make_cfg(synthetic_db, tmp_path / "c", *over,
                                                                  "~data.rr.standardize"))
    assert cfgmod.config_hash(cfg) != cfgmod.config_hash(make_cfg(synthetic_db, tmp_path / "c", *over,
                                                                  "data.rr.standardize=true"))
    with pytest.raises(ConfigError, match="data.rr.standardize"):
        parse_rr({"standardize": "yes"})


@pytest.mark.parametrize("cls", [SmallCNN, CNNLSTM])
def test_the_models_pooling_trains_the_weights_of_torchs_max_pooling_bit_for_bit(cls):
    """pfl.models.pooling.MaxPool1d against nn.MaxPool1d of the same kernel in a copy of the
    model: same logits, same weights after Adam steps, on inputs rounded to produce ties
    inside pooling windows (both must route a window's gradient to its first maximum)."""
    import copy

    from pfl.models.pooling import MaxPool1d

    torch.manual_seed(0)
    ours = cls()
    theirs = copy.deepcopy(ours)
    swapped = 0
    for mod in list(theirs.modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, MaxPool1d):
                setattr(mod, child_name, nn.MaxPool1d(child.kernel_size))
                swapped += 1
    assert swapped == (2 if cls is SmallCNN else 3)
    assert not any(type(m) is MaxPool1d for m in theirs.modules())
    g = torch.Generator().manual_seed(1)
    opts = [torch.optim.Adam(m.parameters(), 1e-2) for m in (ours, theirs)]
    for step in range(3):
        x = torch.round(torch.randn(16, 1, 256, generator=g) * 2) / 2
        y = torch.randint(0, 5, (16,), generator=g)
        for m, opt in zip((ours, theirs), opts, strict=True):
            torch.manual_seed(step)  # the same dropout masks
            opt.zero_grad()
            nn.functional.cross_entropy(m(x), y).backward()
            opt.step()
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    with torch.inference_mode():
        assert torch.equal(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("k,length", [(2, 256), (4, 256), (2, 127), (4, 9)])
def test_pfl_max_pooling_gives_torchs_values_and_gradients_with_ties(k, length):
    """Half-integer inputs tie inside most windows; the gradient must reach the first maximum
    of each window, as torch's max pooling sends it (a trailing partial window is dropped)."""
    from pfl.models.pooling import MaxPool1d

    g = torch.Generator().manual_seed(k + length)
    x = torch.round(torch.randn(8, 3, length, generator=g)) / 2
    ties = (x[..., : length // k * k].unflatten(-1, (-1, k)).diff(dim=-1) == 0).any(-1).float().mean()
    assert ties > 0.2
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = nn.functional.max_pool1d(a, k), MaxPool1d(k)(b)
    w = torch.randn(ya.shape, generator=g)
    (ya * w).sum().backward()
    (yb * w).sum().backward()
    assert torch.equal(ya, yb) and torch.equal(a.grad, b.grad)


def test_the_default_irregularity_window_keeps_the_config_hash(synthetic_db, tmp_path):
    """data.rr.irregular_beats came after runs were named by their config hash: at its default
    it leaves the hash as it was (checkpoints still resume); set away from it, the hash moves."""
    from compose import make_cfg
    from omegaconf import OmegaConf

    from pfl import config as cfgmod

    cfg = make_cfg(synthetic_db, tmp_path, "data.features=[beat,rr]")
    legacy = OmegaConf.create(OmegaConf.to_container(cfg))
    del legacy.data.rr["irregular_beats"]
    assert cfg.data.rr.irregular_beats == 32
    assert cfgmod.config_hash(cfg) == cfgmod.config_hash(legacy)
    other = make_cfg(synthetic_db, tmp_path, "data.features=[beat,rr]", "data.rr.irregular_beats=16")
    assert cfgmod.config_hash(other) != cfgmod.config_hash(cfg)
