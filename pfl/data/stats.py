"""Federation statistics: class counts per client and split, and label heterogeneity.

Heterogeneity is the Jensen-Shannon *divergence* (base 2, so in [0, 1]) between a client's
label distribution (all its splits together) and the pooled distribution of all clients'
beats. scipy's `jensenshannon` returns the JS *distance*, its square root; we square it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.distance import jensenshannon

from pfl.data.types import Federation

SPLITS = ("train", "val", "test")


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
    """Jensen-Shannon divergence (base 2) of two count or probability vectors; nan if either
    is empty."""
    p, q = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    if p.sum() <= 0 or q.sum() <= 0:
        return float("nan")
    return float(jensenshannon(p, q, base=2) ** 2)


@dataclass
class ClientStats:
    cid: str
    federated: bool
    records: list[str]
    counts: dict[str, np.ndarray]  # split -> (n_classes,) beats per class
    jsd: float  # JS divergence of this client's labels (all splits) from the pooled labels
    role: str = "federated"  # federated | heldout | unseen (pfl.data.types.Client.role)

    @property
    def total(self) -> np.ndarray:
        return sum(self.counts.values())


@dataclass
class FederationStats:
    name: str
    classes: list[str]
    clients: list[ClientStats]
    pooled: np.ndarray  # (n_classes,) beats per class over all clients and splits
    jsd_mean: float  # mean JSD over all clients
    jsd_mean_federated: float  # mean JSD over clients that train in the federation
    split_totals: dict[str, np.ndarray] = field(default_factory=dict)
    # split -> {"windows": fraction overlapping a training window, "patients": fraction from
    # patients with training beats}
    overlap: dict[str, dict[str, float]] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "pooled": self.pooled.tolist(),
            "jsd_mean": self.jsd_mean,
            "jsd_mean_federated": self.jsd_mean_federated,
            "overlap": self.overlap,
            "clients": [
                {
                    "cid": c.cid,
                    "federated": c.federated,
                    "role": c.role,
                    "records": c.records,
                    "counts": {s: v.tolist() for s, v in c.counts.items()},
                    "jsd": c.jsd,
                }
                for c in self.clients
            ],
        }


def _nanmean(values: list[float]) -> float:
    v = np.asarray([x for x in values if np.isfinite(x)], dtype=np.float64)
    return float(v.mean()) if len(v) else float("nan")


def _train_index(splits) -> dict[str, np.ndarray]:
    by_rec: dict[str, list[np.ndarray]] = {}
    for sp in splits:
        if sp.beat_record is None or sp.beat_sample is None:
            continue
        for r in np.unique(sp.beat_record):
            by_rec.setdefault(str(r), []).append(sp.beat_sample[sp.beat_record == r])
    return {r: np.sort(np.concatenate(v)) for r, v in by_rec.items()}


def _overlapping(split, index: dict[str, np.ndarray], window: int) -> tuple[int, int]:
    """(windows of split sharing a sample with a window in index, windows of split whose
    patient has a window in index)."""
    if split.beat_record is None or split.beat_sample is None or not len(split):
        return 0, 0
    hit = same = 0
    for r in np.unique(split.beat_record):
        s = split.beat_sample[split.beat_record == r]
        train = index.get(str(r))
        if train is None or not len(train):
            continue
        same += len(s)
        pos = np.searchsorted(train, s)
        near = np.minimum(np.abs(s - train[np.clip(pos, 0, len(train) - 1)]),
                          np.abs(s - train[np.clip(pos - 1, 0, len(train) - 1)]))
        hit += int((near < window).sum())
    return hit, same


def window_overlap(fed: Federation) -> dict[str, dict[str, float]]:
    """Per split (val, test): the fraction of windows that share a sample with a training
    window (`windows`), and the fraction from patients who have training beats (`patients`).

    Training windows are the federated clients' train splits (what the global model saw) and,
    for a client that never trained in the federation, its own adaptation data as well.
    """
    fed_index = _train_index(c.train for c in fed.clients if c.federated)
    window = fed.window or next((c.train.x.shape[-1] for c in fed.clients if len(c.train)), 0)
    out = {}
    for split in ("val", "test"):
        hit = same = total = 0
        for c in fed.clients:
            index = fed_index if c.federated else _train_index([*(x.train for x in fed.clients if x.federated), c.train])
            h, p = _overlapping(c.split(split), index, window)
            hit, same, total = hit + h, same + p, total + len(c.split(split))
        out[split] = {"windows": hit / total if total else 0.0, "patients": same / total if total else 0.0}
    return out


def federation_stats(fed: Federation) -> FederationStats:
    k = len(fed.classes)
    per_client = []
    for c in fed.clients:
        counts = {s: np.bincount(c.split(s).y.numpy(), minlength=k)[:k] for s in SPLITS}
        per_client.append((c, counts))
    pooled = sum((sum(cn.values()) for _, cn in per_client), np.zeros(k, dtype=np.int64))
    clients = [
        ClientStats(
            cid=c.cid,
            federated=c.federated,
            records=list(c.records),
            counts=counts,
            jsd=js_divergence(sum(counts.values()), pooled),
            role=c.role,
        )
        for c, counts in per_client
    ]
    return FederationStats(
        name=fed.name,
        classes=list(fed.classes),
        clients=clients,
        pooled=np.asarray(pooled),
        jsd_mean=_nanmean([c.jsd for c in clients]),
        jsd_mean_federated=_nanmean([c.jsd for c in clients if c.federated]),
        split_totals={
            s: sum((c.counts[s] for c in clients), np.zeros(k, dtype=np.int64)) for s in SPLITS
        },
        overlap=window_overlap(fed),
    )


def print_stats(fed: Federation, console=None) -> FederationStats:
    """Print, per client and split, the beats per class, and each client's JSD; returns the
    statistics."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    st = federation_stats(fed)
    table = Table(title=f"Federation {st.name}: {len(st.clients)} clients", show_edge=False)
    table.add_column("client")
    table.add_column("role")
    table.add_column("split")
    table.add_column("beats", justify="right")
    for cl in st.classes:
        table.add_column(cl, justify="right")
    table.add_column("JSD", justify="right")
    for c in st.clients:
        for i, s in enumerate(SPLITS):
            table.add_row(
                c.cid if i == 0 else "",
                {"federated": "fed", "heldout": "held out"}.get(c.role, c.role) if i == 0 else "",
                s,
                str(int(c.counts[s].sum())),
                *(str(int(v)) for v in c.counts[s]),
                f"{c.jsd:.4f}" if i == 0 else "",
                end_section=i == len(SPLITS) - 1,
            )
    for i, s in enumerate(SPLITS):
        tot = st.split_totals[s]
        table.add_row(
            "all" if i == 0 else "", "", s, str(int(tot.sum())), *(str(int(v)) for v in tot), ""
        )
    console.print(table)
    if any(c.records != [c.cid] for c in st.clients):
        for c in st.clients:
            recs = ", ".join(c.records) if len(c.records) <= 12 else f"{len(c.records)} records"
            console.print(f"{c.cid}: {recs}")
    pooled = ", ".join(f"{cl} {int(v)}" for cl, v in zip(st.classes, st.pooled, strict=True))
    console.print(f"pooled beats: {int(st.pooled.sum())} ({pooled})")
    line = f"mean JSD over clients: {st.jsd_mean:.4f}"
    if any(not c.federated for c in st.clients):
        line += f" (federated clients only: {st.jsd_mean_federated:.4f})"
    console.print(
        line
        + "  [JSD: Jensen-Shannon divergence, base 2, of the client's labels vs the pooled labels]"
    )
    ov = st.overlap
    console.print(
        "windows sharing samples with a training window: "
        + ", ".join(f"{s} {100 * ov[s]['windows']:.2f}%" for s in ("val", "test"))
        + "; beats from patients with training beats: "
        + ", ".join(f"{s} {100 * ov[s]['patients']:.1f}%" for s in ("val", "test"))
    )
    return st
