"""Training utilities shared by every baseline (MF, BPR, TimeSVD++, SASRec, NCF, Item2Vec, HieVH).

* ``pair_arrays``: a ratings DataFrame -> dict of NumPy arrays.
* ``make_epoch_fn``: one jit-compiled epoch = a shuffled pass over the examples
  in mini-batches, written as a ``lax.scan`` over batches. The last batch is
  padded with weight-0 examples so every epoch has the same static shape.
* ``early_stopping``: the one early-stopping rule of every baseline (epochs until
  ``patience`` validation scores without improvement; keeps the best state);
  ``fit_early_stopping`` runs it over ``make_epoch_fn`` epochs.
* ``grid_search``: fits every configuration of a small grid and keeps the best
  on the validation metric (never on test); ``select_and_refit`` adds the
  optional refit of the chosen configuration on train + validation.
* ``seen_mask``: which ids occur in the fit data.
* Validation scores: ``clipped_rmse`` (rating models) and ``ranking_auc`` (BPR's full-ranking
  validation AUC over a ``data.candidates.RankingTask``).

Loss functions take ``(params, batch)`` where ``batch`` holds the per-example
arrays gathered for the mini-batch plus ``"weight"`` (1 real, 0 padding) and
``"rng"`` (a per-step key); they return the weighted mean loss.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import scipy.stats

from iarn_jax.data.candidates import RankingTask

Params = Any
LossFn = Callable[[Params, dict], jnp.ndarray]


def with_defaults(model_name: str, defaults: dict, options: dict) -> dict:
    """{**defaults, **options}; an option the model does not have is refused, naming it."""
    unknown = set(options) - set(defaults)
    if unknown:
        raise ValueError(f"unknown {model_name} options {sorted(unknown)}")
    return {**defaults, **options}


def pair_arrays(frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """{"user": int32, "item": int32, "rating": float32, "time": int64} arrays."""
    return {
        "user": frame["user"].to_numpy(np.int32),
        "item": frame["item"].to_numpy(np.int32),
        "rating": frame["rating"].to_numpy(np.float32),
        "time": frame["time"].to_numpy(np.int64),
    }


def inverse_counts(ids: np.ndarray, size: int) -> np.ndarray:
    """1 / (number of occurrences of each id in ``ids``) per entry of ``ids``."""
    counts = np.bincount(ids, minlength=size).astype(np.float32)
    return (1.0 / np.maximum(counts, 1.0))[ids]


def regularisation_weights(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, mode: str):
    """Per-example weights of the L2 terms of a user row and an item row.

    mode "frequency": weight 1 per occurrence (what per-example SGD does: a row
      seen n times is penalised n times);
    mode "uniform": weight 1/n_row, so one pass over the data penalises every
      row exactly once (the MAP objective sum e^2 + lambda * sum ||row||^2,
      whose bias solution is the count-shrunk mean, as in Surprise's baselines).
    """
    if mode == "frequency":
        ones = np.ones(users.shape, np.float32)
        return ones, ones
    if mode == "uniform":
        return inverse_counts(users, n_users), inverse_counts(items, n_items)
    raise ValueError(f"unknown regularisation mode {mode!r}; use 'frequency' or 'uniform'")


def make_optimizer(name: str, learning_rate: float) -> optax.GradientTransformation:
    if name == "adam":
        return optax.adam(learning_rate)
    if name == "adagrad":
        return optax.adagrad(learning_rate)
    if name == "sgd":
        return optax.sgd(learning_rate)
    raise ValueError(f"unknown optimizer {name!r}")


def make_epoch_fn(loss_fn: LossFn, optimizer: optax.GradientTransformation, n_examples: int, batch_size: int):
    """A jit-compiled ``epoch(params, opt_state, data, rng) -> (params, opt_state, mean_loss)``.

    data: dict of device arrays with leading dimension ``n_examples``.
    """
    batch_size = int(min(batch_size, n_examples))
    n_batches = math.ceil(n_examples / batch_size)
    pad = n_batches * batch_size - n_examples

    def epoch(params, opt_state, data, rng):
        perm_key, step_key = jax.random.split(rng)
        perm = jax.random.permutation(perm_key, n_examples)
        index = jnp.concatenate([perm, jnp.zeros((pad,), perm.dtype)]).reshape(n_batches, batch_size)
        weight = jnp.concatenate([jnp.ones((n_examples,), jnp.float32), jnp.zeros((pad,), jnp.float32)])
        weight = weight.reshape(n_batches, batch_size)

        def step(carry, inputs):
            params, opt_state = carry
            batch_index, batch_weight, step = inputs
            batch = {name: values[batch_index] for name, values in data.items()}
            batch["weight"] = batch_weight
            batch["rng"] = jax.random.fold_in(step_key, step)
            loss, grads = jax.value_and_grad(loss_fn)(params, batch)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(
            step, (params, opt_state), (index, weight, jnp.arange(n_batches))
        )
        return params, opt_state, losses.mean()

    return jax.jit(epoch)


def weighted_mean(values: jnp.ndarray, weight: jnp.ndarray) -> jnp.ndarray:
    return jnp.sum(values * weight) / jnp.maximum(jnp.sum(weight), 1.0)


@dataclasses.dataclass
class FitResult:
    """The best state and the training record of one configuration.

    params: the best parameters (host NumPy for ``fit_early_stopping``; the whole trainer state for
      the sparse-table models of ``_neural_common``); the last ones when nothing was validated.
    best_score: the validation score of ``params`` (NaN without validation).
    curve: [(epoch, train_loss, val_score)] of the evaluated epochs.
    """

    params: Any
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    curve: list = dataclasses.field(default_factory=list)


def early_stopping(
    state: Any,
    run_epoch: Callable[[Any, int], tuple[Any, Any]],
    evaluate: Optional[Callable[[Any], float]],
    *,
    max_epochs: int,
    patience: int = 3,
    eval_every: int = 1,
    higher_is_better: bool = False,
    min_delta: float = 0.0,
    verbose: bool = False,
    label: str = "fit",
) -> FitResult:
    """The one early-stopping rule of the baselines.

    run_epoch(state, epoch) -> (state, train loss) runs epoch 1, 2, ...; ``evaluate(state)`` scores
    every ``eval_every`` epochs and after the last one. The state with the best score is kept; an
    evaluation that does not beat the best by more than ``min_delta`` counts as bad, and ``patience``
    bad evaluations in a row stop the run. Without ``evaluate`` it runs ``max_epochs`` epochs and keeps
    the last state (best_score NaN).
    """
    start = time.perf_counter()
    sign = 1.0 if higher_is_better else -1.0
    best_state, best_score, best_epoch, bad = None, -math.inf, 0, 0
    curve = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        state, loss = run_epoch(state, epoch)
        if evaluate is None or (epoch % eval_every and epoch != max_epochs):
            if verbose and evaluate is None:
                print(f"[{label}] epoch {epoch:3d}  train loss {float(loss):.4f}", flush=True)
            continue
        score = float(evaluate(state))
        curve.append((epoch, float(loss), score))
        if verbose:
            print(f"[{label}] epoch {epoch:3d}  train loss {float(loss):.4f}  val {score:.4f}  "
                  f"({time.perf_counter() - start:.1f}s)", flush=True)
        if sign * score > best_score + min_delta:
            best_state, best_score, best_epoch, bad = state, sign * score, epoch, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_state is None:  # no (finite) validation score: keep the last state
        best_state, best_epoch, best_score = state, epoch, math.nan
    return FitResult(params=best_state, best_epoch=best_epoch, best_score=sign * best_score, epochs_run=epoch,
                     seconds=time.perf_counter() - start, curve=curve)


def fit_early_stopping(
    params: Params,
    loss_fn: LossFn,
    optimizer: optax.GradientTransformation,
    data: dict[str, np.ndarray],
    val_score_fn: Optional[Callable[[Any], float]],
    *,
    batch_size: int,
    max_epochs: int,
    patience: int = 3,
    eval_every: int = 1,
    seed: int = 0,
    higher_is_better: bool = False,
    data_fn: Optional[Callable[[int], dict[str, np.ndarray]]] = None,
    verbose: bool = True,
    label: str = "fit",
) -> FitResult:
    """Mini-batch training (``make_epoch_fn``) with ``early_stopping`` on ``val_score_fn(numpy_params)``.

    data_fn(epoch): optional per-epoch arrays merged into ``data`` (e.g. BPR's freshly sampled
    negatives). Returns the best parameters as NumPy arrays (the last ones without ``val_score_fn``).
    """
    n_examples = int(next(iter(data.values())).shape[0])
    epoch_fn = make_epoch_fn(loss_fn, optimizer, n_examples, batch_size)
    device_data = {k: jnp.asarray(v) for k, v in data.items()}
    rng = jax.random.PRNGKey(seed)
    to_host = functools.partial(jax.tree_util.tree_map, np.asarray)

    def run_epoch(state, epoch):
        epoch_data = device_data
        if data_fn is not None:
            epoch_data = {**device_data, **{k: jnp.asarray(v) for k, v in data_fn(epoch).items()}}
        params, opt_state, loss = epoch_fn(*state, epoch_data, jax.random.fold_in(rng, epoch))
        return (params, opt_state), loss

    evaluate = None if val_score_fn is None else (lambda state: val_score_fn(to_host(state[0])))
    result = early_stopping((params, optimizer.init(params)), run_epoch, evaluate, max_epochs=max_epochs,
                            patience=patience, eval_every=eval_every, higher_is_better=higher_is_better,
                            verbose=verbose, label=label)
    result.params = to_host(result.params[0])
    return result


def grid_search(
    grid: Sequence[dict],
    fit_fn: Callable[[dict], FitResult],
    *,
    higher_is_better: bool = False,
    verbose: bool = True,
    label: str = "grid",
    extend: Optional[dict] = None,
    max_extensions: int = 3,
) -> tuple[dict, FitResult, list[dict]]:
    """Fits each configuration; returns (best config, its FitResult, table rows).

    extend: {axis: factor}. When the best value of a numeric ``axis`` sits at the edge of the
      values tried (and the grid tried more than one), the search steps past that edge
      (value * factor above, value / factor below), other axes at their best values, while
      that improves validation, at most ``max_extensions`` steps per axis. A grid that ends at
      its edge would otherwise report an under- or over-regularised baseline.
    """
    best_config, best_result, rows = None, None, []
    tried: list[dict] = []

    def better(result) -> bool:
        if best_result is None:
            return True
        if higher_is_better:
            return result.best_score > best_result.best_score
        return result.best_score < best_result.best_score

    def run(config) -> bool:
        nonlocal best_config, best_result
        result = fit_fn(dict(config))
        tried.append(dict(config))
        rows.append({**config, "val": result.best_score, "best_epoch": result.best_epoch, "seconds": result.seconds})
        if verbose:
            print(f"[{label}] {config} -> val {result.best_score:.4f} (epoch {result.best_epoch}, {result.seconds:.1f}s)", flush=True)
        improved = better(result)
        if improved:
            best_config, best_result = dict(config), result
        return improved

    for config in grid:
        run(config)
    for axis, factor in (extend or {}).items():
        values = sorted({c[axis] for c in tried if isinstance(c.get(axis), (int, float)) and c.get(axis) is not None})
        if len(values) < 2 or not isinstance(best_config.get(axis), (int, float)):
            continue
        for edge, step in ((values[-1], factor), (values[0], 1.0 / factor)):
            if best_config[axis] != edge:
                continue
            value = edge
            for _ in range(max_extensions):
                value = value * step
                if verbose:
                    print(f"[{label}] best {axis}={best_config[axis]} is at the grid edge; trying {axis}={value:g}", flush=True)
                if not run({**best_config, axis: value}):
                    break
    return best_config, best_result, rows


@dataclasses.dataclass
class Selection:
    """The outcome of ``select_and_refit``.

    config: the chosen grid entry (overrides); result: its fit with validation (None when no
    selection ran); final: the fit to keep (the refit, or ``result``); epochs: the refit's epoch
    count (the best epoch, >= 1; None when no selection ran); rows: one per configuration tried;
    refitted: whether ``final`` is the refit (on train + validation).
    """

    config: dict
    result: Optional[FitResult]
    final: FitResult
    epochs: Optional[int]
    rows: list
    refitted: bool


def select_and_refit(
    grid: Sequence[dict],
    fit_fn: Callable[[dict], FitResult],
    refit_fn: Optional[Callable[[dict, Optional[int]], FitResult]] = None,
    *,
    refit: bool = False,
    select: bool = True,
    higher_is_better: bool = False,
    verbose: bool = True,
    label: str = "grid",
    extend: Optional[dict] = None,
) -> Selection:
    """The baselines' model selection: ``grid_search`` with ``fit_fn`` (validation early stopping),
    then, when ``refit`` (or ``select`` is False: nothing to choose on), ``refit_fn(config, epochs)``
    retrains the chosen config on train + validation for its best epoch count (None: no selection)."""
    if select:
        config, result, rows = grid_search(grid, fit_fn, higher_is_better=higher_is_better, verbose=verbose,
                                           label=label, extend=extend)
        epochs = max(result.best_epoch, 1)
    else:
        config, result, rows, epochs = dict(grid[0]), None, [], None
    if refit or result is None:
        return Selection(config, result, refit_fn(config, epochs), epochs, rows, refitted=True)
    return Selection(config, result, result, epochs, rows, refitted=False)


def fit_report(name: str, chosen: dict, config: dict, metric: str, result: FitResult, rows: list, seed: int,
               start: float, verbose: bool, **extra) -> dict:
    """Logs the choice and returns the ``report`` of a model chosen by ``grid_search``:
    {"model", "config", metric ("val_rmse" / "val_auc"), "best_epoch", "grid", "seed", **extra, "seconds"}."""
    report = {"model": name, "config": config, metric: result.best_score, "best_epoch": result.best_epoch,
              "grid": rows, "seed": seed, **extra, "seconds": time.perf_counter() - start}
    if verbose:
        label = {"val_rmse": "val RMSE", "val_auc": "val AUC"}.get(metric, metric)
        print(f"[{name}] chose {chosen} {label} {result.best_score:.4f} (epoch {result.best_epoch}, "
              f"{report['seconds']:.1f}s)", flush=True)
    return report


def expand_grid(**axes: Sequence) -> list[dict]:
    """Cartesian product of named axes, as a list of dicts (first axis slowest)."""
    configs = [{}]
    for name, values in axes.items():
        configs = [{**c, name: v} for c in configs for v in values]
    return configs


def seen_mask(ids: np.ndarray, size: int) -> np.ndarray:
    """Boolean [size]: True where the id occurs in ``ids``."""
    mask = np.zeros(size, dtype=bool)
    mask[np.asarray(ids, dtype=np.int64)] = True
    return mask


# -- validation scores (model selection; a baseline never imports evaluate/) ----------------------
def clipped_rmse(pred, target, rating_scale) -> float:
    """RMSE of predictions [N] clipped to the rating range against ratings [N] (NaN when N = 0)."""
    target = np.asarray(target, np.float64)
    if target.size == 0:
        return math.nan
    low, high = rating_scale
    return float(np.sqrt(np.mean((np.clip(np.asarray(pred, np.float64), low, high) - target) ** 2)))


def ranking_auc(task: RankingTask, score_matrix_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
                chunk_elements: int = 1 << 23) -> float:
    """Mean full-ranking AUC (ties half) over the task's users with a positive, scored in chunks of
    users by ``score_matrix_fn(users [U], task.universe [I]) -> [U, I]``; the AUC that
    ``evaluate.ranking.evaluate_task`` reports for the same task."""
    index = np.flatnonzero([p.size > 0 for p in task.positives])
    chunk = max(1, chunk_elements // max(task.universe.size, 1))
    aucs = []
    for begin in range(0, index.size, chunk):
        rows = index[begin:begin + chunk]
        matrix = np.asarray(score_matrix_fn(task.users[rows], task.universe), np.float64)
        for scores, i in zip(matrix, rows):
            candidates = task.candidate_mask(i)
            positive = np.zeros(task.universe.size, bool)
            positive[task.positives[i]] = True
            aucs.append(_auc(scores[candidates], positive[candidates]))
    aucs = np.asarray(aucs, np.float64)
    aucs = aucs[~np.isnan(aucs)]
    return float(aucs.mean()) if aucs.size else math.nan


def _auc(scores: np.ndarray, positives: np.ndarray) -> float:
    """Mann-Whitney AUC of one candidate list (mid-ranks for ties); NaN without positives or negatives."""
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    rank_sum = float(scipy.stats.rankdata(scores)[positives].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)

