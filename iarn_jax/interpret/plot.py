"""Figure-5 style picture of an :class:`~iarn_jax.interpret.explain.Explanation`.

Two rows of labelled cells, user history (items) on top and item history (users) below, in time
order, each cell shaded by its gate value (white = 0, dark = 1) with the value printed inside and
the step's name (title, or original id) written under it. matplotlib is an optional extra
(``pip install matplotlib``); without it :func:`plot_explanation` raises an ImportError saying so.
"""
from __future__ import annotations

import pathlib
import textwrap
from typing import Optional


def _require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "the explanation picture needs matplotlib, an optional extra: pip install matplotlib "
            "(the text and --json output work without it)"
        ) from exc
    return plt


def _label(step, side: str, width: int) -> str:
    if side == "user":
        text = step.name or str(step.original_id)
        if step.features:
            feats = step.features
            if feats and isinstance(feats[0], list):
                feats = [path[-1] for path in feats]
            text += "\n(" + ", ".join(feats[:3]) + ")"
    else:
        text = f"user {step.original_id}"
    lines = []
    for part in text.split("\n"):
        lines.extend(textwrap.wrap(part, width) or [""])
    return "\n".join(lines[:5])


def plot_explanation(explanation, path, *, max_steps: int = 20, label_width: int = 16,
                     title: Optional[str] = None):
    """Writes the picture to ``path`` (PNG by suffix) and returns the path.

    max_steps: cells per row; longer histories show their most recent ``max_steps`` steps (the
    row title says so).
    """
    plt = _require_matplotlib()
    from matplotlib import cm, colors

    rows = [("user", explanation.user_steps, explanation.user_history_length,
             f"user {explanation.user_original_id}: history (items)"),
            ("item", explanation.item_steps, explanation.item_history_length,
             f"item {explanation.item_original_id}: history (users)")]
    n_cols = max(1, min(max_steps, max(len(r[1]) for r in rows)))
    cmap = cm.get_cmap("Reds") if hasattr(cm, "get_cmap") else plt.get_cmap("Reds")
    norm = colors.Normalize(0.0, 1.0)
    fig, axes = plt.subplots(2, 1, figsize=(max(6.0, 1.05 * n_cols + 1.5), 5.6))
    for ax, (side, steps, total, row_title) in zip(axes, rows):
        shown = steps[-max_steps:]
        if len(shown) < total:
            row_title += f" - last {len(shown)} of {total} steps"
        ax.set_xlim(0, n_cols)
        ax.set_ylim(-1.6, 1.05)
        ax.axis("off")
        ax.set_title(row_title, loc="left", fontsize=10)
        for k, step in enumerate(shown):
            face = cmap(norm(step.gate))
            ax.add_patch(plt.Rectangle((k + 0.05, 0.05), 0.9, 0.9, facecolor=face, edgecolor="0.3", lw=0.6))
            ax.text(k + 0.5, 0.5, f"{step.gate:.2f}", ha="center", va="center", fontsize=8,
                    color="white" if step.gate > 0.6 else "black")
            rating = "own" if step.rating is None else f"{step.rating:g}"
            ax.text(k + 0.5, -0.05, _label(step, side, label_width) + f"\n[{rating}]", ha="center", va="top",
                    fontsize=6.5, rotation=0)
    head = title or (
        f"{explanation.model}: user {explanation.user_original_id} -> "
        + (f"'{explanation.item_title}'" if explanation.item_title else f"item {explanation.item_original_id}")
        + ("   predicted " if explanation.prediction_kind == "rating" else "   score ")
        + f"{explanation.prediction:.2f}"
        + (f", observed {explanation.rating:g}" if explanation.rating is not None else "")
    )
    fig.suptitle(head, fontsize=11)
    sm = cm.ScalarMappable(norm=norm, cmap=cmap)
    sm.set_array([])
    fig.colorbar(sm, ax=axes, fraction=0.015, pad=0.01, label="gate (attention score)")
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130, bbox_inches="tight")
    plt.close(fig)
    return path


__all__ = ["plot_explanation"]
