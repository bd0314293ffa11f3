"""Fit and evaluate the comparison's methods on one split, with a per-method cache.

* ``run_method``: fits one method on a split and evaluates it: test RMSE/MAE (rating models,
  predictions clipped to the rating range) and full-ranking AUC / NDCG@10 / HR@10 on the given
  users (``ranking.evaluate_ranking``; the IARN variants through ``scorer.RankingScorer``).
  Ranking scores are the models' own scores: predicted ratings (biases included) for rating models,
  the ranking score for ranking-only ones; nothing is excluded.
* ``run_comparison``: all requested methods, each cached as ``workdir/methods/NAME.json`` (plus its
  test predictions as ``NAME.test_pred.npy`` for rating models), so a re-run resumes.
* ``train_iarn``: one IARN-family model with the protocol's defaults (also Figure 4's trainer).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import pathlib
import time
from typing import Optional, Sequence

import numpy as np

from iarn_jax import jsonio
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.evaluate import ranking
from iarn_jax.progress import Progress
from iarn_jax.reports.registry import METHODS
from iarn_jax.reports.tables import format_row


@dataclasses.dataclass
class MethodOutput:
    """A fitted method's row (``tables.ROW_KEYS``), its test predictions [len(split.test)] (rating
    models) and extra facts (configs, timings)."""

    row: dict
    test_predictions: Optional[np.ndarray] = None
    info: dict = dataclasses.field(default_factory=dict)


def nan_to_none(value) -> Optional[float]:
    """float, with None for None and NaN (JSON has no NaN)."""
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else value


def split_checksum(split: ProtocolSplit) -> str:
    """sha256 (first 16 hex digits) of the split's train / val / test / history tables."""
    digest = hashlib.sha256()
    for frame in (split.history, split.train, split.val, split.test):
        for column in ("user", "item", "rating", "time"):
            digest.update(np.ascontiguousarray(frame[column].to_numpy()).tobytes())
    return digest.hexdigest()[:16]


# -- fitting and evaluating one method -------------------------------------------------------------
def _iarn_settings(split: ProtocolSplit, variant: str, seed: int, max_seconds: Optional[float],
                   max_len: Optional[int], model_overrides: Optional[dict], train_overrides: Optional[dict],
                   objective: Optional[str] = None):
    """The launcher's (ModelConfig, TrainConfig) for the split's protocol, with the table's caps."""
    import dataclasses

    from iarn_jax.training.defaults import build_configs, config_for

    model_config, train_config = build_configs(config_for(split), split, variant=variant, seed=seed,
                                               objective=objective, model_overrides=model_overrides,
                                               train_overrides=train_overrides, verbose=False)
    caps = {**({"max_seconds": float(max_seconds)} if max_seconds is not None else {}),
            **({"max_len": int(max_len)} if max_len is not None else {})}
    return model_config, dataclasses.replace(train_config, **caps)


def train_iarn(split: ProtocolSplit, variant: str, run_dir: Optional[pathlib.Path], *, seed: int,
               max_seconds: Optional[float], max_len: Optional[int], model_overrides: Optional[dict],
               train_overrides: Optional[dict], verbose: bool, objective: Optional[str] = None):
    """Trains one IARN-family model with the protocol's defaults (resuming in ``run_dir``)."""
    from iarn_jax.training.loop import train

    model_config, train_config = _iarn_settings(split, variant, seed, max_seconds, max_len, model_overrides,
                                                train_overrides, objective)
    return train(split, model_config, train_config, workdir=run_dir, resume=run_dir is not None, verbose=verbose)


def _fit_iarn(key, split, users, *, seed, workdir, iarn_max_seconds, max_len, model_overrides, train_overrides,
              scorer_kwargs, verbose):
    """An IARN-family row: (test predictions, whether they are ratings, ranking result, info)."""
    from iarn_jax.evaluate.scorer import RankingScorer
    from iarn_jax.training.loop import predict

    method = METHODS[key]
    start = time.perf_counter()
    run_dir = workdir / "iarn_runs" / key if workdir is not None else None
    result = train_iarn(split, method.variant, run_dir, seed=seed, max_seconds=iarn_max_seconds, max_len=max_len,
                        model_overrides=model_overrides, train_overrides=train_overrides, verbose=verbose,
                        objective=method.objective)
    fit_seconds = time.perf_counter() - start
    test_pred = predict(result, split.test)  # in split.test order
    scorer = RankingScorer.from_result(result, ranking.kept_item_universe(split), **(scorer_kwargs or {}))
    rank = ranking.evaluate_ranking(scorer.score_items, split, users, progress=verbose,
                                    score_matrix_fn=scorer.score_matrix if scorer.fast else None)
    info = dict(fit_seconds=fit_seconds,
                model_config=dataclasses.asdict(result.model_config),
                train_config=dataclasses.asdict(result.train_config),
                train_metrics={k: v for k, v in result.metrics.items() if isinstance(v, (int, float, str))},
                scorer_encode_seconds=scorer.encode_seconds,
                scorer_compiled_shapes=scorer.n_compiled_shapes)
    rates = method.objective in (None, "rating", "joint")  # a ranking-trained model predicts no ratings
    return test_pred, rates, rank, info


def _fit_baseline(key, split, users, *, seed, verbose):
    """A baseline row: (test predictions or None, whether they are ratings, ranking result, info)."""
    start = time.perf_counter()
    model = METHODS[key].factory()
    model.fit(split, seed=seed, verbose=verbose)
    info = {"fit_seconds": time.perf_counter() - start}
    test_pred = None
    if model.rates:
        test = split.test
        users_, items = test["user"].to_numpy(np.int64), test["item"].to_numpy(np.int64)
        if hasattr(model, "predict_at"):  # time-aware (TimeSVD++): predict at the test times
            test_pred = np.asarray(model.predict_at(users_, items, test["time"].to_numpy()))
        else:
            test_pred = np.asarray(model.predict(users_, items))
    rank = ranking.evaluate_ranking(model.score_items, split, users, progress=verbose,
                                    score_matrix_fn=getattr(model, "score_matrix", None))
    for attr in ("report", "selection_"):
        if isinstance(getattr(model, attr, None), dict):
            info[attr] = getattr(model, attr)
    return test_pred, bool(model.rates), rank, info


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
    """Fits method ``key`` on ``split`` and evaluates it on ``split.test`` and ``users`` [U]."""
    start = time.perf_counter()
    if METHODS[key].kind == "iarn":
        test_pred, rates, rank, info = _fit_iarn(
            key, split, users, seed=seed, workdir=workdir, iarn_max_seconds=iarn_max_seconds, max_len=max_len,
            model_overrides=model_overrides, train_overrides=train_overrides, scorer_kwargs=scorer_kwargs,
            verbose=verbose)
    else:
        test_pred, rates, rank, info = _fit_baseline(key, split, users, seed=seed, verbose=verbose)
    rating = {"rmse": None, "mae": None}
    if test_pred is not None:
        test_pred = np.asarray(test_pred, np.float64)
    if rates:
        rating = ranking.evaluate_rating(lambda u, i: test_pred, split.test, split.rating_scale)
    info.update(ranking_seconds=rank["seconds"], ranking_pairs=rank["n_pairs"],
                ranking_pairs_per_second=rank["pairs_per_second"], ranking_users=rank["n_users"])
    row = {
        "method": METHODS[key].name,
        "rmse": nan_to_none(rating["rmse"]),
        "mae": nan_to_none(rating["mae"]),
        "auc": nan_to_none(rank["auc"]),
        "ndcg10": nan_to_none(rank["ndcg10"]),
        "hr10": nan_to_none(rank["hr10"]),
        "seconds": time.perf_counter() - start,
    }
    return MethodOutput(row=row, test_predictions=test_pred, info=info)


# -- caching ---------------------------------------------------------------------------------------
def cache_paths(workdir: pathlib.Path, key: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(``workdir/methods/KEY.json``, ``workdir/methods/KEY.test_pred.npy``)."""
    folder = workdir / "methods"
    return folder / f"{key}.json", folder / f"{key}.test_pred.npy"


def load_cached(workdir: Optional[pathlib.Path], key: str, fingerprint: dict) -> Optional[MethodOutput]:
    """The cached output of ``key`` when it was made with the same fingerprint, else None."""
    if workdir is None:
        return None
    path, pred_path = cache_paths(workdir, key)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    if record.get("fingerprint") != fingerprint:
        return None
    pred = np.load(pred_path) if pred_path.exists() else None
    return MethodOutput(row=record["row"], test_predictions=pred, info=record.get("info", {}))


def save_cached(workdir: pathlib.Path, key: str, fingerprint: dict, output: MethodOutput) -> None:
    """Writes the predictions, then the JSON record (whose presence marks the method as finished)."""
    path, pred_path = cache_paths(workdir, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output.test_predictions is not None:
        np.save(pred_path, output.test_predictions)
    jsonio.write_json_atomic(path, {"key": key, "fingerprint": fingerprint, "row": output.row, "info": output.info})


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
    base_fingerprint = {
        "protocol": split.name, "checksum": split_checksum(split), "seed": seed, "split_seed": split.seed,
        "users_sha": hashlib.sha256(users.tobytes()).hexdigest()[:16], "n_users": int(users.size),
    }
    outputs: dict[str, MethodOutput] = {}
    bar = Progress(len(methods), label="reproduce", unit="methods", enabled=verbose, every_s=0.0)
    say = bar.write if verbose else (lambda text: None)
    for done, key in enumerate(methods, start=1):
        name = METHODS[key].name
        fingerprint = dict(base_fingerprint)
        if METHODS[key].kind == "iarn":
            fingerprint.update(iarn_max_seconds=iarn_max_seconds, max_len=max_len)
        cached = load_cached(workdir, key, fingerprint)
        if cached is not None:
            say(f"[reproduce] {name}: cached ({cache_paths(workdir, key)[0]})")
            outputs[key] = cached
        else:
            say(f"[reproduce] {name}: fitting on {split.name}")
            outputs[key] = run_method(key, split, users, seed=seed, workdir=workdir,
                                      iarn_max_seconds=iarn_max_seconds, max_len=max_len, verbose=verbose,
                                      **run_kwargs)
            say(f"[reproduce] {name}: {format_row(outputs[key].row)}")
            if workdir is not None:
                save_cached(workdir, key, fingerprint, outputs[key])
        bar.update(done)
    bar.close()
    rows = [outputs[k].row for k in methods]
    record = {**base_fingerprint, "eval_seed": eval_seed, "users": users.tolist(),
              "methods": {k: {"row": outputs[k].row, "info": outputs[k].info} for k in methods}}
    return {"rows": rows, "outputs": outputs, "users": users, "record": record}
