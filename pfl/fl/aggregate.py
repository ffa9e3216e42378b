"""Server-side aggregation of client weights."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

State = Mapping[str, torch.Tensor]


def fedavg(states: Sequence[State], weights: Sequence[float]) -> dict[str, torch.Tensor]:
    """Weighted mean of state dicts (weights: client training-set sizes).

    Integer buffers (counters) cannot be averaged meaningfully; they take the first client's.
    """
    if not states:
        raise ValueError("fedavg needs at least one client update")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"fedavg weights must sum to > 0, got {list(weights)}")
    out: dict[str, torch.Tensor] = {}
    for key, first in states[0].items():
        if not torch.is_floating_point(first):
            out[key] = first.clone()
            continue
        acc = torch.zeros_like(first, dtype=torch.float64)
        for s, w in zip(states, weights, strict=True):
            acc += s[key].to(torch.float64) * (w / total)
        out[key] = acc.to(first.dtype)
    return out
