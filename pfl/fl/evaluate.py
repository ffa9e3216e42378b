"""Evaluation of the global and the personalized model on every client's val and test splits."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pfl.data.types import Client
from pfl.metrics import (
    METRICS,
    PER_CLASS,
    bootstrap_ci,
    confusion,
    empty_scores,
    predict,
    scores,
    summarize,
)

SPLITS = ("val", "test")
MODELS = ("global", "personal")


@dataclass
class Evaluation:
    """Per-client scores and confusion matrices, keyed by (split, model)."""

    classes: list[str]
    clients: list[Client]
    scores: dict[tuple[str, str], dict[str, dict[str, float]]] = field(default_factory=dict)
    cms: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)

    def groups(self) -> dict[str, list[Client]]:
        """Federated clients are reported plainly; patients held out of training to validate
        under `heldout.`; the other clients that never trained under `unseen.`."""
        out: dict[str, list[Client]] = {}
        for role, prefix in (("federated", ""), ("heldout", "heldout."), ("unseen", "unseen.")):
            members = [c for c in self.clients if c.role == role]
            if members:
                out[prefix] = members
        return out

    def metrics(self) -> dict[str, float]:
        """Flat metric names: `[unseen.|heldout.]<split>.<model>.<metric>.<mean|wmean|worst|std|pooled>`
        for every metric of pfl.metrics.METRICS, pooled per-class `<split>.<model>.<se|ppv|f1>_<c>.pooled`,
        and per client `client.<cid>.<split>.<model>.<metric>`."""
        out: dict[str, float] = {}
        for (split, model), per_client in self.scores.items():
            for prefix, members in self.groups().items():
                ids = [c.cid for c in members]
                sizes = {c.cid: len(c.split(split)) for c in members}
                sub = {c: per_client[c] for c in ids}
                cms = {c: self.cms[(split, model)][c] for c in ids}
                for k, val in summarize(sub, sizes, cms, self.classes).items():
                    out[f"{prefix}{split}.{model}.{k}"] = val
            for cid, s in per_client.items():
                out[f"client.{cid}.{split}.n"] = float(self.cms[(split, model)][cid].sum())
                for m in METRICS:
                    if not np.isnan(s.get(m, np.nan)):
                        out[f"client.{cid}.{split}.{model}.{m}"] = s[m]
        return out

    def table(self, split: str = "test", ci: int = 1000) -> list[dict[str, Any]]:
        """Rows for the final per-client table: global vs personalized and the change for each
        metric, a bootstrap 95% interval of the personalized macro-F1 over the client's beats
        (`ci` resamples; 0 for none), and the personalized per-class scores."""
        rows = []
        for c in self.clients:
            if not len(c.split(split)):  # a patient held out to validate has no test beats
                continue
            # Strategies without one global model (FedPer, FedBN, local) have personal scores only.
            g = self.scores.get((split, "global"), {}).get(c.cid, empty_scores())
            p = self.scores[(split, "personal")][c.cid]
            row: dict[str, Any] = {"client": c.cid, "federated": c.federated, "n": len(c.split(split))}
            for m in METRICS:
                gv, pv = g.get(m, float("nan")), p.get(m, float("nan"))
                row.update({f"{m}_global": gv, f"{m}_personal": pv, f"{m}_delta": pv - gv})
            lo, hi = (bootstrap_ci(self.cms[(split, "personal")][c.cid], self.classes, "f1", n=ci)
                      if ci else (float("nan"), float("nan")))
            row.update({"f1_personal_lo": lo, "f1_personal_hi": hi})
            for fam, cm in PER_CLASS.items():
                for k in self.classes:
                    if cm.classes is None or k in cm.classes:
                        row[f"{fam}_{k}_personal"] = p.get(f"{fam}_{k}", float("nan"))
            rows.append(row)
        return rows


def client_confusions(global_model: nn.Module, scratch: nn.Module, global_weights: dict[str, torch.Tensor],
                      client: Client, n_classes: int,
                      personalize: Callable[[nn.Module, Client], nn.Module] | None,
                      batch_size: int = 256, with_global: bool = True,
                      splits: Sequence[str] = SPLITS) -> dict[tuple[str, str], np.ndarray]:
    """Confusion matrices of one client keyed by (split, model); "personal" only when personalizing.

    `with_global=False` for strategies with no single global model (FedPer, FedBN, local):
    only the personalized models are evaluated and reported. A function of the client alone,
    so a backend may run clients in other processes.
    """
    n = n_classes
    models = [("global", global_model)] if with_global or personalize is None else []
    if personalize is not None:  # None: the personalized model is the global one
        scratch.load_state_dict(global_weights)
        models.append(("personal", personalize(scratch, client)))
    out = {}
    for model_name, model in models:
        for split in splits:
            sp = client.split(split)
            out[(split, model_name)] = (confusion(predict(model, sp.x, batch_size), sp.y, n) if len(sp)
                                        else np.zeros((n, n), np.int64))
    return out


def add_client(ev: Evaluation, client: Client, cms: dict[tuple[str, str], np.ndarray]) -> None:
    """Record one client's confusion matrices (from client_confusions) and their scores."""
    for (split, model_name), cm in cms.items():
        ev.cms.setdefault((split, model_name), {})[client.cid] = cm
        ev.scores.setdefault((split, model_name), {})[client.cid] = scores(cm, ev.classes) if len(
            client.split(split)) else empty_scores()
    if not any(m == "personal" for _, m in cms):
        for split in dict.fromkeys(s for s, _ in cms):
            ev.cms.setdefault((split, "personal"), {})[client.cid] = ev.cms[(split, "global")][client.cid]
            ev.scores.setdefault((split, "personal"), {})[client.cid] = ev.scores[(split, "global")][client.cid]


def global_confusions(model: nn.Module, clients: Sequence[Client], n_classes: int, batch_size: int = 256,
                      splits: Sequence[str] = SPLITS) -> dict[str, dict[tuple[str, str], np.ndarray]]:
    """The global model's confusion matrices of every client, from one batched pass over all
    their val and test beats: the cost grows with beats, not with clients. Predictions do not
    depend on how rows are batched (pfl.metrics.predict), so they equal per-client passes."""
    parts = [(c, split) for c in clients for split in splits if len(c.split(split))]
    out: dict[str, dict[tuple[str, str], np.ndarray]] = {
        c.cid: {(split, "global"): np.zeros((n_classes, n_classes), np.int64) for split in splits} for c in clients}
    if not parts:
        return out
    preds = predict(model, torch.cat([c.split(split).x for c, split in parts]), batch_size)
    for (c, split), p in zip(parts, preds.split([len(c.split(split)) for c, split in parts]), strict=True):
        out[c.cid][(split, "global")] = confusion(p, c.split(split).y, n_classes)
    return out


def evaluate(global_model: nn.Module, scratch: nn.Module, clients: Sequence[Client], classes: list[str],
             personalize: Callable[[nn.Module, Client], nn.Module] | None, batch_size: int = 256,
             on_client: Callable[[str], None] | None = None, with_global: bool = True,
             personal: Callable[[Sequence[Client]], Iterable[dict]] | None = None,
             shared: Callable[[Sequence[Client]], dict[str, dict]] | None = None,
             splits: Sequence[str] = SPLITS) -> Evaluation:
    """Every client's scores: the global model in one batched pass, personalized models client
    by client. `shared` and `personal`, if given, compute those elsewhere (worker processes)."""
    ev = Evaluation(classes, list(clients))
    n = len(classes)
    global_weights = global_model.state_dict()
    if with_global or personalize is None:
        shared = (shared(clients) if shared is not None
                  else global_confusions(global_model, clients, n, batch_size, splits))
    else:
        shared = {}
    if personalize is None:
        per = ({} for _ in clients)
    elif personal is not None:
        per = iter(personal(clients))
    else:
        per = (client_confusions(global_model, scratch, global_weights, c, n, personalize, batch_size, False, splits)
               for c in clients)
    for c, own in zip(clients, per, strict=True):
        add_client(ev, c, {**shared.get(c.cid, {}), **own})
        if on_client:
            on_client(c.cid)
    return ev


@torch.inference_mode()
def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in weights.values() if torch.is_floating_point(t))
