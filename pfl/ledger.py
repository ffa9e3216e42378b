"""An append-only, hash-chained JSON-lines ledger of every round: who built the model, from what.

Each entry records SHA-256 digests of the global weights before and after the round, of each
participating client's update, the clients' sample counts, the config hash and the partition
digest, and the hash of the previous entry; its own hash covers all of that. Editing, removing
or reordering any entry breaks the chain at that round.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path

import torch

from pfl.fl.callbacks import Callback, RoundInfo

GENESIS = "0" * 64


def weights_digest(weights: Mapping[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(weights):
        t = weights[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return h.hexdigest()


def entry_hash(entry: Mapping) -> str:
    body = {k: v for k, v in entry.items() if k != "hash"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def read_entries(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class Ledger(Callback):
    def __init__(self, path: Path, config_hash: str, partition_digest: str, resume_round: int = 0):
        self.path, self.config_hash, self.partition_digest = Path(path), config_hash, partition_digest
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Rounds after the checkpoint we resume from are redone, so their entries go; a fresh run
        # starts a fresh chain.
        kept = [e for e in read_entries(self.path) if e.get("round", 0) <= resume_round] if resume_round else []
        self._rewrite(kept)
        self.prev = kept[-1]["hash"] if kept else GENESIS

    def _rewrite(self, entries: list[dict]) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(e, sort_keys=True) + "\n" for e in entries))
        os.replace(tmp, self.path)

    def on_round_end(self, info: RoundInfo) -> None:
        entry = {
            "round": info.rnd,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "config_hash": self.config_hash,
            "partition_digest": self.partition_digest,
            "global_before": weights_digest(info.global_before),
            "global_after": weights_digest(info.global_after),
            "updates": [{"client": u.cid, "num_samples": u.num_samples, "digest": weights_digest(u.weights)}
                        for u in info.updates],
            "dropped": list(info.dropped),
            "diverged": list(info.diverged),
            "prev": self.prev,
        }
        entry["hash"] = entry_hash(entry)
        with self.path.open("a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.prev = entry["hash"]
