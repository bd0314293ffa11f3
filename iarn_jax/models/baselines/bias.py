"""Regularised bias-only model: Surprise's BaselineOnly (ALS), the strongest simple peer.

r_hat(u, i) = mu + b_u + b_i, fitted by alternating least squares:
  b_i <- sum_{u in R(i)} (r_ui - mu - b_u) / (reg_i + |R(i)|)
  b_u <- sum_{i in R(u)} (r_ui - mu - b_i) / (reg_u + |R(u)|)
with Surprise's defaults reg_i = 10, reg_u = 15, 10 sweeps. It has no tuned
hyper-parameters, so it is fitted on all kept training pairs (train + val).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from iarn_jax.data.types import ProtocolSplit


class BiasBaseline:
    name = "bias"
    rates = True

    def __init__(self, reg_user: float = 15.0, reg_item: float = 10.0, sweeps: int = 10):
        self.reg_user, self.reg_item, self.sweeps = reg_user, reg_item, sweeps

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = False) -> "BiasBaseline":
        del seed  # deterministic
        pairs = pd.concat([split.train, split.val], ignore_index=True)
        return self.fit_arrays(pairs["user"].to_numpy(), pairs["item"].to_numpy(),
                               pairs["rating"].to_numpy(np.float64), split.n_users, split.n_items)

    def fit_arrays(self, users, items, ratings, n_users: int, n_items: int) -> "BiasBaseline":
        """Fits on arrays [N] of user ids, item ids and ratings."""
        self.mu = float(np.mean(ratings))
        self.b_user = np.zeros(n_users)
        self.b_item = np.zeros(n_items)
        n_u = np.bincount(users, minlength=n_users)
        n_i = np.bincount(items, minlength=n_items)
        for _ in range(self.sweeps):
            resid = ratings - self.mu - self.b_user[users]
            self.b_item = np.bincount(items, resid, n_items) / (self.reg_item + n_i)
            resid = ratings - self.mu - self.b_item[items]
            self.b_user = np.bincount(users, resid, n_users) / (self.reg_user + n_u)
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return (self.mu + self.b_user[users] + self.b_item[items]).astype(np.float32)

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.b_item[items].astype(np.float32)
