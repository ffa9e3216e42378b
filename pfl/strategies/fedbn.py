"""`fedbn`: FedBN (Li et al., ICLR 2021): BatchNorm layers (affine and running statistics) stay
local, everything else is averaged. Needs a model with BatchNorm (model=cnn_lstm_bn)."""

from __future__ import annotations

from torch import nn

from pfl.errors import ConfigError
from pfl.strategies.base import Context, Strategy


class FedBN(Strategy):
    label = "FedBN"
    order = 100
    paper = "Li et al., ICLR 2021"
    has_global = False

    def bind(self, ctx: Context) -> None:
        super().bind(ctx)
        model = ctx.model_factory() if ctx.model_factory else None
        self.bn_prefixes = tuple(
            f"{name}." for name, m in (model.named_modules() if model is not None else ())
            if isinstance(m, nn.modules.batchnorm._BatchNorm))
        if not self.bn_prefixes:
            raise ConfigError("model", type(model).__name__, "a model with BatchNorm layers for strategy fedbn",
                              hint="e.g. model=cnn_lstm_bn")

    def is_local(self, key: str) -> bool:
        return key.startswith(self.bn_prefixes)
