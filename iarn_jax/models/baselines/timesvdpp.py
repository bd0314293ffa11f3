"""TimeSVD++ (Koren, KDD 2009) in JAX.

    r_hat(u, i, t) = mu + b_u + alpha_u dev_u(t) + b_{u,t}
                     + (b_i + b_{i,Bin(t)}) (c_u + c_{u,t})
                     + q_i . (p_u + |N(u)|^-1/2 sum_{j in N(u)} y_j)

* t is in days; dev_u(t) = sign(t - t_u) |t - t_u|^0.4, t_u = mean day of u's
  fit ratings.
* Bin(t): 30 equal-width bins over the days of the fit data; later (test) days
  fall in the last bin, earlier days in the first.
* b_{u,t}, c_{u,t}: one parameter per (user, day) seen in the fit data. A day
  not seen there -- every day after the global cut, i.e. every test pair -- has
  no such term: it is predicted with b_{u,t} = c_{u,t} = 0.
* c_u is parametrised as 1 + s_u with s_u regularised towards 0.
* N(u) = u's items in the fit data (split.train); the implicit sum is computed
  for all users with a segment-sum inside each training step.
* Time without dates (the paper's Clothing data, ``time_unit == "order"``,
  time = global row order): the order is mapped linearly onto pseudo-days
  spanning the Amazon review data (May 1996 - July 2014, ``AMAZON_SPAN_DAYS``),
  i.e. day = (t - t_min) / (t_max - t_min) * AMAZON_SPAN_DAYS over all times of
  history and test. Consecutive rows (a user's burst) share a pseudo-day.

Training: Adam on shuffled mini-batches (a jit-compiled ``lax.scan`` per
epoch) of the per-example objective (the one Koren's SGD follows)

    (r_hat - r)^2 + reg (|p_u|^2 + |q_i|^2 + mean_{j in N(u)} |y_j|^2)
        + reg_bias (b_u^2 + b_i^2 + s_u^2)
        + reg_time (alpha_u^2 + b_{i,Bin(t)}^2 + b_{u,t}^2 + c_{u,t}^2),

``reg_time`` is kept separate and large by default: the user-day terms only
help on seen days and must not absorb b_u (on MovieLens most users rate in one
or two sessions, so b_{u,t} and b_u are nearly confounded), and alpha_u
multiplies a deviation that is extrapolated past the cut at test time, and
every test pair falls in the last (thinly populated) item bin.

early stopping on validation RMSE and a small grid on split.val; the best
early-stopped model is kept. Validation pairs are predicted without their
user-day terms, as every test pair is (validation days lie inside the fit
period, test days after it), so the choice of ``reg_time`` is not rewarded
for day terms that test never uses.

The Recommender ``predict(users, items)`` has no time: it predicts at the first
day after the fit data (day terms 0, last bin). ``predict_at(users, items,
times)`` uses the pairs' own times; use it (``evaluate_rating(...,
with_time=True)`` style) for test RMSE.
"""
from __future__ import annotations

import datetime
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import common
from iarn_jax.models.baselines.mf import default_factors

AMAZON_SPAN_DAYS = (datetime.date(2014, 7, 31) - datetime.date(1996, 5, 1)).days
SECONDS_PER_DAY = 86400

DEFAULTS = dict(
    lr=0.003,
    reg=0.1,
    reg_bias=0.02,
    reg_time=10.0,
    n_bins=30,
    beta=0.4,
    batch_size=2048,
    max_epochs=150,
    patience=5,
    eval_every=1,
    init_std=0.1,
    optimizer="adam",
)


class DayClock:
    """Maps the split's time keys to (integer) days.

    Unix seconds: day = floor(t / 86400). Row order: linear pseudo-days over
    [t_min, t_max] -> [0, AMAZON_SPAN_DAYS] (see module doc).
    """

    def __init__(self, time_unit: str, t_min: float = 0.0, t_max: float = 1.0):
        self.time_unit, self.t_min, self.t_max = time_unit, float(t_min), float(t_max)

    @classmethod
    def for_split(cls, split: ProtocolSplit) -> "DayClock":
        unit = split.dataset.time_unit
        if unit == "order":
            times = np.concatenate([split.history["time"].to_numpy(np.float64), split.test["time"].to_numpy(np.float64)])
            return cls(unit, times.min(), max(times.max(), times.min() + 1.0))
        return cls(unit)

    def days(self, times) -> np.ndarray:
        times = np.asarray(times, dtype=np.float64)
        if self.time_unit == "order":
            return np.floor((times - self.t_min) / (self.t_max - self.t_min) * AMAZON_SPAN_DAYS).astype(np.int64)
        return np.floor(times / SECONDS_PER_DAY).astype(np.int64)


def deviation(days: np.ndarray, mean_day: np.ndarray, beta: float) -> np.ndarray:
    delta = days - mean_day
    return (np.sign(delta) * np.abs(delta) ** beta).astype(np.float32)


def _predict(params, mu, implicit_user, batch, xp):
    """Prediction from gathered features; xp = jnp (training) or np (inference).

    batch: user, item, dev, bin, day_index (into the per-(user, day) tables),
      day_known (1 where the (user, day) term exists, else 0).
    """
    users, items = batch["user"], batch["item"]
    known = batch["day_known"]
    day_bias = params["day_bias"][batch["day_index"]] * known
    day_scale = params["day_scale"][batch["day_index"]] * known
    item_time_bias = params["item_bias"][items] + params["item_bin_bias"][items, batch["bin"]]
    scale = 1.0 + params["user_scale"][users] + day_scale
    user_vector = params["user_factors"][users] + implicit_user
    return (
        mu
        + params["user_bias"][users]
        + params["alpha"][users] * batch["dev"]
        + day_bias
        + item_time_bias * scale
        + xp.sum(params["item_factors"][items] * user_vector, axis=-1)
    )


class TimeSVDpp:
    """TimeSVD++ rating predictor (see module doc)."""

    name = "TimeSVD++"
    rates = True

    def __init__(self, factors: Optional[int] = None, *, grid: Optional[Sequence[dict]] = None, **config):
        self.factors = factors
        self.config = common.with_defaults("TimeSVD++", DEFAULTS, config)
        self.grid = grid
        # the default grid steps past its edge when the best value sits there (common.grid_search)
        self.grid_extend = {"reg": 2.0, "reg_time": 10.0} if grid is None else None
        self.params = None
        self.report: dict = {}

    @staticmethod
    def default_grid() -> list[dict]:
        return common.expand_grid(lr=[0.003], reg=[0.1, 0.15], reg_time=[10.0, 100.0])

    # -------------------------------------------------------------- features
    def _prepare(self, split: ProtocolSplit, n_bins: int):
        """Fit-data state: clock, bins, user mean days, (user, day) keys, N(u)."""
        train = split.train
        self.clock = DayClock.for_split(split)
        self.n_users, self.n_items = split.n_users, split.n_items
        users = train["user"].to_numpy(np.int64)
        items = train["item"].to_numpy(np.int64)
        days = self.clock.days(train["time"].to_numpy())
        self.first_day, self.last_day = int(days.min()), int(days.max())
        self.n_bins = n_bins
        counts = np.bincount(users, minlength=self.n_users)
        self.mean_day = np.bincount(users, weights=days, minlength=self.n_users) / np.maximum(counts, 1)
        self.day_keys = np.unique(users * (self.last_day + 2) + (days - self.first_day))
        self.fit_users, self.fit_items = users, items
        self.implicit_norm = (1.0 / np.sqrt(np.maximum(counts, 1))).astype(np.float32)
        self.mu = float(train["rating"].mean())

    def _features(self, users, items, times) -> dict:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        days = self.clock.days(times)
        span = self.last_day - self.first_day + 1
        bins = np.clip(((days - self.first_day) * self.n_bins) // span, 0, self.n_bins - 1)
        keys = users * (self.last_day + 2) + (days - self.first_day)
        pos = np.minimum(np.searchsorted(self.day_keys, keys), self.day_keys.size - 1)
        known = (self.day_keys[pos] == keys) & (days >= self.first_day) & (days <= self.last_day)
        return {
            "user": users.astype(np.int32),
            "item": items.astype(np.int32),
            "dev": deviation(days, self.mean_day[users], self.config["beta"]),
            "bin": bins.astype(np.int32),
            "day_index": np.where(known, pos, 0).astype(np.int32),
            "day_known": known.astype(np.float32),
        }

    def _init_params(self, factors: int, init_std: float, seed: int) -> dict:
        key_user, key_item = jax.random.split(jax.random.PRNGKey(seed))
        n_days = self.day_keys.size
        zeros = lambda *shape: jnp.zeros(shape, jnp.float32)  # noqa: E731
        return {
            "user_bias": zeros(self.n_users),
            "alpha": zeros(self.n_users),
            "user_scale": zeros(self.n_users),
            "day_bias": zeros(n_days),
            "day_scale": zeros(n_days),
            "item_bias": zeros(self.n_items),
            "item_bin_bias": zeros(self.n_items, self.n_bins),
            "user_factors": init_std * jax.random.normal(key_user, (self.n_users, factors), jnp.float32),
            "item_factors": init_std * jax.random.normal(key_item, (self.n_items, factors), jnp.float32),
            "implicit": zeros(self.n_items, factors),
        }

    def _implicit_users(self, implicit, xp):
        """|N(u)|^-1/2 sum_{j in N(u)} y_j for every user [U, F], and the mean |y_j|^2 [U]."""
        if xp is np:
            total = np.zeros((self.n_users, implicit.shape[1]), np.float32)
            np.add.at(total, self.fit_users, implicit[self.fit_items])
            return total * self.implicit_norm[:, None]
        fit_users = jnp.asarray(self.fit_users, jnp.int32)
        fit_items = jnp.asarray(self.fit_items, jnp.int32)
        norm = jnp.asarray(self.implicit_norm)
        total = jax.ops.segment_sum(implicit[fit_items], fit_users, num_segments=self.n_users)
        sq = jax.ops.segment_sum(jnp.sum(implicit[fit_items] ** 2, -1), fit_users, num_segments=self.n_users)
        return total * norm[:, None], sq * norm**2

    def _make_loss_fn(self, reg: float, reg_bias: float, reg_time: float):
        mu = self.mu

        def loss_fn(params, batch):
            implicit_all, implicit_sq = self._implicit_users(params["implicit"], jnp)
            users, items = batch["user"], batch["item"]
            pred = _predict(params, mu, implicit_all[users], batch, jnp)
            error = pred - batch["rating"]
            known = batch["day_known"]
            penalty = reg * (
                jnp.sum(params["user_factors"][users] ** 2, -1)
                + jnp.sum(params["item_factors"][items] ** 2, -1)
                + implicit_sq[users]
            )
            penalty += reg_bias * (
                params["user_bias"][users] ** 2
                + params["user_scale"][users] ** 2
                + params["item_bias"][items] ** 2
            )
            penalty += reg_time * (
                params["alpha"][users] ** 2
                + params["item_bin_bias"][items, batch["bin"]] ** 2
                + known * (params["day_bias"][batch["day_index"]] ** 2 + params["day_scale"][batch["day_index"]] ** 2)
            )
            return common.weighted_mean(error**2 + penalty, batch["weight"])

        return loss_fn

    # ---------------------------------------------------------------- fitting
    def _fit_config(self, config, split, seed, verbose):
        train = split.train
        data = self._features(train["user"], train["item"], train["time"].to_numpy())
        data["rating"] = train["rating"].to_numpy(np.float32)
        val_score_fn = None
        if len(split.val):
            val_features = self._features(split.val["user"], split.val["item"], split.val["time"].to_numpy())
            # Score validation as test is scored: without the user-day terms.
            val_features["day_known"] = np.zeros_like(val_features["day_known"])
            val_rating = split.val["rating"].to_numpy(np.float64)

            def val_score_fn(host_params):
                pred = self._predict_host(host_params, val_features)
                return common.clipped_rmse(pred, val_rating, split.rating_scale)

        return common.fit_early_stopping(
            self._init_params(self.factors, config["init_std"], seed),
            self._make_loss_fn(config["reg"], config["reg_bias"], config["reg_time"]),
            common.make_optimizer(config["optimizer"], config["lr"]),
            data,
            val_score_fn,
            batch_size=config["batch_size"],
            max_epochs=config["max_epochs"],
            patience=config["patience"],
            eval_every=config["eval_every"],
            seed=seed,
            verbose=verbose > 1,
            label=self.name,
        )

    def _predict_host(self, params, features) -> np.ndarray:
        implicit_all = self._implicit_users(params["implicit"], np)
        users = features["user"].astype(np.int64)
        return _predict(params, self.mu, implicit_all[users], features, np).astype(np.float64)

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool | int = True) -> "TimeSVDpp":
        start = time.perf_counter()
        if self.factors is None:
            self.factors = default_factors(split)
        grid = self.grid if self.grid is not None else self.default_grid()
        self._prepare(split, self.config["n_bins"])

        def fit_one(overrides):
            return self._fit_config({**self.config, **overrides}, split, seed, verbose)

        best, result, rows = common.grid_search(grid, fit_one, verbose=bool(verbose), label=f"{self.name} grid",
                                                 extend=self.grid_extend)
        self.params = result.params
        self.config = {**self.config, **best}
        self._implicit_cache = self._implicit_users(self.params["implicit"], np)
        self.report = common.fit_report(self.name, best, self.config, "val_rmse", result, rows, seed, start, verbose,
                                        factors=self.factors, time_unit=self.clock.time_unit)
        return self

    # -------------------------------------------------------------- inference
    def predict_at(self, users: np.ndarray, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Ratings of (user, item) pairs at their time keys (unclipped)."""
        features = self._features(users, items, times)
        users = features["user"].astype(np.int64)
        return _predict(self.params, self.mu, self._implicit_cache[users], features, np).astype(np.float64)

    def _after_fit_time(self) -> float:
        """A time key of the first day after the fit data."""
        day = self.last_day + 1
        if self.clock.time_unit == "order":
            return self.clock.t_min + (day + 0.5) / AMAZON_SPAN_DAYS * (self.clock.t_max - self.clock.t_min)
        return float(day * SECONDS_PER_DAY)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Ratings at the first day after the fit data (day terms 0, last bin)."""
        users = np.asarray(users, dtype=np.int64)
        return self.predict_at(users, items, np.full(users.shape, self._after_fit_time()))

    def predict_frame(self, pairs: pd.DataFrame) -> np.ndarray:
        """Ratings of the pairs of a ratings DataFrame at their own times."""
        return self.predict_at(pairs["user"].to_numpy(), pairs["item"].to_numpy(), pairs["time"].to_numpy())

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        return self.predict(np.full(items.shape, user), items)
