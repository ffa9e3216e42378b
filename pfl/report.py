"""`pfl-report`: a study's MLflow runs as comparison tables (Markdown, CSV) and charts (PNG).

    pfl-report [--experiment NAME] [--tracking-uri URI] [--out DIR] [--split test|val]
               [--curves METRIC [METRIC ...]] [--bar METRIC=VALUE ...]

Runs are grouped into arms: runs whose configs differ only in the seed (and in keys that do not
change results: paths, logging, ...) form one arm, reported as mean ± sample std (ddof=1) over
its seeds. A seed run more than once counts once, with its latest finished run.
"""

from __future__ import annotations

import argparse
import csv
import fnmatch
import io
import math
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pfl.config import VOLATILE
from pfl.errors import PflError

#: how strategies are called in the tables; others keep their registry name
_CLIENT_METRIC = re.compile(r"^client\.(?P<cid>.+)\.(?P<split>val|test)\.(?P<model>global|personal)\.(?P<m>acc|f1)$")
# Params that never separate arms: they do not change results, or are the seed itself.
_IGNORED = ("seed", "hydra", *VOLATILE)


def default_tracking_uri() -> str:
    """The store `pfl` logs to by default: <PFL_ROOT_DIR or .>/outputs/mlflow.db."""
    root = Path(os.environ.get("PFL_ROOT_DIR", "."))
    return f"sqlite:///{(root / 'outputs' / 'mlflow.db').resolve()}"


@dataclass
class RunData:
    run_id: str
    name: str
    seed: int
    strategy: str
    mode: str
    start_time: int
    seconds: float
    params: dict[str, str]
    metrics: dict[str, float]
    clients: list[str]
    unseen: set[str]
    # From the strategy class, recorded as run tags (strategy_label, strategy_order, strategy_baseline)
    label: str = ""
    order: int = 1000
    baseline: bool = False


@dataclass
class Arm:
    """Runs of one configuration over seeds."""

    key: tuple
    label: str
    strategy: str
    mode: str
    extras: dict[str, str]
    runs: list[RunData] = field(default_factory=list)
    superseded: int = 0
    display: str = ""  # the strategy's label
    order: int = 1000
    baseline: bool = False  # FedAvg: what the other strategies are compared with

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]

    def clients(self) -> list[str]:
        order: dict[str, None] = {}
        for r in self.runs:
            order.update(dict.fromkeys(r.clients))
        return list(order)

    def unseen(self) -> set[str]:
        return set().union(*(r.unseen for r in self.runs)) if self.runs else set()

    def values(self, key: str) -> list[float]:
        """The metric in each seed's run (nan where a run lacks it)."""
        return [r.metrics.get(key, math.nan) for r in self.runs]

    def delta(self, a: str, b: str) -> list[float]:
        """Per seed a - b: the change is averaged over seeds, not taken between the means."""
        return [x - y for x, y in zip(self.values(a), self.values(b), strict=True)]


@dataclass
class Stat:
    mean: float
    std: float  # sample std over seeds (ddof=1); nan for a single seed
    n: int

    @classmethod
    def of(cls, values: Iterable[float]) -> Stat:
        v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
        if not len(v):
            return cls(math.nan, math.nan, 0)
        return cls(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v))

    def fmt(self, signed: bool = False, scale: float = 100.0, digits: int = 2) -> str:
        if self.n == 0:
            return "-"
        m = f"{scale * self.mean:{'+' if signed else ''}.{digits}f}"
        return m if math.isnan(self.std) else f"{m} ± {scale * self.std:.{digits}f}"


# ---------------------------------------------------------------------------------------------
# Reading runs


def _open(uri: str):
    from pfl.tracking import open_client, sqlite_path

    path = sqlite_path(uri)
    if path is not None and not path.expanduser().exists():
        raise PflError(f"--tracking-uri={uri!r}: no MLflow store at {path}; run a study first (make run) or pass "
                       "the URI of the store your runs went to")
    return open_client(uri, key="--tracking-uri", fix="or pass the URI your runs went to")


def _experiment(client, name: str | None):
    if name is None:
        runs = client.search_runs(_all_experiment_ids(client), max_results=1, order_by=["attributes.start_time DESC"])
        if not runs:
            raise PflError("the MLflow store has no runs yet; run a study first (make run)")
        return client.get_experiment(runs[0].info.experiment_id)
    exp = client.get_experiment_by_name(name)
    if exp is None or exp.lifecycle_stage != "active":
        names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
        raise PflError(f"--experiment={name!r}: no such MLflow experiment; the store has "
                       + (", ".join(names) if names else "none") + " (a study's experiment is its `study` name)")
    return exp


def _all_experiment_ids(client) -> list[str]:
    return [e.experiment_id for e in client.search_experiments()]


def _search_all(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def load_runs(client, experiment) -> tuple[list[RunData], dict[str, int]]:
    """Finished runs of the experiment, and how many runs there are per status."""
    statuses: dict[str, int] = {}
    out = []
    for r in _search_all(client, experiment.experiment_id):
        if r.data.tags.get("pfl.sweep_parent") == "true":  # a multirun's parent: its children are the runs
            continue
        statuses[r.info.status] = statuses.get(r.info.status, 0) + 1
        if r.info.status != "FINISHED":
            continue
        tags, params = r.data.tags, r.data.params
        metrics = dict(r.data.metrics)
        found = list(dict.fromkeys(m["cid"] for k in metrics if (m := _CLIENT_METRIC.match(k))))
        tagged = [c for c in tags.get("clients", "").split(",") if c]
        clients = [c for c in tagged if c in found] + sorted((c for c in found if c not in tagged), key=_natural)
        # Patients held out to validate have no test beats: their numbers are heldout.val.*.
        heldout = set(tags.get("heldout_clients", "").split(","))
        clients = [c for c in clients if c not in heldout]
        seed = params.get("seed", tags.get("seed", "0"))
        out.append(RunData(
            run_id=r.info.run_id, name=r.info.run_name or r.info.run_id, seed=int(seed) if seed.isdigit() else 0,
            strategy=params.get("strategy.name", tags.get("strategy", "?")),
            mode=params.get("mode", tags.get("mode", "federated")),
            label=tags.get("strategy_label") or params.get("strategy.name", tags.get("strategy", "?")),
            order=int(tags.get("strategy_order", "1000")),
            baseline=tags.get("strategy_baseline", "false") == "true",
            start_time=r.info.start_time or 0,
            seconds=((r.info.end_time or 0) - (r.info.start_time or 0)) / 1000.0,
            params=dict(params), metrics=metrics, clients=clients,
            unseen={c for c in tags.get("unseen_clients", "").split(",") if c},
        ))
    return out, statuses


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


# ---------------------------------------------------------------------------------------------
# Arms


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in _IGNORED)


def group_runs(runs: Sequence[RunData]) -> list[Arm]:
    keys = sorted({k for r in runs for k in r.params if not _ignored(k)})
    varying = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    arms: dict[tuple, Arm] = {}
    for r in runs:
        key = tuple((k, r.params.get(k)) for k in varying)
        if key not in arms:
            arms[key] = Arm(key, "", r.strategy, r.mode, {}, display=r.label, order=r.order,
                            baseline=r.baseline)
        arms[key].runs.append(r)
    _label(list(arms.values()), varying)
    for arm in arms.values():
        latest: dict[int, RunData] = {}
        for r in sorted(arm.runs, key=lambda r: r.start_time):
            latest[r.seed] = r
        arm.superseded = len(arm.runs) - len(latest)
        arm.runs = [latest[s] for s in sorted(latest)]
    return sorted(arms.values(), key=_arm_order)


def _base(arm: Arm) -> str:
    name = arm.display or arm.strategy
    return "Centralized" if arm.mode == "centralized" and arm.baseline else (
        f"Centralized {name}" if arm.mode == "centralized" else name)


def _short(key: str, value: str | None) -> tuple[str, str]:
    """`partition.name=patient` -> (`partition`, `patient`); `model._target_=pfl.models.SmallCNN`
    -> (`model`, `SmallCNN`); a key the run's config did not have shows as `-`."""
    for suffix in ("._target_", ".name"):
        if key.endswith(suffix):
            key = key.removesuffix(suffix)
            if value is not None and suffix == "._target_":
                value = str(value).rsplit(".", 1)[-1]
            break
    return key, "-" if value is None else str(value)


def _set_label(arm: Arm) -> None:
    extras = ", ".join(f"{k}={v}" for k, v in arm.extras.items())
    arm.label = _base(arm) + (f" ({extras})" if extras else "")


def _label(arms: list[Arm], varying: list[str]) -> None:
    """Strategy (and mode) names each arm; the keys that still differ between arms of the same
    strategy follow in parentheses, a config group's other keys hidden when its name differs."""
    for arm in arms:
        same = [a for a in arms if (a.strategy, a.mode) == (arm.strategy, arm.mode)]
        keys = [k for k in varying if k not in ("mode", "strategy.name")
                and len({dict(a.key).get(k) for a in same}) > 1]
        named = {k.rsplit(".", 1)[0] for k in keys if k.endswith((".name", "._target_"))}
        shown = [k for k in keys if k.endswith((".name", "._target_"))
                 or not any(k.startswith(g + ".") for g in named)]
        extras = dict(_short(k, dict(arm.key).get(k)) for k in shown)
        # Last key part where unambiguous: `alpha=0.01`, not `strategy.alpha=0.01`.
        tails = [k.rsplit(".", 1)[-1] for k in extras]
        arm.extras = {(k.rsplit(".", 1)[-1] if tails.count(k.rsplit(".", 1)[-1]) == 1 else k): v
                      for k, v in extras.items()}
        _set_label(arm)
    for label in {a.label for a in arms}:  # a hidden key told these apart: show what differs
        same = [a for a in arms if a.label == label]
        if len(same) > 1:
            differ = [k for k in varying if len({dict(a.key).get(k) for a in same}) > 1]
            for arm in same:
                arm.extras.update({k: "-" if dict(arm.key).get(k) is None else str(dict(arm.key)[k]) for k in differ})
                _set_label(arm)


def _arm_order(arm: Arm):
    return (arm.mode != "centralized", arm.order, arm.strategy, arm.label)


# ---------------------------------------------------------------------------------------------
# Tables: each is a title, a header, rows of cells, and the raw numbers for its CSV.


@dataclass
class Table:
    name: str  # file stem
    title: str
    header: list[str]
    rows: list[list[str]]
    csv_header: list[str]
    csv_rows: list[list[object]]
    notes: list[str] = field(default_factory=list)
    text_columns: int = 1  # leading columns that hold names (left-aligned); the rest numbers
    # Per (arm label, metric): {round: the seeds' values}, for a figure drawn from the table.
    series: dict[tuple[str, str], dict[int, list[float]]] = field(default_factory=dict)

    def markdown(self) -> str:
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" if i < self.text_columns else "---:" for i in range(len(self.header))) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in self.rows]
        return "\n".join(lines + [""] + [f"{n}" for n in self.notes] + ([""] if self.notes else []))

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(self.csv_header)
        for row in self.csv_rows:
            w.writerow(["" if isinstance(v, float) and math.isnan(v) else v for v in row])
        return buf.getvalue()


def _stat_cols(st: Stat) -> list[object]:
    return [st.mean, st.std]


def client_table(arms: Sequence[Arm], metric: str, split: str, number: int) -> Table:
    """The study's Tables 1 (accuracy) and 2 (macro-F1): per arm and client, global vs
    personalized and the change, over seeds."""
    from pfl.metrics import title

    what = title(metric)
    header = ["strategy", "client", f"global {what} (%)", f"personalized {what} (%)", "change (pp)", "beats",
              "personalized 95% CI (%)", "seeds"]
    csv_header = ["strategy", "client", "global_mean", "global_std", "personal_mean", "personal_std",
                  "change_mean", "change_std", "beats", "personal_ci_lo", "personal_ci_hi", "seeds"]
    rows, csv_rows = [], []
    for arm in arms:
        unseen = arm.unseen()
        entries = [(c, f"client.{c}.{split}.global.{metric}", f"client.{c}.{split}.personal.{metric}")
                   for c in arm.clients() if c not in unseen]
        entries.append(("mean", f"{split}.global.{metric}.mean", f"{split}.personal.{metric}.mean"))
        if unseen:
            entries += [(f"{c} (unseen)", f"client.{c}.{split}.global.{metric}", f"client.{c}.{split}.personal.{metric}")
                        for c in arm.clients() if c in unseen]
            entries.append(("mean (unseen)", f"unseen.{split}.global.{metric}.mean",
                            f"unseen.{split}.personal.{metric}.mean"))
        for client, g, p in entries:
            sg, sp, sd = Stat.of(arm.values(g)), Stat.of(arm.values(p)), Stat.of(arm.delta(p, g))
            if sg.n == 0 and sp.n == 0:
                continue
            # Beats and the bootstrap interval over them (logged at the last round; mean over seeds).
            beats = Stat.of(arm.values(p.replace(f".personal.{metric}", ".n")))
            lo, hi = Stat.of(arm.values(p + ".ci_lo")), Stat.of(arm.values(p + ".ci_hi"))
            ci = f"{100 * lo.mean:.1f}-{100 * hi.mean:.1f}" if lo.n and hi.n else "-"
            rows.append([arm.label, f"**{client}**" if client.startswith("mean") else client,
                         sg.fmt(), sp.fmt(), sd.fmt(signed=True), f"{beats.mean:.0f}" if beats.n else "-", ci,
                         str(max(sg.n, sp.n))])
            csv_rows.append([arm.label, client, *_stat_cols(sg), *_stat_cols(sp), *_stat_cols(sd),
                             beats.mean if beats.n else math.nan, lo.mean if lo.n else math.nan,
                             hi.mean if hi.n else math.nan, max(sg.n, sp.n)])
    return Table(f"table{number}_{'accuracy' if metric == 'acc' else 'macro_f1'}",
                 f"Table {number}: {split} {what} per client, global vs personalized model", header, rows,
                 csv_header, csv_rows, text_columns=2)


def _summary_metrics(arms: Sequence[Arm], split: str) -> list[tuple[str, str | tuple[str, str], float]]:
    """(label, metric key or (a, b) for the per-seed change a - b, scale), for every metric of
    pfl.metrics.METRICS and the pooled per-class Se / +P."""
    from pfl.metrics import AAMI_SCORED, METRICS, title

    s = split
    out: list[tuple[str, str | tuple[str, str], float]] = []
    for m, metric in METRICS.items():
        t = metric.title
        out += [
            (f"{t}, mean over clients: global (%)", f"{s}.global.{m}.mean", 100),
            (f"{t}, mean over clients: personalized (%)", f"{s}.personal.{m}.mean", 100),
            (f"{t} change, personalized - global (pp)", (f"{s}.personal.{m}.mean", f"{s}.global.{m}.mean"), 100),
            (f"{t}, worst client: global (%)", f"{s}.global.{m}.worst", 100),
            (f"{t}, worst client: personalized (%)", f"{s}.personal.{m}.worst", 100),
            (f"{t}, std across clients: personalized (pp)", f"{s}.personal.{m}.std", 100),
            (f"{t}, pooled over clients: global (%)", f"{s}.global.{m}.pooled", 100),
            (f"{t}, pooled over clients: personalized (%)", f"{s}.personal.{m}.pooled", 100),
        ]
    for fam in ("se", "ppv"):
        for c in AAMI_SCORED:
            for model, name in (("global", "global"), ("personal", "personalized")):
                out.append((f"{title(f'{fam}_{c}')}, pooled: {name} (%)", f"{s}.{model}.{fam}_{c}.pooled", 100))
    if any(a.unseen() for a in arms):
        for m, metric in METRICS.items():
            t = metric.title
            out += [
                (f"unseen clients: {t}, mean: global (%)", f"unseen.{s}.global.{m}.mean", 100),
                (f"unseen clients: {t}, mean: personalized (%)", f"unseen.{s}.personal.{m}.mean", 100),
                (f"unseen clients: {t}, worst client: personalized (%)", f"unseen.{s}.personal.{m}.worst", 100),
                (f"unseen clients: {t}, pooled: personalized (%)", f"unseen.{s}.personal.{m}.pooled", 100),
            ]
    # What the strategy costs on the wire (the last round's, per participating client).
    out.append(("communication: MB sent per client per round", "bytes_sent_per_client", 1e-6))
    out.append(("communication: MB received per client per round", "bytes_received_per_client", 1e-6))
    out.append(("run time (min)", "__seconds__", 1 / 60))
    return out


def _arm_values(arm: Arm, key: str | tuple[str, str]) -> list[float]:
    if key == "__seconds__":
        return [r.seconds for r in arm.runs]
    if isinstance(key, tuple):
        return arm.delta(*key)
    return arm.values(key)


def summary_table(arms: Sequence[Arm], split: str) -> Table:
    """Strategies (columns) x metrics (rows), mean ± std over seeds."""
    header = ["metric (" + split + ")"] + [f"{a.label} (n={len(a.runs)})" for a in arms]
    rows, csv_rows = [], []
    for label, key, scale in _summary_metrics(arms, split):
        stats = [Stat.of(_arm_values(a, key)) for a in arms]
        if all(st.n == 0 for st in stats):
            continue
        signed = isinstance(key, tuple)
        digits = 1 if key == "__seconds__" else 4 if str(key).startswith("bytes_") else 2
        rows.append([label] + [st.fmt(signed=signed, scale=scale, digits=digits) for st in stats])
        for a, st in zip(arms, stats, strict=True):
            csv_rows.append([label, key if isinstance(key, str) else f"{key[0]} - {key[1]}", a.label,
                             st.mean, st.std, st.n])
    return Table("summary", f"Summary: strategies x {split} metrics", header, rows,
                 ["metric", "key", "strategy", "mean", "std", "seeds"], csv_rows)


def centralized_table(arms: Sequence[Arm], split: str) -> Table | None:
    """Centralized training vs FedAvg: arms that differ only in `mode`, per client, the global model."""
    pairs = []
    for c in (a for a in arms if a.mode == "centralized" and a.baseline):
        for f in (a for a in arms if a.mode == "federated" and a.baseline):
            if {k: v for k, v in c.key if k != "mode"} == {k: v for k, v in f.key if k != "mode"}:
                pairs.append((c, f))
    if not pairs:
        return None
    header = ["comparison", "client", "metric", "centralized (%)", "FedAvg (%)", "FedAvg - centralized (pp)"]
    csv_header = ["centralized", "fedavg", "client", "metric", "centralized_mean", "centralized_std",
                  "fedavg_mean", "fedavg_std", "change_mean", "change_std"]
    rows, csv_rows = [], []
    for c, f in pairs:
        title = c.label.replace("Centralized", "Centralized vs FedAvg", 1)
        unseen = c.unseen() | f.unseen()
        clients = [x for x in dict.fromkeys(c.clients() + f.clients()) if x not in unseen]
        for metric in ("acc", "f1"):
            entries = [(x, f"client.{x}.{split}.global.{metric}") for x in clients]
            entries += [(agg, f"{split}.global.{metric}.{agg}") for agg in ("mean", "worst", "pooled")]
            for client, key in entries:
                # Seeds pair up only if both arms ran them; the change is taken per shared seed.
                shared = sorted(set(c.seeds) & set(f.seeds))
                cv = {r.seed: r.metrics.get(key, math.nan) for r in c.runs}
                fv = {r.seed: r.metrics.get(key, math.nan) for r in f.runs}
                sc, sf = Stat.of(cv.values()), Stat.of(fv.values())
                sd = Stat.of(fv[s] - cv[s] for s in shared)
                if sc.n == 0 and sf.n == 0:
                    continue
                name = f"**{client}**" if client in ("mean", "worst", "pooled") else client
                rows.append([title, name, "accuracy" if metric == "acc" else "macro-F1", sc.fmt(), sf.fmt(),
                             sd.fmt(signed=True)])
                csv_rows.append([c.label, f.label, client, metric, *_stat_cols(sc), *_stat_cols(sf),
                                 *_stat_cols(sd)])
    return Table("centralized_vs_fedavg", f"Centralized vs FedAvg ({split}, global model)", header, rows,
                 csv_header, csv_rows, text_columns=3)


def runs_table(arms: Sequence[Arm], split: str) -> Table:
    """Every run the report used, with its headline numbers: the audit trail of the tables."""
    keys = [f"{split}.global.acc.mean", f"{split}.personal.acc.mean", f"{split}.global.f1.mean",
            f"{split}.personal.f1.mean"]
    header = ["strategy", "seed", "run", "run id", *keys]
    rows, csv_rows = [], []
    for a in arms:
        for r in a.runs:
            vals = [r.metrics.get(k, math.nan) for k in keys]
            rows.append([a.label, str(r.seed), r.name, r.run_id,
                         *("-" if math.isnan(v) else f"{100 * v:.2f}" for v in vals)])
            csv_rows.append([a.label, r.seed, r.name, r.run_id, *vals])
    return Table("runs", "Runs used", header, rows, header, csv_rows, text_columns=4)


def _fraction(key: str) -> bool:
    """Accuracy, F1, Se and +P are logged as fractions and shown in percent, like the tables."""
    return re.search(r"\.(acc|f1|f1_\w+|se_\w+|ppv_\w+)(\.|$)", key) is not None


def curve_keys(arms: Sequence[Arm], patterns: Sequence[str]) -> list[str]:
    """The metric keys that the patterns (exact keys or shell-style wildcards) name, in the order
    given; a pattern that names no logged metric is an error listing what was logged."""
    logged = sorted({k for a in arms for r in a.runs for k in r.metrics})
    keys: dict[str, None] = {}
    for pattern in patterns:
        found = [k for k in logged if fnmatch.fnmatchcase(k, pattern)]
        if not found:
            shown = [k for k in logged if not k.startswith("client.")]
            raise PflError(f"--curves={pattern!r}: no run logged a metric of that name; the runs logged "
                           + ", ".join(shown[:40]) + (", ..." if len(shown) > 40 else "")
                           + " (and client.<id>.* per client; wildcards such as 'test.*.se_S.pooled' work)")
        keys.update(dict.fromkeys(found))
    return list(keys)


def parse_bars(items: Sequence[str], keys: Sequence[str]) -> dict[str, float]:
    """`--bar test.personal.se_S.pooled=0.646`: a reference line on that metric's curve, in the
    metric's logged units (fractions for accuracy, F1, Se and +P)."""
    bars: dict[str, float] = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise PflError(f"--bar={item!r}: expected METRIC=NUMBER, e.g. test.personal.se_S.pooled=0.646")
        if key not in keys:
            raise PflError(f"--bar={item!r}: {key!r} is not one of the curves drawn (a key as logged, no "
                           "wildcards): " + (", ".join(keys) if keys else "none (give --curves)"))
        if key in bars:
            raise PflError(f"--bar={item!r}: {key} already has a bar ({bars[key]:g}); give one per metric")
        if _fraction(key) and not 0 <= number <= 1:
            raise PflError(f"--bar={item!r}: {key} is logged as a fraction; expected a number in [0, 1] "
                           f"(e.g. {number / 100:g} for {number:g}%)")
        bars[key] = number
    return bars


def curves_table(client, arms: Sequence[Arm], keys: Sequence[str]) -> Table:
    """Learning curves: per arm, metric and logged round, mean ± sample std over the seeds whose
    run logged the metric at that round (n says how many). A round logged twice (a resumed run)
    counts with its latest value."""
    data: dict[tuple[str, str], dict[int, list[float]]] = {}
    for key in keys:  # key-major: the figure's panels follow the order asked for
        for arm in arms:
            per_step: dict[int, list[float]] = {}
            for r in arm.runs:
                latest: dict[int, tuple[int, float]] = {}
                for m in client.get_metric_history(r.run_id, key):
                    if m.step not in latest or m.timestamp >= latest[m.step][0]:
                        latest[m.step] = (m.timestamp, m.value)
                for step, (_, value) in latest.items():
                    per_step.setdefault(step, []).append(value)
            if per_step:
                data[(arm.label, key)] = dict(sorted(per_step.items()))
    header = ["strategy", "round", *(f"{k} (%)" if _fraction(k) else k for k in keys)]
    rows, csv_rows = [], []
    for arm in arms:
        steps = sorted({s for k in keys for s in data.get((arm.label, k), {})})
        for step in steps:
            stats = [Stat.of(data.get((arm.label, k), {}).get(step, [])) for k in keys]
            rows.append([arm.label, str(step), *(st.fmt(scale=100 if _fraction(k) else 1,
                                                         digits=2 if _fraction(k) else 4)
                                                  for st, k in zip(stats, keys, strict=True))])
            csv_rows += [[arm.label, k, step, st.mean, st.std, st.n] for st, k in zip(stats, keys, strict=True)
                         if st.n]
    return Table("curves", "Learning curves: mean ± sample std over seeds at each logged round", header, rows,
                 ["strategy", "metric", "round", "mean", "std", "seeds"], csv_rows,
                 notes=["Rounds where a metric was not logged (`federation.eval_every`, `test_every`) show -."],
                 text_columns=2, series=data)


# ---------------------------------------------------------------------------------------------


def build(client, experiment_name: str | None, split: str = "test", curves: Sequence[str] = ()
          ) -> tuple[object, list[Arm], list[Table], list[str]]:
    exp = _experiment(client, experiment_name)
    runs, statuses = load_runs(client, exp)
    if not runs:
        have = ", ".join(f"{n} {s}" for s, n in sorted(statuses.items())) or "no runs at all"
        raise PflError(f"experiment {exp.name!r} has no finished runs ({have}); run the study first, or wait "
                       "for its runs to finish")
    arms = group_runs(runs)
    notes = [f"Experiment `{exp.name}` (id {exp.experiment_id}): {len(runs)} finished runs in {len(arms)} arms"
             + "".join(f", {n} {s.lower()} (left out)" for s, n in sorted(statuses.items()) if s != "FINISHED")
             + ".",
             "Numbers are mean ± sample standard deviation (ddof=1) over seeds; no ± where an arm has one seed. "
             "'std across clients' is the population std (ddof=0) over one run's clients, then averaged over "
             "seeds. Changes are personalized - global per seed, then averaged. pp = percentage points.",
             "; ".join(dict.fromkeys(f"{a.display} = strategy `{a.strategy}`" for a in arms if a.display))
             + ". Strategies with no single global model (FedPer, FedRep, LG-FedAvg, FedBN, Local) report "
             "personalized models only."]
    superseded = sum(a.superseded for a in arms)
    if superseded:
        notes.append(f"{superseded} older run(s) of a seed already reported were left out: the latest finished "
                     "run of each arm and seed counts.")
    tables = [client_table(arms, "acc", split, 1), client_table(arms, "f1", split, 2), summary_table(arms, split)]
    cen = centralized_table(arms, split)
    if cen is not None:
        tables.append(cen)
    tables.append(runs_table(arms, split))
    if curves:
        tables.append(curves_table(client, arms, curve_keys(arms, curves)))
    return exp, arms, tables, notes


def write(out: Path, exp, arms: Sequence[Arm], tables: Sequence[Table], notes: Sequence[str], split: str,
          bars: dict[str, float] | None = None) -> str:
    from pfl import plots

    out.mkdir(parents=True, exist_ok=True)
    md = "\n".join([f"# Report: {exp.name}", "", *[f"{n}  " for n in notes], ""] + [t.markdown() for t in tables])
    (out / "report.md").write_text(md)
    for t in tables:
        (out / f"{t.name}.csv").write_text(t.csv())
    plots.report_summary(arms, split, out / "summary.png")
    for metric in ("acc", "f1"):
        plots.report_clients(arms, split, metric, out / f"clients_{metric}.png")
    if any(t.name == "centralized_vs_fedavg" for t in tables):
        plots.report_centralized(arms, split, out / "centralized_vs_fedavg.png")
    for t in tables:
        if t.name == "curves":
            plots.report_curves(t.series, [a.label for a in arms], out / "curves.png", percent=_fraction,
                                bars=bars or {})
    return md


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="pfl-report", description="Comparison tables and charts of a study's MLflow runs.")
    parser.add_argument("--experiment", help="MLflow experiment (a study's `study` name); default: the experiment "
                        "of the most recent run")
    parser.add_argument("--tracking-uri", default=None,
                        help="MLflow store; default: the embedded store pfl logs to, " + default_tracking_uri())
    parser.add_argument("--out", type=Path, default=None, help="output directory; default: outputs/reports/<experiment>")
    parser.add_argument("--split", choices=("test", "val"), default="test",
                        help="which split's metrics to report (default: test)")
    parser.add_argument("--curves", nargs="+", metavar="METRIC", default=(),
                        help="learning curves of these metrics (keys as logged, shell wildcards allowed, e.g. "
                        "val.personal.f1.mean 'test.personal.se_*.pooled'): curves.csv, curves.png and a table")
    parser.add_argument("--bar", action="append", default=[], metavar="METRIC=VALUE",
                        help="a dashed reference line on a curve (a published bar), in the metric's logged "
                        "units, e.g. test.personal.se_S.pooled=0.646; repeatable")
    args = parser.parse_args(argv)
    try:
        client = _open(args.tracking_uri or default_tracking_uri())
        exp, arms, tables, notes = build(client, args.experiment, args.split, args.curves)
        drawn = [k for t in tables if t.name == "curves" for k in dict.fromkeys(k for _, k in t.series)]
        bars = parse_bars(args.bar, drawn)
        root = Path(os.environ.get("PFL_ROOT_DIR", "."))
        out = args.out or root / "outputs" / "reports" / re.sub(r"[^\w.-]+", "_", exp.name)
        md = write(out, exp, arms, tables, notes, args.split, bars)
    except PflError as exc:
        if os.environ.get("HYDRA_FULL_ERROR") == "1":
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(md)
    print(f"Written to {out}/: report.md, " + ", ".join(f"{t.name}.csv" for t in tables) + ", *.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
