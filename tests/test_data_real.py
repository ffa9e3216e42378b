"""Integration on the real MIT-BIH database (PFL_DATA_DIR); skipped without it."""

from __future__ import annotations

import time

import numpy as np
import pytest
import synth
from omegaconf import OmegaConf

from pfl.data.mitdb import count_reference_labels, load_beats
from pfl.data.partitions import build_federation
from pfl.data.stats import federation_stats

pytestmark = pytest.mark.realdata

PACED = ["102", "104", "107", "217"]


@pytest.fixture(scope="session")
def real_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("real_cache")


def real_cfg(root, cache, **overrides):
    return synth.data_config(root, cache, paced_records=PACED, **overrides)


@pytest.fixture(scope="session")
def real_beats(real_data_dir, real_cache):
    return load_beats(real_cfg(real_data_dir, real_cache))


def test_reference_label_totals(real_data_dir, real_cache):
    counts = count_reference_labels(real_cfg(real_data_dir, real_cache, exclude_paced=False))
    assert counts == {"N": 90631, "S": 2781, "V": 7236, "F": 803, "Q": 8043, "total": 109494}


def test_all_48_records_load_and_warm_load_is_fast(real_data_dir, real_cache):
    cfg = real_cfg(real_data_dir, real_cache, exclude_paced=False)
    beats = load_beats(cfg)
    assert len(beats.records) == 48
    dropped = sum(r.dropped_edge for r in beats.records.values())
    assert len(beats) + dropped == 109494
    assert beats.records["114"].lead == "MLII"
    assert beats.records["102"].lead == "V5" and beats.records["104"].lead == "V5"
    t = time.perf_counter()
    warm = load_beats(cfg)
    assert time.perf_counter() - t < 2.0
    assert len(warm) == len(beats)


def test_paced_excluded_by_default(real_beats):
    assert len(real_beats.records) == 44 and not set(PACED) & set(real_beats.records)


@pytest.mark.parametrize("name", ["hospitals", "patient", "dirichlet", "interpatient"])
def test_each_partition_builds(real_beats, name):
    cfg = OmegaConf.load(synth.CONF_DIR / "partition" / f"{name}.yaml")
    fed = build_federation(real_beats, cfg, seed=0)
    st = federation_stats(fed)
    seen = set()
    for c in fed.clients:
        for s in ("train", "val", "test"):
            ids = c.split(s).beat_ids()
            assert not ids & seen
            seen |= ids
    if name == "hospitals":
        train = [len(c.train) for c in fed.clients]
        assert sum(int(c.total.sum()) for c in st.clients) == 6300
        assert train == [1183, 1274, 680]  # split by patient: 5/2/3, 7/3/4, 4/2/2 records
        for c in fed.clients:
            train_recs = set(c.train.beat_record.tolist())
            assert not train_recs & (set(c.test.beat_record.tolist()) | set(c.val.beat_record.tolist()))
        # The case mixes really differ: the cardiac center is far less normal than the others.
        normal = [c.total[0] / c.total.sum() for c in st.clients]
        assert normal[0] < 0.8 and normal[1] > 0.95
    # No val or test window shares a sample with a training window, for every default partition.
    assert st.overlap["val"]["windows"] == 0.0 and st.overlap["test"]["windows"] == 0.0
    if name in ("hospitals", "dirichlet"):
        assert st.overlap["test"]["patients"] == 0.0
    if name == "patient":
        assert len(fed.clients) == 44
    if name == "interpatient":
        assert len(fed.training_clients) == 22 and len(fed.clients) == 44
    assert np.isfinite(st.jsd_mean)


def test_the_beat_split_overlaps_on_the_real_data(real_beats):
    cfg = OmegaConf.load(synth.CONF_DIR / "partition" / "hospitals.yaml")
    cfg.split_by = "beat"
    st = federation_stats(build_federation(real_beats, cfg, seed=0))
    assert st.overlap["test"]["windows"] > 0.02 and st.overlap["test"]["patients"] == 1.0
