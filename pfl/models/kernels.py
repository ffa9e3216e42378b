"""Exact, faster stand-ins for stock layers, swapped in by `trainer.fast_kernels`.

PyTorch's CPU max pooling with gradients (`max_pool2d_with_indices`) runs a scalar loop that
also writes an int64 index per output; in the reference CNN-LSTM it takes about a fifth of a
training step. Without gradients PyTorch uses a vectorized kernel. `MaxPool1d` below runs
that one forward and rebuilds the gradient routing in backward from the saved input and
output: each window's gradient goes to its first maximum, as the stock kernel's index does,
so outputs and gradients are bit-identical (tested for fp32 and bf16, ties included).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class _FirstMaxPool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, k: int) -> torch.Tensor:
        out = F.max_pool1d(x, k)  # autograd is off here: the vectorized kernel, no indices
        ctx.save_for_backward(x, out)
        ctx.k = k
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, out = ctx.saved_tensors
        k, n = ctx.k, out.shape[-1]
        parts, taken = [], None
        for j in range(k):  # the window's first position that holds its maximum
            hit = x[..., j:n * k:k] == out
            if taken is None:
                taken = hit
            else:
                hit = hit & ~taken
                taken = taken | hit
            parts.append(grad * hit)
        gx = torch.stack(parts, dim=-1).reshape(*x.shape[:-1], n * k)
        if n * k < x.shape[-1]:  # the tail no window covers
            gx = F.pad(gx, (0, x.shape[-1] - n * k))
        return gx, None


class MaxPool1d(nn.Module):
    """nn.MaxPool1d(k) (stride k, no padding, dilation 1, floor mode), exact and faster to train."""

    def __init__(self, kernel_size: int):
        super().__init__()
        self.kernel_size = int(kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.is_grad_enabled() or not x.requires_grad:
            return F.max_pool1d(x, self.kernel_size)
        return _FirstMaxPool.apply(x, self.kernel_size)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}"


def _swappable(m: nn.Module) -> bool:
    if type(m) is not nn.MaxPool1d:
        return False
    k = m.kernel_size
    return (not m.return_indices and not m.ceil_mode and m.stride in (k, (k,)) and m.padding in (0, (0,))
            and m.dilation in (1, (1,)))


def fast_kernels(model: nn.Module) -> nn.Module:
    """Replace, in place, every nn.MaxPool1d this module's MaxPool1d computes exactly. Neither
    has parameters or buffers, so the state dict (and every checkpoint) is unchanged."""
    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if _swappable(child):
                k = child.kernel_size
                setattr(parent, name, MaxPool1d(k[0] if isinstance(k, tuple) else k))
    return model
