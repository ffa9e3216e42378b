"""PNG figures for MLflow artifacts and reports (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _cm_panel(ax, cm: np.ndarray, classes: list[str], title: str) -> None:
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if cm[i, j] > cm.max() / 2 else "black")


def confusion_matrices(ev, directory: Path, split: str = "test") -> None:
    """One PNG per client: global and personalized model side by side."""
    directory.mkdir(parents=True, exist_ok=True)
    for c in ev.clients:
        fig, axes = plt.subplots(1, 2, figsize=(7, 3.4))
        for ax, model in zip(axes, ("global", "personal"), strict=True):
            _cm_panel(ax, ev.cms[(split, model)][c.cid], ev.classes, f"{c.cid} {model} ({split})")
        fig.tight_layout()
        fig.savefig(directory / f"{c.cid}.png", dpi=80)
        plt.close(fig)


def learning_curves(history: list[dict[str, float]], path: Path) -> None:
    if not history:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4))
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
    plt.close(fig)
