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
    db = synth.write_synthetic_db(d / "db", records=9)
    return load_beats(synth.data_config(db, d / "cache"))


def part(name, **overrides):
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    for k, v in overrides.items():
        OmegaConf.update(cfg, k, v, merge=False)
    return cfg


SYN = {
    "hospitals": dict(
        sites={
            "cardiac": {"records": ["s02", "s04", "s07"], "budget": 600},
            "general": {"records": ["s01", "s05", "s03"], "budget": 700},
            "community": {"records": ["s06", "s08", "s09"], "budget": 300},
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


WINDOW = 256


def overlapping(fed, split):
    """Oracle by brute force: windows of `split` within WINDOW samples of a federated training
    window of the same record (or of the client's own training window)."""
    train = [(str(r), int(s)) for c in fed.clients if c.federated for r, s in ids(c.train)]
    hit = total = 0
    for c in fed.clients:
        pool = train + ([] if c.federated else [(str(r), int(s)) for r, s in ids(c.train)])
        for r, s in ids(c.split(split)):
            total += 1
            hit += any(r == r2 and abs(s - s2) < WINDOW for r2, s2 in pool)
    return hit, total


# patient and interpatient (by time) draw nothing at random: the seed does not change them.
@pytest.mark.parametrize("name, random", [("hospitals", True), ("patient", False), ("dirichlet", True),
                                          ("interpatient", False)])
def test_deterministic_per_seed_and_seed_matters(beats, name, random):
    a, b = fed_of(beats, name, seed=3), fed_of(beats, name, seed=3)
    assert a.digest() == b.digest()
    assert (fed_of(beats, name, seed=4).digest() != a.digest()) == random
    assert a.name == name
    assert_well_formed(beats, a)


@pytest.mark.parametrize("name", ["hospitals", "patient", "dirichlet", "interpatient"])
def test_default_splits_share_no_sample_with_training(beats, name):
    from pfl.data.stats import window_overlap

    fed = fed_of(beats, name)
    for split in ("val", "test"):
        hit, total = overlapping(fed, split)
        assert total > 0 and hit == 0, f"{name}/{split}: {hit} of {total} windows overlap a training window"
        assert window_overlap(fed)[split]["windows"] == 0.0


def test_the_beat_split_overlaps_and_the_report_counts_it(beats):
    from pfl.data.stats import window_overlap

    fed = fed_of(beats, "hospitals", split_by="beat")
    hit, total = overlapping(fed, "test")
    assert hit > 0
    assert window_overlap(fed)["test"]["windows"] == pytest.approx(hit / total)


def test_hospitals_by_record_never_tests_a_training_patient(beats):
    fed = fed_of(beats, "hospitals")
    for c in fed.clients:
        recs = {s: {r for r, _ in ids(c.split(s))} for s in SPLITS}
        assert all(recs.values()), f"{c.cid}: a split without patients {recs}"
        assert not (recs["train"] & recs["test"] or recs["train"] & recs["val"] or recs["val"] & recs["test"])
        assert set().union(*recs.values()) == set(c.records)
    # Another seed draws other patients for the splits.
    assert fed_of(beats, "hospitals", seed=1).digest() != fed.digest()


def test_by_record_needs_a_patient_per_split(beats):
    with pytest.raises(DataError, match=r"site 'a' has 2 record\(s\) \(s01, s02\).*split_by=record needs at least 3"):
        fed_of(beats, "hospitals", sites={"a": {"records": ["s01", "s02"]}})


def test_time_split_is_consecutive_blocks_a_window_apart(beats):
    fed = fed_of(beats, "hospitals", split_by="time",
                 sites={"a": {"records": ["s01", "s02"], "budget": None}, "b": {"records": ["s03"], "budget": None}})
    for c in fed.clients:
        for r in c.records:
            t = {s: sorted(x for rr, x in ids(c.split(s)) if rr == r) for s in SPLITS}
            assert t["train"][-1] + WINDOW <= t["val"][0] and t["val"][-1] + WINDOW <= t["test"][0]
            n = len(beats.records[r])
            # Only beats inside a gap are dropped: fewer than two windows' worth per boundary.
            assert n - 4 <= sum(len(v) for v in t.values()) <= n
            assert abs(len(t["train"]) - 0.5 * n) <= 3


def test_hospitals_by_beat(beats):
    fed = fed_of(beats, "hospitals", split_by="beat", fractions={"train": 0.5, "val": 0.1, "test": 0.4})
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
        "s01", "s02", "s03", "s04", "s05", "s06", "s07", "s08", "s09"
    }  # fmt: skip


def test_hospitals_short_budget_warns_or_errors(beats, caplog):
    sites = {"a": {"records": ["s01"], "budget": 10_000}, "b": {"records": ["s02"], "budget": None}}
    fed = fed_of(beats, "hospitals", sites=sites, split_by="beat")
    assert sum(len(fed.clients[0].split(s)) for s in SPLITS) == len(beats.records["s01"])
    assert sum(len(fed.clients[1].split(s)) for s in SPLITS) == len(beats.records["s02"])
    assert "fewer than its budget 10000" in caplog.text
    with pytest.raises(DataError, match="site 'a' has only"):
        fed_of(beats, "hospitals", sites=sites, on_short_budget="error", split_by="beat")


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


def test_unknown_split_by_names_the_choices(beats):
    with pytest.raises(ConfigError, match=r"partition.split_by='patient'.*record.*time.*beat"):
        fed_of(beats, "hospitals", split_by="patient")


def test_patient_five_minute_boundary(beats):
    fed = fed_of(beats, "patient")
    assert [c.cid for c in fed.clients] == list(beats.records)
    limit = 5 * 60 * 360
    for c in fed.clients:
        assert c.records == [c.cid] and c.federated
        tr, va = sorted(s for _, s in ids(c.train)), sorted(s for _, s in ids(c.val))
        test = sorted(s for _, s in ids(c.test))
        # val is the contiguous end of the training window (minute 4 to 5), a window apart.
        assert tr[-1] + WINDOW <= va[0] and va[-1] < limit and va[-1] + WINDOW <= test[0]
        assert tr[-1] < 0.8 * limit <= va[0]
        rb = beats.records[c.cid]
        early = int((rb.sample < limit).sum())
        assert early - 2 <= len(tr) + len(va) <= early
        assert int((rb.sample >= limit).sum()) - 1 <= len(test) <= int((rb.sample >= limit).sum())
        assert {r for r, _ in ids(c.train) | ids(c.val) | ids(c.test)} == {c.cid}


def test_patient_minutes_configurable_and_record_subset(beats):
    fed = fed_of(beats, "patient", train_minutes=2, val_fraction=0.0, records=["s03", "s01"])
    assert [c.cid for c in fed.clients] == ["s03", "s01"]
    for c in fed.clients:
        assert len(c.val) == 0
        assert max(s for _, s in ids(c.train)) + WINDOW <= min(s for _, s in ids(c.test))
        assert min(s for _, s in ids(c.test)) >= 2 * 60 * 360


def test_client_without_test_beats_is_an_error(beats):
    with pytest.raises(DataError, match=r"client 's01' has no test beats"):
        fed_of(beats, "patient", train_minutes=60)


def test_dirichlet_sizes_and_skew(beats):
    fed = fed_of(beats, "dirichlet")
    assert [c.cid for c in fed.clients] == ["client_0", "client_1", "client_2", "client_3"]
    total = sum(len(c.split(s)) for c in fed.clients for s in SPLITS)
    assert total == len(beats)
    # By patient over the pool: no client's test patient trains at any client.
    train = {r for c in fed.clients for r, _ in ids(c.train)}
    assert train and not train & {r for c in fed.clients for r, _ in ids(c.test)}
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
        assert len(c.val) > 0 and max(s for _, s in ids(c.train)) < min(s for _, s in ids(c.val))
    for c in fed.training_clients:
        n = sum(len(c.split(s)) for s in SPLITS)
        total = len(beats.records[c.cid])
        assert total - 4 <= n <= total and abs(len(c.train) - 0.7 * total) <= 3
        # DS1 clients split by time: train, then val, then test.
        assert max(s for _, s in ids(c.train)) + WINDOW <= min(s for _, s in ids(c.val))
        assert max(s for _, s in ids(c.val)) + WINDOW <= min(s for _, s in ids(c.test))


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


def test_hospitals_full_is_hospitals_with_every_beat(tmp_path):
    from compose import make_cfg

    ref = make_cfg(tmp_path / "db", tmp_path, "partition=hospitals").partition
    full = make_cfg(tmp_path / "db", tmp_path, "partition=hospitals_full").partition
    assert full.name == "hospitals_full" and ref.name == "hospitals"
    assert list(full.sites) == list(ref.sites)
    for site, spec in ref.sites.items():
        assert list(full.sites[site].records) == list(spec.records)
        assert spec.budget > 0 and full.sites[site].budget is None
    assert (full.split_by, dict(full.fractions)) == (ref.split_by, dict(ref.fractions))


def test_interpatient_val_records_are_held_out_patients_with_every_beat_in_val(beats):
    fed = fed_of(beats, "interpatient", val_records=["s02", "s04"])
    assert [c.cid for c in fed.training_clients] == ["s01", "s03", "s05"]
    held = [c for c in fed.clients if c.heldout]
    assert [c.cid for c in held] == ["s02", "s04"]
    for c in held:
        assert not c.federated and len(c.train) == 0 and len(c.test) == 0
        assert ids(c.val) == {(c.cid, int(s)) for s in beats.records[c.cid].sample}
    # DS2 stays as it was: unseen, adapting on its first minutes.
    assert [c.cid for c in fed.clients if not c.federated and not c.heldout] == ["s06", "s07", "s08"]
    plain = fed_of(beats, "interpatient")
    assert {c.cid: ids(c.test) for c in plain.clients if c.cid in ("s01", "s06")} == \
        {c.cid: ids(c.test) for c in fed.clients if c.cid in ("s01", "s06")}
    assert fed.digest() != plain.digest()


@pytest.mark.parametrize("held, match", [
    (["s06"], r"partition.val_records=\['s06'\].*not in ds1"),
    (["s02", "s02"], r"partition.val_records=\['s02', 's02'\].*distinct"),
    (["s01", "s02", "s03", "s04", "s05"], "leaving at least one DS1 record to train"),
])
def test_interpatient_bad_val_records(beats, held, match):
    with pytest.raises(ConfigError, match=match):
        fed_of(beats, "interpatient", val_records=held)


def test_interpatient_ds1_extra_federates_matched_records_split_like_ds1(beats):
    fed = fed_of(beats, "interpatient", ds1=["s01", "s02"], ds1_extra=["s0[34]", "s05"])
    assert [c.cid for c in fed.training_clients] == ["s01", "s02", "s03", "s04", "s05"]
    # The same clients, the same beats in each split, as listing the records in ds1 itself.
    listed = fed_of(beats, "interpatient")
    assert [(c.cid, ids(c.train), ids(c.val), ids(c.test)) for c in fed.clients] == \
        [(c.cid, ids(c.train), ids(c.val), ids(c.test)) for c in listed.clients]
    # A wildcard stands for every loaded record it matches, in loaded order.
    every = fed_of(beats, "interpatient", ds1=["s01"], ds1_extra=["s0[!16789]"])
    assert [c.cid for c in every.training_clients] == ["s01", "s02", "s03", "s04", "s05"]


@pytest.mark.parametrize("extra, err, match", [
    (["x*"], DataError, r"partition.ds1_extra: the pattern 'x\*' matches none of the loaded records \(s01, s02"),
    (["s02"], ConfigError, r"partition.ds1_extra=\['s02'\].*not in partition.ds1"),
    (["s06"], ConfigError, r"partition.ds1/ds2=\['s06'\]"),
])
def test_interpatient_bad_ds1_extra(beats, extra, err, match):
    with pytest.raises(err, match=match):
        fed_of(beats, "interpatient", ds1=["s01", "s02"], ds1_extra=extra)


def _counts(y, k):
    return np.bincount(np.asarray(y), minlength=k)


@pytest.mark.parametrize("seed", [0, 5])
def test_patient_common_set_adds_the_same_drawn_training_beats_to_every_client(beats, seed):
    common = ["s01", "s02", "s03"]
    per_class = {"N": 40, "V": 6, "S": 1000}  # S asks for more than the records hold
    plain = fed_of(beats, "patient", seed=seed)
    fed = fed_of(beats, "patient", seed=seed, common_records=common, common_per_class=per_class)
    own = {c.cid: ids(c.train) for c in plain.clients}
    # The oracle: the common records' own training beats, by class, from the plain federation.
    pool = {(str(r), int(s)): beats.classes[int(y)] for c in plain.clients if c.cid in common
            for r, s, y in zip(c.train.beat_record, c.train.beat_sample, c.train.y, strict=True)}
    added = {c.cid: ids(c.train) - own[c.cid] for c in fed.clients}
    drawn = added["s09"]  # a client outside the common records gets the whole set
    assert drawn <= set(pool), "a common beat that is not a training beat of a common record"
    got = {k: sum(pool[b] == k for b in drawn) for k in beats.classes}
    available = {k: sum(v == k for v in pool.values()) for k in beats.classes}
    assert got == {k: min(per_class.get(k, 0), available[k]) for k in beats.classes}
    for c in fed.clients:
        assert len(ids(c.train)) == len(c.train), "a beat twice in one training split"
        assert own[c.cid] <= ids(c.train)  # every own training beat stays
        assert added[c.cid] == {b for b in drawn if b[0] != c.cid}  # not its own beats twice
        # val and test untouched
        assert (ids(c.val), ids(c.test)) == (ids(next(p for p in plain.clients if p.cid == c.cid).val),
                                             ids(next(p for p in plain.clients if p.cid == c.cid).test))
        # each added beat carries its own data and label
        sp = c.train
        for k in np.flatnonzero(sp.beat_record != c.cid)[:5]:
            rb = beats.records[str(sp.beat_record[k])]
            i = int(np.flatnonzero(rb.sample == sp.beat_sample[k])[0])
            np.testing.assert_array_equal(sp.x[k, 0].numpy(), rb.x[i])
            assert int(sp.y[k]) == int(rb.y[i])
    again = fed_of(beats, "patient", seed=seed, common_records=common, common_per_class=per_class)
    assert again.digest() == fed.digest()


def test_patient_common_set_draw_depends_on_the_seed_and_defaults_to_the_published_counts(beats):
    common = ["s01", "s02", "s03", "s04"]
    a = fed_of(beats, "patient", seed=0, common_records=common, common_per_class={"N": 30})
    b = fed_of(beats, "patient", seed=1, common_records=common, common_per_class={"N": 30})
    assert ids(a.clients[-1].train) != ids(b.clients[-1].train)
    published = fed_of(beats, "patient", common_records=common)
    plain = fed_of(beats, "patient")
    extra = _counts(published.clients[-1].train.y, 5) - _counts(plain.clients[-1].train.y, 5)
    want = {"N": 75, "S": 75, "V": 75, "F": 13, "Q": 7}
    avail = sum(_counts(c.train.y, 5) for c in plain.clients if c.cid in common)
    assert extra.tolist() == [min(want[k], int(avail[i])) for i, k in enumerate(beats.classes)]


@pytest.mark.parametrize("per_class, match", [
    ({"X": 3}, "partition.common_per_class"),
    ({"N": -1}, "partition.common_per_class"),
    ({"N": 2.5}, "partition.common_per_class"),
    ([75], "partition.common_per_class"),
])
def test_patient_bad_common_set(beats, per_class, match):
    with pytest.raises(ConfigError, match=match):
        fed_of(beats, "patient", common_records=["s01"], common_per_class=per_class)
    with pytest.raises(DataError, match="partition.common_records"):
        fed_of(beats, "patient", common_records=["s01", "zz"])


def test_patient_common_preset_and_default_keep_the_config_hash(tmp_path):
    from compose import make_cfg

    from pfl import config as cfgmod

    synth.write_synthetic_db(tmp_path / "db", records=3)
    cfg = make_cfg(tmp_path / "db", tmp_path, "partition=patient")
    legacy = OmegaConf.create(OmegaConf.to_container(cfg))
    for k in ("common_records", "common_per_class"):
        del legacy.partition[k]
    assert cfgmod.config_hash(cfg) == cfgmod.config_hash(legacy)
    common = make_cfg(tmp_path / "db", tmp_path, "partition=patient_common").partition
    assert common.common_records == [100, 101, 103, 105, 106, 108, 109, 111, 112, 113, 114, 115, 116, 117, 118,
                                     119, 121, 122, 123, 124]
    assert (common.train_minutes, common.val_fraction, common.common_per_class) == (5, 0.2, None)


def test_interpatient_ds1_extra_default_keeps_the_config_hash(tmp_path):
    from compose import make_cfg

    from pfl import config as cfgmod

    synth.write_synthetic_db(tmp_path / "db", records=3)
    cfg = make_cfg(tmp_path / "db", tmp_path, "partition=interpatient")
    assert list(cfg.partition.ds1_extra) == []
    legacy = OmegaConf.create(OmegaConf.to_container(cfg))
    del legacy.partition["ds1_extra"]
    assert cfgmod.config_hash(cfg) == cfgmod.config_hash(legacy)
    more = make_cfg(tmp_path / "db", tmp_path, "partition=interpatient", "partition.ds1_extra=[svdb/*]")
    assert cfgmod.config_hash(more) != cfgmod.config_hash(cfg)


def test_wildcards_match_namespaced_ids_and_bare_record_names():
    from types import SimpleNamespace

    from pfl.data.partitions import _records

    two = SimpleNamespace(records={"mitdb/100": None, "mitdb/800x": None, "svdb/800": None, "svdb/801": None})
    assert _records(two, ["svdb/80?"], "k") == ["svdb/800", "svdb/801"]
    assert _records(two, ["80?"], "k") == ["svdb/800", "svdb/801"]  # bare, as a plain `800` resolves
    assert _records(two, ["100", "svdb/*"], "k") == ["mitdb/100", "svdb/800", "svdb/801"]
    assert _records(two, ["mitdb/8*"], "k") == ["mitdb/800x"]
    with pytest.raises(ConfigError, match=r"k=\['svdb/\*', '800'\].*each record once.*repeated: \['svdb/800'\]"):
        _records(two, ["svdb/*", "800"], "k")


def test_interpatient_val_records_take_wildcards(beats):
    listed = fed_of(beats, "interpatient", val_records=["s02", "s04"])
    pattern = fed_of(beats, "interpatient", val_records=["s0[24]"])
    assert [c.cid for c in pattern.clients if c.heldout] == ["s02", "s04"]
    assert pattern.digest() == listed.digest()
