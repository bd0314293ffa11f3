"""Training utilities shared by the latent-factor baselines (MF, BPR, TimeSVD++).

* ``pair_arrays``: a ratings DataFrame -> dict of NumPy arrays.
* ``make_epoch_fn``: one jit-compiled epoch = a shuffled pass over the examples
  in mini-batches, written as a ``lax.scan`` over batches. The last batch is
  padded with weight-0 examples so every epoch has the same static shape.
* ``fit_early_stopping``: runs epochs, scores a validation metric every
  ``eval_every`` epochs, keeps the best parameters, stops after ``patience``
  evaluations without improvement.
* ``grid_search``: fits every configuration of a small grid and keeps the best
  on the validation metric (never on test).

Loss functions take ``(params, batch)`` where ``batch`` holds the per-example
arrays gathered for the mini-batch plus ``"weight"`` (1 real, 0 padding) and
``"rng"`` (a per-step key); they return the weighted mean loss.
"""
from __future__ import annotations

import dataclasses
import math
import time
from typing import Any, Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

Params = Any
LossFn = Callable[[Params, dict], jnp.ndarray]


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
    """Best parameters (NumPy) and the training record of one configuration."""

    params: Any
    best_epoch: int
    best_score: float
    epochs_run: int
    seconds: float
    curve: list = dataclasses.field(default_factory=list)  # [(epoch, train_loss, val_score)]


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
    """Mini-batch training with early stopping on ``val_score_fn(numpy_params)``.

    data_fn(epoch): optional per-epoch arrays merged into ``data`` (e.g. BPR's
    freshly sampled negatives). Without ``val_score_fn`` it trains
    ``max_epochs`` epochs and returns the last parameters.
    """
    start = time.perf_counter()
    n_examples = int(next(iter(data.values())).shape[0])
    epoch_fn = make_epoch_fn(loss_fn, optimizer, n_examples, batch_size)
    device_data = {k: jnp.asarray(v) for k, v in data.items()}
    opt_state = optimizer.init(params)
    rng = jax.random.PRNGKey(seed)
    sign = 1.0 if higher_is_better else -1.0
    best_params, best_score, best_epoch, bad = None, -math.inf, 0, 0
    curve = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        epoch_data = device_data
        if data_fn is not None:
            epoch_data = {**device_data, **{k: jnp.asarray(v) for k, v in data_fn(epoch).items()}}
        params, opt_state, loss = epoch_fn(params, opt_state, epoch_data, jax.random.fold_in(rng, epoch))
        if val_score_fn is None or (epoch % eval_every and epoch != max_epochs):
            continue
        host_params = jax.tree_util.tree_map(np.asarray, params)
        score = float(val_score_fn(host_params))
        curve.append((epoch, float(loss), score))
        if verbose:
            print(f"[{label}] epoch {epoch:3d}  train loss {float(loss):.4f}  val {score:.4f}", flush=True)
        if sign * score > best_score:
            best_params, best_score, best_epoch, bad = host_params, sign * score, epoch, 0
        else:
            bad += 1
            if bad >= patience:
                break
    if best_params is None:  # no validation: keep the last parameters
        best_params = jax.tree_util.tree_map(np.asarray, params)
        best_epoch, best_score = epoch, math.nan
    return FitResult(
        params=best_params,
        best_epoch=best_epoch,
        best_score=sign * best_score if not math.isnan(best_score) else math.nan,
        epochs_run=epoch,
        seconds=time.perf_counter() - start,
        curve=curve,
    )


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
