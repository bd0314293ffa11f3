"""Markdown tables of the comparison: Table 2 (best per column in bold, runner-up marked ``*``, as the
paper does), Figure 3's and Figure 4's numbers."""
from __future__ import annotations

import math
from typing import Optional, Sequence

ROW_KEYS = ("method", "rmse", "mae", "auc", "ndcg10", "hr10", "seconds")
# column -> (header, higher is better); "seconds" is not marked
COLUMNS = {
    "rmse": ("RMSE", False),
    "mae": ("MAE", False),
    "auc": ("AUC", True),
    "ndcg10": ("NDCG@10", True),
    "hr10": ("HR@10", True),
}


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def mark_best(rows: Sequence[dict], column: str, higher_is_better: bool, digits: int = 4) -> list[str]:
    """Per row: "best", "runner_up" or "" for ``column``, compared at the displayed precision.
    Ties share the mark; rows without a value (None / NaN) get ""."""
    values = [None if _missing(row.get(column)) else round(float(row[column]), digits) for row in rows]
    distinct = sorted({v for v in values if v is not None}, reverse=higher_is_better)
    best = distinct[0] if distinct else None
    second = distinct[1] if len(distinct) > 1 else None
    return ["best" if v is not None and v == best else "runner_up" if v is not None and v == second else ""
            for v in values]


def _cell(value, mark: str = "", fmt: str = ".4f") -> str:
    if _missing(value):
        return "–"
    text = format(value, fmt)
    return f"**{text}**" if mark == "best" else f"{text}*" if mark == "runner_up" else text


def markdown_table(rows: Sequence[dict], title: Optional[str] = None) -> str:
    """Markdown table of rows (ROW_KEYS); best per column in bold, runner-up with *."""
    marks = {c: mark_best(rows, c, higher) for c, (_, higher) in COLUMNS.items()}
    header = ["Method"] + [h for h, _ in COLUMNS.values()] + ["seconds"]
    lines = [title, ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [row["method"]] + [_cell(row.get(c), marks[c][i]) for c in COLUMNS] + [_cell(row.get("seconds"), fmt=".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best per column in **bold**, runner-up marked *; – = not applicable (ranking-only "
              "models predict no ratings)."]
    return "\n".join(lines)


def format_row(row: dict) -> str:
    """One progress line: "RMSE 0.9534, MAE ..., HR@10 0.4034 (29s)"."""
    parts = [f"{COLUMNS[c][0]} {row[c]:.4f}" for c in COLUMNS if row.get(c) is not None]
    return ", ".join(parts) + f" ({row['seconds']:.0f}s)"


def figure3_markdown(rows: Sequence[dict], names: Sequence[str], title: Optional[str] = None) -> str:
    """RMSE by minimum history length (rows of ``figures.figure3_rows``); the best of each row in bold."""
    lines = [title, ""] if title else []
    lines += ["| min length L | test pairs | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for row in rows:
        present = [row.get(n) for n in names]
        best = min((v for v in present if v is not None), default=None)
        cells = [_cell(v, "best" if v == best else "") for v in present]
        lines.append(f"| {row['min_len']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def figure4_markdown(rows: Sequence[dict], title: Optional[str] = None) -> str:
    """IARN-Plain vs the encoders (rows of ``figures.run_figure4``): test RMSE (best in bold),
    validation RMSE, epochs, parameters."""
    best = min((r["rmse"] for r in rows if r.get("rmse") is not None), default=None)
    lines = [title, ""] if title else []
    lines += ["| encoder | test RMSE | test MAE | val RMSE | epochs | parameters | train ex/s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        rmse = _cell(r.get("rmse"), "best" if r.get("rmse") == best else "")
        lines.append(f"| {r['encoder']} | {rmse} | {_cell(r.get('mae'))} | {_cell(r.get('val_rmse'))} | "
                     f"{_cell(r.get('epochs'), fmt='.2f')} | {_cell(r.get('params'), fmt=',')} | "
                     f"{_cell(r.get('train_examples_per_second'), fmt='.0f')} |")
    return "\n".join(lines)
