"""BPR (Rendle et al. 2009) and MostPop: ranking-only baselines.

BPR scores ``x_ui = b_i + p_u . q_i`` and minimises, over training pairs (u, i)
with a negative j drawn uniformly from the fit-data items that u has not
interacted with in the fit data (fresh negatives every epoch, sampled on the
host by rejection),

    -log sigmoid(x_ui - x_uj) + reg (|p_u|^2 + |q_i|^2 + |q_j|^2) + reg_bias (b_i^2 + b_j^2)

with Adam on shuffled mini-batches (one jit-compiled ``lax.scan`` per epoch).
Early stopping and a small (lr, reg) grid use validation AUC: full ranking of
up to ``val_users`` sampled validation users over the items of train ∪ val,
minus the user's training items (``data.candidates.RankingTask``, ``common.ranking_auc``); the best
early-stopped model is kept.

``feature_factors=True`` (the ``bpr_features`` row; a peer for IARN's ``feature_factors``): every item
also gets the mean of its item features' factors and biases, ``q_i + mean_f c_f`` and
``b_i + mean_f d_f`` (c_f, d_f start at 0, unregularised: each is shared by many items); after the fit
they are folded into the item factors and biases, so scoring is unchanged.

Cold items: an item never seen in the fit data has no learned factors; with
``unseen_last=True`` (default) it is ranked below every seen item (score =
the row's lowest seen-item score minus 1), otherwise it scores 0.

MostPop scores an item by its number of interactions in ``split.history``
(all training-period interactions).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iarn_jax.data.candidates import RankingTask
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import common
from iarn_jax.models.baselines.mf import default_factors

DEFAULTS = dict(
    lr=0.01,
    reg=0.01,
    reg_bias=None,  # None: same as reg
    batch_size=1024,
    max_epochs=40,
    patience=3,
    eval_every=2,
    init_std=0.1,
    optimizer="adam",
    val_users=500,
)


def sample_negatives(
    users: np.ndarray, item_pool: np.ndarray, user_item_keys: np.ndarray, n_items: int, rng: np.random.Generator, rounds: int = 20
) -> np.ndarray:
    """One negative per user in ``users``: uniform over ``item_pool`` minus the
    user's items (``user_item_keys`` = sorted user * n_items + item). After
    ``rounds`` redraws, a remaining collision keeps its last draw (vanishingly
    rare unless a user has interacted with almost every item)."""
    users = users.astype(np.int64)
    negatives = item_pool[rng.integers(0, item_pool.size, users.size)]
    for _ in range(rounds):
        keys = users * n_items + negatives
        pos = np.searchsorted(user_item_keys, keys)
        collide = user_item_keys[np.minimum(pos, user_item_keys.size - 1)] == keys
        if not collide.any():
            break
        negatives[collide] = item_pool[rng.integers(0, item_pool.size, int(collide.sum()))]
    return negatives


def init_params(n_users: int, n_items: int, factors: int, init_std: float, seed: int) -> dict:
    key_user, key_item = jax.random.split(jax.random.PRNGKey(seed))
    return {
        "user_factors": init_std * jax.random.normal(key_user, (n_users, factors), jnp.float32),
        "item_factors": init_std * jax.random.normal(key_item, (n_items, factors), jnp.float32),
        "item_bias": jnp.zeros((n_items,), jnp.float32),
    }


def feature_means(params: dict, flat_features, items):
    """(mean feature factor [n, k], mean feature bias [n]) of ``items`` [n] over their features
    (``flat_features`` int [n_items, K], -1 = none; zeros for an item without features)."""
    xp = jnp if isinstance(params["feature_factors"], jax.Array) else np
    features = flat_features[items]
    valid = (features >= 0).astype(np.float32)
    count = xp.maximum(valid.sum(-1), 1.0)
    safe = xp.maximum(features, 0)
    factor = (params["feature_factors"][safe] * valid[..., None]).sum(-2) / count[..., None]
    bias = (params["feature_bias"][safe] * valid).sum(-1) / count
    return factor, bias


def fold_features(params: dict, flat_features) -> dict:
    """Plain BPR parameters (user_factors, item_factors, item_bias) with the feature terms folded in."""
    if "feature_factors" not in params:
        return params
    factor, bias = feature_means(params, flat_features, np.arange(params["item_factors"].shape[0]))
    return {"user_factors": params["user_factors"], "item_factors": params["item_factors"] + factor,
            "item_bias": params["item_bias"] + bias}


def make_loss_fn(reg: float, reg_bias: float, flat_features=None):
    def item_terms(params, items):
        """(scored factor, scored bias, regularised factor, regularised bias) of ``items``: the item's
        own q, b plus, with feature factors, its features' means (those are not regularised)."""
        q, b = params["item_factors"][items], params["item_bias"][items]
        if flat_features is None:
            return q, b, q, b
        factor, bias = feature_means(params, flat_features, items)
        return q + factor, b + bias, q, b

    def loss_fn(params, batch):
        p_u = params["user_factors"][batch["user"]]
        q_i, b_i, own_q_i, own_b_i = item_terms(params, batch["item"])
        q_j, b_j, own_q_j, own_b_j = item_terms(params, batch["negative"])
        x_uij = b_i - b_j + jnp.sum(p_u * (q_i - q_j), axis=-1)
        penalty = (reg * (jnp.sum(p_u**2, -1) + jnp.sum(own_q_i**2, -1) + jnp.sum(own_q_j**2, -1))
                   + reg_bias * (own_b_i**2 + own_b_j**2))
        return common.weighted_mean(-jax.nn.log_sigmoid(x_uij) + penalty, batch["weight"])

    return loss_fn


def factor_scores(params: dict, users: np.ndarray, items: np.ndarray, item_seen: Optional[np.ndarray]) -> np.ndarray:
    """[U, I] scores b_i + p_u . q_i; unseen items last when ``item_seen`` is given."""
    scores = params["item_bias"][items][None, :] + params["user_factors"][users] @ params["item_factors"][items].T
    scores = scores.astype(np.float64)
    if item_seen is not None:
        seen = item_seen[items]
        if not seen.all():
            floor = scores[:, seen].min(axis=1, keepdims=True) - 1.0 if seen.any() else np.zeros((len(users), 1))
            scores = np.where(seen[None, :], scores, floor)
    return scores


class BPR:
    """Bayesian personalised ranking with item biases (ranking only)."""

    name = "BPR"
    rates = False

    def __init__(
        self,
        factors: Optional[int] = None,
        *,
        grid: Optional[Sequence[dict]] = None,
        unseen_last: bool = True,
        feature_factors: bool = False,
        **config,
    ):
        self.feature_factors = feature_factors
        if feature_factors:
            self.name = "BPR+features"
        self.factors = factors
        self.config = common.with_defaults("BPR", DEFAULTS, config)
        self.grid = grid
        # the default grid steps past its edge when the best value sits there (common.grid_search)
        self.grid_extend = {"reg": 3.0} if grid is None else None
        self.unseen_last = unseen_last
        self.params = None
        self.item_seen = None
        self.report: dict = {}

    @staticmethod
    def default_grid() -> list[dict]:
        return common.expand_grid(lr=[0.01], reg=[0.003, 0.01, 0.03])

    def _fit_config(self, config, split: ProtocolSplit, seed: int, verbose):
        train = split.train
        users = train["user"].to_numpy(np.int64)
        items = train["item"].to_numpy(np.int64)
        n_users, n_items = split.n_users, split.n_items
        item_pool = np.unique(items)
        keys = np.unique(users * n_items + items)
        host_rng = np.random.default_rng(seed)
        item_seen = common.seen_mask(items, n_items)
        params = init_params(n_users, n_items, self.factors, config["init_std"], seed)
        flat_features = None
        if self.feature_factors:
            from iarn_jax.models.features import FeatureData

            data = FeatureData.from_dataset(split.dataset)
            if data is None:
                raise ValueError(f"BPR(feature_factors=True): dataset {split.dataset.name!r} has no item features")
            flat_features = data.flat
            params["feature_factors"] = jnp.zeros((data.n_features, self.factors), jnp.float32)
            params["feature_bias"] = jnp.zeros((data.n_features,), jnp.float32)

        def data_fn(epoch):
            return {"negative": sample_negatives(users, item_pool, keys, n_items, host_rng).astype(np.int32)}

        val_score_fn = None
        if len(split.val):
            val_users = np.unique(split.val["user"].to_numpy(np.int64))
            if val_users.size > config["val_users"]:
                val_users = np.sort(np.random.default_rng(seed).choice(val_users, config["val_users"], replace=False))
            task = RankingTask.from_frames(train, split.val, val_users)
            seen = item_seen if self.unseen_last else None

            def val_score_fn(host_params):
                folded = fold_features(host_params, flat_features)
                return common.ranking_auc(task, lambda u, i: factor_scores(folded, u, i, seen))

        reg_bias = config["reg"] if config["reg_bias"] is None else config["reg_bias"]
        result = common.fit_early_stopping(
            params,
            make_loss_fn(config["reg"], reg_bias, None if flat_features is None else jnp.asarray(flat_features)),
            common.make_optimizer(config["optimizer"], config["lr"]),
            {"user": users.astype(np.int32), "item": items.astype(np.int32)},
            val_score_fn,
            batch_size=config["batch_size"],
            max_epochs=config["max_epochs"],
            patience=config["patience"],
            eval_every=config["eval_every"],
            seed=seed,
            higher_is_better=True,
            data_fn=data_fn,
            verbose=verbose > 1,
            label=self.name,
        )
        if flat_features is not None:
            result = dataclasses.replace(result, params=fold_features(result.params, flat_features))
        return result, item_seen

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool | int = True) -> "BPR":
        start = time.perf_counter()
        if self.factors is None:
            self.factors = default_factors(split)
        grid = self.grid if self.grid is not None else self.default_grid()
        seen_holder = {}

        def fit_one(overrides):
            result, seen_holder["seen"] = self._fit_config({**self.config, **overrides}, split, seed, verbose)
            return result

        best, result, rows = common.grid_search(
            grid, fit_one, higher_is_better=True, verbose=bool(verbose), label=f"{self.name} grid",
            extend=self.grid_extend,
        )
        self.params = result.params
        self.item_seen = seen_holder["seen"]
        self.report = common.fit_report(self.name, best, {**self.config, **best}, "val_auc", result, rows, seed, start,
                                        verbose, factors=self.factors)
        return self

    def score_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        return factor_scores(self.params, users, items, self.item_seen if self.unseen_last else None)

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.score_matrix(np.array([user]), items)[0]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Pairwise scores b_i + p_u . q_i (not ratings: ``rates`` is False)."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        p = self.params
        return (p["item_bias"][items] + np.sum(p["user_factors"][users] * p["item_factors"][items], -1)).astype(np.float64)


class MostPop:
    """Item popularity: the number of interactions in ``split.history``."""

    name = "MostPop"
    rates = False

    def __init__(self):
        self.counts = None

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "MostPop":
        self.counts = np.bincount(split.history["item"].to_numpy(np.int64), minlength=split.n_items).astype(np.float64)
        return self

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return self.counts[np.asarray(items, dtype=np.int64)]

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.counts[np.asarray(items, dtype=np.int64)]

    def score_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.broadcast_to(self.counts[np.asarray(items, dtype=np.int64)], (len(users), len(items)))


class RecentPop(MostPop):
    """Recent item popularity: the number of interactions in the last ``window`` of the training
    period (a fraction of its span; ties broken by all-time popularity). Scores as MostPop does.

    On a global time cut the test period's interactions go mostly to items popular just before the
    cut, so this is a strong ranking reference there. ``window`` None: chosen from ``WINDOWS`` on a
    temporal holdout (the latest 10 % of the training-period events, counted from the events before
    them) by the mean share of items each held-out interaction's item outranks (ties half).
    """

    name = "RecentPop"
    rates = False
    WINDOWS = (0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)

    def __init__(self, window: Optional[float] = None, holdout: float = 0.1):
        super().__init__()
        self.window, self.holdout = window, holdout
        self.selection_ = None

    @staticmethod
    def _scores(items: np.ndarray, times: np.ndarray, end: int, span: int, window: float, n_items: int):
        recent = times >= end - max(1, int(round(window * span)))
        total = np.bincount(items, minlength=n_items).astype(np.float64)
        return np.bincount(items[recent], minlength=n_items) + total / (total.max(initial=0.0) + 1.0)

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "RecentPop":
        items = split.history["item"].to_numpy(np.int64)
        times = split.history["time"].to_numpy(np.int64)
        if items.size == 0:
            raise ValueError(f"{split.name}: RecentPop needs training-period interactions, got none")
        n = split.n_items
        window = self.window
        if window is None:
            order = np.argsort(times, kind="stable")
            cut = order[int(np.floor((1.0 - self.holdout) * items.size)):]
            held = np.zeros(items.size, bool)
            held[cut] = True
            start = int(times[~held].min(initial=times.min()))
            end = int(times[held].min())
            rows = []
            for w in self.WINDOWS:
                scores = self._scores(items[~held], times[~held], end, end - start, w, n)
                ranks = np.sort(scores)
                below = np.searchsorted(ranks, scores[items[held]], side="left")
                ties = np.searchsorted(ranks, scores[items[held]], side="right") - below
                rows.append({"window": w, "holdout_share_outranked": float(np.mean((below + 0.5 * ties) / n))})
            window = max(rows, key=lambda r: r["holdout_share_outranked"])["window"]
            self.selection_ = {"model": self.name, "window": window, "grid": rows}
            if verbose:
                print(f"[{self.name}] chose window {window} of the training period (holdout share outranked "
                      f"{max(r['holdout_share_outranked'] for r in rows):.4f})", flush=True)
        self.window = window
        self.counts = self._scores(items, times, int(times.max()) + 1, int(times.max()) + 1 - int(times.min()),
                                   window, n)
        return self
