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

    def as_dict(self) -> dict:
        return {
            "name": self.name,
            "classes": self.classes,
            "pooled": self.pooled.tolist(),
            "jsd_mean": self.jsd_mean,
            "jsd_mean_federated": self.jsd_mean_federated,
            "clients": [
                {
                    "cid": c.cid,
                    "federated": c.federated,
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
                ("fed" if c.federated else "unseen") if i == 0 else "",
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
    return st
