"""Every metric of pfl.metrics against scikit-learn on random cases, and the bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from pfl.metrics import AAMI_SCORED, METRICS, PER_CLASS, bootstrap_ci, scores, summarize

CLASSES = ["N", "S", "V", "F", "Q"]


def cm_of(y, p, k=5):
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (y, p), 1)
    return cm


def cases(n_cases=60, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n_cases):
        n = int(rng.integers(1, 80))
        # Skewed labels with some classes absent, predictions that sometimes name absent ones.
        py = rng.dirichlet(np.full(5, 0.4))
        y = rng.choice(5, n, p=py)
        p = np.where(rng.random(n) < 0.6, y, rng.choice(5, n, p=rng.dirichlet(np.ones(5))))
        yield y, p


@pytest.mark.parametrize("case", range(60))
def test_every_metric_matches_sklearn(case):
    y, p = list(cases())[case]
    got = scores(cm_of(y, p), CLASSES)
    assert got["acc"] == pytest.approx(accuracy_score(y, p), abs=1e-12)
    # sklearn's default macro-F1: the union of the classes in labels and predictions.
    assert got["f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0), abs=1e-12)
    present = sorted(set(y.tolist()))
    assert got["f1_present"] == pytest.approx(
        f1_score(y, p, labels=present, average="macro", zero_division=0), abs=1e-12)
    nsvf = sorted({c for c in set(y.tolist()) | set(p.tolist()) if CLASSES[c] in AAMI_SCORED})
    if nsvf:
        assert got["f1_nsvf"] == pytest.approx(f1_score(y, p, labels=nsvf, average="macro", zero_division=0),
                                               abs=1e-12)
    else:
        assert np.isnan(got["f1_nsvf"])
    for i, c in enumerate(CLASSES):
        if c in AAMI_SCORED and (y == i).any():
            assert got[f"se_{c}"] == pytest.approx(recall_score(y, p, labels=[i], average=None)[0], abs=1e-12)
        else:
            assert f"se_{c}" not in got  # undefined (or Q): left out, not a 0
        if c in AAMI_SCORED and (p == i).any():
            assert got[f"ppv_{c}"] == pytest.approx(precision_score(y, p, labels=[i], average=None)[0], abs=1e-12)
        else:
            assert f"ppv_{c}" not in got


def test_predicting_an_absent_class_costs_f1_but_not_f1_present():
    # The case: a client with N and V only, 15% of its beats predicted F or Q.
    y = np.array([0] * 70 + [2] * 30)
    p = y.copy()
    p[:10], p[70:75] = 3, 4
    got = scores(cm_of(y, p), CLASSES)
    assert got["f1"] == pytest.approx(f1_score(y, p, average="macro"))
    assert got["f1"] < 0.5 < 0.85 < got["f1_present"]


def test_summaries_over_clients_and_pooled():
    cms = {c: cm_of(*next(cases(1, seed=s))) for s, c in enumerate("abc")}
    per = {c: scores(cm, CLASSES) for c, cm in cms.items()}
    sizes = {c: int(cm.sum()) for c, cm in cms.items()}
    out = summarize(per, sizes, cms, CLASSES)
    for m in METRICS:
        v = np.array([per[c][m] for c in "abc"])
        ok = ~np.isnan(v)
        assert out[f"{m}.mean"] == pytest.approx(v[ok].mean())
        assert out[f"{m}.worst"] == pytest.approx(v[ok].min())
        assert out[f"{m}.std"] == pytest.approx(np.std(v[ok]))
        w = np.array([sizes[c] for c in "abc"])[ok]
        assert out[f"{m}.wmean"] == pytest.approx((v[ok] * w).sum() / w.sum())
    # Pooled: sklearn on all beats of all clients together.
    ys, ps = [], []
    for cm in cms.values():
        t, q = np.nonzero(cm)
        ys.append(np.repeat(t, cm[t, q]))
        ps.append(np.repeat(q, cm[t, q]))
    y, p = np.concatenate(ys), np.concatenate(ps)
    assert out["f1.pooled"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    assert out["acc.pooled"] == pytest.approx(accuracy_score(y, p))


def test_bootstrap_interval_matches_resampling_beats():
    y = np.array([0] * 40 + [1] * 6 + [2] * 14)
    rng = np.random.default_rng(2)
    p = np.where(rng.random(60) < 0.7, y, rng.choice(3, 60))
    cm = cm_of(y, p)
    lo, hi = bootstrap_ci(cm, CLASSES, "f1", n=2000, seed=0)
    # Oracle: the textbook bootstrap, resampling (true, predicted) pairs with sklearn's F1.
    r = np.random.default_rng(123)
    vals = []
    for _ in range(2000):
        i = r.integers(0, 60, 60)
        vals.append(f1_score(y[i], p[i], average="macro", zero_division=0))
    olo, ohi = np.quantile(vals, [0.025, 0.975])
    point = f1_score(y, p, average="macro")
    assert lo < point < hi
    assert abs(lo - olo) < 0.03 and abs(hi - ohi) < 0.03
    # Fewer beats, wider interval.
    small_lo, small_hi = bootstrap_ci(cm_of(y[::4], p[::4]), CLASSES, "f1", n=2000, seed=0)
    assert small_hi - small_lo > hi - lo


def test_per_class_families_cover_the_aami_classes():
    assert set(PER_CLASS) == {"f1", "se", "ppv"}
    got = scores(cm_of(np.arange(5), np.arange(5)), CLASSES)
    assert {k for k in got if k.startswith(("se_", "ppv_"))} == {f"{f}_{c}" for f in ("se", "ppv") for c in "NSVF"}


@pytest.mark.parametrize("metric", ["f1", "f1_present", "f1_nsvf", "acc"])
def test_bootstrap_draws_are_scored_as_sklearn_scores_each_resample(metric):
    # The interval is the percentile of the metric over multinomial redraws of the confusion
    # matrix's cells (pfl.metrics.bootstrap_ci's documented procedure); each redraw scored here
    # by scikit-learn on the beats it stands for.
    y = np.array([0] * 30 + [1] * 4 + [2] * 9 + [3] * 2)
    rng = np.random.default_rng(5)
    p = np.where(rng.random(len(y)) < 0.75, y, rng.choice(5, len(y)))
    cm = cm_of(y, p)
    n = 300
    draws = np.random.default_rng(7).multinomial(cm.sum(), cm.ravel() / cm.sum(), size=n)
    vals = []
    for d in draws:
        cells = np.repeat(np.arange(25), d)
        yt, yp = cells // 5, cells % 5
        if metric == "acc":
            vals.append(accuracy_score(yt, yp))
            continue
        labels = {"f1": np.union1d(yt, yp), "f1_present": np.unique(yt),
                  "f1_nsvf": np.intersect1d(np.union1d(yt, yp), [0, 1, 2, 3])}[metric]
        vals.append(f1_score(yt, yp, labels=labels, average="macro", zero_division=0))
    want = np.quantile(vals, [0.025, 0.975])
    got = bootstrap_ci(cm, CLASSES, metric, n=n, seed=7)
    assert got == pytest.approx(tuple(want), rel=1e-9, abs=1e-12)
