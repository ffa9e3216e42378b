"""Beat sources: several WFDB databases at two sampling rates, leads by name, namespaced ids,
the institutions partition and its bad inputs; svdb on the real data when PFL_SVDB_DIR is set."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import synth
import wfdb
from omegaconf import OmegaConf

from pfl.data.mitdb import parse_settings
from pfl.data.partitions import build_federation
from pfl.data.sources import count_reference_labels, load_beats
from pfl.errors import ConfigError, DataError

LOW_FS = 128
# 184,583 beat annotations less one "B" (bundle branch block beat), which the AAMI mapping leaves out.
SVDB_TOTALS = {"N": 162339, "S": 12198, "V": 9943, "F": 23, "Q": 79, "total": 184582}


def _f(t):
    """A smooth, band-limited test signal (well below 64 Hz): any resampler must reproduce it."""
    return np.sin(2 * np.pi * 1.1 * t) + 0.5 * np.sin(2 * np.pi * 3.3 * t + 0.4) + 0.2 * np.cos(2 * np.pi * 7.7 * t)


def _write_low_rate_db(directory: Path, names=("800", "801", "802", "803"), minutes=2.0) -> dict:
    """svdb-shaped records: 128 Hz, leads ECG1 = f and ECG2 = -f, beats every 0.8 s."""
    directory.mkdir(parents=True, exist_ok=True)
    peaks = {}
    for i, name in enumerate(names):
        n = int(minutes * 60 * LOW_FS)
        t = np.arange(n) / LOW_FS
        sig = np.column_stack([_f(t + i), -_f(t + i)])
        wfdb.wrsamp(name, fs=LOW_FS, units=["mV", "mV"], sig_name=["ECG1", "ECG2"], p_signal=sig,
                    fmt=["16", "16"], adc_gain=[2000.0, 2000.0], baseline=[0, 0], write_dir=str(directory))
        samples = np.arange(LOW_FS, n - LOW_FS, int(0.8 * LOW_FS) + 1)
        symbols = ["V" if k % 5 == 2 else "A" if k % 7 == 3 else "N" for k in range(len(samples))]
        wfdb.wrann(name, "atr", sample=samples, symbol=symbols, fs=LOW_FS, write_dir=str(directory))
        peaks[name] = (samples, symbols)
    (directory / "RECORDS").write_text("".join(f"{r}\n" for r in names))
    return peaks


def _low_cfg(root: Path, cache: Path, **overrides):
    settings = {"database": "svdb", "lead": "ECG1", "lead_fallback": ["ECG2"], "resample": True, "filter": None,
                "normalize": "none", **overrides}
    return synth.data_config(root, cache, **settings)


def _two_db_cfg(tmp_path, **svdb):
    synth.write_synthetic_db(tmp_path / "a", records=4, minutes=3)
    _write_low_rate_db(tmp_path / "b")
    cfg = synth.data_config(tmp_path / "a", tmp_path / "cache", resample=True)
    cfg.databases = {"mitdb": {"root": str(tmp_path / "a"), "lead": "MLII"},
                     "svdb": {"root": str(tmp_path / "b"), "lead": "ECG1", "lead_fallback": ["ECG2"], **svdb}}
    return cfg


def test_resampled_windows_line_up_with_the_hand_made_signal(tmp_path):
    peaks = _write_low_rate_db(tmp_path / "db")
    beats = load_beats(_low_cfg(tmp_path / "db", tmp_path / "cache"))
    rb = beats.records["801"]
    samples, symbols = peaks["801"]
    # R peaks at the nearest 360 Hz sample: 360/128 = 45/16.
    assert rb.fs == 360 and rb.native_fs == LOW_FS
    np.testing.assert_array_equal(rb.sample, np.rint(samples * 45 / 16).astype(int))
    np.testing.assert_array_equal(rb.y, [{"N": 0, "A": 1, "V": 2}[s] for s in symbols])
    # Each window is f on the 360 Hz grid around its peak (90 before, 166 after), up to the
    # resampler's error and the 1/2000 mV quantization.
    expected = _f((rb.sample[:, None] + np.arange(-90, 166)[None, :]) / 360 + 1)
    inner = (rb.sample > 2 * 360) & (rb.sample < rb.sample.max() - 2 * 360)
    assert inner.sum() > 100
    assert np.abs(rb.x[inner] - expected[inner]).max() < 0.02
    # 256 samples at 360 Hz are the same 0.71 s as on mitdb: the window counts target-rate samples.
    assert rb.x.shape[1] == 256


def test_a_record_at_another_rate_is_an_error_without_resample(tmp_path):
    _write_low_rate_db(tmp_path / "db")
    with pytest.raises(DataError, match=r"sampled at 128 Hz but data.fs=360.*data.resample=true"):
        load_beats(_low_cfg(tmp_path / "db", tmp_path / "cache", resample=False))


def test_an_unreachable_rate_and_a_bad_database_name_are_config_errors(tmp_path):
    _write_low_rate_db(tmp_path / "db")
    with pytest.raises(ConfigError, match=r"data.fs=360.0001.*reachable from 128 Hz \(record 800\)"):
        load_beats(_low_cfg(tmp_path / "db", tmp_path / "cache", fs=360.0001))
    with pytest.raises(ConfigError, match=r"data.database='MIT DB'.*PhysioNet database name"):
        parse_settings(_low_cfg(tmp_path / "db", tmp_path / "cache", database="MIT DB"))


def test_leads_are_chosen_by_name_per_database(tmp_path):
    cfg = _two_db_cfg(tmp_path, lead="ECG2")
    beats = load_beats(cfg)
    assert {rb.lead for r, rb in beats.records.items() if r.startswith("svdb/")} == {"ECG2"}
    assert {rb.lead for r, rb in beats.records.items() if r.startswith("mitdb/")} == {"MLII"}
    # ECG2 is -ECG1: compare with the same records read through ECG1.
    one = load_beats(_low_cfg(tmp_path / "b", tmp_path / "cache1", filter=OmegaConf.to_container(cfg.filter),
                              normalize=cfg.normalize))
    np.testing.assert_allclose(beats.records["svdb/800"].x, -one.records["800"].x, atol=1e-4)


def test_a_lead_a_record_lacks_names_the_record_and_its_leads(tmp_path):
    cfg = _two_db_cfg(tmp_path, lead="MLII", lead_fallback=[])
    with pytest.raises(DataError, match=r"record 800: lead 'MLII' not found; available leads: ECG1, ECG2"):
        load_beats(cfg)


def test_record_ids_are_namespaced_and_bare_names_resolve(tmp_path):
    beats = load_beats(_two_db_cfg(tmp_path))
    assert sorted(beats.records) == [f"mitdb/s0{i}" for i in range(1, 5)] + [f"svdb/80{i}" for i in range(4)]
    assert all(rb.record == rid for rid, rb in beats.records.items())
    assert {rb.fs for rb in beats.records.values()} == {360.0}
    # A bare record name that one database has means that database's record.
    fed = build_federation(beats, {"_target_": "pfl.data.partitions.hospitals", "split_by": "time",
                                   "sites": {"x": {"records": ["s01", "801"], "budget": None},
                                             "y": {"records": ["svdb/802"], "budget": None}}}, seed=0)
    assert [c.records for c in fed.clients] == [["mitdb/s01", "svdb/801"], ["svdb/802"]]


def test_two_entries_for_one_database_and_differing_classes_are_refused(tmp_path):
    cfg = _two_db_cfg(tmp_path)
    cfg.databases.svdb.database = "mitdb"
    with pytest.raises(ConfigError, match=r"data.databases.svdb.database='mitdb'.*would clash"):
        load_beats(cfg)
    cfg = _two_db_cfg(tmp_path)
    cfg.databases.svdb.classes = ["N", "S", "V", "F"]
    cfg.databases.svdb.aami = {"N": ["N"], "S": ["A"], "V": ["V"], "F": ["F"]}
    with pytest.raises(ConfigError, match=r"data.databases.svdb.classes=.*the classes of every other database"):
        load_beats(cfg)


INSTITUTIONS = {"_target_": "pfl.data.partitions.institutions", "budget": None, "split_by": "record",
                "fractions": {"train": 0.5, "val": 0.25, "test": 0.25}}


def test_institutions_one_site_per_database_split_by_patient(tmp_path):
    beats = load_beats(_two_db_cfg(tmp_path))
    fed = build_federation(beats, INSTITUTIONS, seed=3)
    assert [c.cid for c in fed.clients] == ["mitdb", "svdb"]
    for c in fed.clients:
        assert sorted(c.records) == sorted(r for r in beats.records if r.startswith(c.cid + "/"))
        recs = [set(c.split(s).beat_record.tolist()) for s in ("train", "val", "test")]
        assert all(recs) and not (recs[0] & recs[1] or recs[0] & recs[2] or recs[1] & recs[2])
        assert sum(len(c.split(s)) for s in ("train", "val", "test")) == sum(len(beats.records[r]) for r in c.records)
    again = build_federation(beats, INSTITUTIONS, seed=3)
    for a, b in zip(fed.clients, again.clients, strict=True):
        np.testing.assert_array_equal(a.train.beat_record, b.train.beat_record)
        np.testing.assert_array_equal(a.test.beat_sample, b.test.beat_sample)


def test_institutions_with_an_unseen_database_and_sites_per_database(tmp_path):
    beats = load_beats(_two_db_cfg(tmp_path))
    fed = build_federation(beats, {**INSTITUTIONS, "unseen": "svdb", "per_database": 2, "adapt_minutes": 0.5,
                                   "fractions": {"train": 0.5, "val": 0.0, "test": 0.5}}, seed=0)
    trained = [c for c in fed.clients if c.federated]
    unseen = [c for c in fed.clients if not c.federated]
    assert [c.cid for c in trained] == ["mitdb_1", "mitdb_2"]
    assert sorted(r for c in trained for r in c.records) == [f"mitdb/s0{i}" for i in range(1, 5)]
    assert not set(trained[0].records) & set(trained[1].records)
    assert [c.cid for c in unseen] == [f"svdb/80{i}" for i in range(4)]
    for c in unseen:  # adaptation data first, test after it
        assert c.train.beat_sample.max() < c.test.beat_sample.min()
        assert c.train.beat_sample.max() < 0.5 * 60 * 360


def test_institutions_needs_two_training_sites_and_splits_a_lone_database(tmp_path):
    synth.write_synthetic_db(tmp_path / "a", records=4, minutes=3)
    beats = load_beats(synth.data_config(tmp_path / "a", tmp_path / "cache"))
    with pytest.raises(ConfigError, match=r"partition.per_database=1.*at least two training sites"):
        build_federation(beats, {**INSTITUTIONS, "per_database": 1}, seed=0)
    with pytest.raises(ConfigError, match=r"partition.unseen='svdb'.*one of the loaded databases: site"):
        build_federation(beats, {**INSTITUTIONS, "unseen": "svdb"}, seed=0)
    with pytest.raises(ConfigError, match=r"partition.per_database=0"):
        build_federation(beats, {**INSTITUTIONS, "per_database": 0}, seed=0)
    split = build_federation(beats, {**INSTITUTIONS, "per_database": 2, "split_by": "time"}, seed=0)
    assert [c.cid for c in split.clients] == ["site_1", "site_2"]
    # null (the default): one database alone still makes a federation, of three sites.
    auto = build_federation(beats, {**INSTITUTIONS, "per_database": None, "split_by": "time"}, seed=0)
    assert [c.cid for c in auto.clients] == ["site_1", "site_2", "site_3"]


def test_the_mitdb_cache_key_is_unchanged_by_the_new_settings(tmp_path):
    """The hash of mitdb's settings covers exactly the keys it did before sources existed (only
    the version moved, 1 -> 2 -> 3, when the cached RR columns grew); svdb's covers its database and
    resampling too."""
    s = parse_settings(synth.data_config(tmp_path, tmp_path / "cache"))
    old = {"version": 3, "lead": s.lead, "lead_fallback": list(s.lead_fallback), "fs": s.fs, "before": s.before,
           "after": s.after, "filter": s.filter, "normalize": s.normalize, "classes": list(s.classes),
           "aami": {c: list(s.aami[c]) for c in s.classes}}
    assert s.settings_hash() == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]
    low = parse_settings(_low_cfg(tmp_path, tmp_path / "cache"))
    assert {"database": "svdb", "resample": True}.items() <= low.beat_settings().items()


# --- the real MIT-BIH Supraventricular database -----------------------------------------------


@pytest.fixture(scope="module")
def svdb_dir() -> Path:
    d = os.environ.get("PFL_SVDB_DIR")
    if not d or not (Path(d) / "RECORDS").is_file():
        pytest.skip("PFL_SVDB_DIR is not set to an svdb directory with RECORDS: real svdb tests skipped")
    return Path(d)


def _svdb_cfg(root, cache):
    own = OmegaConf.to_container(OmegaConf.load(synth.CONF_DIR / "data" / "svdb.yaml"))
    return synth.data_config(root, cache, **{k: v for k, v in own.items() if k not in ("defaults", "root")})


@pytest.mark.realdata
def test_svdb_reference_label_totals(svdb_dir, tmp_path):
    assert count_reference_labels(_svdb_cfg(svdb_dir, tmp_path)) == SVDB_TOTALS


@pytest.mark.realdata
def test_one_round_on_the_real_institutions(svdb_dir, real_data_dir, tmp_path):
    from compose import FAST, make_cfg

    from pfl.run import train

    fast = [o for o in FAST if not o.startswith("partition=")]
    cfg = make_cfg(real_data_dir, tmp_path, *fast, "data=mitdb_svdb", f"data.databases.mitdb.root={real_data_dir}",
                   f"data.databases.svdb.root={svdb_dir}", "partition=institutions", "partition.budget=1500",
                   "federation.rounds=1", fast=False)
    result = train(cfg)
    assert [c.cid for c in result.evaluation.clients] == ["mitdb", "svdb"]
    for cid in ("mitdb", "svdb"):
        assert result.metrics[f"client.{cid}.test.global.acc"] > 0.5


def test_data_svdb_defaults_to_the_per_patient_federation_unless_told_otherwise():
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(synth.CONF_DIR), version_base="1.3"):
        alone = compose("config", overrides=["data=svdb"])
        told = compose("config", overrides=["data=svdb", "partition=institutions"])
        default = compose("config")
    assert (alone.data.database, alone.partition.name) == ("svdb", "patient")
    assert told.partition.name == "institutions"
    assert (default.data.database, default.partition.name) == ("mitdb", "hospitals")
