"""Loading synthetic WFDB records into beats: lead, labels, edges, normalization, cache."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import synth
import wfdb

from pfl.data import mitdb
from pfl.data.mitdb import cache_path, count_reference_labels, load_beats, parse_settings
from pfl.errors import ConfigError, DataError

CLASSES = ["N", "S", "V", "F", "Q"]
AAMI = {"N": "NLRej", "S": "AaJS", "V": "VE", "F": "F", "Q": "/fQ"}
SYM2CLASS = {s: CLASSES.index(c) for c, syms in AAMI.items() for s in syms}


def reference(root, record):
    ann = wfdb.rdann(str(root / record), "atr")
    return np.asarray(ann.sample), list(ann.symbol)


def test_loads_every_record_with_labels_from_the_aami_mapping(synthetic_db, synthetic_cfg):
    beats = load_beats(synthetic_cfg)
    assert list(beats.records) == ["s01", "s02", "s03", "s04", "s05", "s06"]
    assert beats.classes == CLASSES
    for name, rb in beats.records.items():
        samples, symbols = reference(synthetic_db, name)
        want = {
            int(s): SYM2CLASS[sym]
            for s, sym in zip(samples, symbols, strict=True)
            if sym in SYM2CLASS
        }
        # Every kept beat carries the class of its reference annotation, and no non-beat
        # annotation ('+', '~') produced a beat.
        assert all(want[int(s)] == int(y) for s, y in zip(rb.sample, rb.y, strict=True))
        non_beats = {
            int(s) for s, sym in zip(samples, symbols, strict=True) if sym not in SYM2CLASS
        }
        assert non_beats and not non_beats & set(rb.sample.tolist())
        assert rb.x.shape == (len(rb), 256) and rb.x.dtype == np.float32
        assert rb.fs == 360 and rb.lead == "MLII"
        assert len(rb) + rb.dropped_edge == len(want)
    counts = np.bincount(np.concatenate([r.y for r in beats.records.values()]), minlength=5)
    assert (counts > 0).all(), counts


def test_edge_beats_are_dropped_and_counted(synthetic_cfg):
    beats = load_beats(synthetic_cfg)
    for rb in beats.records.values():
        assert rb.dropped_edge == 2
        assert rb.sample.min() >= 90 and rb.sample.max() + 166 <= 7 * 60 * 360
        assert synth.EDGE_START not in rb.sample
    synthetic_cfg.window.before = 10
    synthetic_cfg.window.after = 20
    assert all(rb.dropped_edge == 0 for rb in load_beats(synthetic_cfg).records.values())


def test_lead_is_chosen_by_name_not_position(synthetic_db, synthetic_cfg):
    synthetic_cfg.filter = None
    synthetic_cfg.normalize = "none"
    beats = load_beats(synthetic_cfg)
    assert wfdb.rdheader(str(synthetic_db / "s02")).sig_name == ["V1", "MLII"]
    for name in ("s01", "s02"):
        rec = wfdb.rdrecord(str(synthetic_db / name))
        mlii = rec.p_signal[:, rec.sig_name.index("MLII")]
        rb = beats.records[name]
        s = int(rb.sample[5])
        np.testing.assert_allclose(rb.x[5], mlii[s - 90 : s + 166], atol=1e-5)


def test_normalizations(synthetic_cfg):
    x = load_beats(synthetic_cfg).records["s01"].x
    np.testing.assert_allclose(x.mean(axis=1), 0, atol=1e-4)
    np.testing.assert_allclose(x.std(axis=1), 1, atol=1e-3)
    synthetic_cfg.normalize = "minmax"
    x = load_beats(synthetic_cfg).records["s01"].x
    np.testing.assert_allclose(x.min(axis=1), 0, atol=1e-6)
    np.testing.assert_allclose(x.max(axis=1), 1, atol=1e-4)


def test_records_list_ints_and_paced_exclusion(synthetic_db, tmp_path):
    cfg = synth.data_config(synthetic_db, tmp_path / "c", records=["s03", "s01"])
    assert list(load_beats(cfg).records) == ["s03", "s01"]
    cfg = synth.data_config(synthetic_db, tmp_path / "c", paced_records=["s02", "s04"])
    assert list(load_beats(cfg).records) == ["s01", "s03", "s05", "s06"]
    cfg.exclude_paced = False
    assert len(load_beats(cfg).records) == 6
    db = synth.write_synthetic_db(tmp_path / "num", records=["100", "101"], minutes=1.0)
    cfg = synth.data_config(db, tmp_path / "c", records=[101])
    assert list(load_beats(cfg).records) == ["101"]


def test_all_records_without_records_file_uses_headers(synthetic_db, synthetic_cfg):
    (synthetic_db / "RECORDS").unlink()
    assert sorted(load_beats(synthetic_cfg).records) == [f"s0{i}" for i in range(1, 7)]


def test_count_reference_labels_counts_before_edge_trimming(synthetic_db, synthetic_cfg):
    want = collections.Counter()
    for name in ("s01", "s02", "s03", "s04", "s05", "s06"):
        for sym in reference(synthetic_db, name)[1]:
            if sym in SYM2CLASS:
                want[CLASSES[SYM2CLASS[sym]]] += 1
    got = count_reference_labels(synthetic_cfg)
    assert got == {**{c: want[c] for c in CLASSES}, "total": sum(want.values())}
    beats = load_beats(synthetic_cfg)
    assert got["total"] == len(beats) + sum(r.dropped_edge for r in beats.records.values())


def test_lead_fallback(synthetic_db, synthetic_cfg):
    synthetic_cfg.lead = "V5"
    synthetic_cfg.lead_fallback = ["V1"]
    beats = load_beats(synthetic_cfg)
    assert {rb.lead for rb in beats.records.values()} == {"V1"}


# --------------------------------------------------------------------------- cache


def test_warm_load_reads_no_record(synthetic_cfg, monkeypatch):
    cold = load_beats(synthetic_cfg)

    def boom(*a, **k):
        raise AssertionError("wfdb read on a warm cache")

    monkeypatch.setattr(mitdb.wfdb, "rdrecord", boom)
    monkeypatch.setattr(mitdb.wfdb, "rdann", boom)
    monkeypatch.setattr(mitdb.wfdb, "rdheader", boom)
    warm = load_beats(synthetic_cfg)
    for name, rb in cold.records.items():
        w = warm.records[name]
        np.testing.assert_array_equal(rb.x, w.x)
        np.testing.assert_array_equal(rb.y, w.y)
        np.testing.assert_array_equal(rb.sample, w.sample)
        assert (rb.dropped_edge, rb.fs, rb.lead) == (w.dropped_edge, w.fs, w.lead)


def count_reads(monkeypatch):
    calls = []
    real = mitdb.wfdb.rdrecord

    def counting(*a, **k):
        calls.append(a[0])
        return real(*a, **k)

    monkeypatch.setattr(mitdb.wfdb, "rdrecord", counting)
    return calls


@pytest.mark.parametrize(
    "key,value",
    [
        ("window.before", 60),
        ("window.after", 100),
        ("filter.high_hz", 30.0),
        ("filter", None),
        ("normalize", "minmax"),
        ("lead", "V1"),
        ("aami.N", ["N", "L", "R"]),
    ],
)
def test_changing_a_setting_rebuilds(synthetic_cfg, monkeypatch, key, value):
    from omegaconf import OmegaConf

    first = load_beats(synthetic_cfg)
    calls = count_reads(monkeypatch)
    OmegaConf.update(synthetic_cfg, key, value, merge=False)
    second = load_beats(synthetic_cfg)
    assert len(calls) == 6
    assert any(
        a.x.shape != b.x.shape or not np.array_equal(a.x, b.x) or len(a) != len(b)
        for a, b in zip(first.records.values(), second.records.values(), strict=True)
    )
    calls.clear()
    load_beats(synthetic_cfg)
    assert calls == []


def test_changed_source_file_rebuilds(synthetic_db, synthetic_cfg, monkeypatch):
    load_beats(synthetic_cfg)
    calls = count_reads(monkeypatch)
    st = (synthetic_db / "s03.atr").stat()
    os.utime(synthetic_db / "s03.atr", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    load_beats(synthetic_cfg)
    assert [os.path.basename(c) for c in calls] == ["s03"]


def corrupt_truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def corrupt_flip_byte(p):
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0xFF  # inside the x array: only the CRC notices
    p.write_bytes(bytes(b))


def corrupt_garbage(p):
    p.write_bytes(b"not a zip file at all")


def corrupt_missing_key(p):
    with np.load(p) as z:
        d = {k: z[k] for k in z.files if k != "sample"}
    np.savez(p.with_suffix(""), **d)


def corrupt_inconsistent(p):
    with np.load(p) as z:
        d = {k: z[k] for k in z.files}
    d["y"] = d["y"][:-3]
    np.savez(p.with_suffix(""), **d)


def corrupt_empty(p):
    p.write_bytes(b"")


@pytest.mark.parametrize(
    "corrupt",
    [
        corrupt_truncate,
        corrupt_flip_byte,
        corrupt_garbage,
        corrupt_missing_key,
        corrupt_inconsistent,
        corrupt_empty,
    ],
)
def test_corrupt_cache_file_is_rebuilt(synthetic_cfg, monkeypatch, corrupt):
    cold = load_beats(synthetic_cfg)
    path = cache_path(parse_settings(synthetic_cfg), "s04")
    corrupt(path)
    calls = count_reads(monkeypatch)
    again = load_beats(synthetic_cfg)
    assert [os.path.basename(c) for c in calls] == ["s04"]
    np.testing.assert_array_equal(again.records["s04"].x, cold.records["s04"].x)
    np.testing.assert_array_equal(again.records["s04"].y, cold.records["s04"].y)
    calls.clear()
    load_beats(synthetic_cfg)
    assert calls == []


def test_failed_build_leaves_no_partial_cache_file(synthetic_db, synthetic_cfg, monkeypatch):
    (synthetic_db / "s05.atr").write_bytes(b"\x00\x01garbage")
    with pytest.raises(DataError):
        load_beats(synthetic_cfg)
    d = cache_path(parse_settings(synthetic_cfg), "s01").parent
    names = sorted(p.name for p in d.iterdir())
    assert "s05.npz" not in names and not [n for n in names if n.endswith(".tmp")]

    def dies(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(mitdb.np, "savez", dies)
    (synthetic_db / "s05.atr").unlink()
    synth.write_record(synthetic_db, "s05", minutes=7.0)
    with pytest.raises(KeyboardInterrupt):
        load_beats(synthetic_cfg)
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp") or p.name == "s05.npz"]


def test_no_cache_dir_means_no_cache(synthetic_cfg):
    synthetic_cfg.cache_dir = None
    assert len(load_beats(synthetic_cfg).records) == 6


# --------------------------------------------------------------------------- bad input


def test_missing_root_without_download(tmp_path):
    cfg = synth.data_config(tmp_path / "nowhere", tmp_path / "c")
    with pytest.raises(DataError, match="nowhere.*PFL_DATA_DIR"):
        load_beats(cfg)


def test_missing_root_download_fails_offline(tmp_path, monkeypatch):
    seen = {}

    def offline(db, dl_dir, records="all", **k):
        seen.update(db=db, dl_dir=dl_dir, records=records)
        raise ConnectionError("network unreachable")

    monkeypatch.setattr(mitdb.wfdb, "dl_database", offline)
    cfg = synth.data_config(tmp_path / "nowhere", tmp_path / "c", download=True)
    with pytest.raises(DataError) as e:
        load_beats(cfg)
    msg = str(e.value)
    assert "nowhere" in msg and "download failed" in msg and "PFL_DATA_DIR" in msg
    assert seen["db"] == "mitdb" and seen["records"] == "all"


def test_listed_record_absent_downloads_only_the_missing(synthetic_db, synthetic_cfg, monkeypatch):
    for suf in (".hea", ".dat", ".atr"):
        (synthetic_db / f"s03{suf}").unlink()
    seen = {}

    def offline(db, dl_dir, records="all", **k):
        seen["records"] = records
        raise OSError("offline")

    monkeypatch.setattr(mitdb.wfdb, "dl_database", offline)
    synthetic_cfg.download = True
    with pytest.raises(DataError, match=r"s03.*download failed"):
        load_beats(synthetic_cfg)
    assert seen["records"] == ["s03"]
    synthetic_cfg.download = False
    with pytest.raises(DataError, match=r"\['s03'\] not found"):
        load_beats(synthetic_cfg)


def test_successful_download_is_used(tmp_path, monkeypatch):
    def fake_download(db, dl_dir, records="all", **k):
        synth.write_synthetic_db(dl_dir, records=["100", "101"], minutes=1.0)

    monkeypatch.setattr(mitdb.wfdb, "dl_database", fake_download)
    cfg = synth.data_config(tmp_path / "fresh", tmp_path / "c", download=True)
    assert list(load_beats(cfg).records) == ["100", "101"]


def test_unknown_record_name_lists_the_known_ones(synthetic_cfg):
    synthetic_cfg.records = ["s01", "s99"]
    with pytest.raises(DataError, match=r"unknown record.*s99.*s01, s02, s03, s04, s05, s06"):
        load_beats(synthetic_cfg)


def test_unknown_lead(synthetic_cfg):
    synthetic_cfg.lead = "V9"
    synthetic_cfg.lead_fallback = []
    with pytest.raises(
        DataError, match=r"record s01: lead 'V9' not found; available leads: MLII, V1"
    ):
        load_beats(synthetic_cfg)


def test_corrupt_header(synthetic_db, synthetic_cfg):
    (synthetic_db / "s02.hea").write_text("this is not a header\n")
    with pytest.raises(DataError, match=r"s02\.hea"):
        load_beats(synthetic_cfg)


def test_corrupt_annotation(synthetic_db, synthetic_cfg):
    (synthetic_db / "s06.atr").write_bytes(b"\xff" * 7)
    with pytest.raises(DataError, match=r"s06\.atr"):
        load_beats(synthetic_cfg)
    with pytest.raises(DataError, match=r"s06\.atr"):
        count_reference_labels(synthetic_cfg)


@pytest.mark.parametrize(
    "key,value,match",
    [
        ("normalize", "l2", "data.normalize='l2'"),
        ("classes", ["N", "S", "V", "F"], "data.aami"),
        ("classes", ["N", "S", "V", "F", "Q", "X"], "missing: \\['X'\\]"),
        ("aami.S", ["A", "N"], "data.aami.S"),
        ("window.before", -1, "data.window"),
        ("filter.low_hz", 50.0, "data.filter"),
        ("filter.high_hz", 200.0, "Nyquist"),
        ("records", "some", "data.records"),
    ],
)
def test_bad_data_config(synthetic_cfg, key, value, match):
    from omegaconf import OmegaConf

    OmegaConf.update(synthetic_cfg, key, value, merge=False)
    with pytest.raises(ConfigError, match=match):
        load_beats(synthetic_cfg)


def test_sampling_rate_mismatch(synthetic_cfg):
    synthetic_cfg.fs = 250
    with pytest.raises(DataError, match="360 Hz but data.fs=250"):
        load_beats(synthetic_cfg)


def test_plain_mapping_config(synthetic_db, tmp_path):
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(synth.data_config(synthetic_db, tmp_path / "c"))
    assert len(load_beats(d)) > 0
