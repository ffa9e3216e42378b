"""Federations: beats -> clients with train / val / test splits (the `partition` config group).

Each partition YAML names its function in `_target_`; `build_federation` calls it with the
beats, the seed and the YAML's other keys. Every function is deterministic for a seed: each
client draws from its own random stream derived from (seed, client id, purpose), so adding a
client or reordering records does not reshuffle the others. Splits never share a beat, and
by default never a sample: val and test windows do not overlap a training window (split by
patient, or by time with a one-window gap), so `pfl-data` reports 0 overlap.
"""

from __future__ import annotations

import fnmatch
import inspect
import logging
import math
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pfl.data.types import BeatSet, Client, Federation, Split
from pfl.errors import ConfigError, DataError

log = logging.getLogger(__name__)

PARTITIONS = ("hospitals", "patient", "dirichlet", "interpatient", "institutions")

# --------------------------------------------------------------------------- helpers


def _plain(value: Any) -> Any:
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def _rng(seed: int, *keys: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), *(zlib.crc32(k.encode()) for k in keys)])


def _round(x: float) -> int:
    # Half up, not Python's half-to-even: a class with one beat and fraction 0.5 goes to train.
    return int(math.floor(x + 0.5))


def _resolve_id(beats: BeatSet, name: str) -> str:
    """A record id as loaded: with several databases ids are `<database>/<record>`, and a bare
    record name that only one database has means that one (mitdb's `200` is `mitdb/200`)."""
    if name in beats.records or "/" in name:
        return name
    matches = [r for r in beats.records if r.rsplit("/", 1)[-1] == name]
    return matches[0] if len(matches) == 1 else name


def database_of(record: str) -> str:
    """The database part of a namespaced record id (`svdb/800` -> `svdb`); "" when not namespaced."""
    return record.rsplit("/", 1)[0] if "/" in record else ""


def _expand(beats: BeatSet, wanted: Sequence[Any], key: str) -> list[str]:
    """Record ids for the entries of a partition list: a name resolves as `_resolve_id` does,
    and an entry with a wildcard (`svdb/*`, `svdb/8[0-4]?`, or `8*` against the bare record
    names) stands for the loaded records it matches, in their loaded order, so another
    institution's records need not be listed one by one."""
    names = []
    for r in _plain(wanted):
        r = str(r)
        if not any(ch in r for ch in "*?["):
            names.append(_resolve_id(beats, r))
            continue
        bare = "/" not in r
        matched = [x for x in beats.records
                   if fnmatch.fnmatchcase(x, r) or (bare and fnmatch.fnmatchcase(x.rsplit("/", 1)[-1], r))]
        if not matched:
            raise DataError(f"{key}: the pattern {r!r} matches none of the loaded records "
                            f"({', '.join(beats.records)}); check data (data=mitdb_svdb loads both databases)")
        names.extend(matched)
    return names


def _records(beats: BeatSet, wanted: Any, key: str) -> list[str]:
    """Record names from a partition key (`all` or a list, wildcards allowed: `_expand`), checked
    against the loaded beats."""
    if wanted is None or wanted == "all":
        return list(beats.records)
    if isinstance(wanted, str | int):
        wanted = [wanted]
    names = _expand(beats, wanted, key)
    dup = sorted({r for r in names if names.count(r) > 1})
    if dup:
        raise ConfigError(key, [str(r) for r in _plain(wanted)], "each record once", hint=f"repeated: {dup}")
    absent = [r for r in names if r not in beats.records]
    if absent:
        raise DataError(
            f"{key} lists record(s) {absent} that are not among the loaded records "
            f"({', '.join(beats.records)}); check data.records and data.exclude_paced"
        )
    return names


def _fractions(value: Any, key: str = "partition.fractions") -> tuple[float, float, float]:
    f = _plain(value) or {}
    if not isinstance(f, Mapping) or set(f) - {"train", "val", "test"}:
        raise ConfigError(key, f, "a mapping with keys train, val, test")
    tr, va, te = (float(f.get(k, 0.0)) for k in ("train", "val", "test"))
    if min(tr, va, te) < 0 or tr <= 0 or te <= 0 or abs(tr + va + te - 1) > 1e-6:
        raise ConfigError(key, f, "train > 0, val >= 0, test > 0 summing to 1")
    return tr, va, te


def _stratified(
    y: np.ndarray, fractions: Sequence[float], rng: np.random.Generator
) -> list[np.ndarray]:
    """Indices of y split by fractions within each class, so rare classes reach every split
    they can."""
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        start = 0
        for i, f in enumerate(fractions):
            n = (
                len(idx) - start
                if i == len(fractions) - 1
                else min(_round(len(idx) * f), len(idx) - start)
            )
            parts[i].append(idx[start : start + n])
            start += n
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


class _Pool:
    """Beats of several records concatenated, remembering where each came from."""

    def __init__(self, beats: BeatSet, records: Sequence[str]):
        rbs = [beats.records[r] for r in records]
        shape = next((rb.x.shape[1:] for rb in beats.records.values()), (0,))
        # The beat window in samples (the gap between time blocks), not the last axis of x,
        # which also holds the RR features, nor its second, which is the lead channels.
        self.window = beats.window
        self.x = np.concatenate([rb.x for rb in rbs]) if rbs else np.zeros((0, *shape), np.float32)
        self.y = np.concatenate([rb.y for rb in rbs]) if rbs else np.zeros(0, np.int64)
        self.sample = np.concatenate([rb.sample for rb in rbs]) if rbs else np.zeros(0, np.int64)
        self.record = (
            np.concatenate([np.full(len(rb), rb.record) for rb in rbs]) if rbs else np.zeros(0, str)
        )
        self.fs = np.concatenate([np.full(len(rb), rb.fs) for rb in rbs]) if rbs else np.zeros(0)

    def __len__(self) -> int:
        return len(self.y)

    def split(self, idx: np.ndarray) -> Split:
        return Split.from_numpy(self.x[idx], self.y[idx], self.record[idx], self.sample[idx])

    def records_of(self, idx: np.ndarray) -> list[str]:
        return list(dict.fromkeys(self.record[idx].tolist()))


def _client(
    cid: str,
    pool: _Pool,
    train: np.ndarray,
    val: np.ndarray,
    test: np.ndarray,
    federated: bool = True,
    records: list[str] | None = None,
) -> Client:
    if len(train) == 0 or len(test) == 0:
        empty = " and ".join(n for n, i in (("train", train), ("test", test)) if len(i) == 0)
        raise DataError(
            f"client {cid!r} has no {empty} beats ({len(train)} train, {len(val)} val, "
            f"{len(test)} test); give it more data (records, budget, minutes) or change the fractions"
        )
    all_idx = np.sort(np.concatenate([train, val, test]))
    return Client(
        cid=cid,
        train=pool.split(train),
        val=pool.split(val),
        test=pool.split(test),
        records=records if records is not None else pool.records_of(all_idx),
        federated=federated,
    )


def _time_split(
    pool: _Pool, minutes: float, val_fraction: float, key: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First `minutes` of the record (by R-peak time) -> train then val (its last
    `val_fraction`, contiguous), the rest -> test; a beat window apart at each boundary."""
    if minutes <= 0:
        raise ConfigError(key, minutes, "a number of minutes > 0")
    end = minutes * 60.0 * float(pool.fs[0]) if len(pool) else 0.0
    tr, va, te = _blocks(pool.sample, [(1 - val_fraction) * end, end], pool.window)
    return tr, va, te


def _check_val_fraction(v: float, key: str) -> float:
    v = float(v)
    if not 0 <= v < 1:
        raise ConfigError(key, v, "a fraction in [0, 1)")
    return v


SPLIT_BY = ("record", "time", "beat")


def _check_split_by(value: Any) -> str:
    if value not in SPLIT_BY:
        raise ConfigError(
            "partition.split_by", value,
            "record (test patients never train) | time (consecutive blocks per record, a window "
            "apart) | beat (random beats: the intra-patient setting, inflated)",
        )
    return str(value)


def _blocks(sample: np.ndarray, bounds: Sequence[float], window: int) -> list[np.ndarray]:
    """Positions of consecutive time blocks `bounds[i-1] <= sample < bounds[i]` of one record,
    each block starting at least `window` samples after the last kept beat of the blocks before,
    so no two blocks share a sample (a beat's window is `window` samples long)."""
    edges = [-np.inf, *bounds, np.inf]
    out, last = [], None
    for a, b in zip(edges, edges[1:], strict=False):
        idx = np.flatnonzero((sample >= a) & (sample < b))
        if last is not None:
            idx = idx[sample[idx] - last >= window]
        if len(idx):
            last = sample[idx].max()
        out.append(idx)
    return out


def _by_time(pool: _Pool, idx: np.ndarray, fractions: Sequence[float]) -> list[np.ndarray]:
    """Each record's beats in idx split by R-peak time into consecutive blocks of `fractions`
    of its beats, a window apart (the beats inside the gap are dropped)."""
    window = pool.window
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for r in dict.fromkeys(pool.record[idx].tolist()):
        mine = idx[pool.record[idx] == r]
        mine = mine[np.argsort(pool.sample[mine], kind="stable")]
        cuts = np.cumsum([_round(len(mine) * f) for f in fractions[:-1]])
        bounds = [pool.sample[mine[min(c, len(mine) - 1)]] if c < len(mine) else np.inf for c in cuts]
        for i, blk in enumerate(_blocks(pool.sample[mine], bounds, window)):
            parts[i].append(mine[blk])
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in parts]


def _by_record(pool: _Pool, idx: np.ndarray, fractions: Sequence[float], rng: np.random.Generator,
               who: str) -> list[np.ndarray]:
    """The records (patients) in idx divided between the splits by `fractions` of their number:
    a test patient never trains."""
    recs = list(dict.fromkeys(pool.record[idx].tolist()))
    need = sum(1 for f in fractions if f > 0)
    if len(recs) < need:
        raise DataError(
            f"{who} has {len(recs)} record(s) ({', '.join(recs)}); partition.split_by=record needs at "
            f"least {need}, one per split: give it more records or use split_by=time"
        )
    order = [recs[i] for i in rng.permutation(len(recs))]
    counts = [max(1, _round(len(recs) * f)) if f > 0 else 0 for f in fractions]
    # The first split (train) absorbs the rounding, never leaving a split without a patient.
    counts[0] = len(recs) - sum(counts[1:])
    while counts[0] < 1:
        j = int(np.argmax(counts[1:])) + 1
        counts[j] -= 1
        counts[0] += 1
    parts, start = [], 0
    for n in counts:
        chosen = set(order[start:start + n])
        parts.append(idx[np.isin(pool.record[idx], list(chosen))])
        start += n
    return parts


def _split(pool: _Pool, idx: np.ndarray, fractions: Sequence[float], rng: np.random.Generator,
           split_by: str, who: str) -> list[np.ndarray]:
    if split_by == "record":
        return _by_record(pool, idx, fractions, rng, who)
    if split_by == "time":
        return _by_time(pool, idx, fractions)
    return [idx[p] for p in _stratified(pool.y[idx], fractions, rng)]


# --------------------------------------------------------------------------- partitions


def hospitals(
    beats: BeatSet,
    seed: int,
    sites: Mapping[str, Mapping[str, Any]],
    fractions: Mapping[str, float] | None = None,
    on_short_budget: str = "warn",
    split_by: str = "record",
    name: str = "hospitals",
) -> Federation:
    """A few sites, each pooling the beats of its own patients (records), down-sampled at
    random to its beat budget and split train / val / test: by patient (`split_by=record`,
    the site's test patients never train), by time within each record (`time`), or at random
    stratified by class (`beat`, the intra-patient setting of the reference study)."""
    split_by = _check_split_by(split_by)
    sites = _plain(sites)
    if not isinstance(sites, Mapping) or not sites:
        raise ConfigError(
            "partition.sites", sites, "a mapping site name -> {records: [...], budget: n}"
        )
    if on_short_budget not in ("warn", "error"):
        raise ConfigError("partition.on_short_budget", on_short_budget, "warn | error")
    fr = _fractions(fractions or {"train": 0.5, "val": 0.1, "test": 0.4})

    site_records: dict[str, list[str]] = {}
    for site, spec in sites.items():
        if not isinstance(spec, Mapping) or "records" not in spec:
            raise ConfigError(
                f"partition.sites.{site}", spec, "a mapping with records (and budget)"
            )
        site_records[site] = _records(beats, spec["records"], f"partition.sites.{site}.records")
    owner: dict[str, str] = {}
    overlaps: dict[str, list[str]] = {}
    for site, recs in site_records.items():
        for r in recs:
            if r in owner:
                overlaps.setdefault(r, [owner[r]]).append(site)
            else:
                owner[r] = site
    if overlaps:
        raise ConfigError(
            "partition.sites",
            sorted(overlaps),
            "record lists disjoint between sites (each patient at one site)",
            hint="; ".join(f"record {r} is in {', '.join(s)}" for r, s in sorted(overlaps.items())),
        )

    clients = []
    for site, recs in site_records.items():
        pool = _Pool(beats, recs)
        budget = sites[site].get("budget")
        rng = _rng(seed, name, site)
        idx = np.arange(len(pool))
        if budget is not None:
            budget = int(budget)
            if budget < 1:
                raise ConfigError(
                    f"partition.sites.{site}.budget",
                    budget,
                    "a number of beats >= 1, or null for all",
                )
            if budget < len(pool):
                idx = np.sort(rng.choice(len(pool), size=budget, replace=False))
            elif budget > len(pool):
                msg = (
                    f"site {site!r} has only {len(pool)} beats in records {recs}, fewer than its "
                    f"budget {budget}"
                )
                if on_short_budget == "error":
                    raise DataError(msg + " (partition.on_short_budget=error)")
                log.warning("%s; using all of them", msg)
        parts = _split(pool, idx, fr, rng, split_by, f"site {site!r}")
        clients.append(_client(site, pool, *parts, records=recs))
    return Federation(name=name, classes=list(beats.classes), clients=clients, window=beats.window)


#: The common training set of the patient-specific protocol (Hu et al. 1997, Kiranyaz et al.
#: 2016): per class, how many beats to draw from the common records (fewer where fewer exist).
COMMON_PER_CLASS = {"N": 75, "S": 75, "V": 75, "F": 13, "Q": 7}


def _common_set(beats: BeatSet, seed: int, name: str, records: Any, per_class: Any,
                train_minutes: float, val_fraction: float) -> tuple[_Pool, np.ndarray]:
    """The beats every client adds to its training data: per class up to `per_class[c]` beats
    drawn (seeded) from the training part of the common records. Only training beats: the
    published protocol draws from whole records, which puts their test beats in training."""
    recs = _records(beats, records, "partition.common_records")
    counts = dict(COMMON_PER_CLASS) if per_class is None else _plain(per_class)
    if not isinstance(counts, Mapping) or any(c not in beats.classes for c in counts) or any(
            not isinstance(n, int) or isinstance(n, bool) or n < 0 for n in counts.values()):
        raise ConfigError("partition.common_per_class", counts,
                          f"null ({COMMON_PER_CLASS}) or a mapping from classes of {list(beats.classes)} "
                          "to beat counts >= 0")
    pool = _Pool(beats, recs)
    train = []
    for r in recs:
        mine = np.flatnonzero(pool.record == r)
        tr, _, _ = _time_split(_Pool(beats, [r]), train_minutes, val_fraction, "partition.train_minutes")
        train.append(mine[tr])
    train = np.concatenate(train) if train else np.zeros(0, np.int64)
    rng = _rng(seed, name, "common")
    chosen = []
    for c, n in counts.items():
        have = train[pool.y[train] == beats.classes.index(c)]
        if len(have) < n:
            log.info("partition.common_per_class: %d %s beats in the common records' training part, not %d",
                     len(have), c, n)
        chosen.append(rng.choice(have, size=min(n, len(have)), replace=False))
    return pool, np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)


def patient(
    beats: BeatSet,
    seed: int,
    records: Any = "all",
    train_minutes: float = 5.0,
    val_fraction: float = 0.2,
    name: str = "patient",
    common_records: Sequence[Any] = (),
    common_per_class: Mapping[str, int] | None = None,
) -> Federation:
    """One client per record (AAMI patient-specific protocol): beats with their R peak in the
    first `train_minutes` are the client's train data (their last `val_fraction`, a window
    apart, held out as val), the rest of the record its test data.

    `common_records`: the protocol's common training set (`_common_set`): beats drawn from
    these records' training parts that every client trains on besides its own (a client's own
    beats are not added twice). Clients that never see a class in their first minutes keep
    seeing it, as every published patient-specific result assumes."""
    val_fraction = _check_val_fraction(val_fraction, "partition.val_fraction")
    common = None
    if _plain(common_records):
        common = _common_set(beats, seed, name, common_records, common_per_class, float(train_minutes),
                             val_fraction)
    clients = []
    for r in _records(beats, records, "partition.records"):
        pool = _Pool(beats, [r])
        parts = _time_split(pool, float(train_minutes), val_fraction, "partition.train_minutes")
        client = _client(r, pool, *parts, records=[r])
        if common is not None:  # the common beats after the client's own, none of them its own
            cpool, cidx = common
            cidx, tr = cidx[cpool.record[cidx] != r], parts[0]
            client.train = Split.from_numpy(*(np.concatenate([getattr(pool, a)[tr], getattr(cpool, a)[cidx]])
                                              for a in ("x", "y", "record", "sample")))
        clients.append(client)
    return Federation(name=name, classes=list(beats.classes), clients=clients, window=beats.window)


def dirichlet(
    beats: BeatSet,
    seed: int,
    n_clients: int = 10,
    alpha: float = 0.5,
    min_samples: int = 50,
    max_beats: int | None = None,
    records: Any = "all",
    fractions: Mapping[str, float] | None = None,
    max_retries: int = 100,
    split_by: str = "record",
    name: str = "dirichlet",
) -> Federation:
    """Pooled beats split over n_clients with label skew: for every class, the shares of the
    clients are drawn from Dirichlet(alpha). Draws are repeated (at most max_retries times)
    until every client has min_samples beats. A patient's beats spread over clients; the
    train / val / test division is made first over the pooled beats (`split_by=record`: by
    patient, `time`: consecutive blocks per record, `beat`: at random within each client), so
    with record or time no val or test beat shares a sample with any client's training beat."""
    split_by = _check_split_by(split_by)
    alpha = float(alpha)
    if not alpha > 0 or not math.isfinite(alpha):
        raise ConfigError(
            "partition.alpha", alpha, "a number > 0 (small = strong label skew, large = near IID)"
        )
    if int(min_samples) < 1:
        raise ConfigError("partition.min_samples", min_samples, "an integer >= 1")
    if int(max_retries) < 1:
        raise ConfigError("partition.max_retries", max_retries, "an integer >= 1")
    min_samples, max_retries = int(min_samples), int(max_retries)
    fr = _fractions(fractions or {"train": 0.6, "val": 0.2, "test": 0.2})

    pool = _Pool(beats, _records(beats, records, "partition.records"))
    rng = _rng(seed, name)
    idx_all = np.arange(len(pool))
    if max_beats is not None:
        if int(max_beats) < 1:
            raise ConfigError(
                "partition.max_beats", max_beats, "an integer >= 1, or null for all beats"
            )
        if int(max_beats) < len(pool):
            idx_all = np.sort(rng.choice(len(pool), size=int(max_beats), replace=False))
    which = None
    if split_by != "beat":
        which = np.full(len(pool), -1)
        for i, part in enumerate(_split(pool, idx_all, fr, _rng(seed, name, "split"), split_by, "the pooled records")):
            which[part] = i
        idx_all = idx_all[which[idx_all] >= 0]  # beats in a time gap belong to no split
    total = len(idx_all)
    most = total // min_samples
    if not 1 <= int(n_clients) <= most:
        raise ConfigError(
            "partition.n_clients",
            n_clients,
            f"an integer from 1 to {most} (= {total} beats // min_samples {min_samples})",
        )
    n_clients = int(n_clients)
    y = pool.y[idx_all]

    for _attempt in range(max_retries):
        shares: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        sizes = np.zeros(n_clients, dtype=np.int64)
        for c in np.unique(y):
            idx_c = rng.permutation(np.flatnonzero(y == c))
            p = rng.dirichlet(np.full(n_clients, alpha))
            # Clients already above the mean size get no more beats (as in Wang et al. 2020,
            # FedMA): otherwise small alphas almost never meet min_samples.
            capped = p * (sizes < total / n_clients)
            if capped.sum() > 0:
                p = capped / capped.sum()
            cuts = (np.cumsum(p)[:-1] * len(idx_c)).astype(np.int64)
            for k, part in enumerate(np.split(idx_c, cuts)):
                shares[k].append(part)
                sizes[k] += len(part)
        if sizes.min() >= min_samples:
            break
    else:
        raise ConfigError(
            "partition.min_samples",
            min_samples,
            f"a minimum the Dirichlet draws can meet: no draw out of max_retries={max_retries} "
            f"gave each of {n_clients} clients {min_samples} beats (alpha={alpha}, {total} beats)",
            hint="Raise alpha, lower min_samples or n_clients, or raise max_retries",
        )

    clients = []
    width = len(str(n_clients - 1))
    for k in range(n_clients):
        cid = f"client_{k:0{width}d}"
        mine = idx_all[np.sort(np.concatenate(shares[k]))]
        if which is None:
            parts = [mine[p] for p in _stratified(pool.y[mine], fr, _rng(seed, name, cid))]
        else:
            parts = [mine[which[mine] == i] for i in range(3)]
        clients.append(_client(cid, pool, *parts))
    return Federation(name=name, classes=list(beats.classes), clients=clients, window=beats.window)


def interpatient(
    beats: BeatSet,
    seed: int,
    ds1: Sequence[Any],
    ds2: Sequence[Any],
    fractions: Mapping[str, float] | None = None,
    adapt_minutes: float = 5.0,
    val_fraction: float = 0.2,
    split_by: str = "time",
    name: str = "interpatient",
    val_records: Sequence[Any] = (),
    ds1_extra: Sequence[Any] = (),
) -> Federation:
    """de Chazal's inter-patient division (the record lists live in conf/partition/interpatient.yaml;
    paced records 102, 104, 107, 217 are in neither): DS1 records are the federated clients (each splits
    its own beats train / val / test by `fractions`: by time in consecutive blocks a window
    apart, or `split_by=beat` at random); DS2 records are unseen clients
    (federated=False) whose first adapt_minutes are their adaptation data (train, with a
    val part) and the rest their test data. No patient is in both.

    `val_records`: DS1 records held out of training to validate on patients the model never
    saw (heldout=True: every beat in val, reported as `heldout.val.*`). A DS1 client's own val
    split comes from the same patients that train, so it cannot tell how a setting generalizes
    to new patients; these can, without touching DS2.

    `ds1_extra`: more records that federate beside DS1 as clients split like DS1's, e.g. a
    second institution's (`[svdb/*]` with data=mitdb_svdb); DS2 stays the test set."""
    d1 = _records(beats, ds1, "partition.ds1")
    if ds1_extra:
        extra = _records(beats, ds1_extra, "partition.ds1_extra")
        again = sorted(set(extra) & set(d1))
        if again:
            raise ConfigError("partition.ds1_extra", again, "records that are not in partition.ds1")
        d1 = d1 + extra
    d2 = _records(beats, ds2, "partition.ds2")
    both = sorted(set(d1) & set(d2))
    if both:
        raise ConfigError(
            "partition.ds1/ds2",
            both,
            "disjoint record lists (a DS2 patient must be unseen in training)",
        )
    held = _expand(beats, _plain(val_records) or [], "partition.val_records")
    outside = [r for r in held if r not in d1]
    if outside or len(set(held)) < len(held) or (held and len(set(held)) >= len(d1)):
        raise ConfigError("partition.val_records", held,
                          "distinct records of partition.ds1, leaving at least one DS1 record to train"
                          + (f" ({outside} not in ds1)" if outside else ""))
    held_ids = set(held)
    fr = _fractions(fractions or {"train": 0.7, "val": 0.1, "test": 0.2})
    val_fraction = _check_val_fraction(val_fraction, "partition.val_fraction")
    clients = []
    split_by = _check_split_by(split_by)
    for r in d1:
        pool = _Pool(beats, [r])
        if r in held_ids:
            none = np.zeros(0, np.int64)
            clients.append(Client(cid=r, train=pool.split(none), val=pool.split(np.arange(len(pool))),
                                  test=pool.split(none), records=[r], federated=False, heldout=True))
            continue
        parts = _split(pool, np.arange(len(pool)), fr, _rng(seed, name, r), split_by, f"record {r}")
        clients.append(_client(r, pool, *parts, records=[r]))
    for r in d2:
        pool = _Pool(beats, [r])
        parts = _time_split(pool, float(adapt_minutes), val_fraction, "partition.adapt_minutes")
        clients.append(_client(r, pool, *parts, federated=False, records=[r]))
    return Federation(name=name, classes=list(beats.classes), clients=clients, window=beats.window)


def institutions(
    beats: BeatSet,
    seed: int,
    per_database: int | None = None,
    budget: int | None = None,
    fractions: Mapping[str, float] | None = None,
    split_by: str = "record",
    unseen: str | None = None,
    adapt_minutes: float = 5.0,
    val_fraction: float = 0.2,
    on_short_budget: str = "warn",
    name: str = "institutions",
) -> Federation:
    """Cross-institution federation: each database (`data=mitdb_svdb`) is a site, or
    `per_database` sites of its records (drawn at random, disjoint; null: 1 when two or more
    databases train, else 3, so one database still makes a federation), each split by patient as
    `hospitals` does (`split_by`, `fractions`, `budget` beats per site). `unseen=<database>`
    keeps that institution out of training: every one of its patients is an unseen client
    (federated=false) whose first `adapt_minutes` are adaptation data and the rest test data,
    the question of whether a model moves to new equipment."""
    by_db: dict[str, list[str]] = {}
    for r in beats.records:
        by_db.setdefault(database_of(r) or "site", []).append(r)
    if unseen is not None and str(unseen) not in by_db:
        raise ConfigError("partition.unseen", unseen, f"one of the loaded databases: {', '.join(by_db)} "
                          "(load several with data=mitdb_svdb)")
    if per_database is None:
        per_database = 1 if len([d for d in by_db if d != unseen]) >= 2 else 3
    if isinstance(per_database, bool) or not isinstance(per_database, int) or per_database < 1:
        raise ConfigError("partition.per_database", per_database, "an integer >= 1 (sites per database), or null")
    sites: dict[str, dict[str, Any]] = {}
    for db, recs in by_db.items():
        if db == unseen:
            continue
        order = [recs[i] for i in _rng(seed, name, db).permutation(len(recs))]
        if len(order) < per_database:
            raise DataError(f"database {db} has {len(order)} records, fewer than partition.per_database="
                            f"{per_database} sites")
        for i in range(per_database):
            site = db if per_database == 1 else f"{db}_{i + 1}"
            sites[site] = {"records": sorted(order[i::per_database]), "budget": budget}
    if len(sites) < 2:
        raise ConfigError("partition.per_database", per_database,
                          f"at least two training sites; the training data has {len(sites)} "
                          f"(databases: {', '.join(d for d in by_db if d != unseen)})",
                          hint="load two databases (data=mitdb_svdb) or split one into sites (partition.per_database=3)")
    fed = hospitals(beats, seed, sites, fractions=fractions, on_short_budget=on_short_budget,
                    split_by=split_by, name=name)
    if unseen is not None:
        val_fraction = _check_val_fraction(val_fraction, "partition.val_fraction")
        for r in by_db[str(unseen)]:
            pool = _Pool(beats, [r])
            parts = _time_split(pool, float(adapt_minutes), val_fraction, "partition.adapt_minutes")
            fed.clients.append(_client(r, pool, *parts, federated=False, records=[r]))
    return fed


# --------------------------------------------------------------------------- dispatch


def build_federation(beats: BeatSet, cfg_partition: Any, seed: int) -> Federation:
    """Call the partition function named by cfg_partition._target_ with the other keys."""
    import hydra.utils

    d = dict(_plain(cfg_partition) or {})
    target = d.pop("_target_", None)
    for k in ("_recursive_", "_convert_", "_partial_"):
        d.pop(k, None)
    allowed = ", ".join(f"pfl.data.partitions.{p}" for p in PARTITIONS)
    if not target:
        raise ConfigError("partition._target_", target, f"a partition function: {allowed}")
    try:
        fn = hydra.utils.get_method(str(target))
    except Exception as e:  # noqa: BLE001 - import or attribute errors alike
        raise ConfigError("partition._target_", target, f"a partition function: {allowed}") from e
    params = inspect.signature(fn).parameters
    unknown = [k for k in d if k not in params or k in ("beats", "seed")]
    if unknown:
        keys = [p for p in params if p not in ("beats", "seed")]
        raise ConfigError(
            f"partition.{unknown[0]}",
            d[unknown[0]],
            f"one of the keys of {target}: {', '.join(keys)}",
        )
    fed = fn(beats=beats, seed=int(seed), **d)
    log.info("built federation %s: %d clients", fed.name, len(fed.clients))
    return fed
