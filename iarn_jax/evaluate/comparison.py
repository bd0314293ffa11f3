"""The paper's comparison (Table 2, Figure 3): every method on one split, one set of metrics.

* ``METHODS``: the registry, name -> :class:`Method` (how to fit it and how to score it). Table 2's
  methods are ``TABLE2_METHODS`` (the baselines, the four IARN variants, SASRec and IARN trained for
  ranking; ``*_rank`` / ``iarn_joint`` train the variants with the ranking / joint objective); ``bias`` and
  ``mostpop`` are extra cheap references.
* ``run_method``: fits one method on a split and evaluates it: test RMSE/MAE (rating models,
  predictions clipped to the rating range) and full-ranking AUC / NDCG@10 / HR@10 on the given
  users (``ranking.evaluate_ranking``; the IARN variants through ``scorer.RankingScorer``).
  Ranking scores are the models' own scores: predicted ratings (biases included) for rating models,
  the ranking score for ranking-only ones; nothing is excluded.
* ``run_comparison``: all requested methods, each cached as ``workdir/methods/NAME.json`` (plus its
  test predictions as ``NAME.test_pred.npy`` for rating models), so a re-run resumes.
* ``markdown_table`` / ``mark_best``: the table with the best value of each column in bold and the
  runner-up marked ``*``, as the paper does; ``figure3_rows`` / ``figure3_markdown`` /
  ``plot_figure3``: RMSE by minimum history length.
* ``run_figure4`` / ``figure4_markdown`` / ``plot_figure4``: the paper's Figure 4, IARN-Plain
  against IARN with each feature encoder (test RMSE; the plain row reuses Table 2's IARN run when
  it was trained with the same budget).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.evaluate import ranking
from iarn_jax.progress import Progress

ROW_KEYS = ("method", "rmse", "mae", "auc", "ndcg10", "hr10", "seconds")
# column -> (header, higher is better); "seconds" is not marked
COLUMNS = {
    "rmse": ("RMSE", False),
    "mae": ("MAE", False),
    "auc": ("AUC", True),
    "ndcg10": ("NDCG@10", True),
    "hr10": ("HR@10", True),
}
FIGURE3_LENGTHS = (3, 10, 20, 30, 50, 100)
# Figure 4: encoder specs (``ModelConfig.feature_encoder``; "plain" = none) per protocol
FIGURE4_ENCODERS = {
    "clothing": ("plain", "flat:target", "hier:target", "hier:step"),  # category hierarchy
    "default": ("plain", "flat:target", "flat:step"),  # flat genres (MovieLens, synthetic)
}
BACKBONES = ("rnn", "lstm", "tagm", "iarn")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison.

    name: the row label (the paper's spelling).
    kind: "baseline" (an object with fit / predict / score_items, see ``baselines/base.py``) or
      "iarn" (a variant trained by ``training.loop.train``).
    factory: () -> unfitted baseline (baselines only).
    variant: the ModelConfig variant (IARN family only).
    objective: the TrainConfig objective of an IARN-family row (None: the protocol's default, "rating").
    """

    name: str
    kind: str
    factory: Optional[Callable[[], Any]] = None
    variant: Optional[str] = None
    objective: Optional[str] = None


def _baseline(name: str, module: str, attr: str, **kwargs) -> Method:
    def factory():
        import importlib

        return getattr(importlib.import_module(f"iarn_jax.models.baselines.{module}"), attr)(**kwargs)

    return Method(name=name, kind="baseline", factory=factory)


METHODS: dict[str, Method] = {
    "mf": _baseline("MF", "mf", "MF"),
    "bpr": _baseline("BPR", "bpr", "BPR"),
    "timesvdpp": _baseline("TimeSVD++", "timesvdpp", "TimeSVDpp"),
    "hievh": _baseline("HieVH", "hievh", "HieVH"),
    "item2vec": _baseline("Item2Vec", "item2vec", "Item2Vec"),
    "ncf": _baseline("NCF", "ncf", "NCF"),
    "sasrec": _baseline("SASRec", "sasrec", "SASRec"),
    "mp2vec": _baseline("MP2Vec", "item2vec", "MP2Vec"),
    "rnn": Method(name="RNN", kind="iarn", variant="rnn"),
    "lstm": Method(name="LSTM", kind="iarn", variant="lstm"),
    "tagm": Method(name="TAGM", kind="iarn", variant="tagm"),
    "iarn": Method(name="IARN", kind="iarn", variant="iarn"),
    # the recurrent variants trained for ranking (sampled negatives, BPR) and IARN trained jointly
    "rnn_rank": Method(name="RNN (ranking)", kind="iarn", variant="rnn", objective="ranking"),
    "lstm_rank": Method(name="LSTM (ranking)", kind="iarn", variant="lstm", objective="ranking"),
    "tagm_rank": Method(name="TAGM (ranking)", kind="iarn", variant="tagm", objective="ranking"),
    "iarn_rank": Method(name="IARN (ranking)", kind="iarn", variant="iarn", objective="ranking"),
    "iarn_joint": Method(name="IARN (joint)", kind="iarn", variant="iarn", objective="joint"),
    # extra references (not in the paper's table)
    "bias": _baseline("BiasOnly", "bias", "BiasBaseline"),
    "mostpop": _baseline("MostPop", "bpr", "MostPop"),
}
TABLE2_METHODS = ("mf", "bpr", "timesvdpp", "hievh", "item2vec", "ncf", "mp2vec", "rnn", "lstm", "tagm", "iarn",
                  # beyond the paper: a modern sequential ranking peer and IARN trained for ranking
                  "sasrec", "iarn_rank")


def parse_methods(text: Optional[str], default: Sequence[str] = TABLE2_METHODS) -> list[str]:
    """"a,b" -> ["a", "b"] (registry keys, case-insensitive; "TimeSVD++" etc. accepted)."""
    if not text:
        return list(default)
    aliases = {m.name.lower(): key for key, m in METHODS.items()}
    out = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        key = aliases.get(key, key)
        if key not in METHODS:
            raise ValueError(f"unknown method {raw!r}; choose from {', '.join(METHODS)}")
        if key not in out:
            out.append(key)
    return out


def split_checksum(split: ProtocolSplit) -> str:
    """sha256 (first 16 hex digits) of the split's train / val / test / history tables."""
    digest = hashlib.sha256()
    for frame in (split.history, split.train, split.val, split.test):
        for column in ("user", "item", "rating", "time"):
            digest.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
    return digest.hexdigest()[:16]


# -- fitting and evaluating one method -------------------------------------------------------------
@dataclasses.dataclass
class MethodOutput:
    """A fitted method's row, its test predictions (rating models) and extra facts."""

    row: dict
    test_predictions: Optional[np.ndarray] = None
    info: dict = dataclasses.field(default_factory=dict)


def _nan_to_none(value):
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def _iarn_settings(split: ProtocolSplit, variant: str, seed: int, max_seconds: Optional[float],
                   max_len: Optional[int], model_overrides: Optional[dict], train_overrides: Optional[dict],
                   objective: Optional[str] = None):
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training.config import TrainConfig
    from iarn_jax.training.experiment import protocol_defaults

    model_defaults, train_defaults = protocol_defaults(split, verbose=False, variant=variant)
    model_kwargs = {**model_defaults, "variant": variant, **(model_overrides or {})}
    train_kwargs = {**train_defaults, "seed": seed, **(train_overrides or {})}
    if objective is not None:
        train_kwargs["objective"] = objective
        if objective != "rating" and train_kwargs.get("history_mode", "full") == "full":
            train_kwargs["history_mode"] = "full_without_self"
    if max_seconds is not None:
        train_kwargs["max_seconds"] = float(max_seconds)
    if max_len is not None:
        train_kwargs["max_len"] = int(max_len)
    return ModelConfig(**model_kwargs), TrainConfig(**train_kwargs)


def _train_iarn(split: ProtocolSplit, variant: str, run_dir: Optional[pathlib.Path], *, seed: int,
                max_seconds: Optional[float], max_len: Optional[int], model_overrides: Optional[dict],
                train_overrides: Optional[dict], verbose: bool, objective: Optional[str] = None):
    """Trains one IARN-family model with the protocol's defaults (resuming in ``run_dir``)."""
    from iarn_jax.training.loop import train

    model_config, train_config = _iarn_settings(split, variant, seed, max_seconds, max_len, model_overrides,
                                                train_overrides, objective)
    return train(split, model_config, train_config, workdir=run_dir, resume=run_dir is not None, verbose=verbose)


def run_method(
    key: str,
    split: ProtocolSplit,
    users: np.ndarray,
    *,
    seed: int = 0,
    workdir: Optional[pathlib.Path] = None,
    iarn_max_seconds: Optional[float] = None,
    max_len: Optional[int] = None,
    model_overrides: Optional[dict] = None,
    train_overrides: Optional[dict] = None,
    scorer_kwargs: Optional[dict] = None,
    verbose: bool = True,
) -> MethodOutput:
    """Fits method ``key`` on ``split`` and evaluates it on ``split.test`` and ``users``."""
    method = METHODS[key]
    start = time.perf_counter()
    info: dict = {}
    test = split.test
    test_users, test_items = test["user"].to_numpy(np.int64), test["item"].to_numpy(np.int64)
    if method.kind == "iarn":
        from iarn_jax.evaluate.scorer import RankingScorer
        from iarn_jax.training.loop import predict

        run_dir = workdir / "iarn_runs" / key if workdir is not None else None
        result = _train_iarn(split, method.variant, run_dir, seed=seed, max_seconds=iarn_max_seconds,
                             max_len=max_len, model_overrides=model_overrides, train_overrides=train_overrides,
                             verbose=verbose, objective=method.objective)
        fit_seconds = time.perf_counter() - start
        test_pred = predict(result, test)  # in split.test order
        rating = ranking.evaluate_rating(lambda u, i: test_pred, test, split.rating_scale)
        scorer = RankingScorer.from_result(result, ranking.kept_item_universe(split), **(scorer_kwargs or {}))
        rank = ranking.evaluate_ranking(scorer.score_items, split, users, progress=verbose,
                                        score_matrix_fn=scorer.score_matrix if scorer.fast else None)
        info.update(model_config=dataclasses.asdict(result.model_config),
                    train_config=dataclasses.asdict(result.train_config),
                    train_metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))},
                    scorer_encode_seconds=scorer.encode_seconds,
                    scorer_compiled_shapes=scorer.n_compiled_shapes)
        rates = method.objective in (None, "rating", "joint")  # a ranking-trained model predicts no ratings
    else:
        model = method.factory()
        model.fit(split, seed=seed, verbose=verbose)
        fit_seconds = time.perf_counter() - start
        rates = bool(model.rates)
        test_pred = None
        rating = {"rmse": None, "mae": None}
        if rates:
            if hasattr(model, "predict_at"):  # time-aware (TimeSVD++): predict at the test times
                test_pred = np.asarray(model.predict_at(test_users, test_items, test["time"].to_numpy()))
            else:
                test_pred = np.asarray(model.predict(test_users, test_items))
            rating = ranking.evaluate_rating(lambda u, i: test_pred, test, split.rating_scale)
        matrix_fn = getattr(model, "score_matrix", None)
        rank = ranking.evaluate_ranking(model.score_items, split, users, progress=verbose,
                                        score_matrix_fn=matrix_fn)
        for attr in ("report", "selection_"):
            if isinstance(getattr(model, attr, None), dict):
                info[attr] = getattr(model, attr)
    seconds = time.perf_counter() - start
    info.update(fit_seconds=fit_seconds, ranking_seconds=rank["seconds"], ranking_pairs=rank["n_pairs"],
                ranking_pairs_per_second=rank["pairs_per_second"], ranking_users=rank["n_users"])
    row = {
        "method": method.name,
        "rmse": _nan_to_none(rating["rmse"]) if rates else None,
        "mae": _nan_to_none(rating["mae"]) if rates else None,
        "auc": _nan_to_none(rank["auc"]),
        "ndcg10": _nan_to_none(rank["ndcg10"]),
        "hr10": _nan_to_none(rank["hr10"]),
        "seconds": seconds,
    }
    return MethodOutput(row=row, test_predictions=None if test_pred is None else np.asarray(test_pred, np.float64),
                        info=info)


# -- caching ---------------------------------------------------------------------------------------
def _cache_paths(workdir: pathlib.Path, key: str) -> tuple[pathlib.Path, pathlib.Path]:
    folder = workdir / "methods"
    return folder / f"{key}.json", folder / f"{key}.test_pred.npy"


def load_cached(workdir: Optional[pathlib.Path], key: str, fingerprint: dict) -> Optional[MethodOutput]:
    """The cached output of ``key`` when it was made with the same fingerprint, else None."""
    if workdir is None:
        return None
    path, pred_path = _cache_paths(workdir, key)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    pred = np.load(pred_path) if pred_path.exists() else None
    return MethodOutput(row=record["row"], test_predictions=pred, info=record.get("info", {}))


def save_cached(workdir: pathlib.Path, key: str, fingerprint: dict, output: MethodOutput) -> None:
    path, pred_path = _cache_paths(workdir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.test_predictions is not None:
        np.save(pred_path, output.test_predictions)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"key": key, "fingerprint": fingerprint, "row": output.row, "info": output.info},
                              indent=1, default=_jsonable))
    tmp.replace(path)  # the JSON last: it marks the method as finished


def _jsonable(value: Any):
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def run_comparison(
    split: ProtocolSplit,
    methods: Sequence[str],
    *,
    users: Optional[np.ndarray] = None,
    eval_seed: int = 0,
    n_eval_users: Optional[int] = None,
    seed: int = 0,
    workdir: Optional[str | pathlib.Path] = None,
    iarn_max_seconds: Optional[float] = None,
    max_len: Optional[int] = None,
    verbose: bool = True,
    **run_kwargs,
) -> dict:
    """Runs (or loads from the workdir cache) every method; returns
    {"rows": [...], "outputs": {key: MethodOutput}, "users": [...], "record": {...}}.

    The cache key of a method is its name plus a fingerprint (protocol, data checksum, seeds, the
    evaluated users, the IARN budget flags): a changed setting retrains, an unchanged one resumes.
    """
    workdir = pathlib.Path(workdir) if workdir is not None else None
    if users is None:
        users = ranking.sample_eval_users(split, n_eval_users, seed=eval_seed)
    users = np.asarray(users, dtype=np.int64)
    checksum = split_checksum(split)
    base_fingerprint = {
        "protocol": split.name, "checksum": checksum, "seed": seed, "split_seed": split.seed,
        "users_sha": hashlib.sha256(users.tobytes()).hexdigest()[:16], "n_users": int(users.size),
    }
    outputs: dict[str, MethodOutput] = {}
    bar = Progress(len(methods), label="reproduce", unit="methods", enabled=verbose, every_s=0.0)
    for done, key in enumerate(methods, start=1):
        fingerprint = dict(base_fingerprint)
        if METHODS[key].kind == "iarn":
            fingerprint.update(iarn_max_seconds=iarn_max_seconds, max_len=max_len)
        cached = load_cached(workdir, key, fingerprint)
        if cached is not None:
            if verbose:
                bar.write(f"[reproduce] {METHODS[key].name}: cached ({workdir / 'methods' / (key + '.json')})")
            outputs[key] = cached
            bar.update(done)
            continue
        if verbose:
            bar.write(f"[reproduce] {METHODS[key].name}: fitting on {split.name}")
        output = run_method(key, split, users, seed=seed, workdir=workdir, iarn_max_seconds=iarn_max_seconds,
                            max_len=max_len, verbose=verbose, **run_kwargs)
        if verbose:
            bar.write(f"[reproduce] {METHODS[key].name}: {format_row(output.row)}")
        if workdir is not None:
            save_cached(workdir, key, fingerprint, output)
        outputs[key] = output
        bar.update(done)
    bar.close()
    rows = [outputs[k].row for k in methods]
    record = {**base_fingerprint, "eval_seed": eval_seed, "users": users.tolist(),
              "methods": {k: {"row": outputs[k].row, "info": outputs[k].info} for k in methods}}
    return {"rows": rows, "outputs": outputs, "users": users, "record": record}


# -- tables ----------------------------------------------------------------------------------------
def mark_best(rows: Sequence[dict], column: str, higher_is_better: bool, digits: int = 4) -> list[str]:
    """Per row: "best", "runner_up" or "" for ``column``, compared at the displayed precision.
    Ties share the mark; rows without a value (None / NaN) get ""."""
    values = []
    for row in rows:
        value = row.get(column)
        ok = value is not None and not (isinstance(value, float) and math.isnan(value))
        values.append(round(float(value), digits) if ok else None)
    distinct = sorted({v for v in values if v is not None}, reverse=higher_is_better)
    best = distinct[0] if distinct else None
    second = distinct[1] if len(distinct) > 1 else None
    return ["best" if v is not None and v == best else "runner_up" if v is not None and v == second else ""
            for v in values]


def _cell(value, mark: str, digits: int = 4) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    text = f"{value:.{digits}f}"
    if mark == "best":
        return f"**{text}**"
    if mark == "runner_up":
        return f"{text}*"
    return text


def markdown_table(rows: Sequence[dict], title: Optional[str] = None) -> str:
    """Markdown table of rows (ROW_KEYS); best per column in bold, runner-up with *."""
    marks = {c: mark_best(rows, c, higher) for c, (_, higher) in COLUMNS.items()}
    header = ["Method"] + [h for h, _ in COLUMNS.values()] + ["seconds"]
    lines = []
    if title:
        lines += [title, ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for i, row in enumerate(rows):
        cells = [row["method"]] + [_cell(row.get(c), marks[c][i]) for c in COLUMNS]
        seconds = row.get("seconds")
        cells.append("–" if seconds is None else f"{seconds:.0f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Best per column in **bold**, runner-up marked *; – = not applicable (ranking-only "
              "models predict no ratings)."]
    return "\n".join(lines)


def format_row(row: dict) -> str:
    parts = [f"{COLUMNS[c][0]} {row[c]:.4f}" for c in COLUMNS if row.get(c) is not None]
    return ", ".join(parts) + f" ({row['seconds']:.0f}s)"


# -- Figure 3 --------------------------------------------------------------------------------------
def figure3_rows(split: ProtocolSplit, outputs: dict, methods: Sequence[str] = BACKBONES,
                 lengths: Sequence[int] = FIGURE3_LENGTHS) -> list[dict]:
    """Per minimum length L (where there are test pairs): {"min_len", "n", NAME: rmse...} from the
    methods' cached test predictions (test pairs whose user and item have >= L training events)."""
    from iarn_jax.evaluate import metrics

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


def figure3_markdown(rows: Sequence[dict], names: Sequence[str], title: Optional[str] = None) -> str:
    """RMSE by minimum history length; the best of each row in bold."""
    lines = [title, ""] if title else []
    lines += ["| min length L | test pairs | " + " | ".join(names) + " |", "|" + "---|" * (len(names) + 2)]
    for row in rows:
        present = [row.get(n) for n in names]
        best = min((v for v in present if v is not None), default=None)
        cells = [("–" if v is None else (f"**{v:.4f}**" if v == best else f"{v:.4f}")) for v in present]
        lines.append(f"| {row['min_len']} | {row['n']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_figure3(rows: Sequence[dict], names: Sequence[str], path: str | pathlib.Path, title: str = "") -> bool:
    """PNG plot of RMSE vs minimum length; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lengths = [r["min_len"] for r in rows]
    for name in names:
        values = [r.get(name, np.nan) for r in rows]
        ax.plot(lengths, values, marker="o", label=name)
    ax.set_xlabel("minimum history length L (user and item)")
    ax.set_ylabel("test RMSE")
    if title:
        ax.set_title(title)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- Figure 4 --------------------------------------------------------------------------------------
def _encoder_slug(spec: str) -> str:
    return spec.replace(":", "-")


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
    """IARN with each feature encoder (``"plain"`` = none), trained with the protocol's defaults
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
    rows = []
    for spec in encoders:
        path = workdir / "figure4" / f"{_encoder_slug(spec)}.json" if workdir is not None else None
        if path is not None and path.exists():
            record = json.loads(path.read_text())
            if {"train_overrides": None, **record.get("fingerprint", {})} == fingerprint:
                if verbose:
                    print(f"[figure4] {spec}: cached ({path})", flush=True)
                rows.append(record["row"])
                continue
        if spec == "plain" and workdir is not None and not train_overrides:
            table2 = _cache_paths(workdir, "iarn")[0]
            record = json.loads(table2.read_text()) if table2.exists() else {}
            same = {k: record.get("fingerprint", {}).get(k) for k in fingerprint} == fingerprint
            if same:
                m = record["info"]["train_metrics"]
                rows.append({"encoder": "plain", "rmse": record["row"]["rmse"], "mae": record["row"]["mae"],
                             "val_rmse": m.get("val_rmse"), "epochs": m.get("epochs"),
                             "stop_reason": m.get("stop_reason"), "params": m.get("params"),
                             "train_examples_per_second": m.get("train_examples_per_second"),
                             "seconds": record["info"].get("fit_seconds"), "source": "table2 iarn"})
                if verbose:
                    print(f"[figure4] plain: Table 2's IARN run ({table2})", flush=True)
                continue
        if verbose:
            print(f"[figure4] {spec}: training on {split.name}", flush=True)
        start = time.perf_counter()
        run_dir = workdir / "figure4_runs" / _encoder_slug(spec) if workdir is not None else None
        result = _train_iarn(split, "iarn", run_dir, seed=seed, max_seconds=iarn_max_seconds, max_len=max_len,
                             model_overrides={"feature_encoder": None if spec == "plain" else spec},
                             train_overrides=train_overrides, verbose=verbose)
        m = result.metrics  # train() already scored split.test (clipped) with the best parameters
        row = {"encoder": spec, "rmse": _nan_to_none(m.get("test_rmse")), "mae": _nan_to_none(m.get("test_mae")),
               "val_rmse": m.get("val_rmse"), "epochs": m.get("epochs"), "stop_reason": m.get("stop_reason"),
               "params": m.get("params"),
               "train_examples_per_second": m.get("train_examples_per_second"),
               "seconds": time.perf_counter() - start}
        if verbose:
            print(f"[figure4] {spec}: test RMSE {row['rmse']:.4f} (val {row['val_rmse']:.4f}, "
                  f"{row['epochs']:.2f} epochs, {row['params']:,} params)", flush=True)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "row": row}, indent=1, default=_jsonable))
            tmp.replace(path)
        rows.append(row)
    return rows


def figure4_markdown(rows: Sequence[dict], title: Optional[str] = None) -> str:
    """IARN-Plain vs the encoders: test RMSE (best in bold), validation RMSE, epochs, parameters."""
    best = min((r["rmse"] for r in rows if r.get("rmse") is not None), default=None)
    lines = [title, ""] if title else []
    lines += ["| encoder | test RMSE | test MAE | val RMSE | epochs | parameters | train ex/s |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        rmse = "–" if r.get("rmse") is None else (f"**{r['rmse']:.4f}**" if r["rmse"] == best else f"{r['rmse']:.4f}")
        fmt = lambda v, f: "–" if v is None else format(v, f)  # noqa: E731
        lines.append(f"| {r['encoder']} | {rmse} | {fmt(r.get('mae'), '.4f')} | {fmt(r.get('val_rmse'), '.4f')} | "
                     f"{fmt(r.get('epochs'), '.2f')} | {fmt(r.get('params'), ',')} | "
                     f"{fmt(r.get('train_examples_per_second'), '.0f')} |")
    return "\n".join(lines)


def plot_figure4(rows: Sequence[dict], path: str | pathlib.Path, title: str = "") -> bool:
    """PNG bar chart of test RMSE per encoder; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    values = [r["rmse"] if r.get("rmse") is not None else np.nan for r in rows]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    ax.bar(range(len(rows)), values, color=["0.6"] + ["C0"] * (len(rows) - 1))
    ax.set_xticks(range(len(rows)), [r["encoder"] for r in rows], rotation=20)
    finite = [v for v in values if np.isfinite(v)]
    if finite:
        ax.set_ylim(min(finite) - 0.02, max(finite) + 0.01)
    ax.set_ylabel("test RMSE")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


__all__ = [
    "BACKBONES", "COLUMNS", "FIGURE3_LENGTHS", "FIGURE4_ENCODERS", "figure4_markdown", "plot_figure4",
    "run_figure4", "METHODS", "Method", "MethodOutput", "ROW_KEYS", "TABLE2_METHODS",
    "figure3_markdown", "figure3_rows", "load_cached", "mark_best", "markdown_table", "parse_methods",
    "plot_figure3", "run_comparison", "run_method", "save_cached", "split_checksum",
]
