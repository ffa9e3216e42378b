"""Beat sources behind one interface: `data._target_` names a function config -> BeatSet.

`wfdb_beats` reads one WFDB database (`conf/data/mitdb.yaml`, `conf/data/svdb.yaml`) or
several at once (`databases:` in `conf/data/mitdb_svdb.yaml`): each database's entry holds
what differs (root, database name, leads, paced records) on top of the shared settings
(sampling rate, window, filter, classes, AAMI mapping), and record ids become
`<database>/<record>` so that patients of two institutions never clash. A third database is
one YAML: copy `conf/data/svdb.yaml` and change the name, root and leads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pfl.data.rr import IRREGULAR_BEATS, LOCAL_BEATS, pack, parse_features, parse_rr, select
from pfl.data.types import BeatSet, RecordBeats
from pfl.errors import ConfigError

#: keys of a data config that belong to the source, not to a database's beat settings
SOURCE_KEYS = ("_target_", "databases", "features", "rr")
DEFAULT_TARGET = "pfl.data.sources.wfdb_beats"


def _plain(cfg: Any) -> dict[str, Any]:
    from pfl.data.mitdb import _plain as plain

    d = plain(cfg)
    if not isinstance(d, dict):
        raise ConfigError("data", type(d).__name__, "a mapping with the keys of conf/data/mitdb.yaml")
    return d


def load_beats(cfg_data: Any) -> BeatSet:
    """The beats of the configured source (`data._target_`, default the WFDB reader)."""
    import hydra.utils

    d = _plain(cfg_data)
    target = str(d.get("_target_") or DEFAULT_TARGET)
    try:
        fn = hydra.utils.get_method(target)
    except Exception as e:  # noqa: BLE001 - import or attribute errors alike
        raise ConfigError("data._target_", target, f"an importable function config -> BeatSet, e.g. {DEFAULT_TARGET}",
                          hint=str(e).splitlines()[0]) from None
    beats = fn(d)
    if not isinstance(beats, BeatSet):
        raise ConfigError("data._target_", target, "a function returning a pfl.data.types.BeatSet")
    return beats


def database_settings(d: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """Each database's full beat settings: the shared keys with its own entry on top."""
    shared = {k: v for k, v in d.items() if k not in SOURCE_KEYS}
    dbs = d.get("databases")
    if dbs is None:
        return {str(shared.get("database", "mitdb")): shared}
    if not isinstance(dbs, Mapping) or len(dbs) < 1:
        raise ConfigError("data.databases", dbs, "a mapping database name -> {root, lead, ...}")
    out: dict[str, dict[str, Any]] = {}
    names: dict[str, str] = {}
    for key, spec in dbs.items():
        if not isinstance(spec, Mapping):
            raise ConfigError(f"data.databases.{key}", spec, "a mapping of that database's settings (root, lead, ...)")
        # The entry's own name, not the shared one inherited from conf/data/mitdb.yaml.
        merged = {**shared, **dict(spec), "database": str(spec.get("database", key))}
        if merged["database"] != shared.get("database", "mitdb") and "known_records" not in spec:
            merged.pop("known_records", None)  # the shared list names the other database's records
        name = str(merged["database"])
        if name in names:
            raise ConfigError(f"data.databases.{key}.database", name,
                              "a database not already listed (record ids would clash)",
                              hint=f"data.databases.{names[name]} reads {name} too")
        names[name] = str(key)
        out[str(key)] = merged
    return out


def wfdb_beats(cfg_data: Any) -> BeatSet:
    """Beats of one or several WFDB databases (see the module doc)."""
    from pfl.data import mitdb

    d = _plain(cfg_data)
    features = parse_features(d.get("features", ["beat"]))
    rr = parse_rr(d.get("rr")) if "rr" in features else None
    per_db = database_settings(d)
    # The local mean's and the irregularity's lengths shape the cached intervals; the rest of
    # data.rr only selects.
    local = {f"rr_{key}": rr[key] for key, default in (("local_beats", LOCAL_BEATS), ("irregular_beats", IRREGULAR_BEATS))
             if rr and rr[key] != default}
    if "databases" not in d:
        return with_features(mitdb.load_beats({**{k: v for k, v in d.items() if k not in SOURCE_KEYS}, **local}), rr)
    sets = {key: mitdb.load_beats({**settings, **local}) for key, settings in per_db.items()}
    first_key, first = next(iter(sets.items()))
    records: dict[str, RecordBeats] = {}
    for key, bs in sets.items():
        if bs.classes != first.classes:
            raise ConfigError(f"data.databases.{key}.classes", bs.classes,
                              f"the classes of every other database ({first_key}: {first.classes})")
        for rec, rb in bs.records.items():
            rid = f"{key}/{rec}"
            records[rid] = RecordBeats(record=rid, x=rb.x, y=rb.y, sample=rb.sample, fs=rb.fs,
                                       dropped_edge=rb.dropped_edge, lead=rb.lead, native_fs=rb.native_fs,
                                       rr=rb.rr)
    return with_features(BeatSet(classes=list(first.classes), records=records), rr)


def with_features(beats: BeatSet, rr: Mapping[str, Any] | None) -> BeatSet:
    """The beats as model inputs: unchanged without RR features, else each window followed by
    the record's RR features (pfl.data.rr.pack)."""
    if rr is None:
        return beats
    out = {}
    for rid, rb in beats.records.items():
        x = pack(rb.x, select(rb.rr, rr))
        out[rid] = RecordBeats(record=rb.record, x=x, y=rb.y, sample=rb.sample, fs=rb.fs, dropped_edge=rb.dropped_edge,
                               lead=rb.lead, native_fs=rb.native_fs, rr=rb.rr)
    return BeatSet(classes=beats.classes, records=out, rr_features=len(rr["features"]))


def count_reference_labels(cfg_data: Any) -> dict[str, int]:
    """AAMI class counts of the reference annotations of every configured database, plus total."""
    from pfl.data import mitdb

    total: dict[str, int] = {}
    for settings in database_settings(_plain(cfg_data)).values():
        for k, n in mitdb.count_reference_labels(settings).items():
            total[k] = total.get(k, 0) + n
    return total
