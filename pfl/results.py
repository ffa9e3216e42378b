"""RESULTS.md of a `pfl-study` grid: generated from the MLflow runs, never edited by hand.

Per federation, one row per strategy: mean ± std over seeds of the last round's test metrics
(the personalized model each strategy is evaluated with), the change against FedAvg with a
two-sided Wilcoxon signed-rank test of macro-F1 (scipy), one pair per client (each client's
mean over the seeds both arms ran: seeds of one client are not independent samples), and the
cost. For the inter-patient federation the clients that never trained (DS2) are reported
apart: the global model and the adapted one. A cell without a finished run is listed as
missing, never filled in.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import os
import platform
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pfl.report import Stat

BASELINE = "none"

#: published anchors, each with its source; numbers in percent
ANCHORS: dict[str, list[dict[str, Any]]] = {
    "interpatient": [
        {"source": "de Chazal, O'Dwyer, Reilly. Automatic classification of heartbeats using ECG morphology and "
                   "heartbeat interval features. IEEE TBME 51(7):1196-1206, 2004 (linear discriminants, DS1 -> DS2)",
         "acc": 86.2, "se_N": 86.9, "ppv_N": 99.2, "se_S": 75.9, "ppv_S": 38.5, "se_V": 77.7, "ppv_V": 81.9,
         "se_F": 89.4, "ppv_F": 8.6},
        {"source": "Niu, Tang, Sun, Zhang. Inter-patient ECG classification with symbolic representations and "
                   "multi-perspective convolutional neural networks. IEEE JBHI 24(5):1321-1332, 2020 (DS1 -> DS2)",
         "f1_S": 76.6, "f1_V": 89.7},
        {"source": "Zhang, Liu, Liang, Chen, Gao. Interpatient ECG heartbeat classification with an adversarial "
                   "convolutional neural network. Journal of Healthcare Engineering 2021, article 9946596 "
                   "(inter-patient, MIT-BIH; sensitivities as stated in its abstract)",
         "se_S": 78.8, "se_V": 92.5},
    ],
    "patient": [
        {"source": "Kiranyaz, Ince, Gabbouj. Real-time patient-specific ECG classification by 1-D convolutional "
                   "neural networks. IEEE TBME 63(3):664-675, 2016 (first 5 minutes of each patient train)",
         "se_S": 64.6, "ppv_S": 62.1, "se_V": 95.0, "ppv_V": 89.5},
    ],
    "hospitals": [
        {"source": "The reference study behind pfl (three hospitals, CNN-LSTM, intra-patient split): FedAvg mean "
                   "test accuracy 99.19%, centralized 99.25%; Per-FedAvg macro-F1 0.887 -> 0.426 (Phase 3)",
         "acc": 99.19},
    ],
}

COLUMNS = [  # (header, metric suffix after <prefix>.<split>.<model>., scale)
    ("acc", "acc.mean", 100), ("macro-F1", "f1.mean", 100), ("worst-client F1", "f1.worst", 100),
    ("Se S", "se_S.pooled", 100), ("+P S", "ppv_S.pooled", 100), ("Se V", "se_V.pooled", 100),
    ("+P V", "ppv_V.pooled", 100), ("F1 N,S,V,F (pooled)", "f1_nsvf.pooled", 100),
]


def paired_wilcoxon(a: Sequence[float], b: Sequence[float]) -> float:
    """Two-sided Wilcoxon signed-rank p-value of a - b (scipy; zero differences dropped by its
    default). 1.0 when every pair is equal, nan with no pair."""
    from scipy.stats import wilcoxon

    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    d = d[np.isfinite(d)]
    if not len(d):
        return math.nan
    if np.all(d == 0):
        return 1.0
    return float(wilcoxon(d).pvalue)


def _client_ids(run) -> list[str]:
    pat = re.compile(r"^client\.(.+)\.test\.personal\.f1$")
    return sorted({m.group(1) for k in run.data.metrics if (m := pat.match(k))})


def _unseen(run) -> set[str]:
    return {c for c in run.data.tags.get("unseen_clients", "").split(",") if c}


def _pairs(runs_a: dict[int, Any], runs_b: dict[int, Any], unseen: bool, per_seed: bool = False,
           model_a: str = "personal", model_b: str = "personal") -> tuple[list[float], list[float]]:
    """Per-client macro-F1 of two arms over the seeds both ran: one pair per client, each arm
    averaged over those seeds (a client is one unit of the test, whatever the seeds), or one
    pair per (client, seed) with per_seed (for plots)."""
    seeds = sorted(set(runs_a) & set(runs_b))
    by_client: dict[str, tuple[list[float], list[float]]] = {}
    for seed in seeds:
        ra, rb = runs_a[seed], runs_b[seed]
        for cid in _client_ids(ra):
            if (cid in _unseen(ra)) != unseen:
                continue
            ka, kb = f"client.{cid}.test.{model_a}.f1", f"client.{cid}.test.{model_b}.f1"
            if ka in ra.data.metrics and kb in rb.data.metrics:
                xs, ys = by_client.setdefault(cid, ([], []))
                xs.append(ra.data.metrics[ka])
                ys.append(rb.data.metrics[kb])
    if per_seed:
        return ([v for xs, _ in by_client.values() for v in xs], [v for _, ys in by_client.values() for v in ys])
    return ([float(np.mean(xs)) for xs, _ in by_client.values()], [float(np.mean(ys)) for _, ys in by_client.values()])


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (step-down; nan stays nan)."""
    finite = sorted((p, k) for k, p in pvalues.items() if math.isfinite(p))
    m, out, running = len(finite), {k: math.nan for k in pvalues}, 0.0
    for i, (p, k) in enumerate(finite):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


_ROUND_SECONDS: dict[str, list[float]] = {}


def _round_seconds(uri: str, run) -> list[float]:
    """The logged wall time of every round (training, evaluation, logging): a resumed run's
    start time would count the time the grid was stopped."""
    rid = run.info.run_id
    if rid not in _ROUND_SECONDS:
        _ROUND_SECONDS[rid] = [v for _, v in _histories(uri, rid, "round_seconds")]
    return _ROUND_SECONDS[rid]


def _fmt(st: Stat, signed: bool = False) -> str:
    return st.fmt(signed=signed, scale=100.0, digits=1)


def _p(p: float) -> str:
    return "-" if not math.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def federation_block(fed: str, strategies: Sequence[str], runs: dict[tuple[str, str], dict[int, Any]],
                     labels: dict[str, str], prefix: str, title: str, csv_rows: list,
                     uri: str) -> tuple[list[str], dict]:
    """One table; returns its markdown lines and the headline numbers per strategy."""
    model_of = "personal"
    lines = [f"### {title}", "",
             "| strategy | seeds | " + " | ".join(h for h, _, _ in COLUMNS)
             + " | Δ F1 vs FedAvg (pp) | p (Wilcoxon) | p (Holm) | Δ worst F1 (pp) | s / round "
               "| MB sent / client / round |",
             "|" + "---|" * (len(COLUMNS) + 8)]
    base = runs.get((fed, BASELINE), {})
    heads: dict[str, dict[str, float]] = {}
    pvals = {s: paired_wilcoxon(*_pairs(runs[(fed, s)], base, unseen=bool(prefix)))
             for s in strategies if s != BASELINE and runs.get((fed, s)) and base}
    adjusted = holm(pvals)
    for s in strategies:
        rs = runs.get((fed, s), {})
        if not rs:
            continue
        cells = []
        for _, suffix, _ in COLUMNS:
            key = f"{prefix}test.{model_of}.{suffix}"
            cells.append(_fmt(Stat.of(r.data.metrics.get(key, math.nan) for r in rs.values())))
        f1 = f"{prefix}test.{model_of}.f1.mean"
        worst = f"{prefix}test.{model_of}.f1.worst"
        shared = sorted(set(rs) & set(base))
        d_f1 = Stat.of(rs[k].data.metrics.get(f1, math.nan) - base[k].data.metrics.get(f1, math.nan) for k in shared)
        d_w = Stat.of(rs[k].data.metrics.get(worst, math.nan) - base[k].data.metrics.get(worst, math.nan)
                      for k in shared)
        a, b = _pairs(rs, base, unseen=bool(prefix))
        p = pvals.get(s, math.nan)
        sec = Stat.of(float(np.mean(_round_seconds(uri, r) or [math.nan])) for r in rs.values())
        mb = Stat.of(r.data.metrics.get("bytes_sent_per_client", math.nan) / 1e6 for r in rs.values())
        lines.append(f"| {labels.get(s, s)} | {len(rs)} | " + " | ".join(cells)
                     + f" | {'-' if s == BASELINE else _fmt(d_f1, True)} | {_p(p)} | {_p(adjusted.get(s, math.nan))} | "
                     f"{'-' if s == BASELINE else _fmt(d_w, True)} | {sec.mean:.1f} | {mb.mean:.3f} |")
        val_f1 = f"{prefix}val.{model_of}.f1.mean"
        heads[s] = {"f1": Stat.of(r.data.metrics.get(f1, math.nan) for r in rs.values()).mean,
                    "val_f1": Stat.of(r.data.metrics.get(val_f1, math.nan) for r in rs.values()).mean,
                    "p_holm": adjusted.get(s, math.nan),
                    "worst": Stat.of(r.data.metrics.get(worst, math.nan) for r in rs.values()).mean,
                    "d_f1": d_f1.mean, "d_worst": d_w.mean, "p": p, "n_pairs": len(a)}
        for (h, suffix, _), _c in zip(COLUMNS, cells, strict=True):
            vals = [r.data.metrics.get(f"{prefix}test.{model_of}.{suffix}", math.nan) for r in rs.values()]
            st = Stat.of(vals)
            csv_rows.append([fed, title, s, h, st.mean, st.std, st.n])
        csv_rows.append([fed, title, s, "delta_f1_vs_fedavg", d_f1.mean, d_f1.std, d_f1.n])
        csv_rows.append([fed, title, s, "wilcoxon_p", p, math.nan, len(a)])
        csv_rows.append([fed, title, s, "wilcoxon_p_holm", adjusted.get(s, math.nan), math.nan, len(a)])
    lines.append("")
    return lines, heads


def site_verdicts(fed: str, strategies: Sequence[str], runs: dict[tuple[str, str], dict[int, Any]],
                  labels: dict[str, str], unseen: bool) -> list[str]:
    """Per client: the strategy with the best mean macro-F1 over seeds, and its gain over FedAvg."""
    base = runs.get((fed, BASELINE), {})
    if not base:
        return []
    clients = [c for c in _client_ids(next(iter(base.values())))
               if (c in _unseen(next(iter(base.values())))) == unseen]
    out = []
    for cid in clients:
        key = f"client.{cid}.test.personal.f1"
        means = {s: float(np.nanmean([r.data.metrics.get(key, math.nan) for r in runs[(fed, s)].values()]))
                 for s in strategies if runs.get((fed, s))}
        means = {s: v for s, v in means.items() if math.isfinite(v)}
        if not means or BASELINE not in means:
            continue
        best = max(means, key=means.get)
        gain = 100 * (means[best] - means[BASELINE])
        if best == BASELINE or gain <= 0:
            out.append(f"- {cid}: FedAvg is best (macro-F1 {100 * means[BASELINE]:.1f}%); no strategy beats it.")
        else:
            out.append(f"- {cid}: {labels.get(best, best)} is best, macro-F1 {100 * means[best]:.1f}% vs FedAvg "
                       f"{100 * means[BASELINE]:.1f}% ({gain:+.1f} pp).")
    return out


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    return (f"{platform.system()} {platform.machine()}, {cpu}, {len(os.sched_getaffinity(0))} cores available, "
            f"Python {platform.python_version()}, torch {torch.__version__}")


def _name(key: str) -> str:
    return {"f1_nsvf": "macro-F1 (N,S,V,F)", "acc": "accuracy"}.get(key) or key.replace("ppv_", "+P ").replace(
        "se_", "Se ").replace("f1_", "F1 ")


def derived_f1(anchor: dict[str, Any]) -> dict[str, float]:
    """Per-class F1 = 2 Se +P / (Se + +P) where a source gives both, and their mean over N, S, V, F."""
    out = {}
    for c in ("N", "S", "V", "F"):
        se, p = anchor.get(f"se_{c}"), anchor.get(f"ppv_{c}")
        if se is not None and p is not None:
            out[f"f1_{c}"] = 2 * se * p / (se + p)
    if len(out) == 4:
        out["f1_nsvf"] = float(np.mean(list(out.values())))
    return out


def _anchor_lines(fed: str) -> list[str]:
    out = []
    for a in ANCHORS.get(fed, []):
        nums = ", ".join(f"{_name(k)} {v}" for k, v in a.items() if k != "source")
        d = derived_f1(a)
        derived = ("; derived from its Se and +P: " + ", ".join(f"{_name(k)} {v:.1f}" for k, v in d.items())) if d else ""
        out.append(f"- {nums}{derived} — {a['source']}")
    return out


def write_results(grid, cells: Sequence[Any], uri: str, sitting_seconds: float | None,
                  labels_from: Callable[[str], str] | None = None) -> Path:
    """Write <grid.out>/RESULTS.md, results.csv and the figures; returns the markdown path."""
    from pfl.study import finished_runs, study_of
    from pfl.tracking import git_commit

    done = finished_runs(uri, study_of(grid, "grid"))
    runs: dict[tuple[str, str], dict[int, Any]] = {}
    missing = []
    for c in cells:
        r = done.get(c.config_hash)
        if r is None:
            missing.append(c.key)
        else:
            runs.setdefault((c.federation, c.strategy), {})[c.seed] = r
    labels = {}
    for (_, s), rs in runs.items():
        labels[s] = next(iter(rs.values())).data.tags.get("strategy_label") or s
    labels = {s: (labels_from(s) if labels_from else labels.get(s, s)) for s in grid.strategies}
    strategies = list(grid.strategies)
    out = grid.out
    out.mkdir(parents=True, exist_ok=True)
    total_run_s = sum(sum(_round_seconds(uri, r)) for rs in runs.values() for r in rs.values())
    md = [f"# Results: grid `{grid.name}`", "",
          "Generated by `pfl-study " + grid.name + "` from the MLflow runs of study `" + grid.study
          + "`; do not edit by hand (run `pfl-study " + grid.name + " --report-only` to regenerate).", "",
          f"- git commit: `{git_commit()}`; written {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
          f"- machine: {_machine()}",
          f"- wall time: {total_run_s / 3600:.2f} h of rounds in total (sum of every grid run's round times; "
          "tuning, data loading and start-up not included)"
          + (f"; this sitting {sitting_seconds / 3600:.2f} h" if sitting_seconds else ""),
          f"- cells: {len(cells) - len(missing)} of {len(cells)} finished"
          + (f"; missing (not run yet, or failed): {', '.join(missing)}" if missing else ""),
          f"- common overrides: `{' '.join(grid.overrides)}`",
          f"- seeds {grid.seeds}; hyperparameters tuned on val (`{grid.tune.get('objective')}`) with "
          f"{grid.tune.get('budget')} trials per strategy on `{grid.tune.get('federation')}` seed "
          f"{grid.tune.get('seed')}: see `{grid.tuning_file.name}`",
          "",
          "Every number is the last round's, on test, in percent: mean ± sample std over seeds. Each strategy is "
          "scored with the model it evaluates clients with (personalized; FedAvg's is the global model). "
          "Δ are per seed against FedAvg of the same seed, then averaged. p: two-sided Wilcoxon signed-rank test "
          "(scipy.stats.wilcoxon) of each client's macro-F1 (mean over the seeds both ran) against FedAvg's, one "
          "pair per client, so a federation of 3 sites cannot go below p = 0.25; p (Holm): adjusted for the "
          "comparisons of the table (Holm-Bonferroni). Se / +P: pooled over clients (AAMI EC57). s / round: the "
          "mean logged round time (training, evaluation, logging). MB sent: what one client uploads per round.",
          ""]
    if grid.description:
        md += [grid.description, ""]
    csv_rows: list[list[Any]] = []
    headline: dict[str, Any] = {}
    for fed in grid.federations:
        md += [f"## {fed}", ""]
        lines, heads = federation_block(fed, strategies, runs, labels, "", f"{fed}: clients that trained", csv_rows,
                                        uri)
        md += lines
        headline[fed] = heads
        unseen_any = any(_unseen(r) for (f, _), rs in runs.items() if f == fed for r in rs.values())
        if unseen_any:
            lines, heads_u = federation_block(fed, strategies, runs, labels, "unseen.",
                                              f"{fed}: patients that never trained (adapted models)", csv_rows, uri)
            md += lines
            headline[f"{fed}/unseen"] = heads_u
            base = runs.get((fed, BASELINE), {})
            if base:
                g = {k: Stat.of(r.data.metrics.get(f"unseen.test.global.{k}", math.nan) for r in base.values())
                     for k in ("acc.pooled", "f1_nsvf.pooled", "f1_N.pooled", "f1_S.pooled", "f1_V.pooled",
                               "f1_F.pooled", "se_N.pooled", "ppv_N.pooled", "se_S.pooled", "ppv_S.pooled",
                               "se_V.pooled", "ppv_V.pooled", "se_F.pooled")}
                md += ["FedAvg's global model on the patients that never trained, pooled: "
                       + ", ".join(f"{_name(k.split('.')[0])} {_fmt(v)}"
                                   for k, v in g.items()), ""]
                headline[f"{fed}/global_unseen"] = {k: v.mean for k, v in g.items()}
        verdicts = site_verdicts(fed, strategies, runs, labels, unseen=False)
        if len(verdicts) > 10:  # one line per patient would drown the table: FedAvg's wins are counted
            kept = [v for v in verdicts if "FedAvg is best" not in v]
            verdicts = [f"- FedAvg is best for {len(verdicts) - len(kept)} of {len(verdicts)} clients; for the "
                        f"other {len(kept)}:", *[f"  {v}" for v in kept]]
        if verdicts:
            md += ["Per site (client), the best strategy by mean test macro-F1 over seeds (a reading of test "
                   "numbers, not a choice made on them):", "", *verdicts, ""]
        anchors = _anchor_lines(fed)
        if anchors:
            md += ["Published numbers on this protocol (from the papers; other models, data handling and training "
                   "budgets, so a reference point rather than a like-for-like comparison):", "", *anchors, ""]
    md += _headline(headline, labels)
    figs = _figures(grid, strategies, runs, labels, out)
    curves = _learning_curves(grid, strategies, runs, labels, out, uri)
    if curves:
        figs += curves
        md += ["## Convergence", "",
               "Training loss per round (mean over the round's clients, seed 0) and the validation macro-F1 at each "
               "evaluation, per federation: `learning_curves_<federation>.png`. "
               + _convergence_note(grid, strategies, runs, uri), ""]
    if figs:
        md += ["## Figures", "", *(f"![{f}]({f})" for f in figs), ""]
    path = out / "RESULTS.md"
    path.write_text("\n".join(md))
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["federation", "table", "strategy", "metric", "mean", "std", "n"])
        w.writerows(csv_rows)
    return path


def _headline(headline: dict[str, Any], labels: dict[str, str]) -> list[str]:
    out = ["## Headline", ""]
    for block, heads in headline.items():
        if "/global_unseen" in block:
            fed = block.split("/")[0]
            chazal = derived_f1(ANCHORS.get(fed, [{}])[0]) if ANCHORS.get(fed) else {}
            ours = ", ".join(f"{_name(k.split('.')[0])} {100 * v:.1f}%" for k, v in heads.items()
                             if k.startswith("f1_") and math.isfinite(v))
            out.append(f"- {fed}, patients that never trained, FedAvg's global model (pooled): {ours}"
                       + (f"; de Chazal 2004 (derived from its Se and +P): macro-F1 (N,S,V,F) "
                          f"{chazal['f1_nsvf']:.1f}%, F1 S {chazal['f1_S']:.1f}%, F1 V {chazal['f1_V']:.1f}%"
                          if "f1_nsvf" in chazal else "") + ".")
            continue
        cands = {s: h for s, h in heads.items() if s != BASELINE and math.isfinite(h["f1"])}
        if BASELINE not in heads or not cands:
            out.append(f"- {block}: not enough finished cells for a comparison.")
            continue
        # Chosen by validation macro-F1, like every other choice in the grid; reported on test.
        best = max(cands, key=lambda s: (cands[s]["val_f1"] if math.isfinite(cands[s]["val_f1"]) else -1))
        h, b = cands[best], heads[BASELINE]
        out.append(f"- {block}: the best other strategy by val macro-F1 is {labels.get(best, best)}: test macro-F1 "
                   f"{100 * h['f1']:.1f}% vs FedAvg {100 * b['f1']:.1f}% ({100 * h['d_f1']:+.1f} pp, Wilcoxon p "
                   f"{_p(h['p'])} over {h['n_pairs']} clients, Holm {_p(h['p_holm'])}); worst-client macro-F1 "
                   f"{100 * h['worst']:.1f}% vs {100 * b['worst']:.1f}% ({100 * h['d_worst']:+.1f} pp).")
    out.append("")
    return out


def _histories(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    from pfl.tracking import open_client

    client = open_client(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _convergence_note(grid, strategies, runs, uri: str) -> str:
    """Which runs were still improving: the training loss of the last round against the mean of
    the two before it (seed 0)."""
    still = []
    for f in grid.federations:
        for s in strategies:
            r = runs.get((f, s), {}).get(grid.seeds[0])
            if r is None:
                continue
            h = [v for _, v in _histories(uri, r.info.run_id, "train_loss")]
            if len(h) >= 3 and h[-1] < 0.95 * float(np.mean(h[-3:-1])):
                still.append(f"{f}/{s}")
    if not still:
        return "In every seed-0 run the last round's training loss is within 5% of the two rounds before it."
    return ("Still improving by more than 5% in the last round (more rounds would change these cells): "
            + ", ".join(still) + ".")


def _learning_curves(grid, strategies, runs, labels, out: Path, uri: str) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    for f in grid.federations:
        seed0 = {s: runs.get((f, s), {}).get(grid.seeds[0]) for s in strategies}
        seed0 = {s: r for s, r in seed0.items() if r is not None}
        if not seed0:
            continue
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for s, r in seed0.items():
            loss = _histories(uri, r.info.run_id, "train_loss")
            f1 = _histories(uri, r.info.run_id, "val.personal.f1.mean")
            if loss:
                a1.plot(*zip(*loss, strict=True), label=labels.get(s, s))
            if f1:
                a2.plot([x for x, _ in f1], [100 * v for _, v in f1], marker="o", label=labels.get(s, s))
        a1.set_xlabel("round")
        a1.set_ylabel("training loss")
        a1.set_yscale("log")
        a2.set_xlabel("round")
        a2.set_ylabel("val macro-F1 (%)")
        a1.set_title(f"{f}: training loss (seed {grid.seeds[0]})")
        a2.set_title(f"{f}: validation macro-F1")
        a2.legend(fontsize=6, ncol=2)
        fig.tight_layout()
        fig.savefig(out / f"learning_curves_{f}.png", dpi=100)
        plt.close(fig)
        names.append(f"learning_curves_{f}.png")
    return names


def _figures(grid, strategies, runs, labels, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = []
    feds = list(grid.federations)
    heat = np.full((len(strategies), len(feds)), np.nan)
    for i, s in enumerate(strategies):
        for j, f in enumerate(feds):
            rs = runs.get((f, s), {})
            if rs:
                heat[i, j] = 100 * np.nanmean([r.data.metrics.get("test.personal.f1.mean", math.nan) for r in rs.values()])
    if np.isfinite(heat).any():
        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(feds), 0.9 + 0.35 * len(strategies)))
        im = ax.imshow(heat, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(feds)), feds)
        ax.set_yticks(range(len(strategies)), [labels.get(s, s) for s in strategies])
        for i in range(len(strategies)):
            for j in range(len(feds)):
                ax.text(j, i, "-" if not np.isfinite(heat[i, j]) else f"{heat[i, j]:.1f}", ha="center", va="center",
                        color="w", fontsize=8)
        fig.colorbar(im, ax=ax, label="test macro-F1 (%)")
        ax.set_title("strategies x federations: mean test macro-F1")
        fig.tight_layout()
        fig.savefig(out / "heatmap.png", dpi=110)
        plt.close(fig)
        names.append("heatmap.png")
    for f in feds:
        base = runs.get((f, BASELINE), {})
        if not base:
            continue
        fig, ax = plt.subplots(figsize=(5, 5))
        for s in strategies:
            rs = runs.get((f, s), {})
            if s == BASELINE or not rs:
                continue
            a, b = _pairs(rs, base, unseen=False, per_seed=True)
            if a:
                ax.scatter(100 * np.asarray(b), 100 * np.asarray(a), s=12, label=labels.get(s, s), alpha=0.7)
        ax.plot([0, 100], [0, 100], "k--", lw=0.8)
        ax.set_xlabel("FedAvg global model: client macro-F1 (%)")
        ax.set_ylabel("strategy's personalized model: client macro-F1 (%)")
        ax.set_title(f"{f}: per client and seed")
        if ax.collections:
            ax.legend(fontsize=6, loc="lower right")
        fig.tight_layout()
        fig.savefig(out / f"clients_{f}.png", dpi=110)
        plt.close(fig)
        names.append(f"clients_{f}.png")
    return names
