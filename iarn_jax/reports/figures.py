"""Figure 3 (test RMSE by minimum history length) and Figure 4 (IARN-Plain vs IARN with each feature
encoder): their rows and PNG plots (``tables`` formats the rows).

* ``figure3_rows``: from the methods' cached test predictions, no refitting;
* ``run_figure4``: trains IARN with each encoder (cached per encoder in ``workdir/figure4/``; the
  plain row reuses Table 2's IARN run when it was trained with the same budget);
* ``plot_figure3`` / ``plot_figure4``: PNG files; False (nothing written) without matplotlib.
"""
from __future__ import annotations

import json
import pathlib
import time
from typing import Optional, Sequence

import numpy as np

from iarn_jax import jsonio
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.evaluate import metrics
from iarn_jax.reports.registry import BACKBONES, METHODS
from iarn_jax.reports.runner import cache_paths, nan_to_none, split_checksum, train_iarn

FIGURE3_LENGTHS = (3, 10, 20, 30, 50, 100)
# Figure 4 per protocol: row label -> the typed ``ModelConfig`` encoder fields ("plain" = none). The
# labels name the rows, the cache files and ``--encoders`` choices.
_PLAIN = {"feature_encoder": None}
_FLAT_TARGET = {"feature_encoder": "flat", "feature_inputs": "target"}
FIGURE4_ENCODERS = {
    "clothing": {"plain": _PLAIN, "flat:target": _FLAT_TARGET,  # category hierarchy
                 "hier:target": {"feature_encoder": "hier", "feature_inputs": "target"},
                 "hier:step": {"feature_encoder": "hier", "feature_inputs": "step"}},
    "default": {"plain": _PLAIN, "flat:target": _FLAT_TARGET,  # flat genres (MovieLens, synthetic)
                "flat:step": {"feature_encoder": "flat", "feature_inputs": "step"}},
}


def encoder_overrides(label: str) -> dict:
    """The ``ModelConfig`` encoder fields of a Figure 4 row label: one of ``FIGURE4_ENCODERS``, or
    any other encoder written "KIND[:INPUTS][:rR|:dense][:sum|:mean]" (``models.config.encoder_fields``)."""
    from iarn_jax.models.config import encoder_fields

    for encoders in FIGURE4_ENCODERS.values():
        if label in encoders:
            return dict(encoders[label])
    return encoder_fields(label)


# -- Figure 3 --------------------------------------------------------------------------------------
def figure3_rows(split: ProtocolSplit, outputs: dict, methods: Sequence[str] = BACKBONES,
                 lengths: Sequence[int] = FIGURE3_LENGTHS) -> list[dict]:
    """Per minimum length L (where there are test pairs): {"min_len", "n", NAME: rmse...} from the
    methods' test predictions (``outputs``: key -> ``runner.MethodOutput``), on the test pairs whose
    user and item have >= L training events."""
    test = split.test
    user_counts = split.history["user"].value_counts()
    item_counts = split.history["item"].value_counts()
    user_len = test["user"].map(user_counts).fillna(0).to_numpy()
    item_len = test["item"].map(item_counts).fillna(0).to_numpy()
    target = test["rating"].to_numpy(np.float64)
    rows = []
    for length in lengths:  # the same subsets as ``ranking.rmse_by_min_len``
        keep = (user_len >= length) & (item_len >= length)
        if not keep.any():
            continue
        row = {"min_len": int(length), "n": int(keep.sum())}
        for key in methods:
            pred = outputs[key].test_predictions
            if pred is not None:
                row[METHODS[key].name] = metrics.rmse(pred[keep], target[keep], split.rating_scale)
        rows.append(row)
    return rows


def _pyplot():
    """matplotlib.pyplot on the Agg backend, or None when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, ax, path: str | pathlib.Path, title: str) -> bool:
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_figure3(rows: Sequence[dict], names: Sequence[str], path: str | pathlib.Path, title: str = "") -> bool:
    """PNG plot of RMSE vs minimum length, one line per method name."""
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lengths = [r["min_len"] for r in rows]
    for name in names:
        ax.plot(lengths, [r.get(name, np.nan) for r in rows], marker="o", label=name)
    ax.set_xlabel("minimum history length L (user and item)")
    ax.set_ylabel("test RMSE")
    ax.legend()
    ax.grid(alpha=0.3)
    return _save(plt, fig, ax, path, title)


# -- Figure 4 --------------------------------------------------------------------------------------
def _encoder_slug(spec: str) -> str:
    return spec.replace(":", "-")


def _plain_from_table2(workdir: pathlib.Path, fingerprint: dict) -> Optional[dict]:
    """The plain row from Table 2's cached IARN run when it has the same fingerprint, else None."""
    path = cache_paths(workdir, "iarn")[0]
    record = json.loads(path.read_text()) if path.exists() else {}
    if {k: record.get("fingerprint", {}).get(k) for k in fingerprint} != fingerprint:
        return None
    m = record["info"]["train_metrics"]
    return {"encoder": "plain", "rmse": record["row"]["rmse"], "mae": record["row"]["mae"],
            "val_rmse": m.get("val_rmse"), "epochs": m.get("epochs"), "stop_reason": m.get("stop_reason"),
            "params": m.get("params"), "train_examples_per_second": m.get("train_examples_per_second"),
            "seconds": record["info"].get("fit_seconds"), "source": "table2 iarn"}


def run_figure4(
    split: ProtocolSplit,
    encoders: Optional[Sequence[str]] = None,
    *,
    seed: int = 0,
    workdir: Optional[str | pathlib.Path] = None,
    iarn_max_seconds: Optional[float] = None,
    max_len: Optional[int] = None,
    train_overrides: Optional[dict] = None,
    verbose: bool = True,
) -> list[dict]:
    """IARN with each feature encoder (row labels, see :func:`encoder_overrides`; ``"plain"`` = none),
    trained with the protocol's defaults
    and the same budget; rows {"encoder", "rmse", "mae", "val_rmse", "epochs", "stop_reason",
    "params", "train_examples_per_second", "seconds"}. Cached per encoder in
    ``workdir/figure4/``; the plain row reuses ``workdir/methods/iarn.json`` (Table 2's IARN)
    when that was trained with the same seed, budget and history cap (and no ``train_overrides``,
    which only tests use)."""
    encoders = list(encoders or FIGURE4_ENCODERS.get(split.name, FIGURE4_ENCODERS["default"]))
    workdir = pathlib.Path(workdir) if workdir is not None else None
    fingerprint = {"protocol": split.name, "checksum": split_checksum(split), "seed": seed,
                   "split_seed": split.seed, "iarn_max_seconds": iarn_max_seconds, "max_len": max_len,
                   "train_overrides": train_overrides or None}
    say = (lambda text: print(text, flush=True)) if verbose else (lambda text: None)
    rows = []
    for spec in encoders:
        path = workdir / "figure4" / f"{_encoder_slug(spec)}.json" if workdir is not None else None
        if path is not None and path.exists():
            record = json.loads(path.read_text())
            if {"train_overrides": None, **record.get("fingerprint", {})} == fingerprint:
                say(f"[figure4] {spec}: cached ({path})")
                rows.append(record["row"])
                continue
        if spec == "plain" and workdir is not None and not train_overrides:
            row = _plain_from_table2(workdir, fingerprint)
            if row is not None:
                say(f"[figure4] plain: Table 2's IARN run ({cache_paths(workdir, 'iarn')[0]})")
                rows.append(row)
                continue
        say(f"[figure4] {spec}: training on {split.name}")
        start = time.perf_counter()
        run_dir = workdir / "figure4_runs" / _encoder_slug(spec) if workdir is not None else None
        result = train_iarn(split, "iarn", run_dir, seed=seed, max_seconds=iarn_max_seconds, max_len=max_len,
                            model_overrides=encoder_overrides(spec),
                            train_overrides=train_overrides, verbose=verbose)
        m = result.metrics  # train() already scored split.test (clipped) with the best parameters
        row = {"encoder": spec, "rmse": nan_to_none(m.get("test_rmse")), "mae": nan_to_none(m.get("test_mae")),
               "val_rmse": m.get("val_rmse"), "epochs": m.get("epochs"), "stop_reason": m.get("stop_reason"),
               "params": m.get("params"), "train_examples_per_second": m.get("train_examples_per_second"),
               "seconds": time.perf_counter() - start}
        say(f"[figure4] {spec}: test RMSE {row['rmse']:.4f} (val {row['val_rmse']:.4f}, "
            f"{row['epochs']:.2f} epochs, {row['params']:,} params)")
        if path is not None:
            jsonio.write_json_atomic(path, {"fingerprint": fingerprint, "row": row})
        rows.append(row)
    return rows


def plot_figure4(rows: Sequence[dict], path: str | pathlib.Path, title: str = "") -> bool:
    """PNG bar chart of test RMSE per encoder (the plain row grey)."""
    plt = _pyplot()
    if plt is None:
        return False
    values = [r["rmse"] if r.get("rmse") is not None else np.nan for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    ax.bar(range(len(rows)), values, color=["0.6"] + ["C0"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), [r["encoder"] for r in rows], rotation=20)
    finite = [v for v in values if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) - 0.02, max(finite) + 0.01)
    ax.set_ylabel("test RMSE")
    return _save(plt, fig, ax, path, title)
