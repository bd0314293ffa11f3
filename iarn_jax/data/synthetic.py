"""A synthetic rating data set with planted, known temporal dynamics.

The generator (all draws from one ``np.random.default_rng(seed)``, vectorised):

* **Time**: unix seconds in ``[start_time, start_time + span_days)``. Each user
  is active in her own window (users keep arriving), her ratings uniform in it.
* **Items**: a category ``c_i`` (flat feature, title ``"c{c}-item{i}"``), a
  quality ``q_i ~ N(0, item_quality_std)`` and a popularity that changes over
  time: ``base_i * (0.2 + exp(-((t - peak_i) / width_i)^2 / 2))``.
* **Users**: ``n_interests`` distinct categories, with interest weights that
  drift linearly from ``weight_start`` to ``weight_end`` (each a Dirichlet draw)
  over the data's time span (``s = (t - start_time) / span`` in [0, 1]), and an
  affinity ``a_uc(t)`` for every category, drifting linearly from
  ``affinity_start`` to ``affinity_end`` (interest categories are centred at
  +0.3, the others at -0.3).
* **Choice**: with probability ``explore`` a uniformly random category, else one
  of the user's interests by its current weight; then an item of that category
  by its current popularity (no user rates an item twice).
* **Rating**: ``clip(round(mu + b_u + q_i + a_{u,c_i}(t) + noise), 1, 5)``; the
  noiseless value (before rounding) is :meth:`SyntheticData.expected_rating`.

Ground truth of relevance, for a target pair (u, i):

* a **user-history step** (an item j rated by u) is relevant iff ``c_j == c_i``:
  those steps' ratings carry u's affinity for i's category;
* an **item-history step** (a user v who rated i at time t) is relevant iff
  ``c_i`` is among v's *main interests at time t*: one of v's interest
  categories whose drifted weight at t is >= ``main_weight``. Without times,
  :meth:`item_step_relevance` uses interest-set membership only.

A bias-only model cannot see the per-category affinity; a model that reads the
relevant steps of the user's history can (see ``tests/test_synthetic.py``).
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd

from iarn_jax.data.histories import Histories
from iarn_jax.data.types import DataError, Dataset, ItemFeatures

DAY = 86_400


@dataclasses.dataclass(frozen=True)
class SyntheticData:
    """The generated Dataset plus its ground truth (arrays indexed by contiguous id)."""

    dataset: Dataset
    item_category: np.ndarray         # int32 [I]
    item_quality: np.ndarray          # float32 [I]
    item_base_popularity: np.ndarray  # float32 [I]
    item_peak_time: np.ndarray        # int64 [I] unix seconds
    item_width: np.ndarray            # float64 [I] seconds
    user_bias: np.ndarray             # float32 [U]
    user_interests: np.ndarray        # int32 [U, M] interest categories
    weight_start: np.ndarray          # float32 [U, M] interest weights at start_time
    weight_end: np.ndarray            # float32 [U, M] ... at start_time + span
    affinity_start: np.ndarray        # float32 [U, C]
    affinity_end: np.ndarray          # float32 [U, C]
    expected: np.ndarray              # float32 [N] noiseless rating of each row of dataset.ratings
    global_mean: float
    noise_std: float
    start_time: int
    span_seconds: int
    main_weight: float

    @property
    def n_categories(self) -> int:
        return int(self.affinity_start.shape[1])

    def _progress(self, time) -> np.ndarray:
        return np.clip((np.asarray(time, dtype=np.float64) - self.start_time) / self.span_seconds, 0.0, 1.0)

    def interest_weights(self, user, time) -> np.ndarray:
        """[..., C] drifted interest weights of ``user`` at ``time`` (0 off the interests)."""
        user = np.asarray(user, dtype=np.int64)
        s = self._progress(time)[..., None]
        weights = (1.0 - s) * self.weight_start[user] + s * self.weight_end[user]
        dense = np.zeros(user.shape + (self.n_categories,), dtype=np.float64)
        np.put_along_axis(dense, self.user_interests[user].astype(np.int64), weights, axis=-1)
        return dense

    def affinity(self, user, category, time) -> np.ndarray:
        user = np.asarray(user, dtype=np.int64)
        category = np.asarray(category, dtype=np.int64)
        s = self._progress(time)
        return (1.0 - s) * self.affinity_start[user, category] + s * self.affinity_end[user, category]

    def expected_rating(self, user, item, time) -> np.ndarray:
        """Noiseless rating of (user, item) at ``time`` (before rounding and clipping)."""
        user = np.asarray(user, dtype=np.int64)
        item = np.asarray(item, dtype=np.int64)
        return (self.global_mean + self.user_bias[user] + self.item_quality[item]
                + self.affinity(user, self.item_category[item], time))

    # ---- ground-truth relevance -------------------------------------------------
    def user_step_relevance(self, item, step_items) -> np.ndarray:
        """Bool, broadcast: does a user-history step (item ``step_items``) share the
        target ``item``'s category? e.g. item [B, 1] vs batch["user_history"] [B, T]."""
        return self.item_category[np.asarray(step_items)] == self.item_category[np.asarray(item)]

    def item_step_relevance(self, item, step_users, step_times=None) -> np.ndarray:
        """Bool, broadcast: is the target ``item``'s category a main interest of the
        step's user at the step's time (weight >= main_weight)? Without
        ``step_times``: is it one of the step user's interest categories at all?"""
        step_users = np.asarray(step_users, dtype=np.int64)
        category = np.broadcast_to(self.item_category[np.asarray(item)], step_users.shape)
        if step_times is None:
            return (self.user_interests[step_users] == category[..., None]).any(axis=-1)
        weights = self.interest_weights(step_users, step_times)
        return np.take_along_axis(weights, category[..., None].astype(np.int64), axis=-1)[..., 0] >= self.main_weight

    def relevant_user_steps(self, user_histories: Histories, user: int, item: int, length=None) -> np.ndarray:
        """Bool [length]: relevance of the first ``length`` steps (default: all) of
        ``user``'s history for target ``item``."""
        events = user_histories.events(user)
        stop = events.stop if length is None else events.start + int(length)
        return self.user_step_relevance(item, user_histories.counterpart[events.start:stop])

    def relevant_item_steps(self, item_histories: Histories, item: int, length=None) -> np.ndarray:
        """Bool [length]: relevance of the first ``length`` steps of ``item``'s history."""
        events = item_histories.events(item)
        stop = events.stop if length is None else events.start + int(length)
        return self.item_step_relevance(item, item_histories.counterpart[events.start:stop],
                                        item_histories.time[events.start:stop])


def _sample_items(rng, category_of_event, period_of_event, item_category, weights_by_period):
    """One item per event, from the event's category, by popularity in its period.

    weights_by_period: [K, I]. Items are laid out sorted by category, so each
    (period, category) block is contiguous in the flattened cumulative sum and
    one searchsorted draws all events.
    """
    n_items = len(item_category)
    n_categories = int(item_category.max()) + 1
    by_category = np.argsort(item_category, kind="stable")
    counts = np.bincount(item_category, minlength=n_categories)
    cat_start = np.r_[0, np.cumsum(counts)[:-1]]
    cumulative = np.cumsum(weights_by_period[:, by_category].ravel().astype(np.float64))
    lo = period_of_event * n_items + cat_start[category_of_event]
    hi = lo + counts[category_of_event]
    base = np.where(lo > 0, cumulative[np.maximum(lo - 1, 0)], 0.0)
    total = cumulative[hi - 1] - base
    target = base + rng.random(len(lo)) * total
    flat = np.clip(np.searchsorted(cumulative, target, side="right"), lo, hi - 1)
    return by_category[flat - period_of_event * n_items]


def make_synthetic(n_users: int = 2000, n_items: int = 1000, n_ratings: int = 100_000,
                   n_categories: int = 8, seed: int = 0, *, n_interests: int = 3,
                   explore: float = 0.1, start_time: int = 1_420_070_400, span_days: int = 730,
                   global_mean: float = 3.5, user_bias_std: float = 0.3, item_quality_std: float = 0.4,
                   affinity_std: float = 0.8, affinity_drift_std: float = 0.4, noise_std: float = 0.4,
                   main_weight: float = 0.2, n_periods: int = 24) -> SyntheticData:
    """Generate the synthetic data set (see the module docstring); seeded, vectorised."""
    if n_items < n_categories:
        raise DataError(f"need n_items >= n_categories, got {n_items} < {n_categories}")
    if not 1 <= n_interests <= n_categories:
        raise DataError(f"need 1 <= n_interests <= n_categories, got {n_interests}")
    if n_ratings > 0.5 * n_users * n_items:
        raise DataError(f"n_ratings={n_ratings} is too dense for {n_users} users x {n_items} items")
    rng = np.random.default_rng(seed)
    span = int(span_days) * DAY

    # items
    item_category = np.r_[np.arange(n_categories), rng.integers(0, n_categories, n_items - n_categories)]
    item_category = rng.permutation(item_category).astype(np.int32)
    item_quality = rng.normal(0.0, item_quality_std, n_items).astype(np.float32)
    item_base = rng.lognormal(0.0, 1.0, n_items).astype(np.float32)
    item_peak = (start_time + rng.random(n_items) * span).astype(np.int64)
    item_width = (0.2 + 0.4 * rng.random(n_items)) * span

    # users
    activity = rng.lognormal(0.0, 0.8, n_users)
    window_start = rng.random(n_users) * 0.8 * span
    window_len = np.minimum((0.3 + 0.7 * rng.random(n_users)) * span, span - window_start)
    user_bias = rng.normal(0.0, user_bias_std, n_users).astype(np.float32)
    interests = np.argsort(rng.random((n_users, n_categories)), axis=1)[:, :n_interests].astype(np.int32)
    weight_start = rng.dirichlet(np.ones(n_interests), n_users).astype(np.float32)
    weight_end = rng.dirichlet(np.ones(n_interests), n_users).astype(np.float32)
    is_interest = np.zeros((n_users, n_categories), dtype=bool)
    np.put_along_axis(is_interest, interests.astype(np.int64), True, axis=1)
    affinity_start = (np.where(is_interest, 0.3, -0.3)
                      + rng.normal(0.0, affinity_std, (n_users, n_categories))).astype(np.float32)
    affinity_end = (affinity_start + rng.normal(0.0, affinity_drift_std, (n_users, n_categories))).astype(np.float32)

    # popularity of each item in each of n_periods time periods
    period_mid = start_time + (np.arange(n_periods) + 0.5) / n_periods * span
    z = (period_mid[:, None] - item_peak[None, :]) / item_width[None, :]
    popularity = item_base[None, :] * (0.2 + np.exp(-0.5 * z * z))

    activity_cdf = np.cumsum(activity / activity.sum())
    users = np.zeros(0, np.int64)
    items = np.zeros(0, np.int64)
    offsets = np.zeros(0, np.float64)
    for _ in range(60):  # rounds of sampling until n_ratings distinct (user, item) pairs
        missing = n_ratings - len(users)
        if missing <= 0:
            break
        m = int(missing * 1.3) + 64
        u = np.minimum(np.searchsorted(activity_cdf, rng.random(m), side="right"), n_users - 1)
        offset = window_start[u] + rng.random(m) * window_len[u]  # seconds since start_time
        s = offset / span
        w = (1.0 - s)[:, None] * weight_start[u] + s[:, None] * weight_end[u]
        pick = np.minimum((rng.random(m)[:, None] > np.cumsum(w, axis=1)).sum(axis=1), n_interests - 1)
        category = np.where(rng.random(m) < explore, rng.integers(0, n_categories, m), interests[u, pick])
        period = np.minimum((s * n_periods).astype(np.int64), n_periods - 1)
        i = _sample_items(rng, category, period, item_category, popularity)
        users, items, offsets = np.r_[users, u], np.r_[items, i], np.r_[offsets, offset]
        _, first = np.unique(users * n_items + items, return_index=True)
        first = np.sort(first)  # keep sampling order: earlier draws win
        users, items, offsets = users[first], items[first], offsets[first]
    if len(users) < n_ratings:
        raise DataError(f"could not draw {n_ratings} distinct pairs; lower n_ratings or raise n_users/n_items")
    users, items, offsets = users[:n_ratings], items[:n_ratings], offsets[:n_ratings]
    time = start_time + np.floor(offsets).astype(np.int64)
    order = np.argsort(time, kind="stable")
    users, items, time = users[order], items[order], time[order]

    s = np.clip((time - start_time) / span, 0.0, 1.0)
    category = item_category[items]
    affinity = (1.0 - s) * affinity_start[users, category] + s * affinity_end[users, category]
    expected = (global_mean + user_bias[users] + item_quality[items] + affinity).astype(np.float32)
    rating = np.clip(np.rint(expected + rng.normal(0.0, noise_std, n_ratings)), 1.0, 5.0).astype(np.float32)

    ratings = pd.DataFrame({"user": users.astype(np.int64), "item": items.astype(np.int64),
                            "rating": rating, "time": time})
    features = ItemFeatures(
        feature_names=np.array([f"c{c}" for c in range(n_categories)]),
        paths=[((int(c),),) for c in item_category],
        hierarchical=False,
    )
    dataset = Dataset(
        name="synthetic", ratings=ratings,
        user_ids=np.arange(n_users, dtype=np.int64), item_ids=np.arange(n_items, dtype=np.int64),
        rating_scale=(1.0, 5.0), time_unit="seconds",
        item_titles=np.array([f"c{c}-item{i}" for i, c in enumerate(item_category)]),
        item_features=features, source=f"synthetic(seed={seed})",
    )
    return SyntheticData(
        dataset=dataset, item_category=item_category, item_quality=item_quality,
        item_base_popularity=item_base, item_peak_time=item_peak, item_width=item_width,
        user_bias=user_bias, user_interests=interests, weight_start=weight_start, weight_end=weight_end,
        affinity_start=affinity_start, affinity_end=affinity_end, expected=expected,
        global_mean=float(global_mean), noise_std=float(noise_std), start_time=int(start_time),
        span_seconds=span, main_weight=float(main_weight),
    )
