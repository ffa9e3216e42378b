"""Checkpoints after every round, written atomically and loaded without unpickling code."""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pfl.atomic import atomic_write
from pfl.background import InOrder
from pfl.errors import PflError
from pfl.fl.callbacks import Callback, RoundInfo
from pfl.fl.server import ServerState
from pfl.ledger import load_error

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunContext:
    """Who a run is, settled before any component is built: its config hash and partition
    digest, where its checkpoints (and ledger) and its artifacts go, the MLflow run it logs to
    (None with logger=none) and whether it continues a checkpoint."""

    config_hash: str
    fed_digest: str
    checkpoint_dir: Path
    run_dir: Path
    run_id: str | None = None
    resuming: bool = False


LAST = "last.pt"


class Checkpointer(Callback):
    """Saves the run's state after every round. `ledger` (a pfl.ledger.Ledger): its chain head is
    saved with each checkpoint, so a resumed run extends the same chain."""

    def __init__(self, run: RunContext, ledger=None, meta: dict[str, Any] | None = None,
                 writer: InOrder | None = None, unlogged: Callable[[RoundInfo], list] | None = None):
        self.run, self.ledger = run, ledger
        #: the round's metrics rows that may not have reached the tracking store yet (the MLflow
        #: tracker's, pfl.tracking); saved with the round, so a resumed run logs what a kill lost
        self.unlogged = unlogged
        #: writes and fsyncs the serialized checkpoint off the round's critical path (the ledger's
        #: queue, so the order ledger entry, checkpoint holds); None: at once
        self.writer = writer
        # meta: what the checkpoint carried (a resumed run keeps it), with this run's MLflow id
        self.meta = {**(meta or {}), **({"mlflow_run_id": run.run_id} if run.run_id else {})}

    @property
    def last(self) -> Path:
        return self.run.checkpoint_dir / LAST

    def on_run_start(self, server) -> None:
        # Temporary files of a run killed mid-write; last.pt itself is intact (write then rename).
        for torn in self.run.checkpoint_dir.glob(f".{self.last.name}.*.tmp"):
            torn.unlink(missing_ok=True)
        if not self.run.resuming:  # a fresh run restarts the ledger; an older checkpoint would contradict it
            self.last.unlink(missing_ok=True)

    def on_round_end(self, info: RoundInfo) -> None:
        # Serialized now: the client states are the server's live objects, which the next round
        # changes; only the write and its fsync wait in the queue.
        buf = io.BytesIO()
        torch.save({
            "round": info.rnd,
            "global": info.global_after,
            "client_states": info.client_states,
            "server_state": info.server_state,
            "torch_rng": torch.get_rng_state(),
            "config_hash": self.run.config_hash,
            "fed_digest": self.run.fed_digest,
            "ledger_head": getattr(self.ledger, "prev", None),
            "meta": self.meta,
            "unlogged_metrics": self.unlogged(info) if self.unlogged is not None else [],
        }, buf)
        data = buf.getvalue()
        if self.writer is None:
            _write_bytes(self.last, data)
        else:
            self.writer.submit(_write_bytes, self.last, data)

    def on_run_end(self, result) -> None:
        if self.writer is not None:
            self.writer.close()

    def on_exception(self, exc: BaseException) -> None:
        """The rounds finished before the error are on disk, so the run resumes after them."""
        if self.writer is not None:
            try:
                self.writer.close(timeout=60)
            except Exception as e:  # noqa: BLE001 - the run's own error is the one to raise
                log.error("checkpoint/ledger writes after the error failed: %s", e)


def _write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: fh.write(data))


def load_checkpoint(path: Path, config_hash: str, fed_digest: str) -> tuple[ServerState, dict[str, Any], list]:
    """The saved state, the checkpoint's meta, and the metrics rows its run may not have logged
    (handed to the resumed run's MLflow tracker)."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PflError(f"resume={str(path)!r}: no such checkpoint") from None
    except IsADirectoryError:
        raise PflError(f"resume={str(path)!r}: a directory; expected a checkpoint file such as "
                       f"{Path(path) / 'last.pt'}") from None
    except Exception as e:  # noqa: BLE001 - torch reports a refused, torn or foreign file in several ways
        refused, why = load_error(e)
        if refused:
            raise PflError(f"resume={str(path)!r}: refused to load checkpoint: it holds objects other than "
                           f"tensors and plain values, which could run code (loaded with weights_only=True): "
                           f"{why}") from None
        raise PflError(f"resume={str(path)!r}: not a readable checkpoint (corrupt or truncated): {why}") from None
    if not (isinstance(ckpt, dict) and {"round", "global", "client_states", "torch_rng"} <= ckpt.keys()):
        raise PflError(f"resume={str(path)!r}: not a pfl checkpoint (expected the last.pt of a pfl run)")
    if ckpt.get("config_hash") != config_hash:
        raise PflError(f"resume={str(path)!r}: checkpoint comes from another config (hash "
                       f"{str(ckpt.get('config_hash'))[:12]}, this run {config_hash[:12]}); resume needs the same "
                       "config, or start a fresh run with resume=false")
    if ckpt.get("fed_digest") != fed_digest:
        raise PflError(f"resume={str(path)!r}: checkpoint was trained on different data (partition digest "
                       "differs); resume needs the same data and partition")
    torch.set_rng_state(ckpt["torch_rng"])
    return (ServerState(ckpt["round"], ckpt["global"], ckpt["client_states"], ckpt.get("server_state", {})),
            ckpt.get("meta", {}), ckpt.get("unlogged_metrics", []))
