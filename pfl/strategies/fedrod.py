"""`fedrod`: FedRoD (Chen and Chao, ICLR 2022): a generic and a personal head on one shared body.

The body and the generic head are shared and averaged as in FedAvg, trained on a class-balanced
objective: balanced softmax adds the client's log class counts to the logits, so a client whose
minutes hold no V beat does not teach the shared model that V is rare, and a class the client
lacks gets no gradient at all. Each client keeps a personal head of the generic head's shape;
its logits add to the generic ones and it learns on the run's loss (class weights included)
with the body's features and the generic logits detached, on the same batches. The client is
evaluated with body -> generic head + personal head; the global model is body -> generic head.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pfl import validation as v
from pfl.data.types import Client
from pfl.errors import ConfigError
from pfl.strategies.base import Strategy, Weights, snapshot

GENERIC_LOSSES = ("balanced", "criterion")
PERSONAL_CLASSES = ("all", "seen")


class TwoHeads(nn.Module):
    """`model`'s logits plus a personal head applied to the input of `model`'s head."""

    def __init__(self, model: nn.Module, head: str, personal: nn.Module):
        super().__init__()
        self.model, self.personal, self.head = model, personal, head

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(generic logits, the features the generic head saw)."""
        seen: list[torch.Tensor] = []
        hook = self.model.get_submodule(self.head).register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        try:
            logits = self.model(x)
        finally:
            hook.remove()
        if len(seen) != 1:
            raise ConfigError("strategy.head", f"{self.head}.", "a head the model calls once per forward "
                              f"(this model calls it {len(seen)} times)")
        return logits, seen[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits, z = self.split(x)
        return logits + self.personal(z)


def personal_head(model: nn.Module, head: str) -> nn.Module:
    """A copy of the generic head whose last linear layer is zero: the personalized model starts
    equal to the generic one instead of doubling its logits."""
    personal = copy.deepcopy(model.get_submodule(head))
    last = [m for m in personal.modules() if isinstance(m, nn.Linear)]
    if not last:
        raise ConfigError("strategy.head", head, "a head module ending in a linear layer")
    with torch.no_grad():
        last[-1].weight.zero_()
        if last[-1].bias is not None:
            last[-1].bias.zero_()
    return personal


class FedRoD(Strategy):
    label = "FedRoD"
    order = 85
    paper = "Chen and Chao, ICLR 2022"
    keeps_client_state = True

    def __init__(self, head: str = "head.", generic_loss: str = "balanced", personal_epochs: int = 0,
                 personal_classes: str = "all"):
        self.head = str(head).rstrip(".")
        self.generic_loss = v.choice("strategy.generic_loss", generic_loss, GENERIC_LOSSES)
        self.personal_classes = v.choice("strategy.personal_classes", personal_classes, PERSONAL_CLASSES)
        self.personal_epochs = v.integer("strategy.personal_epochs", personal_epochs, minimum=0)
        self._checked = False  # the head is checked on the first client only

    def check_client(self, client: Client) -> None:
        """Before round 1 (and any MLflow run): the head exists and the model calls it once."""
        if self.ctx.model_factory is None or self._checked or not len(client.train):
            return
        self._checked = True
        model = self.ctx.model_factory()
        try:
            model.get_submodule(self.head)
        except AttributeError:
            names = sorted({n.split(".")[0] for n, _ in model.named_children()})
            raise ConfigError("strategy.head", f"{self.head}.", "a submodule of the model: "
                              + ", ".join(f"{n}." for n in names)) from None
        pair = TwoHeads(model.eval(), self.head, personal_head(model, self.head))
        with torch.no_grad():
            pair.split(client.train.x[:1])

    def _pair(self, model: nn.Module, state: dict[str, Any]) -> TwoHeads:
        personal = personal_head(model, self.head)
        if "personal" in state:
            personal.load_state_dict(state["personal"])
        return TwoHeads(model, self.head, personal)

    def train(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int,
              anchor: Weights) -> dict[str, float]:
        pair = self._pair(model, state)
        crit = self.ctx.criterion
        prior: dict[str, torch.Tensor] = {}

        def log_counts(like: torch.Tensor) -> torch.Tensor:
            """log of the client's class counts; log 0 = -inf gives a class it lacks probability 0."""
            if "log" not in prior:
                counts = torch.bincount(client.train.y, minlength=like.shape[1]).to(like.device)
                # float32 at least: bf16 (trainer=fast) rounds log(3000) to within 0.03
                prior["log"] = counts.to(torch.promote_types(like.dtype, torch.float32)).log()
            return prior["log"]

        def own(m: TwoHeads, logits: torch.Tensor, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = logits.detach() + m.personal(z.detach())
            if self.personal_classes == "seen":
                # 0 for a class the client has, -inf for one it lacks: that class's personal logit
                # gets no gradient and stays 0 (the last layer starts at zero), so the generic
                # head alone decides it.
                out = out + log_counts(out).clamp(max=0.0)
            return crit(out, y)

        if self.personal_epochs:
            # As FedRep's head epochs: the personal head alone first, on the features of the
            # body the client received (the paper has none; a zero head learns slowly without).
            self.ctx.fit(pair, client, rnd, "personal", epochs=self.personal_epochs,
                         loss=lambda m, x, y: own(m, *m.split(x), y), params=lambda n: n.startswith("personal."))

        def loss(m: TwoHeads, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            logits, z = m.split(x)
            generic = F.cross_entropy(logits + log_counts(logits), y) if self.generic_loss == "balanced" \
                else crit(logits, y)
            # Disjoint parameters: one optimizer over both heads steps each on its own loss.
            return generic + own(m, logits, z, y)

        module = self.ctx.fit(pair, client, rnd, "local", loss=loss, **self.ctx.work)
        state["personal"] = snapshot(pair.personal)
        return {"train_loss": module.mean_loss, "steps": module.steps}

    def personalize(self, model: nn.Module, client: Client, state: dict[str, Any], rnd: int) -> nn.Module:
        return self._pair(model, state)
