"""Regularised bias-only model: Surprise's BaselineOnly (ALS), and the same with category biases and/or a
shrinkage chosen on validation (on Clothing the tuned variants are the strongest simple peers).

r_hat(u, i) = mu + b_u + b_i, fitted by alternating least squares:
  b_i <- sum_{u in R(i)} (r_ui - mu - b_u) / (reg_i + |R(i)|)
  b_u <- sum_{i in R(u)} (r_ui - mu - b_i) / (reg_u + |R(u)|)
with Surprise's defaults reg_i = 10, reg_u = 15, 10 sweeps. It has no tuned
hyper-parameters, so it is fitted on all kept training pairs (train + val).

``features=True`` (not Surprise; the ``bias_features`` row, the peer of IARN's ``feature_bias``):
  r_hat(u, i) = mu + b_u + b_i + mean_{f in F(i)} c_f
over the item's distinct features F(i) (categories), with an L2 of ``reg_feature`` on every c_f, so
an item rated rarely is shrunk towards its categories' mean residual instead of towards 0. Each
sweep also solves the c block exactly (its [F, F] ridge normal equations, given b_u, b_i).

``tuned=True`` (the ``bias_tuned`` / ``bias_features`` rows): (reg_user, reg_item) chosen on the
validation pairs over ``REG_GRID`` (fits on the training pairs), then refitted on train + val.
Surprise's defaults shrink the users too hard for short histories (Clothing: validation RMSE
1.0243 at (15, 10), 1.0136 at (5, 10); BUILD_NOTES).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.evaluate import metrics


# (reg_user, reg_item) candidates of ``tuned=True``
REG_GRID = tuple((u, i) for u in (2.0, 3.0, 5.0, 8.0, 15.0) for i in (5.0, 10.0, 15.0, 25.0))


class BiasBaseline:
    name = "bias"
    rates = True

    def __init__(self, reg_user: float = 15.0, reg_item: float = 10.0, sweeps: int = 10, *,
                 features: bool = False, reg_feature: float = 10.0, tuned: bool = False):
        self.reg_user, self.reg_item, self.sweeps = reg_user, reg_item, sweeps
        self.features, self.reg_feature, self.tuned = features, reg_feature, tuned
        if features:
            self.name = "bias_features"
        elif tuned:
            self.name = "bias_tuned"

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = False) -> "BiasBaseline":
        """Fits on train + val (``tuned``: the regularisation chosen on val first, see :meth:`select`)."""
        del seed  # deterministic
        item_features = self._item_features(split)
        if self.tuned:
            self.select(split, item_features=item_features, verbose=verbose)
        pairs = pd.concat([split.train, split.val], ignore_index=True)
        return self.fit_arrays(pairs["user"].to_numpy(), pairs["item"].to_numpy(),
                               pairs["rating"].to_numpy(np.float64), split.n_users, split.n_items,
                               item_features=item_features)

    def select(self, split: ProtocolSplit, *, item_features: np.ndarray | None = None,
               verbose: bool = False) -> "BiasBaseline":
        """Sets (reg_user, reg_item) to the ``REG_GRID`` pair of lowest validation RMSE (clipped to
        the rating range) and leaves the model fitted on ``split.train`` with it (val unseen);
        ``self.val_rmse`` records that score. ``item_features``: the dataset's flat features when
        the caller has them (``features=True``; default: read from the dataset)."""
        if not len(split.val):
            raise ValueError("BiasBaseline(tuned=True) chooses its regularisation on the validation pairs: "
                             "the split has none")
        if self.features and item_features is None:
            item_features = self._item_features(split)
        train, val = split.train, split.val
        arrays = (train["user"].to_numpy(), train["item"].to_numpy(), train["rating"].to_numpy(np.float64),
                  split.n_users, split.n_items)
        features = _FeatureMeans(item_features) if self.features else None
        ridge_inverse = self._ridge_inverse(features, arrays[1], split.n_items)  # the same at every grid point
        val_users, val_items, truth = val["user"].to_numpy(), val["item"].to_numpy(), val["rating"].to_numpy(np.float64)
        best = None
        for reg_user, reg_item in REG_GRID:
            self.reg_user, self.reg_item = reg_user, reg_item
            self._fit(*arrays, features, ridge_inverse)
            rmse = metrics.rmse(self.predict(val_users, val_items), truth, split.rating_scale)
            if verbose:
                print(f"  {self.name} reg_user={reg_user:g} reg_item={reg_item:g}: val RMSE {rmse:.4f}")
            if best is None or rmse < best[0]:
                best = (rmse, reg_user, reg_item)
        self.val_rmse, self.reg_user, self.reg_item = best
        return self._fit(*arrays, features, ridge_inverse)

    def _item_features(self, split: ProtocolSplit):
        """The dataset's flat item features [n_items, K] with ``features=True``, else None."""
        if not self.features:
            return None
        from iarn_jax.models.features import FeatureData

        data = FeatureData.from_dataset(split.dataset)
        if data is None:
            raise ValueError(f"BiasBaseline(features=True): dataset {split.dataset.name!r} has no item features")
        return data.flat

    def fit_arrays(self, users, items, ratings, n_users: int, n_items: int,
                   item_features: np.ndarray | None = None, n_features: int | None = None) -> "BiasBaseline":
        """Fits on arrays [N] of user ids, item ids and ratings; with ``features=True``,
        ``item_features`` int [n_items, K] (-1 = none) and F = ``n_features`` (default: the largest
        id + 1); ``feature_bias`` [F] is then c."""
        if self.features and item_features is None:
            raise ValueError("BiasBaseline(features=True).fit_arrays needs item_features [n_items, K]")
        features = _FeatureMeans(item_features, n_features) if self.features else None
        return self._fit(users, items, ratings, n_users, n_items, features,
                         self._ridge_inverse(features, items, n_items))

    def _ridge_inverse(self, features: "_FeatureMeans | None", items, n_items: int):
        """(W^T diag(n_i) W + reg_feature I)^-1 [F, F], the feature block's ridge system given b_u, b_i
        (None without features)."""
        if features is None:
            return None
        gram = features.gram(np.bincount(items, minlength=n_items))
        return np.linalg.inv(gram + self.reg_feature * np.eye(features.n_features))

    def _fit(self, users, items, ratings, n_users: int, n_items: int, features, ridge_inverse) -> "BiasBaseline":
        """The ALS sweeps (``features``: a :class:`_FeatureMeans` and its ``ridge_inverse``, or None)."""
        self.mu = float(np.mean(ratings))
        self.b_user = np.zeros(n_users)
        self.b_item = np.zeros(n_items)
        self.item_feature_bias = np.zeros(n_items)  # mean_{f in F(i)} c_f
        n_u = np.bincount(users, minlength=n_users)
        n_i = np.bincount(items, minlength=n_items)
        for _ in range(self.sweeps):
            resid = ratings - self.mu - self.b_user[users] - self.item_feature_bias[items]
            self.b_item = np.bincount(items, resid, n_items) / (self.reg_item + n_i)
            resid = ratings - self.mu - self.b_item[items] - self.item_feature_bias[items]
            self.b_user = np.bincount(users, resid, n_users) / (self.reg_user + n_u)
            if features is not None:
                resid = ratings - self.mu - self.b_user[users] - self.b_item[items]
                self.feature_bias = ridge_inverse @ features.transpose_times(np.bincount(items, resid, n_items))
                self.item_feature_bias = features.times(self.feature_bias)
        return self

    def item_bias(self) -> np.ndarray:
        """[n_items]: b_i (+ the mean of the item's feature biases with ``features=True``)."""
        return self.b_item + self.item_feature_bias

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (self.mu + self.b_user[users] + self.item_bias()[items]).astype(np.float32)

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.item_bias()[items].astype(np.float32)


class _FeatureMeans:
    """The linear map c [F] -> mean_{f in F(i)} c_f [n_items] of items' distinct features
    (``item_features`` int [n_items, K], -1 = none; 0 for an item without features), as W [n_items, F]
    with 1 / |F(i)| on F(i), never built densely."""

    def __init__(self, item_features: np.ndarray, n_features: int | None = None):
        item_features = np.asarray(item_features, np.int64)
        largest = int(item_features.max()) if item_features.size else -1
        self.n_features = largest + 1 if n_features is None else int(n_features)
        if largest >= self.n_features:
            raise ValueError(f"item feature id {largest} outside [0, {self.n_features})")
        distinct = np.sort(item_features, axis=1)
        distinct[:, 1:][distinct[:, 1:] == distinct[:, :-1]] = -1  # repeated ids count once
        self.valid = distinct >= 0
        self.safe = np.maximum(distinct, 0)
        self.inverse_count = 1.0 / np.maximum(self.valid.sum(axis=1), 1)  # [n_items]

    def times(self, c: np.ndarray) -> np.ndarray:
        """W c [n_items]."""
        return (c[self.safe] * self.valid).sum(axis=1) * self.inverse_count

    def transpose_times(self, x: np.ndarray) -> np.ndarray:
        """W^T x [F] for x [n_items]."""
        w = (x * self.inverse_count)[:, None] * self.valid
        return np.bincount(self.safe.ravel(), w.ravel(), self.n_features)

    def gram(self, item_weight: np.ndarray) -> np.ndarray:
        """W^T diag(item_weight) W [F, F]."""
        pair_weight = (item_weight * self.inverse_count**2)[:, None, None] * (self.valid[:, :, None] & self.valid[:, None, :])
        rows = np.broadcast_to(self.safe[:, :, None], pair_weight.shape).ravel()
        cols = np.broadcast_to(self.safe[:, None, :], pair_weight.shape).ravel()
        flat = np.bincount(rows * self.n_features + cols, pair_weight.ravel(), self.n_features**2)
        return flat.reshape(self.n_features, self.n_features)
