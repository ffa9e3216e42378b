"""The final per-client table (global vs personalized, and the change): console, CSV, Markdown.

The CSV holds every column of `Evaluation.table` (every metric of pfl.metrics, per-class Se/+P);
the console and Markdown show accuracy and macro-F1 in full, the bootstrap interval of the
personalized macro-F1 with the number of beats it rests on, and the other metrics personalized.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from pfl.metrics import METRICS

_FULL = ("acc", "f1")
COLUMNS = ("client", "n", *(f"{m}_{k}" for m in _FULL for k in ("global", "personal", "delta")), "f1_personal_ci",
           *(f"{m}_personal" for m in METRICS if m not in _FULL))
_TEXT = ("client", "federated", "n", "f1_personal_ci")


def with_means(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows plus a mean row per group (federated clients, clients that never trained)."""
    out = list(rows)
    for label, members in (("mean", [r for r in rows if r["federated"]]),
                           ("mean (unseen)", [r for r in rows if not r["federated"]])):
        if not members:
            continue
        mean: dict[str, Any] = {"client": label, "federated": members[0]["federated"],
                                "n": sum(r["n"] for r in members)}
        for col in members[0]:
            if col in _TEXT or not isinstance(members[0][col], float):
                continue
            vals = [r[col] for r in members if not math.isnan(r[col])]
            mean[col] = sum(vals) / len(vals) if vals else float("nan")
        # An interval of a mean of clients is not the mean of their intervals.
        mean["f1_personal_lo"] = mean["f1_personal_hi"] = float("nan")
        out.append(mean)
    return out


def _cell(col: str, row: dict[str, Any]) -> str:
    if col == "f1_personal_ci":
        lo, hi = row.get("f1_personal_lo", float("nan")), row.get("f1_personal_hi", float("nan"))
        return "-" if math.isnan(lo) else f"{100 * lo:.1f}-{100 * hi:.1f} (n={row['n']})"
    return _fmt(col, row.get(col, float("nan")))


def _header(col: str) -> str:
    if col == "f1_personal_ci":
        return "f1 personal 95% CI"
    return col.replace("_", " ") + (" (%)" if col != "client" and col != "n" else "")


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
        table.add_column(_header(col), justify="left" if col == "client" else "right")
    for r in with_means(rows):
        table.add_row(*(_cell(c, r) for c in COLUMNS), style="bold" if r["client"].startswith("mean") else None)
    (console or Console()).print(table)


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    rows = with_means(rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


def to_markdown(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["| " + " | ".join(_header(c) for c in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(c, r) for c in COLUMNS) + " |" for r in with_means(rows)]
    return "\n".join(lines) + "\n"
