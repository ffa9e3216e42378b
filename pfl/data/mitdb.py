"""A WFDB database (MIT-BIH Arrhythmia by default): records -> labelled, normalized beats, cached.

Which database (`database`, its PhysioNet name, used for downloads), its records, leads and
paced records come from the `data` config (conf/data/<database>.yaml). Records sampled at
another rate than `data.fs` are resampled to it with scipy's polyphase resampler when
`data.resample` is true (the annotations' sample indices scaled alike), before filtering, so
a window of `window.before + window.after` samples is the same length in seconds for every
database. Reading goes through wfdb (`rdheader`, `rdrecord`, `rdann`). A beat is a window of
`window.before + window.after` samples around an annotated R peak of the configured lead,
taken from the band-pass filtered lead and normalized on its own. Labels follow the AAMI
EC57 mapping given in the config; annotation symbols outside it (rhythm changes '+', noise
'~', comments, ...) are not beats and are skipped.

Cache layout: `<cache_dir>/<settings hash>/<record>.npz`. The hash covers every setting that
changes the beats of a record (lead, window, filter, normalization, fs, mapping, classes and
CACHE_VERSION). Each file also stores a signature (size + mtime) of the record's source files
and is only used when that still matches, so replacing the data rebuilds it. Files are written
to a temporary file in the same directory and renamed into place, so a reader never sees a
half-written file; anything unreadable or inconsistent is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import wfdb
from omegaconf import DictConfig, ListConfig, OmegaConf
from scipy.signal import butter, resample_poly, sosfiltfilt

from pfl.atomic import atomic_write
from pfl.data.rr import IRREGULAR_BEATS, LOCAL_BEATS, RAW, raw_intervals
from pfl.data.types import BeatSet, RecordBeats
from pfl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

# Bump whenever the beat extraction code changes what it produces: old caches then miss.
CACHE_VERSION = 3  # 2: the RR irregularity columns (local_sd, local_sd_causal); 3: irregularity

SOURCE_SUFFIXES = (".hea", ".dat", ".atr")
DATABASE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
NORMALIZATIONS = ("zscore", "minmax", "none")
_CACHE_KEYS = ("x", "y", "sample", "fs", "dropped_edge", "lead", "source", "settings", "rr")


def _plain(value: Any) -> Any:
    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


@dataclass(frozen=True)
class DataSettings:
    """The validated `data` config."""

    root: Path
    download: bool
    cache_dir: Path | None
    records: str | tuple[str, ...]
    exclude_paced: bool
    paced_records: tuple[str, ...]
    lead: str
    lead_fallback: tuple[str, ...]
    fs: float | None
    before: int
    after: int
    filter: dict | None
    normalize: str
    classes: tuple[str, ...]
    aami: dict[str, tuple[str, ...]]
    #: PhysioNet database name (downloads, messages, record-id namespace)
    database: str = "mitdb"
    #: resample records whose rate differs from fs (else such a record is an error)
    resample: bool = False
    #: the database's record names (from its YAML), to check data.records before a download
    known_records: tuple[str, ...] = ()
    #: more leads as further input channels, after `lead`: names, or "other" = the record's
    #: first lead that is not the main one (mitdb's second leads differ by record: V1, V2, V4, V5)
    extra_leads: tuple[str, ...] = ()
    #: beats in the local RR mean (data.rr.local_beats), part of the cached intervals
    rr_local_beats: int = LOCAL_BEATS
    #: beats of the irregularity medians (data.rr.irregular_beats), part of the cached intervals
    rr_irregular_beats: int = IRREGULAR_BEATS

    @property
    def window(self) -> int:
        return self.before + self.after

    @property
    def symbol_to_class(self) -> dict[str, int]:
        return {s: self.classes.index(c) for c, syms in self.aami.items() for s in syms}

    def beat_settings(self) -> dict[str, Any]:
        """Everything that changes the beats of one record (the cache key)."""
        return {
            "version": CACHE_VERSION,
            "lead": self.lead,
            "lead_fallback": list(self.lead_fallback),
            "fs": self.fs,
            "before": self.before,
            "after": self.after,
            "filter": self.filter,
            "normalize": self.normalize,
            "classes": list(self.classes),
            "aami": {c: list(self.aami[c]) for c in self.classes},
            # Only when not the defaults: mitdb's cache (and its hash) stays as it was.
            **({"database": self.database} if self.database != "mitdb" else {}),
            **({"resample": True} if self.resample else {}),
            **({"extra_leads": list(self.extra_leads)} if self.extra_leads else {}),
            **({"rr_local_beats": self.rr_local_beats} if self.rr_local_beats != LOCAL_BEATS else {}),
            **({"rr_irregular_beats": self.rr_irregular_beats} if self.rr_irregular_beats != IRREGULAR_BEATS
               else {}),
        }

    def settings_hash(self) -> str:
        blob = json.dumps(self.beat_settings(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


def _record_names(value: Any) -> tuple[str, ...]:
    return tuple(str(v) for v in value)


def parse_settings(cfg_data: Any) -> DataSettings:
    """Validate the `data` config (a DictConfig or any mapping with its keys)."""
    d = _plain(cfg_data)
    if not isinstance(d, dict):
        raise ConfigError(
            "data", type(d).__name__, "a mapping with the keys of conf/data/mitdb.yaml"
        )

    def need(key: str) -> Any:
        if key not in d:
            raise ConfigError(f"data.{key}", None, "a value (see conf/data/mitdb.yaml)")
        return d[key]

    if need("root") in (None, ""):
        raise ConfigError("data.root", d["root"], "a directory with the MIT-BIH records")
    records = d.get("records", "all")
    if isinstance(records, str):
        if records != "all":
            raise ConfigError("data.records", records, "'all' or a list of record names")
    elif isinstance(records, int):
        records = (str(records),)
    else:
        records = _record_names(records)
        if not records:
            raise ConfigError("data.records", [], "'all' or a non-empty list of record names")

    window = d.get("window") or {}
    before, after = int(window.get("before", 90)), int(window.get("after", 166))
    if before < 0 or after < 0 or before + after < 2:
        raise ConfigError(
            "data.window",
            {"before": before, "after": after},
            "before >= 0, after >= 0, before + after >= 2",
        )

    filt = d.get("filter")
    if filt is not None:
        filt = {
            "low_hz": None if filt.get("low_hz") is None else float(filt["low_hz"]),
            "high_hz": None if filt.get("high_hz") is None else float(filt["high_hz"]),
            "order": int(filt.get("order", 2)),
        }
        if filt["low_hz"] is None and filt["high_hz"] is None:
            filt = None
        elif filt["order"] < 1:
            raise ConfigError("data.filter.order", filt["order"], "an integer >= 1")
        elif (
            filt["low_hz"] is not None
            and filt["high_hz"] is not None
            and not 0 < filt["low_hz"] < filt["high_hz"]
        ):
            raise ConfigError(
                "data.filter", filt, "0 < low_hz < high_hz (or null to disable a side / the filter)"
            )

    normalize = str(d.get("normalize", "zscore")).lower()
    if normalize not in NORMALIZATIONS:
        raise ConfigError("data.normalize", d.get("normalize"), " | ".join(NORMALIZATIONS))

    classes = _record_names(need("classes"))
    if len(set(classes)) != len(classes) or not classes:
        raise ConfigError("data.classes", list(classes), "a non-empty list of distinct class names")
    aami_raw = need("aami") or {}
    missing = [c for c in classes if c not in aami_raw]
    extra = [c for c in aami_raw if c not in classes]
    if missing or extra:
        raise ConfigError(
            "data.aami",
            sorted(aami_raw),
            f"one symbol list for each class in data.classes {list(classes)}",
            hint=(f"missing: {missing}. " if missing else "")
            + (f"not in data.classes: {extra}" if extra else ""),
        )
    aami = {c: _record_names(aami_raw[c]) for c in classes}
    seen: dict[str, str] = {}
    for c, syms in aami.items():
        for s in syms:
            if s in seen and seen[s] != c:
                raise ConfigError(
                    f"data.aami.{c}",
                    s,
                    "each symbol in one class only",
                    hint=f"{s!r} is also in {seen[s]}",
                )
            seen[s] = c

    fs = d.get("fs")
    if fs is not None and not (isinstance(fs, int | float) and 0 < float(fs) < 100_000):
        raise ConfigError("data.fs", fs, "a sampling rate in Hz > 0 (or null: the records' own)")
    database = str(d.get("database", "mitdb"))
    if not DATABASE_NAME.fullmatch(database):
        raise ConfigError("data.database", database, "a PhysioNet database name such as mitdb, svdb, incartdb "
                          "(lower-case letters, digits, '-')")
    resample = d.get("resample", False)
    if not isinstance(resample, bool):
        raise ConfigError("data.resample", resample, "true or false")
    if resample and fs is None:
        raise ConfigError("data.fs", None, "a target sampling rate in Hz when data.resample=true")
    extra = d.get("extra_leads") or ()
    if isinstance(extra, str):
        extra = (extra,)
    extra = _record_names(extra)
    if len(set(extra)) != len(extra) or str(d.get("lead")) in extra:
        raise ConfigError("data.extra_leads", list(extra), "distinct lead names (or 'other') besides data.lead")
    cache_dir = d.get("cache_dir")
    return DataSettings(
        root=Path(str(d["root"])).expanduser(),
        download=bool(d.get("download", False)),
        cache_dir=None if cache_dir in (None, "") else Path(str(cache_dir)).expanduser(),
        records=records,
        exclude_paced=bool(d.get("exclude_paced", True)),
        paced_records=_record_names(d.get("paced_records") or ()),
        lead=str(need("lead")),
        lead_fallback=_record_names(d.get("lead_fallback") or ()),
        fs=None if fs is None else float(fs),
        before=before,
        after=after,
        filter=filt,
        normalize=normalize,
        classes=classes,
        aami=aami,
        database=database,
        resample=resample,
        known_records=_record_names(d.get("known_records") or ()),
        extra_leads=extra,
        rr_local_beats=int(d.get("rr_local_beats", LOCAL_BEATS)),
        rr_irregular_beats=int(d.get("rr_irregular_beats", IRREGULAR_BEATS)),
    )


# --------------------------------------------------------------------------- records


def _listed_records(root: Path) -> list[str] | None:
    f = root / "RECORDS"
    if not f.is_file():
        return None
    return [ln.strip() for ln in f.read_text().splitlines() if ln.strip()]


def _is_present(root: Path, record: str) -> bool:
    return all((root / f"{record}{s}").is_file() for s in SOURCE_SUFFIXES)


ENV = {"mitdb": "PFL_DATA_DIR", "svdb": "PFL_SVDB_DIR"}


def _how_to_provide(root: Path, database: str = "mitdb") -> str:
    env = ENV.get(database, "the root variable of conf/data/" + database + ".yaml")
    return (
        f"Provide the data: set {env} (or data.root) to a directory holding PhysioNet "
        f"{database} (.hea/.dat/.atr and RECORDS), or copy the database into {root}, "
        f"or enable data.download with network access"
    )


def _download(root: Path, records: list[str] | str, database: str = "mitdb") -> None:
    log.info("downloading %s %s into %s", database, "all records" if records == "all" else records, root)
    try:
        root.mkdir(parents=True, exist_ok=True)
        wfdb.dl_database(database, dl_dir=str(root), records=records)
    except Exception as e:  # noqa: BLE001 - any failure (offline, HTTP, disk) means the same to the user
        which = "all records" if records == "all" else f"records {', '.join(records)}"
        title = "MIT-BIH" if database == "mitdb" else database
        raise DataError(
            f"{title} data missing under {root} ({which}) and the download failed "
            f"({type(e).__name__}: {e}). {_how_to_provide(root, database)}"
        ) from e


def resolve_records(s: DataSettings) -> list[str]:
    """The record names to load, present under s.root (downloading them if allowed)."""
    root = s.root
    listed = _listed_records(root)
    if s.records == "all":
        if listed is None:
            listed = sorted(p.stem for p in root.glob("*.hea")) if root.is_dir() else []
        if not listed:
            if not s.download:
                raise DataError(
                    f"no {'MIT-BIH' if s.database == 'mitdb' else s.database} records found: {root} "
                    f"{'has no RECORDS file and no .hea files' if root.is_dir() else 'does not exist'} "
                    f"(data.records=all, data.download=false). {_how_to_provide(root, s.database)}"
                )
            _download(root, "all", s.database)
            listed = _listed_records(root) or sorted(p.stem for p in root.glob("*.hea"))
        names = list(listed)
    else:
        names = list(dict.fromkeys(s.records))
        known = (
            listed
            if listed is not None
            else sorted(set(s.known_records) | {p.stem for p in root.glob("*.hea")})
        )
        unknown = [r for r in names if r not in known]
        if unknown:
            where = f"{root / 'RECORDS'}" if listed is not None else f"{s.database} under {root}"
            raise DataError(
                f"unknown record name(s) {unknown} in data.records: allowed are the records of "
                f"{where}: {', '.join(known)}"
            )
    if s.exclude_paced:
        names = [r for r in names if r not in set(s.paced_records)]
    if not names:
        raise DataError(
            f"no records left to load from {root} (data.records={s.records!r}, "
            f"paced records {list(s.paced_records)} excluded)"
        )

    missing = [r for r in names if not _is_present(root, r)]
    if missing:
        if not s.download:
            where = f"under {root}" if root.is_dir() else f"(data root {root} does not exist)"
            raise DataError(
                f"record(s) {missing} not found {where}; each needs .hea, .dat and .atr files "
                f"(data.download=false). {_how_to_provide(root, s.database)}"
            )
        _download(root, missing, s.database)
        still = [r for r in missing if not _is_present(root, r)]
        if still:
            raise DataError(
                f"record(s) {still} still missing under {root} after downloading. "
                f"{_how_to_provide(root, s.database)}"
            )
    return names


# --------------------------------------------------------------------------- reading


def _read_annotations(root: Path, record: str) -> tuple[np.ndarray, list[str]]:
    path = root / f"{record}.atr"
    try:
        ann = wfdb.rdann(str(root / record), "atr")
    except Exception as e:  # noqa: BLE001 - wfdb raises many types on bad files
        raise DataError(f"cannot read annotation file {path}: {type(e).__name__}: {e}") from e
    return np.asarray(ann.sample, dtype=np.int64), list(ann.symbol)


def _read_lead(root: Path, record: str, s: DataSettings) -> tuple[np.ndarray, float, str]:
    """The main lead, then `extra_leads`, as a (samples, channels) array; its rate; lead names."""
    hea = root / f"{record}.hea"
    try:
        header = wfdb.rdheader(str(root / record))
        names = list(header.sig_name or [])
    except Exception as e:  # noqa: BLE001
        raise DataError(f"cannot read header file {hea}: {type(e).__name__}: {e}") from e
    lead = next((name for name in (s.lead, *s.lead_fallback) if name in names), None)
    if lead is None:
        wanted = f"lead {s.lead!r}" + (
            f" (or fallback {list(s.lead_fallback)})" if s.lead_fallback else ""
        )
        raise DataError(
            f"record {record}: {wanted} not found; available leads: {', '.join(names)}. "
            f"Set data.lead or data.lead_fallback to one of them"
        )
    if lead != s.lead:
        log.warning(
            "record %s has no %s lead; using %s instead (data.lead_fallback)", record, s.lead, lead
        )
    leads = [lead]
    for extra in s.extra_leads:
        pick = next((n for n in names if n not in leads), None) if extra == "other" else \
            (extra if extra in names and extra not in leads else None)
        if pick is None:
            raise DataError(f"record {record}: extra lead {extra!r} not found; available leads: {', '.join(names)} "
                            f"(main lead {lead}). Set data.extra_leads to leads every record has, or [other]")
        leads.append(pick)
    try:
        rec = wfdb.rdrecord(str(root / record), channels=[names.index(n) for n in leads])
    except Exception as e:  # noqa: BLE001
        raise DataError(
            f"cannot read signal of record {record} ({root / (record + '.dat')} / {hea}): "
            f"{type(e).__name__}: {e}"
        ) from e
    sig = np.asarray(rec.p_signal, dtype=np.float64).reshape(len(rec.p_signal), len(leads))
    if not np.all(np.isfinite(sig)):
        # Invalid samples (wfdb NaN) would poison the whole filtered lead; hold the last value.
        for ch in range(sig.shape[1]):
            bad = ~np.isfinite(sig[:, ch])
            if bad.any():
                idx = np.where(bad, 0, np.arange(len(sig)))
                np.maximum.accumulate(idx, out=idx)
                sig[:, ch] = np.nan_to_num(sig[idx, ch])
    return sig, float(rec.fs), "+".join(leads)


def _filter(sig: np.ndarray, fs: float, filt: dict | None) -> np.ndarray:
    if filt is None:
        return sig
    low, high, order = filt["low_hz"], filt["high_hz"], filt["order"]
    nyq = fs / 2
    if high is not None and high >= nyq:
        raise ConfigError("data.filter.high_hz", high, f"below the Nyquist frequency {nyq:g} Hz")
    if low is None:
        sos = butter(order, high, btype="lowpass", fs=fs, output="sos")
    elif high is None:
        sos = butter(order, low, btype="highpass", fs=fs, output="sos")
    else:
        sos = butter(order, [low, high], btype="bandpass", fs=fs, output="sos")
    return sosfiltfilt(sos, sig, axis=0)


def _normalize(x: np.ndarray, how: str) -> np.ndarray:
    # Flat beats (saturated or dropped-out signal) would divide by zero; eps keeps them finite.
    eps = 1e-8
    if how == "zscore":
        return (x - x.mean(axis=-1, keepdims=True)) / (x.std(axis=-1, keepdims=True) + eps)
    if how == "minmax":
        lo, hi = x.min(axis=-1, keepdims=True), x.max(axis=-1, keepdims=True)
        return (x - lo) / (hi - lo + eps)
    return x


def segment_record(root: Path, record: str, s: DataSettings) -> RecordBeats:
    """Read, filter, cut and label the beats of one record (no cache)."""
    samples, symbols = _read_annotations(root, record)
    native_samples = samples
    sig, fs, lead = _read_lead(root, record, s)
    native = fs
    if s.fs is not None and abs(fs - s.fs) > 1e-6:
        if not s.resample:
            raise DataError(
                f"record {record} is sampled at {fs:g} Hz but data.fs={s.fs:g}; the window is in "
                f"samples, so set data.fs to {fs:g} (and adapt data.window), set data.resample=true "
                f"to resample to {s.fs:g} Hz, or use other records"
            )
        sig, samples, fs = _resample(sig, samples, fs, s.fs, record)
    mapping = s.symbol_to_class
    is_beat = np.fromiter((sym in mapping for sym in symbols), dtype=bool, count=len(symbols))
    # RR intervals from every beat annotation at the native rate (before edge trimming)
    raw_rr = raw_intervals(native_samples[is_beat], native, s.rr_local_beats, s.rr_irregular_beats)
    samples = samples[is_beat]
    labels = np.fromiter(
        (mapping[sym] for sym, b in zip(symbols, is_beat, strict=True) if b), dtype=np.int64
    )
    inside = (samples - s.before >= 0) & (samples + s.after <= len(sig))
    dropped = int((~inside).sum())
    samples, labels, raw_rr = samples[inside], labels[inside], raw_rr[inside]

    filtered = _filter(sig, fs, s.filter)
    idx = samples[:, None] + np.arange(-s.before, s.after)[None, :]
    # (n, window) for one lead, as always; (n, leads, window) with extra_leads
    cut = filtered[idx, 0] if filtered.shape[1] == 1 else np.moveaxis(filtered[idx], 2, 1)
    x = _normalize(cut, s.normalize).astype(np.float32)
    return RecordBeats(
        record=record, x=x, y=labels, sample=samples, fs=fs, dropped_edge=dropped, lead=lead, native_fs=native,
        rr=raw_rr.astype(np.float32),
    )


def rate_ratio(native: float, target: float, record: str = "") -> Fraction:
    """target / native as a small fraction up / down for the polyphase resampler."""
    ratio = Fraction(target / native).limit_denominator(1000)
    if abs(float(ratio) - target / native) > 1e-9 or ratio.numerator > 10_000:
        raise ConfigError("data.fs", target, f"a rate reachable from {native:g} Hz"
                          f"{' (record ' + record + ')' if record else ''} by a ratio up/down with "
                          "down <= 1000 and up <= 10000 (e.g. 360 from 128 = 45/16)")
    return ratio


def _resample(sig: np.ndarray, samples: np.ndarray, native: float, target: float,
              record: str) -> tuple[np.ndarray, np.ndarray, float]:
    """The lead at `target` Hz (scipy.signal.resample_poly) and the R peaks at the nearest new sample."""
    r = rate_ratio(native, target, record)
    out = resample_poly(sig, r.numerator, r.denominator)
    peaks = np.rint(samples * (r.numerator / r.denominator)).astype(np.int64)
    return out, np.clip(peaks, 0, max(len(out) - 1, 0)), float(target)


# --------------------------------------------------------------------------- cache


def _source_signature(root: Path, record: str) -> str:
    parts = []
    for suf in SOURCE_SUFFIXES:
        st = (root / f"{record}{suf}").stat()
        parts.append(f"{suf}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts)


def cache_path(s: DataSettings, record: str) -> Path | None:
    if s.cache_dir is None:
        return None
    return s.cache_dir / s.settings_hash() / f"{record}.npz"


def _read_cache(path: Path, record: str, s: DataSettings, source: str) -> RecordBeats | None:
    """The cached beats, or None when the file is absent, stale, corrupt or inconsistent."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            if "rr" not in z.files and all(k in z.files for k in _CACHE_KEYS if k != "rr"):
                log.info("cache for record %s predates the RR intervals; rebuilding", record)
                return None
            if any(k not in z.files for k in _CACHE_KEYS):
                raise ValueError(f"missing keys {[k for k in _CACHE_KEYS if k not in z.files]}")
            if str(z["source"]) != source or str(z["settings"]) != s.settings_hash():
                log.info("cache for record %s is stale (source files changed); rebuilding", record)
                return None
            # Reading every array in full makes zipfile verify its CRC.
            x, y, sample, rr = z["x"], z["y"], z["sample"], z["rr"]
            fs, dropped, lead = float(z["fs"]), int(z["dropped_edge"]), str(z["lead"])
            native = float(z["native_fs"]) if "native_fs" in z.files else fs
        n = len(y)
        if (
            x.dtype != np.float32
            or x.shape != ((n, s.window) if not s.extra_leads else (n, 1 + len(s.extra_leads), s.window))
            or rr.shape != (n, len(RAW))
            or y.shape != (n,)
            or sample.shape != (n,)
            or (n and (y.min() < 0 or y.max() >= len(s.classes)))
            or not np.all(np.isfinite(x))
        ):
            raise ValueError("inconsistent shapes, dtypes or values")
    except Exception as e:  # noqa: BLE001 - whatever is wrong with the file, it is rebuilt
        log.warning(
            "cache file %s is unreadable (%s: %s); rebuilding it", path, type(e).__name__, e
        )
        return None
    return RecordBeats(
        record=record,
        x=x,
        y=y.astype(np.int64),
        sample=sample.astype(np.int64),
        fs=fs,
        dropped_edge=dropped,
        lead=lead,
        native_fs=native,
        rr=rr.astype(np.float32),
    )


def _write_cache(path: Path, rb: RecordBeats, s: DataSettings, source: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(
        f,
        x=rb.x,
        y=rb.y,
        sample=rb.sample,
        rr=rb.rr,
        fs=np.float64(rb.fs),
        native_fs=np.float64(rb.native_fs if rb.native_fs is not None else rb.fs),
        dropped_edge=np.int64(rb.dropped_edge),
        lead=np.str_(rb.lead or ""),
        source=np.str_(source),
        settings=np.str_(s.settings_hash()),
    ))


def _write_settings_note(s: DataSettings) -> None:
    """A readable copy of the settings beside the cache files, for whoever wonders what a hash is."""
    d = s.cache_dir / s.settings_hash()
    note = d / "settings.json"
    if note.is_file():
        return
    d.mkdir(parents=True, exist_ok=True)
    text = json.dumps(s.beat_settings(), indent=2, sort_keys=True)
    atomic_write(note, lambda f: f.write(text.encode()))


def load_record(record: str, s: DataSettings) -> RecordBeats:
    """Beats of one present record, from the cache when valid, else built (and cached)."""
    path = cache_path(s, record)
    if path is None:
        return segment_record(s.root, record, s)
    source = _source_signature(s.root, record)
    cached = _read_cache(path, record, s, source)
    if cached is not None:
        return cached
    rb = segment_record(s.root, record, s)
    _write_cache(path, rb, s, source)
    return rb


def load_beats(cfg_data: Any) -> BeatSet:
    """All beats of the configured records (see conf/data/mitdb.yaml), keyed by record name."""
    s = parse_settings(cfg_data)
    names = resolve_records(s)
    t0 = time.perf_counter()
    if s.cache_dir is not None:
        _write_settings_note(s)
    records = {r: load_record(r, s) for r in names}
    log.info(
        "loaded %d beats from %d records in %.2fs (cache %s)",
        sum(len(r) for r in records.values()),
        len(records),
        time.perf_counter() - t0,
        None if s.cache_dir is None else s.cache_dir / s.settings_hash(),
    )
    return BeatSet(classes=list(s.classes), records=records)


def count_reference_labels(cfg_data: Any) -> dict[str, int]:
    """AAMI class counts of the reference annotations of the configured records, before edge
    trimming (the database facts), plus "total"; nothing is cached."""
    s = parse_settings(cfg_data)
    mapping = s.symbol_to_class
    counts = dict.fromkeys(s.classes, 0)
    for r in resolve_records(s):
        _, symbols = _read_annotations(s.root, r)
        for sym in symbols:
            if sym in mapping:
                counts[s.classes[mapping[sym]]] += 1
    counts["total"] = sum(counts[c] for c in s.classes)
    return counts
