"""The final per-client table (global vs personalized, and the change): console, CSV, Markdown."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

COLUMNS = ("client", "n", "acc_global", "acc_personal", "acc_delta", "f1_global", "f1_personal", "f1_delta")


def with_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus a mean row per group (federated clients, clients that never trained)."""
    out = list(rows)
    for label, members in (("mean", [r for r in rows if r["federated"]]),
                           ("mean (unseen)", [r for r in rows if not r["federated"]])):
        if not members:
            continue
        mean: dict[str, Any] = {"client": label, "federated": members[0]["federated"],
                                "n": sum(r["n"] for r in members)}
        for col in COLUMNS[2:]:
            vals = [r[col] for r in members if not math.isnan(r[col])]
            mean[col] = sum(vals) / len(vals) if vals else float("nan")
        out.append(mean)
    return out


def _fmt(col: str, val: Any) -> str:
    if isinstance(val, float):
        if math.isnan(val):
            return "-"
        pct = 100 * val
        return f"{pct:+.2f}" if col.endswith("delta") else f"{pct:.2f}"
    return str(val)


def render(rows: Sequence[dict[str, Any]], title: str, console: Console | None = None) -> None:
    table = Table(title=title, title_justify="left")
    for col in COLUMNS:
        table.add_column(col.replace("_", " ") + (" (%)" if col.startswith(("acc", "f1")) else ""),
                         justify="left" if col == "client" else "right")
    for r in with_means(rows):
        table.add_row(*(_fmt(c, r[c]) for c in COLUMNS), style="bold" if r["client"].startswith("mean") else None)
    (console or Console()).print(table)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    rows = with_means(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_fmt(c, r[c]) for c in COLUMNS) + " |" for r in with_means(rows)]
    return "\n".join(lines) + "\n"
