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


def confusion_grid(ev, path: Path, split: str = "test", per_row: int = 8, numbers_up_to: int = 16
                   ) -> list[tuple[str, str]]:
    """Every client's confusion matrices in one figure: per client the global and the
    personalized model side by side (the personalized one alone for strategies without a global
    model), `per_row` panels to a row; returns the (client, model) of each panel, in order.

    One image on one axes, whatever the number of clients (44 clients as separate axes take
    matplotlib seconds): each panel's rows are normalized to the true class's beats, so the
    colour is the recall; the counts are printed in the cells up to `numbers_up_to` panels.
    Built without pyplot's global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    models = [m for m in ("global", "personal") if (split, m) in ev.cms]
    panels = [(c.cid, m) for c in ev.clients for m in models if c.cid in ev.cms[(split, m)]]
    if not panels:
        return []
    k = len(ev.classes)
    per_row = max(len(models), per_row - per_row % len(models))  # a client's panels share a row
    cols = min(per_row, len(panels))
    rows = -(-len(panels) // cols)
    step = k + 1  # a panel and its gap
    image = np.full((rows * step - 1, cols * step - 1), np.nan)
    numbers = len(panels) <= numbers_up_to
    fig = Figure(figsize=(max(4.0, 1.6 * cols), 0.6 + 1.75 * rows))
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.02, 0.02, 0.96, 0.96 - 0.45 / (0.6 + 1.75 * rows)))
    for i, (cid, model) in enumerate(panels):
        cm = np.asarray(ev.cms[(split, model)][cid], dtype=np.float64)
        r0, c0 = (i // cols) * step, (i % cols) * step
        totals = cm.sum(1, keepdims=True)
        image[r0:r0 + k, c0:c0 + k] = np.divide(cm, totals, out=np.zeros_like(cm), where=totals > 0)
        ax.text(c0 + (k - 1) / 2, r0 - 0.6, f"{cid} {model}", ha="center", va="bottom", fontsize=7)
        if numbers:
            for (y, x), v in np.ndenumerate(cm):
                if v:
                    ax.text(c0 + x, r0 + y, f"{int(v)}", ha="center", va="center", fontsize=5,
                            color="white" if image[r0 + y, c0 + x] > 0.5 else "black")
    ax.imshow(image, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_axis_off()
    ax.set_ylim(image.shape[0] - 0.5, -1.6)
    fig.suptitle(f"confusion matrices ({split}), rows true {''.join(ev.classes)}, columns predicted; "
                 "colour: share of the true class", fontsize=8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
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
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.16, top=0.9, wspace=0.22)  # tight_layout costs 0.1 s
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


def report_curves(series: dict[tuple[str, str], dict[int, list[float]]], arms: list[str], path: Path,
                  percent=lambda key: False, bars: dict[str, float] | None = None) -> None:
    """One panel per metric: each arm's mean over seeds by round, the band its sample std; a
    dashed line where `bars` gives the metric a reference value."""
    keys = list(dict.fromkeys(k for _, k in series))
    if not keys:
        return
    cols = min(3, len(keys))
    rows = -(-len(keys) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]  # an arm keeps its colour in every panel
    handles: dict[str, object] = {}
    for ax, key in zip(axes.flat, keys, strict=False):  # the grid may hold more panels than keys
        scale = 100 if percent(key) else 1
        for arm in arms:
            points = series.get((arm, key))
            if not points:
                continue
            steps = np.array(list(points))
            stats = np.array([_mean_std(v) for v in points.values()]) * scale
            line, = ax.plot(steps, stats[:, 0], marker="." if len(steps) < 30 else None,
                            color=colors[arms.index(arm) % len(colors)], label=arm)
            handles.setdefault(arm, line)
            ax.fill_between(steps, stats[:, 0] - stats[:, 1], stats[:, 0] + stats[:, 1], alpha=0.2,
                            color=line.get_color(), linewidth=0)
        title = key + (" (%)" if scale == 100 else "")
        if key in (bars or {}):
            ax.axhline(bars[key] * scale, color="black", linestyle="--", linewidth=1)
            title += f"; dashed: {bars[key] * scale:g}"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel("round")
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(keys):]:
        ax.set_visible(False)
    fig.suptitle("mean over seeds; band: sample std over seeds", fontsize=8)
    fig.tight_layout(rect=(0, 0.04 + 0.025 * len(handles), 1, 1))
    fig.legend([handles[a] for a in arms if a in handles], [a for a in arms if a in handles], loc="lower center",
               fontsize=7, ncol=1, frameon=False)
    fig.savefig(path, dpi=100)
    plt.close(fig)
