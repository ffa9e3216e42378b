"""The data term of every strategy's training loss (`loss=` config group): cross-entropy with
optional class weights and a focal term.

    loss_i = w[y_i] * (1 - p_i[y_i]) ** gamma * -log p_i[y_i]
    loss   = sum_i loss_i / sum_i w[y_i]        (plain mean when there are no weights)

gamma = 0 is (weighted) cross-entropy exactly as `torch.nn.functional.cross_entropy` computes
it; gamma > 0 is the focal loss of Lin et al. (ICCV 2017), which down-weights beats the model
already classifies well. Class weights: `balanced` = n / (k * n_c) over the federated clients'
training labels (scikit-learn's "balanced" formula; a class with no training beat gets 0,
since it never appears as a label), `client` = the same formula over each client's own
training labels (a site where S beats are 1% weighs them more than one where they are 10%),
or an explicit list, one weight per class. `max_weight` caps the computed weights: with the
balanced formula a class of 2 beats among 3,000 weighs over 300, so one such beat in a batch
outweighs everything else in it; a cap keeps the rare class up-weighted without that. The loss goes
through `Context.criterion`, so every strategy (and evaluation-time fine-tuning) uses it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pfl.errors import ConfigError

WEIGHTINGS = ("balanced", "client")


class ClassLoss:
    """(Weighted, focal) cross-entropy on logits; picklable for the Ray backend."""

    def __init__(self, weights: Sequence[float] | None = None, gamma: float = 0.0):
        self.gamma = float(gamma)
        self.weights = None if weights is None else torch.as_tensor(list(weights), dtype=torch.float32)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if not self.gamma:  # torch's own kernel: bit-identical to the plain loop's cross-entropy
            w = None if self.weights is None else self.weights.to(device=logits.device, dtype=logits.dtype)
            return F.cross_entropy(logits, y, weight=w)
        logp = F.log_softmax(logits, dim=1).gather(1, y[:, None])[:, 0]
        per = -logp
        if self.gamma:
            per = (1 - logp.exp()).clamp_min(0) ** self.gamma * per
        if self.weights is None:
            return per.mean()
        w = self.weights.to(device=logits.device, dtype=logits.dtype)[y]
        return (w * per).sum() / w.sum().clamp_min(torch.finfo(logits.dtype).tiny)

    def use(self, cid: str) -> None:
        """Called with the client about to train (pfl.strategies.base.Context.loader); the
        federation-wide loss is the same for every client."""

    def __repr__(self) -> str:
        w = None if self.weights is None else [round(float(v), 4) for v in self.weights]
        return f"ClassLoss(weights={w}, gamma={self.gamma})"


class PerClientLoss(ClassLoss):
    """`loss.weights=client`: each client's balanced weights from its own training labels.

    Every training loop of every strategy draws its batches through `Context.loader(client)`,
    which calls `use(client)` first, so the weights follow the client without any strategy
    passing them along; a client not in the table (none in practice) gets the federation's.
    """

    def __init__(self, by_client: dict[str, list[float]], fallback: Sequence[float], gamma: float = 0.0):
        super().__init__(fallback, gamma)
        self.by_client = {cid: torch.as_tensor(w, dtype=torch.float32) for cid, w in by_client.items()}
        self.fallback = self.weights

    def use(self, cid: str) -> None:
        self.weights = self.by_client.get(cid, self.fallback)


def balanced_weights(counts: Sequence[int]) -> list[float]:
    """n / (k * n_c) for the k classes present; 0 for a class with no beat."""
    c = np.asarray(counts, dtype=np.float64)
    present = c > 0
    out = np.zeros_like(c)
    out[present] = c.sum() / (present.sum() * c[present])
    return out.tolist()


def capped(weights: Sequence[float], max_weight: float | None) -> list[float]:
    """Each weight at most `max_weight` (None: unchanged)."""
    return list(weights) if max_weight is None else [min(float(w), max_weight) for w in weights]


def build_loss(cfg: Any, classes: Sequence[str], train_counts: Sequence[int],
               client_counts: dict[str, Sequence[int]] | None = None) -> ClassLoss:
    """The configured loss; `train_counts` are the federated clients' training labels per class,
    `client_counts` each client's (for `weights: client`)."""
    cfg = dict(cfg or {})
    gamma = cfg.get("gamma", 0.0)
    if not isinstance(gamma, int | float) or isinstance(gamma, bool) or not 0 <= float(gamma) <= 10:
        raise ConfigError("loss.gamma", gamma, "a number in [0, 10] (0: cross-entropy, 2: the focal paper's)")
    cap = cfg.get("max_weight")
    if cap is not None and (not isinstance(cap, int | float) or isinstance(cap, bool) or not float(cap) > 0):
        raise ConfigError("loss.max_weight", cap, "null (no cap) or a number > 0")
    cap = None if cap is None else float(cap)
    weights = cfg.get("weights")
    if weights is None:
        if cap is not None:
            raise ConfigError("loss.max_weight", cap, "null: it caps class weights and loss.weights is null "
                              "(set loss.weights, e.g. loss=weighted)")
        return ClassLoss(None, gamma)
    if isinstance(weights, str):
        if weights not in WEIGHTINGS:
            raise ConfigError("loss.weights", weights, "null, balanced, client, or a list of one weight per class "
                              f"{list(classes)}")
        if weights == "client":
            return PerClientLoss({cid: capped(balanced_weights(c), cap) for cid, c in (client_counts or {}).items()},
                                 capped(balanced_weights(train_counts), cap), gamma)
        return ClassLoss(capped(balanced_weights(train_counts), cap), gamma)
    values = list(weights)
    if len(values) != len(classes) or not all(isinstance(v, int | float) and v >= 0 for v in values) \
            or not any(v > 0 for v in values):
        raise ConfigError("loss.weights", values, f"{len(classes)} weights >= 0, one per class {list(classes)}, "
                          "not all 0")
    return ClassLoss(capped([float(v) for v in values], cap), gamma)
