"""Checkpoints after every round, written atomically and loaded without unpickling code."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from pfl.errors import PflError
from pfl.fl.callbacks import Callback, RoundInfo
from pfl.fl.server import ServerState


def atomic_save(obj: Any, path: Path) -> None:
    """Write then rename: a crash mid-write leaves the previous file, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class Checkpointer(Callback):
    def __init__(self, directory: Path, config_hash: str, fed_digest: str, meta: dict[str, Any] | None = None):
        self.directory, self.config_hash, self.fed_digest = Path(directory), config_hash, fed_digest
        self.meta = meta or {}

    @property
    def last(self) -> Path:
        return self.directory / "last.pt"

    def on_round_end(self, info: RoundInfo) -> None:
        atomic_save({
            "round": info.rnd,
            "global": info.global_after,
            "client_states": info.client_states,
            "torch_rng": torch.get_rng_state(),
            "config_hash": self.config_hash,
            "fed_digest": self.fed_digest,
            "meta": self.meta,
        }, self.last)


def load_checkpoint(path: Path, config_hash: str, fed_digest: str) -> tuple[ServerState, dict[str, Any]]:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise PflError(f"resume={str(path)!r}: no such checkpoint") from None
    except Exception as e:
        raise PflError(f"resume={str(path)!r}: refused to load checkpoint (only tensors and plain values are "
                       f"allowed, loaded with weights_only=True): {str(e).splitlines()[0]}") from None
    if ckpt.get("config_hash") != config_hash:
        raise PflError(f"resume={str(path)!r}: checkpoint comes from another config (hash "
                       f"{str(ckpt.get('config_hash'))[:12]}, this run {config_hash[:12]}); resume needs the same "
                       "config, or start a fresh run with resume=false")
    if ckpt.get("fed_digest") != fed_digest:
        raise PflError(f"resume={str(path)!r}: checkpoint was trained on different data (partition digest "
                       "differs); resume needs the same data and partition")
    torch.set_rng_state(ckpt["torch_rng"])
    return ServerState(ckpt["round"], ckpt["global"], ckpt["client_states"]), ckpt.get("meta", {})
