"""What the server loop reports, and to whom: tracking, checkpoints, ledger, progress."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:  # only for annotations: importing it pulls in Lightning, slow for pfl-verify
    from pfl.strategies.base import Update


@dataclass
class RoundInfo:
    rnd: int
    rounds: int
    global_before: dict[str, torch.Tensor]
    global_after: dict[str, torch.Tensor]
    updates: list[Update]
    dropped: list[str] = field(default_factory=list)
    diverged: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    client_states: dict[str, dict[str, Any]] = field(default_factory=dict)
    server_state: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0


class Callback:
    def on_run_start(self, server) -> None: ...
    def on_round_start(self, rnd: int, cids: list[str]) -> None: ...
    def on_client_end(self, rnd: int, cid: str) -> None: ...
    def on_round_end(self, info: RoundInfo) -> None: ...
    def on_run_end(self, result) -> None: ...
    def on_exception(self, exc: BaseException) -> None: ...
