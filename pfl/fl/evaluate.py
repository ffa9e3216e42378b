"""Evaluation of the global and the personalized model on every client's val and test splits."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from pfl.data.types import Client
from pfl.metrics import confusion, predict, scores, summarize

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
        """Federated clients are reported plainly; clients that never trained under `unseen.`."""
        out = {"": [c for c in self.clients if c.federated], "unseen.": [c for c in self.clients if not c.federated]}
        return {k: v for k, v in out.items() if v}

    def metrics(self) -> dict[str, float]:
        """Flat metric names: `[unseen.]<split>.<model>.<acc|f1>.<mean|wmean|worst|std|pooled>`,
        `client.<cid>.<split>.<model>.<acc|f1>`, and pooled per-class F1."""
        out: dict[str, float] = {}
        for (split, model), per_client in self.scores.items():
            for prefix, members in self.groups().items():
                ids = [c.cid for c in members]
                sizes = {c.cid: len(c.split(split)) for c in members}
                sub = {c: per_client[c] for c in ids}
                cms = {c: self.cms[(split, model)][c] for c in ids}
                for k, val in summarize(sub, sizes, cms, self.classes).items():
                    out[f"{prefix}{split}.{model}.{k}"] = val
                pooled = scores(sum(cms.values()), self.classes)
                for cls in self.classes:
                    if f"f1_{cls}" in pooled:
                        out[f"{prefix}{split}.{model}.f1_{cls}.pooled"] = pooled[f"f1_{cls}"]
            for cid, s in per_client.items():
                for m in ("acc", "f1"):
                    if not np.isnan(s[m]):
                        out[f"client.{cid}.{split}.{model}.{m}"] = s[m]
        return out

    def table(self, split: str = "test") -> list[dict[str, Any]]:
        """Rows for the final per-client table: global vs personalized, and the change."""
        rows = []
        for c in self.clients:
            g, p = self.scores[(split, "global")][c.cid], self.scores[(split, "personal")][c.cid]
            rows.append({
                "client": c.cid, "federated": c.federated, "n": len(c.split(split)),
                "acc_global": g["acc"], "acc_personal": p["acc"], "acc_delta": p["acc"] - g["acc"],
                "f1_global": g["f1"], "f1_personal": p["f1"], "f1_delta": p["f1"] - g["f1"],
                **{f"f1_{k}_personal": p.get(f"f1_{k}", float("nan")) for k in self.classes},
            })
        return rows


def client_confusions(global_model: nn.Module, scratch: nn.Module, global_weights: dict[str, torch.Tensor],
                      client: Client, n_classes: int,
                      personalize: Callable[[nn.Module, Client], nn.Module] | None,
                      batch_size: int = 256) -> dict[tuple[str, str], np.ndarray]:
    """Confusion matrices of one client keyed by (split, model); "personal" only when personalizing.

    A function of the client alone, so a backend may run clients in other processes.
    """
    n = n_classes
    models = [("global", global_model)]
    if personalize is not None:  # None: the personalized model is the global one
        scratch.load_state_dict(global_weights)
        models.append(("personal", personalize(scratch, client)))
    out = {}
    for model_name, model in models:
        for split in SPLITS:
            sp = client.split(split)
            out[(split, model_name)] = (confusion(predict(model, sp.x, batch_size), sp.y, n) if len(sp)
                                        else np.zeros((n, n), np.int64))
    return out


def add_client(ev: Evaluation, client: Client, cms: dict[tuple[str, str], np.ndarray]) -> None:
    """Record one client's confusion matrices (from client_confusions) and their scores."""
    for (split, model_name), cm in cms.items():
        ev.cms.setdefault((split, model_name), {})[client.cid] = cm
        ev.scores.setdefault((split, model_name), {})[client.cid] = scores(cm, ev.classes) if len(
            client.split(split)) else {"acc": float("nan"), "f1": float("nan")}
    if ("val", "personal") not in cms:
        for split in SPLITS:
            ev.cms.setdefault((split, "personal"), {})[client.cid] = ev.cms[(split, "global")][client.cid]
            ev.scores.setdefault((split, "personal"), {})[client.cid] = ev.scores[(split, "global")][client.cid]


def evaluate(global_model: nn.Module, scratch: nn.Module, clients: Sequence[Client], classes: list[str],
             personalize: Callable[[nn.Module, Client], nn.Module] | None, batch_size: int = 256,
             on_client: Callable[[str], None] | None = None) -> Evaluation:
    ev = Evaluation(classes, list(clients))
    global_weights = global_model.state_dict()
    for c in clients:
        add_client(ev, c, client_confusions(global_model, scratch, global_weights, c, len(classes), personalize,
                                            batch_size))
        if on_client:
            on_client(c.cid)
    return ev


@torch.inference_mode()
def all_finite(weights: dict[str, torch.Tensor]) -> bool:
    return all(torch.isfinite(t).all() for t in weights.values() if torch.is_floating_point(t))
