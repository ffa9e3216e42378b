"""The plain PyTorch loop: the oracle pfl's equivalence tests and `make bench` measure pfl against.

FedAvg as the minimal loop peers such as PFLlib and FL-bench run: same data, model, seeds,
batches, optimizer, aggregation and evaluation as pfl's server with SerialBackend, and nothing
else (no Lightning, callbacks, tracking or checkpoints).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class PlainResult:
    weights: dict[str, Any]
    cms: dict[tuple[str, str], Any]  # (cid, split) -> confusion matrix (torch int64)
    train_loss: list[float]
    total_s: float = 0.0
    setup_s: float = 0.0
    rounds: list[dict[str, float]] = field(default_factory=list)

    def scores(self) -> dict[str, float]:
        """client.<cid>.<split>.global.<acc|f1>, read off the confusion matrices."""
        import numpy as np

        out = {}
        for (cid, split), cm in self.cms.items():
            cm = cm.numpy().astype(np.float64)
            if cm.sum() == 0:
                continue
            tp = np.diag(cm)
            fp, fn = cm.sum(0) - tp, cm.sum(1) - tp
            seen = (cm.sum(1) + cm.sum(0)) > 0  # classes in labels or predictions (sklearn's macro)
            f1 = np.divide(2 * tp, 2 * tp + fp + fn, out=np.zeros_like(tp), where=(2 * tp + fp + fn) > 0)
            out[f"client.{cid}.{split}.global.acc"] = float(tp.sum() / cm.sum())
            out[f"client.{cid}.{split}.global.f1"] = float(f1[seen].mean())
        return out


def plain_federated(cfg) -> PlainResult:
    """FedAvg (strategy=none) as a minimal PyTorch loop: the compute floor pfl is measured against.

    Same data pipeline, model, seeds, batches (BatchLoader), optimizer, epochs, aggregation and
    evaluation as pfl's server with SerialBackend; no Lightning, callbacks, tracking or
    checkpoints. With the same thread count it reproduces pfl's weights bit for bit.
    """
    import hydra
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pfl import config as cfgmod
    from pfl.fl.batches import BatchLoader, derive_seed
    from pfl.metrics import chunks  # the same rows per inference batch: see pfl.metrics.MIN_CHUNK
    from pfl.run import load_federation

    t0 = time.perf_counter()
    cfgmod.prepare(cfg)
    if cfg.strategy.name != "none" or cfg.mode != "federated":
        raise ValueError("the plain loop implements federated FedAvg (strategy=none) only")
    f = cfg.federation
    if f.clients_per_round is not None or f.dropout:
        raise ValueError("the plain loop trains every client every round")
    torch.set_num_threads(cfg.trainer.get("threads") or os.cpu_count() or 1)
    torch.use_deterministic_algorithms(bool(cfg.trainer.deterministic))
    fed = load_federation(cfg)  # as pfl.run builds it (RR standardization included)
    clients, seed, n_cls = fed.training_clients, int(cfg.seed), len(fed.classes)
    optimizer = hydra.utils.instantiate(f.optimizer)
    torch.manual_seed(derive_seed(seed, "init"))
    model = hydra.utils.instantiate(cfg.model)
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    work = hydra.utils.instantiate(cfg.model)
    setup = time.perf_counter() - t0
    losses, rows, cms = [], [], {}
    for rnd in range(1, f.rounds + 1):
        t_round = time.perf_counter()
        updates = []
        for c in clients:
            work.load_state_dict(weights)
            torch.manual_seed(derive_seed(seed, rnd, c.cid, "local", "torch"))
            opt = optimizer(work.parameters())
            loader = BatchLoader(c.train, f.batch_size, seed=derive_seed(seed, rnd, c.cid, "local", "batches"))
            work.train()
            loss_sum, seen = torch.zeros(()), 0
            for _ in range(f.local_epochs):
                for x, y in loader:
                    loss = F.cross_entropy(work(x), y)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    loss_sum = loss_sum + loss.detach() * len(y)
                    seen += len(y)
            updates.append(({k: v.detach().clone() for k, v in work.state_dict().items()}, len(c.train),
                            float(loss_sum / max(seen, 1))))
        total = float(sum(n for _, n, _ in updates))
        new = {}
        for k, first in updates[0][0].items():
            if not torch.is_floating_point(first):
                new[k] = first.clone()
                continue
            acc = torch.zeros_like(first, dtype=torch.float64)
            for w, n, _ in updates:
                acc += w[k].to(torch.float64) * (n / total)
            new[k] = acc.to(first.dtype)
        weights = new
        losses.append(float(np.average([u[2] for u in updates], weights=[u[1] for u in updates])))
        t_eval = time.perf_counter()
        if rnd % f.eval_every == 0 or rnd == f.rounds:
            model.load_state_dict(weights)
            model.eval()
            with torch.inference_mode():
                for c in fed.clients:
                    for split in ("val", "test"):
                        sp = c.split(split)
                        pred = torch.cat([model(sp.x[s]).argmax(1) for s in chunks(len(sp), f.eval_batch_size)]
                                         or [torch.zeros(0).long()])
                        cms[(c.cid, split)] = torch.bincount(sp.y * n_cls + pred, minlength=n_cls * n_cls
                                                             ).reshape(n_cls, n_cls)
        t_end = time.perf_counter()
        rows.append({"round": rnd, "wall_s": t_end - t_round, "train_s": t_eval - t_round, "eval_s": t_end - t_eval})
    return PlainResult(weights, cms, losses, time.perf_counter() - t0, setup, rows)


def same_weights(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
