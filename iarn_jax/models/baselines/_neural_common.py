"""Shared machinery of the embedding baselines (NCF, Item2Vec, MP2Vec, HieVH).

Pure NumPy / JAX helpers, no global state:

* :class:`UserItemIndex` - a CSR index of the (user, item) pairs a model was fit
  on, with fast vectorised membership tests (negative sampling, profiles).
* :func:`sample_negatives` - items from a pool that the user has not interacted with.
* :func:`sampled_auc` - the validation metric used to choose hyper-parameters of
  the ranking baselines (each validation pair against sampled negatives).
* :class:`SparseTrainer` - a jit-compiled epoch (``lax.scan`` over minibatches)
  where embedding tables are updated *sparsely* (only the rows a batch touches,
  row-wise Adagrad) and the small dense parameters (MLPs, level weights) with an
  optax optimizer. Dense Adam over 50k-row tables would cost O(table) per step;
  this keeps a step O(batch).
* :func:`selection_record` - the ``selection_`` record of a model chosen by
  ``common.select_and_refit`` (early stopping: ``common.early_stopping`` with ``MIN_DELTA``).
* Feature helpers: :func:`flat_feature_matrix`, :func:`path_matrix`.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from iarn_jax.data.types import ItemFeatures, ProtocolSplit


def log(verbose: bool, message: str) -> None:
    if verbose:
        print(message, flush=True)


# --------------------------------------------------------------------------- data


def fit_frame(split: ProtocolSplit, include_val: bool) -> pd.DataFrame:
    """The pairs a model is fit on: split.train, plus split.val when include_val."""
    frames = [split.train]
    if include_val and split.val is not None and len(split.val):
        frames.append(split.val)
    frame = pd.concat(frames, ignore_index=True)
    return frame.sort_values(["user", "time"], kind="stable").reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class UserItemIndex:
    """Distinct (user, item) pairs as CSR rows (items of a user in time order of first occurrence)."""

    n_users: int
    n_items: int
    indptr: np.ndarray  # [n_users + 1]
    items: np.ndarray  # [nnz]
    sorted_keys: np.ndarray  # [nnz] user * n_items + item, sorted

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, n_users: int, n_items: int) -> "UserItemIndex":
        ordered = frame.sort_values(["user", "time"], kind="stable") if "time" in frame else frame
        users = ordered["user"].to_numpy(np.int64)
        items = ordered["item"].to_numpy(np.int64)
        keys = users * n_items + items
        _, first = np.unique(keys, return_index=True)
        first = np.sort(first)  # keep time order within each user
        users, items = users[first], items[first]
        counts = np.bincount(users, minlength=n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(n_users, n_items, indptr, items, np.sort(users * n_items + items))

    def items_of(self, user: int) -> np.ndarray:
        return self.items[self.indptr[user] : self.indptr[user + 1]]

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        keys = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        pos = np.searchsorted(self.sorted_keys, keys)
        pos = np.minimum(pos, max(len(self.sorted_keys) - 1, 0))
        if len(self.sorted_keys) == 0:
            return np.zeros(keys.shape, bool)
        return self.sorted_keys[pos] == keys

    @property
    def row_users(self) -> np.ndarray:
        return np.repeat(np.arange(self.n_users), np.diff(self.indptr))


def sample_negatives(
    rng: np.random.Generator,
    users: np.ndarray,
    n_neg: int,
    known: UserItemIndex,
    pool: np.ndarray,
    probs: Optional[np.ndarray] = None,
    max_tries: int = 20,
) -> np.ndarray:
    """[len(users), n_neg] items drawn from pool (uniform, or by probs) that each user has not interacted with.

    Rejection sampling, vectorised; after max_tries the rare leftover collisions are kept.
    """
    users = np.asarray(users, np.int64)
    shape = (len(users), n_neg)
    draw = lambda size: pool[rng.choice(len(pool), size=size, p=probs)] if probs is not None else pool[rng.integers(0, len(pool), size=size)]
    negatives = draw(shape)
    bad = known.contains(np.broadcast_to(users[:, None], shape), negatives)
    for _ in range(max_tries):
        n_bad = int(bad.sum())
        if n_bad == 0:
            break
        negatives[bad] = draw(n_bad)
        bad = known.contains(np.broadcast_to(users[:, None], shape), negatives)
    return negatives


def sampled_auc(
    score_pairs: Callable[[np.ndarray, np.ndarray], np.ndarray],
    users: np.ndarray,
    items: np.ndarray,
    known: UserItemIndex,
    pool: np.ndarray,
    *,
    n_neg: int = 50,
    seed: int = 0,
) -> float:
    """Mean over (user, positive item) pairs of P(score(pos) > score(neg)), ties half.

    Negatives: n_neg items per pair drawn uniformly from pool, outside the user's known items.
    A cheap validation stand-in for the full-ranking AUC (used for model selection only).
    """
    users = np.asarray(users, np.int64)
    items = np.asarray(items, np.int64)
    if len(users) == 0:
        return float("nan")
    rng = np.random.default_rng(seed)
    negatives = sample_negatives(rng, users, n_neg, known, pool)
    pos = np.asarray(score_pairs(users, items))
    neg = np.asarray(score_pairs(np.repeat(users, n_neg), negatives.reshape(-1))).reshape(len(users), n_neg)
    wins = (pos[:, None] > neg).mean(axis=1) + 0.5 * (pos[:, None] == neg).mean(axis=1)
    return float(wins.mean())


def chunked(fn: Callable[..., jax.Array], chunk: int = 16384) -> Callable[..., np.ndarray]:
    """Applies a jit-compiled per-pair function over arrays in fixed-size padded chunks (one compilation)."""

    def apply(*arrays):
        n = len(arrays[0])
        out = []
        for start in range(0, n, chunk):
            parts = [a[start : start + chunk] for a in arrays]
            m = len(parts[0])
            if m < chunk:
                parts = [np.concatenate([p, np.zeros((chunk - m,) + p.shape[1:], p.dtype)]) for p in parts]
            out.append(np.asarray(fn(*parts))[:m])
        return np.concatenate(out) if out else np.zeros((0,), np.float32)

    return apply


def unigram_probs(counts: np.ndarray, power: float = 0.75) -> np.ndarray:
    """Negative-sampling distribution counts^power, normalised (word2vec's unigram^0.75 table)."""
    weights = np.asarray(counts, np.float64) ** power
    total = weights.sum()
    if total <= 0:
        return np.full(len(counts), 1.0 / max(len(counts), 1))
    return weights / total


def epoch_batches(arrays: Mapping[str, np.ndarray], batch_size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Shuffles examples and reshapes every array to [steps, batch_size, ...].

    The last batch is padded with copies of example 0 and gets weight 0 (key "weight").
    """
    n = len(next(iter(arrays.values())))
    order = rng.permutation(n)
    steps = max(1, -(-n // batch_size))
    pad = steps * batch_size - n
    order = np.concatenate([order, np.zeros(pad, np.int64)])
    weight = np.concatenate([np.ones(n, np.float32), np.zeros(pad, np.float32)])
    out = {k: np.asarray(v)[order].reshape((steps, batch_size) + np.asarray(v).shape[1:]) for k, v in arrays.items()}
    out["weight"] = weight.reshape(steps, batch_size)
    return out


# ------------------------------------------------------------------ features


def flat_feature_matrix(features: Optional[ItemFeatures], n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat view of item features: ids [n_items, F] (0 on padding) and mask [n_items, F]."""
    if features is None or features.n_features == 0:
        return np.zeros((n_items, 1), np.int32), np.zeros((n_items, 1), bool)
    per_item = [features.flat_features(i) if i < len(features.paths) else () for i in range(n_items)]
    width = max(1, max((len(f) for f in per_item), default=1))
    ids = np.zeros((n_items, width), np.int32)
    mask = np.zeros((n_items, width), bool)
    for i, feats in enumerate(per_item):
        ids[i, : len(feats)] = feats
        mask[i, : len(feats)] = True
    return ids, mask


def path_matrix(features: Optional[ItemFeatures], n_items: int, max_paths: int = 4, max_depth: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """Hierarchical view: ids [n_items, P, L] (root first, 0 on padding) and mask [n_items, P, L].

    Paths beyond max_paths and levels beyond max_depth (the deepest, most specific
    ones are kept: a path is cut from the root side) are dropped.
    """
    if features is None or features.n_features == 0:
        return np.zeros((n_items, 1, 1), np.int32), np.zeros((n_items, 1, 1), bool)
    paths = [tuple(features.paths[i])[:max_paths] if i < len(features.paths) else () for i in range(n_items)]
    n_paths = max(1, max((len(p) for p in paths), default=1))
    depth = max(1, min(max_depth, max((len(q) for p in paths for q in p), default=1)))
    ids = np.zeros((n_items, n_paths, depth), np.int32)
    mask = np.zeros((n_items, n_paths, depth), bool)
    for i, item_paths in enumerate(paths):
        for p, path in enumerate(item_paths):
            path = tuple(path)[-depth:]
            ids[i, p, : len(path)] = path
            mask[i, p, : len(path)] = True
    return ids, mask


# ------------------------------------------------------------------ training


@dataclasses.dataclass(frozen=True)
class Lookup:
    """One embedding lookup of a batch: rows[name] = tables[table][batch[key]]."""

    table: str
    key: str


class SparseTrainer:
    """Jit-compiled epochs with sparse row-wise Adagrad on embedding tables and optax on dense params.

    loss_fn(rows, dense, batch, rng) -> scalar mean loss over the batch, where
    rows[name] holds the gathered rows of each Lookup (shape batch[key].shape + [d]).
    Row gradients are multiplied by the batch size (per-example gradients, as in
    classic SGD matrix factorisation), then each touched row r moves by
    -table_lr * g / sqrt(acc_r), acc_r += mean(g^2) (row-wise Adagrad).
    """

    def __init__(
        self,
        loss_fn: Callable[..., jax.Array],
        lookups: Mapping[str, Lookup],
        *,
        table_lr: float,
        dense_optimizer: Optional[optax.GradientTransformation] = None,
        initial_accumulator: float = 0.1,
    ):
        self.loss_fn = loss_fn
        self.lookups = dict(lookups)
        self.table_lr = float(table_lr)
        self.dense_optimizer = dense_optimizer or optax.adam(1e-3)
        self.initial_accumulator = float(initial_accumulator)
        self._epoch = jax.jit(self._run_epoch)

    def init(self, tables: Mapping[str, jax.Array], dense: Any) -> dict:
        tables = {k: jnp.asarray(v, jnp.float32) for k, v in tables.items()}
        accum = {k: jnp.full((v.shape[0],), self.initial_accumulator, jnp.float32) for k, v in tables.items()}
        # strong dtypes: a weak-typed leaf would change type after one step and force a recompilation
        dense = jax.tree_util.tree_map(lambda x: jnp.array(x, dtype=jnp.asarray(x).dtype), dense)
        return {"tables": tables, "accum": accum, "dense": dense, "opt": self.dense_optimizer.init(dense)}

    def _step(self, state, batch, rng):
        tables, accum = state["tables"], state["accum"]
        rows = {name: tables[lk.table][batch[lk.key]] for name, lk in self.lookups.items()}
        loss, (row_grads, dense_grads) = jax.value_and_grad(self.loss_fn, argnums=(0, 1))(rows, state["dense"], batch, rng)
        batch_size = batch["weight"].shape[0]
        new_tables, new_accum = dict(tables), dict(accum)
        for table in tables:
            names = [n for n, lk in self.lookups.items() if lk.table == table]
            if not names:
                continue
            dim = tables[table].shape[1]
            ids = jnp.concatenate([batch[self.lookups[n].key].reshape(-1) for n in names])
            grads = jnp.concatenate([row_grads[n].reshape(-1, dim) for n in names]) * batch_size
            acc = new_accum[table].at[ids].add(jnp.mean(grads * grads, axis=-1))
            scale = self.table_lr / jnp.sqrt(acc[ids])
            new_tables[table] = new_tables[table].at[ids].add(-scale[:, None] * grads)
            new_accum[table] = acc
        updates, opt = self.dense_optimizer.update(dense_grads, state["opt"], state["dense"])
        dense = optax.apply_updates(state["dense"], updates)
        return {"tables": new_tables, "accum": new_accum, "dense": dense, "opt": opt}, loss

    def _run_epoch(self, state, batches, rng):
        steps = batches["weight"].shape[0]
        keys = jax.random.split(rng, steps)

        def body(carry, inputs):
            batch, key = inputs
            carry, loss = self._step(carry, batch, key)
            return carry, loss

        state, losses = jax.lax.scan(body, state, (batches, keys))
        return state, jnp.mean(losses)

    def epoch(self, state: dict, batches: Mapping[str, np.ndarray], rng: jax.Array) -> tuple[dict, float]:
        state, loss = self._epoch(state, {k: jnp.asarray(v) for k, v in batches.items()}, rng)
        return state, float(loss)


# validation scores of these models improve by more than this to count (NCF, Item2Vec, HieVH)
MIN_DELTA = 1e-4


def selection_record(name: str, selection, configs: Sequence[dict], metric: str, max_epochs: int, start: float,
                     verbose: bool, **extra) -> dict:
    """Logs the choice and returns the ``selection_`` dict of a model fitted by ``common.select_and_refit``:
    {"config", metric, "epochs", **extra, "grid": [{"config", metric, "epochs"} per config tried],
    "seconds"}."""
    epochs = selection.epochs or max_epochs
    record = {"config": selection.config,
              metric: selection.result.best_score if selection.result is not None else float("nan"),
              "epochs": epochs, **extra,
              "grid": [{"config": c, metric: r["val"], "epochs": r["best_epoch"]} for c, r in zip(configs, selection.rows)],
              "seconds": time.perf_counter() - start}
    log(verbose, f"[{name}] chose {selection.config} ({epochs} epochs) in {record['seconds']:.1f}s")
    return record


def default_dim(split: ProtocolSplit) -> int:
    """The paper's latent size: 25 on MovieLens-like data, 50 on Amazon (Clothing)."""
    name = (split.name or "").lower()
    return 50 if any(key in name for key in ("clothing", "amazon", "electronic", "home", "sport")) else 25


def has_validation(split: ProtocolSplit) -> bool:
    return split.val is not None and len(split.val) > 0


def grid_configs(grid: Optional[Sequence[Mapping[str, Any]]]) -> list[dict]:
    return [dict(g) for g in grid] if grid else [{}]


def rank_unseen_last(scores: np.ndarray, seen: np.ndarray) -> np.ndarray:
    """Scores with every unseen item moved below all seen ones (the row's lowest seen score minus 1).

    The convention the project's BPR uses (`unseen_last=True`): an item absent
    from the fit data has no learned factors and ranks last.
    """
    scores = np.asarray(scores, np.float64).copy()
    seen = np.asarray(seen, bool)
    if seen.all() or not seen.any():
        return scores
    scores[~seen] = scores[seen].min() - 1.0
    return scores
