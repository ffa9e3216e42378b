"""PNG figures for MLflow artifacts and reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _cm_panel(ax, cm: np.ndarray, classes: list[str], title: str, compact: bool = False) -> None:
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    if not compact:
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    ax.set_title(title, fontsize=9 if compact else None)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")


def confusion_grid(ev, path: Path, split: str = "test", per_row: int = 8) -> list[tuple[str, str]]:
    """Every client's confusion matrices in one figure: per client the global and the
    personalized model side by side (the personalized one alone for strategies without a global
    model), `per_row` panels to a row; returns the (client, model) of each panel, in order. One figure, however many clients: its cost is one layout
    and one file, not one per client. Built without pyplot's global state, so a background
    thread may draw it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in ("global", "personal") if (split, m) in ev.cms]
    panels = [(c.cid, m) for c in ev.clients for m in models if c.cid in ev.cms[(split, m)]]
    if not panels:
        return []
    per_row = max(len(models), per_row - per_row % len(models))  # a client's panels share a row
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.6 * cols, 2.5 * rows))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, (cid, model) in zip(axes, panels, strict=False):
        _cm_panel(ax, ev.cms[(split, model)][cid], ev.classes, f"{cid} {model}", compact=True)
    for ax in axes[len(panels):]:
        ax.set_axis_off()
    fig.suptitle(f"confusion matrices ({split}): rows true, columns predicted")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=70)
    return panels


def learning_curves(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 3.4))  # no pyplot state: safe in the artifact writer's thread
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    rounds = [h["round"] for h in history]
    axes[0].plot(rounds, [h.get("train_loss", np.nan) for h in history])
    axes[0].set_title("train loss")
    for ax, metric in zip(axes[1:], ("acc", "f1"), strict=True):
        for split in ("val", "test"):
            for model, style in (("global", "--"), ("personal", "-")):
                key = f"{split}.{model}.{metric}.mean"
                pts = [(h["round"], h[key]) for h in history if key in h]
                if pts:
                    ax.plot(*zip(*pts, strict=True), style, label=f"{split} {model}")
        ax.set_title(f"mean client {metric}")
        ax.legend(fontsize=7)
    for ax in axes:
        ax.set_xlabel("round")
    fig.tight_layout()
    fig.savefig(path, dpi=80)


# Report charts: bars are means over seeds, error bars the sample std (ddof=1) over seeds.

def _mean_std(values) -> tuple[float, float]:
    v = np.array([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)
    if not len(v):
        return np.nan, np.nan
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _bars(ax, labels: list[str], series: list[tuple[str, list[tuple[float, float]]]], ylabel: str) -> None:
    x = np.arange(len(labels))
    width = 0.8 / max(len(series), 1)
    for i, (name, points) in enumerate(series):
        means = [100 * m for m, _ in points]
        stds = [100 * s for _, s in points]
        ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=name)
    ax.set_xticks(x, labels, rotation=30 if max(map(len, labels), default=0) > 10 or len(labels) > 8 else 0,
                  ha="right" if len(labels) > 8 or max(map(len, labels), default=0) > 10 else "center", fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7)


def report_summary(arms, split: str, path: Path) -> None:
    """Per arm: mean client accuracy and macro-F1, global vs personalized."""
    labels = [a.label for a in arms]
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(arms) + 4), 3.8))
    for ax, metric, name in zip(axes, ("acc", "f1"), ("accuracy", "macro-F1"), strict=True):
        series = [(model, [_mean_std(a.values(f"{split}.{key}.{metric}.mean")) for a in arms])
                  for model, key in (("global", "global"), ("personalized", "personal"))]
        _bars(ax, labels, series, f"{split} {name}, mean over clients (%)")
    fig.suptitle("mean over seeds; error bars: sample std over seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_clients(arms, split: str, metric: str, path: Path) -> None:
    """Per client: each arm's personalized model (bars) and global model (markers)."""
    clients = list(dict.fromkeys(c for a in arms for c in a.clients()))
    if not clients:
        return
    fig, ax = plt.subplots(figsize=(min(40, max(8, 0.35 * len(clients) * max(len(arms), 1) + 3)), 4))
    series = [(f"{a.label} personalized", [_mean_std(a.values(f"client.{c}.{split}.personal.{metric}"))
                                            for c in clients]) for a in arms]
    _bars(ax, clients, series, f"{split} {'accuracy' if metric == 'acc' else 'macro-F1'} (%)")
    x = np.arange(len(clients))
    width = 0.8 / max(len(arms), 1)
    for i, a in enumerate(arms):
        g = [100 * _mean_std(a.values(f"client.{c}.{split}.global.{metric}"))[0] for c in clients]
        ax.scatter(x + (i - (len(arms) - 1) / 2) * width, g, marker="D", s=16, facecolors="white",
                   edgecolors="black", zorder=3, label="global model" if i == 0 else None)
    ax.legend(fontsize=7)
    ax.set_title("bars: personalized model, mean ± sample std over seeds; diamonds: global model (mean)",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def report_centralized(arms, split: str, path: Path) -> None:
    """Centralized vs FedAvg arms: per client macro-F1 of the global model."""
    chosen = [a for a in arms if a.baseline]
    clients = list(dict.fromkeys(c for a in chosen for c in a.clients() if c not in a.unseen()))
    labels = [*clients, "mean"]
    fig, ax = plt.subplots(figsize=(max(7, 0.9 * len(labels) * len(chosen) + 2), 3.8))
    series = [(a.label, [_mean_std(a.values(f"client.{c}.{split}.global.f1")) for c in clients]
               + [_mean_std(a.values(f"{split}.global.f1.mean"))]) for a in chosen]
    _bars(ax, labels, series, f"{split} macro-F1, global model (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
