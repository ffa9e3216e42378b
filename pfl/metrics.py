"""Classification metrics per client and across clients, all read off confusion matrices.

The confusion matrix comes from torchmetrics; every metric below is a function of it, so
per-client and pooled numbers (summed matrices) share one definition. `METRICS` and
`PER_CLASS` are the one place the metric set is defined: evaluation, the MLflow names, the
final tables, the progress display and `pfl-report` all iterate over them.

- `acc`: accuracy.
- `f1`: macro-F1 over the union of the classes in the labels and in the predictions
  (scikit-learn's default `f1_score(average="macro")`): predicting a class the client does not
  have costs, as it should.
- `f1_present`: macro-F1 over the classes present in the labels only (the old pfl number).
- `f1_nsvf`: macro-F1 over N, S, V, F (those in labels or predictions), as the inter-patient
  literature reports it (Q is excluded there: too few beats to score).
- per class (AAMI EC57 / de Chazal 2004): `se_<c>` sensitivity = TP / (TP + FN),
  `ppv_<c>` positive predictive value (+P) = TP / (TP + FP), `f1_<c>`; undefined ones
  (no beat of the class / none predicted) are left out rather than reported as 0.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

#: Fewest rows per inference batch. BLAS and oneDNN switch to other kernels (other summation
#: orders) for a handful of rows, so a tiny last batch would make outputs depend on the batch size.
MIN_CHUNK = 32

#: The classes the AAMI EC57 per-class Se / +P and `f1_nsvf` are reported for.
AAMI_SCORED = ("N", "S", "V", "F")


def chunks(n: int, batch_size: int) -> list[slice]:
    """Batches of about batch_size rows (at least MIN_CHUNK); a short remainder joins the last."""
    if n <= 0:
        return []
    bs = max(int(batch_size), MIN_CHUNK)
    cuts = list(range(0, n, bs))
    if len(cuts) > 1 and n - cuts[-1] < MIN_CHUNK:
        cuts.pop()
    return [slice(a, b) for a, b in zip(cuts, cuts[1:] + [n], strict=True)]


#: the precision inference runs in, in this process (from trainer.precision), and the autocast
#: dtype of those that autocast (any other: fp32)
_INFERENCE_PRECISION = "32-true"
_AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def set_inference_precision(precision: str) -> None:
    """Evaluate under the autocast the clients train with: bf16-mixed (the fast path, where the
    CPU runs bfloat16 natively) evaluates in bfloat16 too, 16-mixed in float16; anything else
    in fp32. Set once per run, before worker processes fork (they inherit it)."""
    global _INFERENCE_PRECISION
    _INFERENCE_PRECISION = str(precision)


def get_inference_precision() -> str:
    """The precision set by set_inference_precision (what a Ray actor is told to use)."""
    return _INFERENCE_PRECISION


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes. The same whatever batch_size (see chunks), so it is a speed knob only."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    dtype = _AUTOCAST.get(_INFERENCE_PRECISION)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    # No autograd graph: evaluation needs none, and recording one costs time and memory.
    # One output tensor filled batch by batch: a small tensor kept per batch lands above each
    # batch's freed activations in glibc's heap, which then cannot reuse or return them.
    out = torch.zeros(len(x), dtype=torch.long)
    with torch.inference_mode(), autocast:
        for s in chunks(len(x), batch_size):
            out[s] = model(x[s].to(device)).argmax(1).cpu()
    model.train(was_training)
    return out


def confusion(preds: torch.Tensor, target: torch.Tensor, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    if len(target) == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return multiclass_confusion_matrix(preds.cpu(), target.cpu(), num_classes=n_classes).numpy().astype(np.int64)


# --------------------------------------------------------------------------- definitions


def _counts(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tp, support (true) and predicted per class, of one confusion matrix or a stack (..., k, k)."""
    cm = np.asarray(cm, dtype=np.float64)
    return np.diagonal(cm, axis1=-2, axis2=-1), cm.sum(-1), cm.sum(-2)


def _per_class_f1(cm: np.ndarray) -> np.ndarray:
    tp, support, predicted = _counts(cm)
    denom = support + predicted  # = 2TP + FP + FN
    return np.divide(2 * tp, denom, out=np.full_like(tp, np.nan), where=denom > 0)


def _macro(values: np.ndarray, mask: np.ndarray) -> float | np.ndarray:
    if values.ndim == 1:
        return float(values[mask].mean()) if mask.any() else float("nan")
    # A stack of matrices (the bootstrap's draws): the same sums in the same order (a masked
    # class adds 0.0), so each row equals the one-matrix value bit for bit.
    n = mask.sum(-1)
    total = np.where(mask, values, 0.0).sum(-1)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def accuracy(cm: np.ndarray, classes: list[str]) -> float:
    total = np.asarray(cm).sum()
    return float(np.trace(cm) / total) if total else float("nan")


def macro_f1(cm: np.ndarray, classes: list[str]) -> float:
    _, support, predicted = _counts(cm)
    return _macro(_per_class_f1(cm), (support > 0) | (predicted > 0))


def macro_f1_present(cm: np.ndarray, classes: list[str]) -> float:
    _, support, _ = _counts(cm)
    return _macro(_per_class_f1(cm), support > 0)


def macro_f1_nsvf(cm: np.ndarray, classes: list[str]) -> float:
    _, support, predicted = _counts(cm)
    scored = np.array([c in AAMI_SCORED for c in classes])
    return _macro(_per_class_f1(cm), scored & ((support > 0) | (predicted > 0)))


def sensitivity(cm: np.ndarray) -> np.ndarray:
    tp, support, _ = _counts(cm)
    return np.divide(tp, support, out=np.full_like(tp, np.nan), where=support > 0)


def ppv(cm: np.ndarray) -> np.ndarray:
    tp, _, predicted = _counts(cm)
    return np.divide(tp, predicted, out=np.full_like(tp, np.nan), where=predicted > 0)


@dataclass(frozen=True)
class Metric:
    """A scalar of a confusion matrix, summarized across clients (mean, wmean, worst, std, pooled)."""

    name: str
    title: str
    fn: Callable[[np.ndarray, list[str]], float]
    #: fn also scores a stack of matrices (..., k, k) at once (the bootstrap's draws)
    stacks: bool = False


@dataclass(frozen=True)
class ClassMetric:
    """A per-class vector of a confusion matrix, logged as `<name>_<class>` (pooled per client group)."""

    name: str
    title: str
    fn: Callable[[np.ndarray], np.ndarray]
    classes: tuple[str, ...] | None = None  # None: every class


#: Add a metric here and it reaches evaluation, MLflow, the tables, progress and pfl-report.
METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("acc", "accuracy", accuracy),
    Metric("f1", "macro-F1", macro_f1, stacks=True),
    Metric("f1_present", "macro-F1 (present classes)", macro_f1_present, stacks=True),
    Metric("f1_nsvf", "macro-F1 (N, S, V, F)", macro_f1_nsvf, stacks=True),
)}
PER_CLASS: dict[str, ClassMetric] = {m.name: m for m in (
    ClassMetric("f1", "F1", _per_class_f1),
    ClassMetric("se", "sensitivity (Se)", sensitivity, AAMI_SCORED),
    ClassMetric("ppv", "positive predictive value (+P)", ppv, AAMI_SCORED),
)}


def title(name: str) -> str:
    """Human name of a metric key (`f1`, `se_S`, ...), for tables and plots."""
    if name in METRICS:
        return METRICS[name].title
    family, _, cls = name.partition("_")
    if family in PER_CLASS and cls:
        return f"{cls} {PER_CLASS[family].title}"
    return name


def scores(cm: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Every metric of METRICS, and every defined per-class one (`f1_N`, `se_S`, `ppv_V`, ...)."""
    out = {name: m.fn(cm, classes) for name, m in METRICS.items()}
    for family, m in PER_CLASS.items():
        values = m.fn(cm)
        for i, c in enumerate(classes):
            if (m.classes is None or c in m.classes) and not np.isnan(values[i]):
                out[f"{family}_{c}"] = float(values[i])
    return out


def empty_scores() -> dict[str, float]:
    return {name: float("nan") for name in METRICS}


def summarize(per_client: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int],
              cms: Mapping[str, np.ndarray], classes: list[str],
              metrics: Iterable[str] = tuple(METRICS)) -> dict[str, float]:
    """Across clients: mean, sample-weighted mean, worst, std (population, ddof=0) of each
    metric, and everything of `scores` on the pooled (summed) confusion matrix as `.pooled`."""
    out: dict[str, float] = {}
    ids = list(per_client)
    w = np.array([sizes[c] for c in ids], dtype=np.float64)
    for m in metrics:
        v = np.array([per_client[c].get(m, np.nan) for c in ids], dtype=np.float64)
        ok = ~np.isnan(v)
        if not ok.any():
            continue
        out[f"{m}.mean"] = float(v[ok].mean())
        out[f"{m}.wmean"] = float(np.average(v[ok], weights=w[ok])) if w[ok].sum() else float("nan")
        out[f"{m}.worst"] = float(v[ok].min())
        out[f"{m}.std"] = float(v[ok].std())
    for k, val in scores(sum(cms[c] for c in ids), classes).items():
        if not np.isnan(val):
            out[f"{k}.pooled"] = val
    return out


def bootstrap_ci(cm: np.ndarray, classes: list[str], metric: str = "f1", n: int = 1000,
                 level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of a metric over the client's beats.

    Resampling beats with replacement is a multinomial draw over the confusion matrix's cells
    (each beat is one (true, predicted) pair), so no predictions need to be kept.
    """
    cm = np.asarray(cm, dtype=np.int64)
    total = int(cm.sum())
    if total == 0:
        return float("nan"), float("nan")
    fn = METRICS[metric].fn
    draws = np.random.default_rng(seed).multinomial(total, cm.ravel() / total, size=n)
    if METRICS[metric].stacks:  # all draws at once (a per-patient federation has hundreds of clients)
        vals = np.asarray(fn(draws.reshape(n, *cm.shape), classes), dtype=np.float64)
    else:
        vals = np.array([fn(d.reshape(cm.shape), classes) for d in draws])
    vals = vals[~np.isnan(vals)]
    if not len(vals):
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)
