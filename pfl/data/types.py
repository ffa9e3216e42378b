"""Containers passed from the data pipeline to the federated core."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class RecordBeats:
    """Beats of one record, in annotation order."""

    record: str
    x: np.ndarray  # (n, window) float32, filtered and normalized; (n, leads, window) with extra leads
    y: np.ndarray  # (n,) int64 index into BeatSet.classes
    sample: np.ndarray  # (n,) int64 R-peak sample index in the record
    fs: float
    dropped_edge: int = 0  # beats whose window left the record
    # Signal the beats come from: data.lead, or a fallback when the record lacks it.
    lead: str | None = None
    #: the record's own sampling rate (fs is the rate of the beats, data.fs after resampling)
    native_fs: float | None = None
    #: (n, len(pfl.data.rr.RAW)) float32 RR intervals in seconds (pfl.data.rr.raw_intervals)
    rr: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class BeatSet:
    classes: list[str]
    records: dict[str, RecordBeats]
    #: RR features appended after each window (pfl.data.rr.pack): x's last axis is window + this
    rr_features: int = 0

    @property
    def window(self) -> int:
        """Samples of one beat window (without the RR features)."""
        rb = next(iter(self.records.values()), None)
        return 0 if rb is None else int(rb.x.shape[-1]) - self.rr_features

    def __len__(self) -> int:
        return sum(len(r) for r in self.records.values())


@dataclass
class Split:
    """One split of one client: tensors ready for training, (n, 1, window) and (n,)."""

    x: torch.Tensor
    y: torch.Tensor
    # Where each beat comes from (record name, R-peak sample), when known: lets tests and
    # statistics check that splits never share a beat and which patients a split holds.
    beat_record: np.ndarray | None = None
    beat_sample: np.ndarray | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])

    @classmethod
    def from_numpy(
        cls,
        x: np.ndarray,
        y: np.ndarray,
        beat_record: np.ndarray | None = None,
        beat_sample: np.ndarray | None = None,
    ) -> Split:
        xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
        if xt.ndim == 2:
            xt = xt.unsqueeze(1)
        return cls(
            xt,
            torch.from_numpy(np.ascontiguousarray(y, dtype=np.int64)),
            None if beat_record is None else np.asarray(beat_record, dtype=str),
            None if beat_sample is None else np.asarray(beat_sample, dtype=np.int64),
        )

    def beat_ids(self) -> set[tuple[str, int]]:
        """(record, sample) of every beat; empty when the origin is unknown."""
        if self.beat_record is None or self.beat_sample is None:
            return set()
        return set(zip(self.beat_record.tolist(), self.beat_sample.tolist(), strict=True))

    @classmethod
    def empty(cls, window: int) -> Split:
        return cls(torch.zeros(0, 1, window), torch.zeros(0, dtype=torch.long))


@dataclass
class Client:
    cid: str
    train: Split
    val: Split
    test: Split
    records: list[str] = field(default_factory=list)
    # False for clients that never train in the federation (inter-patient DS2):
    # they are evaluated and may adapt on their own train split, nothing more.
    federated: bool = True
    # A patient held out of training to validate on patients the model never saw: every beat
    # is in val (no train, no test); reported as `heldout.val.*`. Implies federated=False.
    heldout: bool = False

    @property
    def role(self) -> str:
        """federated | heldout | unseen: what the client is for, and the prefix of its group's metrics."""
        return "federated" if self.federated else "heldout" if self.heldout else "unseen"

    def split(self, name: str) -> Split:
        return getattr(self, name)


@dataclass
class Federation:
    name: str
    classes: list[str]
    clients: list[Client]
    #: samples of one beat window (inputs may hold lead channels and RR features besides)
    window: int | None = None
    #: the shift and scale of the RR features (data.rr.standardize), None where they are raw
    rr_stats: dict | None = None

    @property
    def training_clients(self) -> list[Client]:
        return [c for c in self.clients if c.federated]

    def digest(self) -> str:
        """SHA-256 over every client's split contents: identifies the partition exactly."""
        h = hashlib.sha256()
        for c in self.clients:
            h.update(f"{c.cid}|{int(c.federated)}|{'heldout|' if c.heldout else ''}".encode())
            for s in ("train", "val", "test"):
                sp = c.split(s)
                h.update(sp.x.numpy().tobytes())
                h.update(sp.y.numpy().tobytes())
        return h.hexdigest()
