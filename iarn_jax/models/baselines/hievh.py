"""HieVH (Sun, Yang, Zhang & Bozzon, AAAI 2017), rebuilt from its description.

The original exploits a feature hierarchy in the *vertical* dimension
(child -> parent influence of an item's categories) and the *horizontal*
dimension (relationships between sibling / cousin features). No public code
exists and the full text was not available to this project, so this module is
a reconstruction; every modelling choice below is an assumption.

Model (a biased latent factor model):

  r_hat(u, i) = mu + b_u + b_i + cb_i + p_u . q_i
  q_i   = v_i + h_i                                   (item factor)
  h_i   = mean over the item's category paths pi of
          sum_l beta_l c_{pi_l} / sum_l beta_l         (vertical: the path's categories,
                                                        root l=0 ... leaf, level weights beta)
  cb_i  = the same beta-weighted mean of category biases e_{pi_l}
  beta_l = softplus(a_l), a learned per-depth influence (init equal)

Objective (per training rating, averaged over a minibatch):

  (r - r_hat)^2
  + l2 * (|p_u|^2 + |v_i|^2 + b_u^2 + b_i^2 + mean_{f in paths(i)} (|c_f|^2 + e_f^2))
  + alpha * |v_i - mean_{s=1..S} v_{n_s}|^2              (horizontal, item level)
  + alpha * mean_{f in paths(i)} |c_f - sib(f)|^2         (horizontal, category level)

where n_1..n_S are fit items sampled uniformly (each step) among the items
sharing the leaf category of one of i's paths (drawn at random), and sib(f)
is the mean factor of f's siblings (categories with the same parent; the
roots are siblings of each other). alpha = 0.01 (the IARN paper's setting).

Assumptions (all implementation choices):
* The reconstruction above: additive category factors with learned, per-depth
  (not per-category) vertical weights; horizontal terms as L2 pulls toward
  leaf-sharing items and sibling categories, one alpha for both; HieVH's
  distinction between complementary and alternative sibling relations is not
  modelled (the data carry no such labels).
* A category's parent is the category before it on the item paths (the most
  frequent one when paths disagree, ties to the smallest id). Flat features
  (MovieLens genres) are one-level paths: every genre is a root, the vertical
  weights reduce to an average over the item's genres, and the horizontal
  category term pulls each genre toward the mean of the others.
* mu is fixed to the mean fit rating. Users, item factors and biases are
  sparse embedding tables updated with row-wise Adagrad (`table_lr`),
  category factors/biases and level weights with Adam (`dense_lr`).
  Init: p, v, c ~ N(0, 0.1^2) (surprise's SVD init), biases 0.
* Items without features get h_i = 0, cb_i = 0 and no horizontal terms.
  Items absent from the fit data get v_i = 0 and b_i = 0 (only their
  category part h_i, cb_i remains).
* Ranking score = the predicted rating (rates=True; predict() is unclipped);
  with unseen_last=True (default, the project's BPR convention) items absent
  from the fit data rank below every fit item in score_items().
* Model selection: each config of `grid` is trained on split.train with early
  stopping on validation RMSE (split.val); the best is refit on train + val
  for its best epoch count (refit=True).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines import common

DEFAULT_GRID = ({"l2": 0.05}, {"l2": 0.1}, {"l2": 0.2})


def category_parents(path_ids: np.ndarray, path_mask: np.ndarray, n_features: int) -> np.ndarray:
    """Parent of each category [n_features]: the most frequent predecessor on the paths; n_features = root."""
    child = path_ids[:, :, 1:][path_mask[:, :, 1:]]
    parent = path_ids[:, :, :-1][path_mask[:, :, 1:]]
    parents = np.full(n_features, n_features, np.int64)
    if len(child):
        pairs, counts = np.unique(np.stack([child, parent], 1), axis=0, return_counts=True)
        # sort by (child, -count, parent) and keep the first row per child
        order = np.lexsort((pairs[:, 1], -counts, pairs[:, 0]))
        pairs = pairs[order]
        first = np.concatenate([[True], pairs[1:, 0] != pairs[:-1, 0]])
        parents[pairs[first, 0]] = pairs[first, 1]
        parents[parents == np.arange(n_features)] = n_features  # a self-loop means no parent
    return parents


def leaf_neighbours(path_ids, path_mask, fit_items: np.ndarray):
    """Per item, the leaf category of each path ([n_items, P], -1 where none), and a CSR of fit items per leaf."""
    n_items, n_paths, _ = path_ids.shape
    depth = path_mask.sum(-1)  # [n_items, P]
    leaf = np.where(depth > 0, np.take_along_axis(path_ids, np.maximum(depth - 1, 0)[..., None], -1)[..., 0], -1)
    is_fit = np.zeros(n_items, bool)
    is_fit[fit_items] = True
    items = np.repeat(np.arange(n_items), n_paths)
    leaves = leaf.reshape(-1)
    keep = (leaves >= 0) & is_fit[items]
    items, leaves = items[keep], leaves[keep]
    n_leaves = int(leaf.max()) + 1 if leaf.size and leaf.max() >= 0 else 1
    order = np.lexsort((items, leaves))
    members = items[order]
    counts = np.bincount(leaves, minlength=n_leaves)
    indptr = np.concatenate([[0], np.cumsum(counts)])
    return leaf, indptr, members


@dataclasses.dataclass
class HieVH:
    """Feature-hierarchy latent factor model (vertical + horizontal). See the module docstring."""

    dim: Optional[int] = None
    alpha: float = 0.01
    l2: float = 0.05
    n_neighbours: int = 4
    batch_size: int = 512
    table_lr: float = 0.05
    dense_lr: float = 3e-3
    init_std: float = 0.1
    max_epochs: int = 40
    patience: int = 3
    max_paths: int = 4
    max_depth: int = 8
    grid: Optional[Sequence[Mapping[str, Any]]] = DEFAULT_GRID
    refit: bool = True
    unseen_last: bool = True
    name: str = "HieVH"
    rates: bool = True

    params_: Optional[dict] = dataclasses.field(default=None, repr=False)
    selection_: Optional[dict] = dataclasses.field(default=None, repr=False)

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "HieVH":
        start = time.perf_counter()
        dim = self.dim or nc.default_dim(split)
        features = split.dataset.item_features
        n_features = features.n_features if features is not None else 0
        path_ids, path_mask = nc.path_matrix(features, split.n_items, self.max_paths, self.max_depth)
        parents = category_parents(path_ids, path_mask, max(n_features, 1))
        configs = nc.grid_configs(self.grid)
        nc.log(verbose, f"[{self.name}] {split.name}: dim {dim}, {len(split.train)} train pairs, {n_features} features "
                        f"(paths {path_ids.shape[1]} x depth {path_ids.shape[2]}), grid {configs}")
        hier = (path_ids, path_mask, parents, max(n_features, 1))

        def train_on(frame, overrides, **kwargs):
            return dataclasses.replace(self, **overrides)._train(frame, split, hier, dim, seed, verbose, **kwargs)

        selection = common.select_and_refit(
            configs, lambda c: train_on(split.train, c, val=split.val, label=f"{self.name} {c}"),
            lambda c, epochs: train_on(nc.fit_frame(split, include_val=True), c, epochs=epochs,
                                       label=f"{self.name} refit"),
            refit=self.refit, select=nc.has_validation(split) and (len(configs) > 1 or self.refit),
            higher_is_better=False, verbose=bool(verbose), label=f"{self.name} grid")
        frame = nc.fit_frame(split, include_val=True) if selection.refitted else split.train
        state = selection.final.params
        self.seen_ = common.seen_mask(frame["item"].to_numpy(np.int64), split.n_items)
        self.params_ = _export(state, path_ids, path_mask, seen=self.seen_)
        self._predict = jax.jit(_predict_fn)
        self.selection_ = nc.selection_record(
            self.name, selection, configs, "val_rmse", self.max_epochs, start, verbose, dim=dim,
            level_weights=np.asarray(jax.nn.softplus(state["dense"]["level_logits"])).tolist())
        return self

    def _train(self, frame, split, hier, dim, seed, verbose, *, val=None, epochs=None, label=""):
        path_ids_np, path_mask_np, parents_np, n_features = hier
        n_users, n_items = split.n_users, split.n_items
        users = frame["user"].to_numpy(np.int32)
        items = frame["item"].to_numpy(np.int32)
        ratings = frame["rating"].to_numpy(np.float32)
        mu = float(ratings.mean()) if len(ratings) else 0.0
        key = jax.random.PRNGKey(seed)
        k_p, k_v, k_c, k_epochs = jax.random.split(key, 4)
        std = self.init_std
        tables = {"user": std * jax.random.normal(k_p, (n_users, dim)), "user_bias": jnp.zeros((n_users, 1)),
                  "item": std * jax.random.normal(k_v, (n_items, dim)), "item_bias": jnp.zeros((n_items, 1))}
        depth = path_ids_np.shape[2]
        dense = {"category": std * jax.random.normal(k_c, (n_features, dim)), "category_bias": jnp.zeros((n_features,)),
                 "level_logits": jnp.full((depth,), float(np.log(np.expm1(1.0))))}  # softplus(a) = 1
        path_ids, path_mask = jnp.asarray(path_ids_np), jnp.asarray(path_mask_np, jnp.float32)
        parents = jnp.asarray(parents_np, jnp.int32)
        l2, alpha = float(self.l2), float(self.alpha)

        def loss_fn(rows, dense, batch, rng):
            ids, mask = path_ids[batch["item"]], path_mask[batch["item"]]  # [B, P, L]
            h, cb = _vertical(dense, ids, mask)
            q = rows["item"] + h
            pred = mu + rows["user_bias"][:, 0] + rows["item_bias"][:, 0] + cb + jnp.sum(rows["user"] * q, -1)
            err = (batch["rating"] - pred) ** 2
            cat, cat_bias = dense["category"][ids], dense["category_bias"][ids]  # [B, P, L, d], [B, P, L]
            n_cat = jnp.maximum(mask.sum((1, 2)), 1.0)
            cat_reg = ((jnp.sum(cat * cat, -1) + cat_bias**2) * mask).sum((1, 2)) / n_cat
            reg = (jnp.sum(rows["user"] ** 2, -1) + jnp.sum(rows["item"] ** 2, -1)
                   + rows["user_bias"][:, 0] ** 2 + rows["item_bias"][:, 0] ** 2 + cat_reg)
            # horizontal, item level: pull v_i toward the mean of sampled leaf-sharing items
            nb_mask = batch["neighbour_mask"]  # [B, S]
            nb_count = nb_mask.sum(-1)
            nb_mean = (rows["neighbours"] * nb_mask[..., None]).sum(1) / jnp.maximum(nb_count, 1.0)[:, None]
            horiz_item = jnp.where(nb_count > 0, jnp.sum((rows["item"] - nb_mean) ** 2, -1), 0.0)
            # horizontal, category level: pull each category toward the mean of its siblings
            sib = _sibling_means(dense["category"], parents)
            horiz_cat = (jnp.sum((cat - sib[ids]) ** 2, -1) * mask).sum((1, 2)) / n_cat
            per_example = err + l2 * reg + alpha * (horiz_item + horiz_cat)
            w = batch["weight"]
            return jnp.sum(w * per_example) / jnp.maximum(jnp.sum(w), 1.0)

        lookups = {"user": nc.Lookup("user", "user"), "user_bias": nc.Lookup("user_bias", "user"),
                   "item": nc.Lookup("item", "item"), "item_bias": nc.Lookup("item_bias", "item"),
                   "neighbours": nc.Lookup("item", "neighbours")}
        trainer = nc.SparseTrainer(loss_fn, lookups, table_lr=self.table_lr, dense_optimizer=optax.adam(self.dense_lr))
        state = trainer.init(tables, dense)
        leaf, nb_indptr, nb_members = leaf_neighbours(path_ids_np, path_mask_np, np.unique(items))
        n_leaf_paths = (leaf >= 0).sum(1)
        rng = np.random.default_rng(seed)
        S = max(int(self.n_neighbours), 1)

        def neighbours_of(batch_items):
            n = len(batch_items)
            k = np.floor(rng.random(n) * np.maximum(n_leaf_paths[batch_items], 1)).astype(np.int64)
            chosen = leaf[batch_items, k]  # -1 when the item has no path
            start = np.where(chosen >= 0, nb_indptr[np.maximum(chosen, 0)], 0)
            count = np.where(chosen >= 0, nb_indptr[np.maximum(chosen, 0) + 1] - start, 0)
            pick = start[:, None] + np.floor(rng.random((n, S)) * np.maximum(count, 1)[:, None]).astype(np.int64)
            nbrs = nb_members[np.minimum(pick, max(len(nb_members) - 1, 0))] if len(nb_members) else np.zeros((n, S), np.int64)
            valid = (count[:, None] > 1) & (nbrs != batch_items[:, None])
            return np.where(valid, nbrs, 0).astype(np.int32), valid.astype(np.float32)

        def run_epoch(state, epoch):
            nbrs, nb_mask = neighbours_of(items)
            batches = nc.epoch_batches({"user": users, "item": items, "rating": ratings,
                                        "neighbours": nbrs, "neighbour_mask": nb_mask}, self.batch_size, rng)
            return trainer.epoch(state, batches, jax.random.fold_in(k_epochs, epoch))

        evaluate = None
        if val is not None:
            val_u = val["user"].to_numpy(np.int32)
            val_i = val["item"].to_numpy(np.int32)
            val_r = val["rating"].to_numpy(np.float64)
            predict = jax.jit(_predict_fn)

            def evaluate(state):
                params = _export(state, path_ids_np, path_mask_np, mu)
                pred = nc.chunked(lambda u, i: predict(params, u, i))(val_u, val_i)
                return common.clipped_rmse(pred, val_r, split.rating_scale)

        res = common.early_stopping(state, run_epoch, evaluate, max_epochs=epochs or self.max_epochs,
                                    patience=self.patience, higher_is_better=False, min_delta=nc.MIN_DELTA,
                                    verbose=verbose, label=label)
        res.params = dict(res.params, mu=mu)
        return res

    # ------------------------------------------------------------------ inference
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        if self.params_ is None:
            raise RuntimeError("fit() the model first")
        return nc.chunked(lambda u, i: self._predict(self.params_, u, i))(
            np.asarray(users, np.int32), np.asarray(items, np.int32)).astype(np.float64)

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        """Predicted ratings of one user for candidate items (all items at once, then indexed)."""
        if self.params_ is None:
            raise RuntimeError("fit() the model first")
        if not hasattr(self, "_score_all"):
            self._score_all = jax.jit(_score_all_fn)
        items = np.asarray(items, np.int64)
        scores = np.asarray(self._score_all(self.params_, jnp.int32(user)))[items]
        return nc.rank_unseen_last(scores, self.seen_[items]) if self.unseen_last else scores


def _vertical(dense, ids, mask):
    """Category factor h [..., d] and category bias [...] of items with paths ids/mask [..., P, L]."""
    beta = jax.nn.softplus(dense["level_logits"]) * mask  # [..., P, L]
    norm = beta.sum(-1, keepdims=True)
    weights = beta / jnp.maximum(norm, 1e-12)
    path_valid = (mask.sum(-1) > 0).astype(jnp.float32)  # [..., P]
    n_paths = jnp.maximum(path_valid.sum(-1), 1.0)[..., None]
    weights = weights * path_valid[..., None] / n_paths[..., None]
    h = jnp.einsum("...pl,...pld->...d", weights, dense["category"][ids])
    cb = jnp.einsum("...pl,...pl->...", weights, dense["category_bias"][ids])
    return h, cb


def _sibling_means(category, parents):
    """[F, d] mean factor of each category's siblings (same parent), 0 for an only child."""
    n_features = category.shape[0]
    sums = jax.ops.segment_sum(category, parents, num_segments=n_features + 1)
    counts = jax.ops.segment_sum(jnp.ones((n_features,)), parents, num_segments=n_features + 1)
    own_sum, own_count = sums[parents], counts[parents]
    return (own_sum - category) / jnp.maximum(own_count - 1.0, 1.0)[:, None]


def _export(state, path_ids, path_mask, mu=None, seen=None):
    """Inference parameters: item factors q and biases precomputed from the state.

    seen: [n_items] bool; items outside it keep only their category part.
    """
    dense, tables = state["dense"], state["tables"]
    h, cb = _vertical(dense, jnp.asarray(path_ids), jnp.asarray(path_mask, jnp.float32))
    v, b = tables["item"], tables["item_bias"][:, 0]
    if seen is not None:
        keep = jnp.asarray(seen)
        v, b = jnp.where(keep[:, None], v, 0.0), jnp.where(keep, b, 0.0)
    return {"mu": jnp.float32(state["mu"] if mu is None else mu), "user": tables["user"],
            "user_bias": tables["user_bias"][:, 0], "item": v + h, "item_bias": b + cb}


def _predict_fn(params, users, items):
    return (params["mu"] + params["user_bias"][users] + params["item_bias"][items]
            + jnp.sum(params["user"][users] * params["item"][items], -1))


def _score_all_fn(params, user):
    return params["mu"] + params["user_bias"][user] + params["item_bias"] + params["item"] @ params["user"][user]
