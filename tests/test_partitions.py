"""Federations on synthetic beats: sizes, disjointness, determinism, the 5-minute boundary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import synth
from omegaconf import OmegaConf

from pfl.data.mitdb import load_beats
from pfl.data.partitions import build_federation
from pfl.errors import ConfigError, DataError

CONF = Path(synth.CONF_DIR) / "partition"
SPLITS = ("train", "val", "test")


@pytest.fixture(scope="module")
def beats(tmp_path_factory):
    d = tmp_path_factory.mktemp("pdb")
    db = synth.write_synthetic_db(d / "db", records=8)
    return load_beats(synth.data_config(db, d / "cache"))


def part(name, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


SYN = {
    "hospitals": dict(
        sites={
            "cardiac": {"records": ["s02", "s04"], "budget": 600},
            "general": {"records": ["s01", "s05", "s03"], "budget": 700},
            "community": {"records": ["s06"], "budget": 300},
        }
    ),
    "patient": {},
    "dirichlet": dict(n_clients=4, alpha=0.5, min_samples=50, max_beats=None),
    "interpatient": dict(ds1=["s01", "s02", "s03", "s04", "s05"], ds2=["s06", "s07", "s08"]),
}


def fed_of(beats, name, seed=0, **extra):
    return build_federation(beats, part(name, **{**SYN[name], **extra}), seed)


def ids(split):
    return split.beat_ids()


def assert_well_formed(beats, fed):
    assert fed.classes == beats.classes
    seen = set()
    for c in fed.clients:
        for s in SPLITS:
            sp = c.split(s)
            assert sp.x.shape == (len(sp), 1, 256) and sp.y.shape == (len(sp),)
            got = ids(sp)
            assert len(got) == len(sp), "a beat twice in one split"
            assert not got & seen, f"{c.cid}/{s} shares beats"
            seen |= got
            # Each beat's data is the loaded beat it claims to be.
            for k in (0, len(sp) - 1) if len(sp) else ():
                rb = beats.records[str(sp.beat_record[k])]
                i = int(np.flatnonzero(rb.sample == sp.beat_sample[k])[0])
                np.testing.assert_array_equal(sp.x[k, 0].numpy(), rb.x[i])
                assert int(sp.y[k]) == int(rb.y[i])
        assert len(c.train) > 0 and len(c.test) > 0
        assert set(c.records) == {r for s in SPLITS for r, _ in ids(c.split(s))}
    return seen


@pytest.mark.parametrize("name", ["hospitals", "patient", "dirichlet", "interpatient"])
def test_deterministic_per_seed_and_seed_matters(beats, name):
    a, b = fed_of(beats, name, seed=3), fed_of(beats, name, seed=3)
    assert a.digest() == b.digest()
    assert fed_of(beats, name, seed=4).digest() != a.digest()
    assert a.name == name
    assert_well_formed(beats, a)


def test_hospitals(beats):
    fed = fed_of(beats, "hospitals")
    assert [c.cid for c in fed.clients] == ["cardiac", "general", "community"]
    sizes = {c.cid: tuple(len(c.split(s)) for s in SPLITS) for c in fed.clients}
    for cid, budget in (("cardiac", 600), ("general", 700), ("community", 300)):
        tr, va, te = sizes[cid]
        assert tr + va + te == budget
        assert abs(tr - 0.5 * budget) <= 5 and abs(va - 0.1 * budget) <= 5
    # Patient-disjoint between sites.
    recs = [set(c.records) for c in fed.clients]
    assert not (recs[0] & recs[1] or recs[0] & recs[2] or recs[1] & recs[2])
    assert {r for c in fed.clients for s in SPLITS for r, _ in ids(c.split(s))} <= {
        "s01", "s02", "s03", "s04", "s05", "s06"
    }  # fmt: skip


def test_hospitals_short_budget_warns_or_errors(beats, caplog):
    sites = {"a": {"records": ["s01"], "budget": 10_000}, "b": {"records": ["s02"], "budget": None}}
    fed = fed_of(beats, "hospitals", sites=sites)
    assert sum(len(fed.clients[0].split(s)) for s in SPLITS) == len(beats.records["s01"])
    assert sum(len(fed.clients[1].split(s)) for s in SPLITS) == len(beats.records["s02"])
    assert "fewer than its budget 10000" in caplog.text
    with pytest.raises(DataError, match="site 'a' has only"):
        fed_of(beats, "hospitals", sites=sites, on_short_budget="error")


def test_hospitals_overlapping_records(beats):
    sites = {
        "a": {"records": ["s01", "s02"]},
        "b": {"records": ["s02", "s03"]},
        "c": {"records": ["s01"]},
    }
    with pytest.raises(
        ConfigError, match=r"partition.sites=\['s01', 's02'\].*record s01 is in a, c"
    ):
        fed_of(beats, "hospitals", sites=sites)


def test_hospitals_unknown_record(beats):
    with pytest.raises(DataError, match=r"partition.sites.a.records lists record\(s\) \['s99'\]"):
        fed_of(beats, "hospitals", sites={"a": {"records": ["s99"]}})


def test_patient_five_minute_boundary(beats):
    fed = fed_of(beats, "patient")
    assert [c.cid for c in fed.clients] == list(beats.records)
    limit = 5 * 60 * 360
    for c in fed.clients:
        assert c.records == [c.cid] and c.federated
        train = {s for _, s in ids(c.train) | ids(c.val)}
        test = {s for _, s in ids(c.test)}
        assert max(train) < limit <= min(test)
        rb = beats.records[c.cid]
        assert len(train) == int((rb.sample < limit).sum()) and len(test) == int(
            (rb.sample >= limit).sum()
        )
        assert abs(len(c.val) - 0.2 * len(train)) <= 5
        assert {r for r, _ in ids(c.train) | ids(c.val) | ids(c.test)} == {c.cid}


def test_patient_minutes_configurable_and_record_subset(beats):
    fed = fed_of(beats, "patient", train_minutes=2, val_fraction=0.0, records=["s03", "s01"])
    assert [c.cid for c in fed.clients] == ["s03", "s01"]
    for c in fed.clients:
        assert len(c.val) == 0
        assert max(s for _, s in ids(c.train)) < 2 * 60 * 360 <= min(s for _, s in ids(c.test))


def test_client_without_test_beats_is_an_error(beats):
    with pytest.raises(DataError, match=r"client 's01' has no test beats"):
        fed_of(beats, "patient", train_minutes=60)


def test_dirichlet_sizes_and_skew(beats):
    fed = fed_of(beats, "dirichlet")
    assert [c.cid for c in fed.clients] == ["client_0", "client_1", "client_2", "client_3"]
    total = sum(len(c.split(s)) for c in fed.clients for s in SPLITS)
    assert total == len(beats)
    for c in fed.clients:
        assert sum(len(c.split(s)) for s in SPLITS) >= 50
    skewed = fed_of(beats, "dirichlet", alpha=0.1, n_clients=3)
    flat = fed_of(beats, "dirichlet", alpha=1000.0, n_clients=3)
    from pfl.data.stats import federation_stats

    assert federation_stats(skewed).jsd_mean > 5 * federation_stats(flat).jsd_mean


def test_dirichlet_max_beats(beats):
    fed = fed_of(beats, "dirichlet", max_beats=1000, n_clients=3)
    assert sum(len(c.split(s)) for c in fed.clients for s in SPLITS) == 1000


@pytest.mark.parametrize("alpha", [0, -0.5])
def test_dirichlet_alpha_must_be_positive(beats, alpha):
    with pytest.raises(ConfigError, match=rf"partition.alpha={float(alpha)!r}.*> 0"):
        fed_of(beats, "dirichlet", alpha=alpha)


def test_dirichlet_too_many_clients(beats):
    most = len(beats) // 50
    with pytest.raises(ConfigError, match=rf"partition.n_clients={most + 1}.*from 1 to {most}"):
        fed_of(beats, "dirichlet", n_clients=most + 1)


def test_dirichlet_unmeetable_minimum_stops(beats):
    n = len(beats) // 60
    with pytest.raises(ConfigError, match="max_retries=5"):
        fed_of(beats, "dirichlet", n_clients=n, min_samples=60, alpha=0.01, max_retries=5)


def test_interpatient(beats):
    fed = fed_of(beats, "interpatient")
    train_clients = [c.cid for c in fed.training_clients]
    assert train_clients == ["s01", "s02", "s03", "s04", "s05"]
    unseen = [c for c in fed.clients if not c.federated]
    assert [c.cid for c in unseen] == ["s06", "s07", "s08"]
    ds1_beats = {r for c in fed.training_clients for s in SPLITS for r, _ in ids(c.split(s))}
    assert ds1_beats == set(train_clients)
    for c in unseen:
        adapt = {s for _, s in ids(c.train) | ids(c.val)}
        assert max(adapt) < 5 * 60 * 360 <= min(s for _, s in ids(c.test))
        assert len(c.val) > 0
    for c in fed.training_clients:
        n = sum(len(c.split(s)) for s in SPLITS)
        assert n == len(beats.records[c.cid]) and abs(len(c.train) - 0.7 * n) <= 5


def test_interpatient_overlap(beats):
    with pytest.raises(ConfigError, match=r"partition.ds1/ds2=\['s03'\]"):
        fed_of(beats, "interpatient", ds2=["s03", "s06"])


def test_bad_fractions_and_target(beats):
    with pytest.raises(ConfigError, match="partition.fractions"):
        fed_of(beats, "hospitals", fractions={"train": 0.5, "val": 0.1, "test": 0.1})
    with pytest.raises(ConfigError, match="partition._target_"):
        build_federation(beats, {"_target_": "pfl.data.partitions.nope"}, 0)
    with pytest.raises(ConfigError, match="partition.colour"):
        fed_of(beats, "patient", colour="red")


def test_real_partition_yamls_name_their_function():
    for name in ("hospitals", "patient", "dirichlet", "interpatient"):
        cfg = OmegaConf.load(CONF / f"{name}.yaml")
        assert cfg._target_ == f"pfl.data.partitions.{name}" and cfg.name == name
