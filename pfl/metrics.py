"""Classification metrics per client and across clients, all derived from confusion matrices.

The confusion matrix comes from torchmetrics; accuracy, per-class F1 and macro-F1 are read off
it so that per-client and pooled numbers (summed matrices) share one definition. Macro-F1
averages over the classes present in the client's true labels: a class the client never has
would otherwise add a 0 or an undefined term that says nothing about the client.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torchmetrics.functional.classification import multiclass_confusion_matrix

#: Fewest rows per inference batch. BLAS and oneDNN switch to other kernels (other summation
#: orders) for a handful of rows, so a tiny last batch would make outputs depend on the batch size.
MIN_CHUNK = 32


def chunks(n: int, batch_size: int) -> list[slice]:
    """Batches of about batch_size rows (at least MIN_CHUNK); a short remainder joins the last."""
    bs = max(int(batch_size), MIN_CHUNK)
    cuts = list(range(0, n, bs))
    if len(cuts) > 1 and n - cuts[-1] < MIN_CHUNK:
        cuts.pop()
    return [slice(a, b) for a, b in zip(cuts, cuts[1:] + [n], strict=True)]


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Predicted classes. The same whatever batch_size (see chunks), so it is a speed knob only."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = [model(x[s].to(device)).argmax(1).cpu() for s in chunks(len(x), batch_size)]
    model.train(was_training)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def confusion(preds: torch.Tensor, target: torch.Tensor, n_classes: int) -> np.ndarray:
    """Rows: true class, columns: predicted class."""
    if len(target) == 0:
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return multiclass_confusion_matrix(preds, target, num_classes=n_classes).numpy().astype(np.int64)


def scores(cm: np.ndarray, classes: list[str]) -> dict[str, float]:
    """acc, f1 (macro over present classes) and f1_<class> for present classes."""
    cm = np.asarray(cm, dtype=np.float64)
    total = cm.sum()
    tp = np.diag(cm)
    support = cm.sum(1)
    predicted = cm.sum(0)
    denom = 2 * tp + (predicted - tp) + (support - tp)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    out = {
        "acc": float(tp.sum() / total) if total else float("nan"),
        "f1": float(f1[present].mean()) if present.any() else float("nan"),
    }
    for i, c in enumerate(classes):
        if present[i]:
            out[f"f1_{c}"] = float(f1[i])
    return out


def summarize(per_client: Mapping[str, Mapping[str, float]], sizes: Mapping[str, int],
              cms: Mapping[str, np.ndarray], classes: list[str],
              metrics: Iterable[str] = ("acc", "f1")) -> dict[str, float]:
    """Across clients: mean, sample-weighted mean, worst, std (population, ddof=0), pooled."""
    out: dict[str, float] = {}
    ids = list(per_client)
    w = np.array([sizes[c] for c in ids], dtype=np.float64)
    for m in metrics:
        v = np.array([per_client[c][m] for c in ids], dtype=np.float64)
        ok = ~np.isnan(v)
        if not ok.any():
            continue
        out[f"{m}.mean"] = float(v[ok].mean())
        out[f"{m}.wmean"] = float(np.average(v[ok], weights=w[ok])) if w[ok].sum() else float("nan")
        out[f"{m}.worst"] = float(v[ok].min())
        out[f"{m}.std"] = float(v[ok].std())
    pooled = scores(sum(cms[c] for c in ids), classes)
    out["acc.pooled"] = pooled["acc"]
    out["f1.pooled"] = pooled["f1"]
    return out
