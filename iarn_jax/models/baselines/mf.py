"""Biased matrix factorisation (Koren et al. 2009) in JAX, and its bias-only mode.

    r_hat(u, i) = mu + b_u + b_i + p_u . q_i

mu is the training mean (fixed); b_u, b_i, p_u, q_i are trained with Adam on
shuffled mini-batches (one jit-compiled ``lax.scan`` per epoch) against

    mean over the batch of  (r_hat - r)^2
        + reg_bias   * (w_u b_u^2 + w_i b_i^2)
        + reg        * (w_u |p_u|^2 + w_i |q_i|^2)

where (w_u, w_i) are 1 ("frequency" mode, what per-example SGD does) or
(1/n_u, 1/n_i) ("uniform" mode: one epoch penalises each row once, the MAP
objective; biases then shrink towards 0 by count, like Surprise's
BaselineOnly). Early stopping on validation RMSE; the hyper-parameters are
chosen by a small grid on ``split.val`` and the best early-stopped model is
kept (``refit=True`` instead retrains on train+val for the chosen number of
epochs).

``factors=0`` is the bias-only baseline (BaselineOnly-like).

Users/items never seen in the fit data keep b = 0 and p = q = 0, so their
prediction falls back to mu + the other side's bias. Ranking scores are the
predicted ratings (biases included); with ``unseen_last=True`` (default) items
never seen in the fit data rank below every seen item, as in BPR.
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import common

DEFAULTS = dict(
    lr=0.003,
    reg=0.1,
    reg_bias=None,  # None: same as reg
    reg_mode="frequency",
    batch_size=1024,
    max_epochs=200,
    patience=5,
    eval_every=1,
    init_std=0.1,
    optimizer="adam",
)


def default_factors(split: ProtocolSplit) -> int:
    """Paper setting: 25 on MovieLens / Netflix, 50 on the Amazon datasets."""
    name = split.name.lower()
    return 25 if name.startswith(("ml", "movielens", "netflix", "synthetic")) else 50


def init_params(n_users: int, n_items: int, factors: int, init_std: float, seed: int) -> dict:
    key_user, key_item = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "user_bias": jnp.zeros((n_users,), jnp.float32),
        "item_bias": jnp.zeros((n_items,), jnp.float32),
        "user_factors": init_std * jax.random.normal(key_user, (n_users, factors), jnp.float32),
        "item_factors": init_std * jax.random.normal(key_item, (n_items, factors), jnp.float32),
    }


def predict_pairs(params, mu, users, items, xp=jnp):
    """mu + b_u + b_i + p_u . q_i for aligned id arrays (xp = jnp or np)."""
    dot = xp.sum(params["user_factors"][users] * params["item_factors"][items], axis=-1)
    return mu + params["user_bias"][users] + params["item_bias"][items] + dot


def make_loss_fn(mu: float, reg: float, reg_bias: float):
    def loss_fn(params, batch):
        users, items = batch["user"], batch["item"]
        error = predict_pairs(params, mu, users, items) - batch["rating"]
        wu, wi = batch["reg_user"], batch["reg_item"]
        penalty = reg_bias * (wu * params["user_bias"][users] ** 2 + wi * params["item_bias"][items] ** 2)
        penalty += reg * (
            wu * jnp.sum(params["user_factors"][users] ** 2, -1) + wi * jnp.sum(params["item_factors"][items] ** 2, -1)
        )
        return common.weighted_mean(error**2 + penalty, batch["weight"])

    return loss_fn


class MF:
    """Biased MF (``factors > 0``) or bias-only baseline (``factors = 0``).

    grid: list of config overrides tried on split.val (default: a small lr x reg
      grid, see ``default_grid``); pass ``grid=[{}]`` to use the config as is.
    config: overrides of ``DEFAULTS``.
    """

    rates = True

    def __init__(
        self,
        factors: Optional[int] = None,
        *,
        grid: Optional[Sequence[dict]] = None,
        refit: bool = False,
        unseen_last: bool = True,
        name: Optional[str] = None,
        **config,
    ):
        self.factors = factors
        self.config = common.with_defaults("MF", DEFAULTS, config)
        self.grid = grid
        # the default grid steps past its edge when the best value sits there (common.grid_search)
        self.grid_extend = {"reg": 2.0, "reg_bias": 3.0} if grid is None else None
        self.refit = refit
        self.unseen_last = unseen_last
        self.item_seen = None
        self._name = name
        self.params = None
        self.mu = 0.0
        self.report: dict = {}

    @property
    def name(self) -> str:
        if self._name:
            return self._name
        return "BiasOnly" if self.factors == 0 else "MF"

    def default_grid(self) -> list[dict]:
        if self.factors == 0:
            return common.expand_grid(reg_mode=["uniform"], reg_bias=[1.0, 3.0, 10.0, 30.0], lr=[0.01])
        return common.expand_grid(lr=[0.003], reg=[0.05, 0.1, 0.15], reg_bias=[None, 0.02])

    # ----------------------------------------------------------------- fitting
    def _fit_config(self, config, fit_frame, val_frame, n_users, n_items, rating_scale, seed, verbose, max_epochs=None):
        data = common.pair_arrays(fit_frame)
        reg_user, reg_item = common.regularisation_weights(
            data["user"], data["item"], n_users, n_items, config["reg_mode"]
        )
        arrays = {"user": data["user"], "item": data["item"], "rating": data["rating"], "reg_user": reg_user, "reg_item": reg_item}
        mu = float(data["rating"].mean())
        reg_bias = config["reg"] if config["reg_bias"] is None else config["reg_bias"]
        params = init_params(n_users, n_items, self.factors, config["init_std"], seed)
        val_score_fn = None
        if val_frame is not None and len(val_frame):
            val_users = val_frame["user"].to_numpy(np.int64)
            val_items = val_frame["item"].to_numpy(np.int64)
            val_rating = val_frame["rating"].to_numpy(np.float64)

            def val_score_fn(host_params):
                pred = predict_pairs(host_params, mu, val_users, val_items, xp=np)
                return common.clipped_rmse(pred, val_rating, rating_scale)

        result = common.fit_early_stopping(
            params,
            make_loss_fn(mu, config["reg"], reg_bias),
            common.make_optimizer(config["optimizer"], config["lr"]),
            arrays,
            val_score_fn,
            batch_size=config["batch_size"],
            max_epochs=max_epochs or config["max_epochs"],
            patience=config["patience"],
            eval_every=config["eval_every"],
            seed=seed,
            verbose=verbose > 1,
            label=self.name,
        )
        result.params = self._zero_unseen(result.params, data["user"], data["item"])
        return mu, result

    @staticmethod
    def _zero_unseen(params, users, items):
        params = dict(params)
        for side, ids in (("user", users), ("item", items)):
            unseen = ~common.seen_mask(ids, params[f"{side}_bias"].shape[0])
            bias, factors = np.array(params[f"{side}_bias"]), np.array(params[f"{side}_factors"])
            bias[unseen], factors[unseen] = 0.0, 0.0
            params[f"{side}_bias"], params[f"{side}_factors"] = bias, factors
        return params

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool | int = True) -> "MF":
        """Grid search on split.val, early stopping on val RMSE; keeps the best."""
        start = time.perf_counter()
        if self.factors is None:
            self.factors = default_factors(split)
        grid = self.grid if self.grid is not None else self.default_grid()
        args = (split.n_users, split.n_items, split.rating_scale, seed, verbose)

        def fit_one(overrides):
            return self._fit_config({**self.config, **overrides}, split.train, split.val, *args)[1]

        best, result, rows = common.grid_search(grid, fit_one, verbose=bool(verbose), label=f"{self.name} grid",
                                                 extend=self.grid_extend)
        config = {**self.config, **best}
        if self.refit:
            both = pd.concat([split.train, split.val], ignore_index=True)
            self.mu, result_refit = self._fit_config(config, both, None, *args, max_epochs=result.best_epoch)
            self.params = result_refit.params
            self.item_seen = common.seen_mask(both["item"].to_numpy(np.int64), split.n_items)
        else:
            self.mu = float(split.train["rating"].mean())
            self.params = result.params
            self.item_seen = common.seen_mask(split.train["item"].to_numpy(np.int64), split.n_items)
        self.report = common.fit_report(self.name, best, config, "val_rmse", result, rows, seed, start, verbose,
                                        factors=self.factors, refit=self.refit)
        return self

    # --------------------------------------------------------------- inference
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return predict_pairs(self.params, self.mu, users, items, xp=np).astype(np.float64)

    def score_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings [U, I] of every user against every item."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        p = self.params
        scores = (
            self.mu
            + p["user_bias"][users][:, None]
            + p["item_bias"][items][None, :]
            + p["user_factors"][users] @ p["item_factors"][items].T
        ).astype(np.float64)
        if self.unseen_last:
            seen = self.item_seen[items]
            if not seen.all():
                floor = scores[:, seen].min(axis=1, keepdims=True) - 1.0 if seen.any() else np.zeros((len(users), 1))
                scores = np.where(seen[None, :], scores, floor)
        return scores

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.score_matrix(np.array([user]), items)[0]
