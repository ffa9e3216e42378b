"""Max pooling over non-overlapping windows as a reshape and a max over the last axis.

`nn.MaxPool1d(k)` (stride k) trains through `max_pool2d_with_indices`, whose CPU kernel with
indices took about 470 us of a 2.8 ms forward and backward of the small CNN (torch profiler,
one thread). Over windows that do not overlap the same pooling is `x.unflatten(-1, (-1, k))
.max(-1)`: the same values, and, since `max` over a dimension and max pooling both pick the
first maximum of a window, the same gradient, so the weights are identical bit for bit (tested).
Anything else (padding, dilation, ceil mode, indices, overlapping windows, and eval mode,
where PyTorch's kernel without indices is the fast one) takes `nn.MaxPool1d`'s own path.
"""

from __future__ import annotations

import torch
from torch import nn


class MaxPool1d(nn.MaxPool1d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k, s = self.kernel_size, self.stride
        # In eval mode (evaluation, the exported MLflow model) PyTorch's kernel without indices
        # is the fast one: kept.
        if (self.training and isinstance(k, int) and s == k and self.padding == 0 and self.dilation == 1
                and not self.ceil_mode and not self.return_indices):
            n = x.shape[-1] // k * k  # a trailing partial window is dropped, as max pooling drops it
            return x[..., :n].unflatten(-1, (-1, k)).max(-1).values
        return super().forward(x)
