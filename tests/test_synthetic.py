"""Synthetic data: determinism, shape of the data, ground truth, learnability."""
from __future__ import annotations

import time

import numpy as np
import pytest

from iarn_jax.data.batching import materialize
from iarn_jax.data.histories import build_histories, make_pairs
from iarn_jax.data.protocols import load_protocol
from iarn_jax.data.synthetic import make_synthetic
from iarn_jax.data.types import DataError

SMALL = dict(n_users=400, n_items=200, n_ratings=15_000, n_categories=6)


def test_deterministic_and_seeded():
    a, b, c = make_synthetic(**SMALL, seed=1), make_synthetic(**SMALL, seed=1), make_synthetic(**SMALL, seed=2)
    assert a.dataset.ratings.equals(b.dataset.ratings)
    np.testing.assert_array_equal(a.item_category, b.item_category)
    np.testing.assert_array_equal(a.affinity_end, b.affinity_end)
    assert not a.dataset.ratings.equals(c.dataset.ratings)


def test_dataset_contract():
    data = make_synthetic(**SMALL, seed=0)
    ratings = data.dataset.ratings
    assert len(ratings) == 15_000
    assert list(ratings.columns) == ["user", "item", "rating", "time"]
    assert not ratings.duplicated(["user", "item"]).any()  # nobody rates an item twice
    assert set(np.unique(ratings["rating"])) <= {1.0, 2.0, 3.0, 4.0, 5.0}
    assert (np.diff(ratings["time"].to_numpy()) >= 0).all()
    assert ratings["time"].min() >= data.start_time and ratings["time"].max() < data.start_time + data.span_seconds
    assert data.dataset.n_users == 400 and data.dataset.n_items == 200 and data.dataset.time_unit == "seconds"
    item = 17
    assert data.dataset.item_titles[item] == f"c{data.item_category[item]}-item{item}"
    assert data.dataset.item_features.flat_features(item) == (int(data.item_category[item]),)
    assert data.dataset.item_features.n_features == 6


def test_ground_truth_is_consistent():
    data = make_synthetic(**SMALL, seed=0)
    ratings = data.dataset.ratings
    u, i, t = (ratings[c].to_numpy() for c in ("user", "item", "time"))
    np.testing.assert_allclose(data.expected, data.expected_rating(u, i, t), atol=1e-5)
    # ratings are the expected value plus noise of the stated size (rounding adds ~0.29)
    residual = ratings["rating"].to_numpy() - np.clip(data.expected, 1, 5)
    assert 0.3 < residual.std() < 0.7
    # interest weights: a distribution over the user's interests at any time
    weights = data.interest_weights(u[:100], t[:100])
    np.testing.assert_allclose(weights.sum(-1), 1.0, atol=1e-5)
    # users choose mostly from their interests (explore = 0.1)
    in_interests = (data.user_interests[u] == data.item_category[i][:, None]).any(1).mean()
    assert 0.85 < in_interests < 0.98

    split = load_protocol("synthetic", None, **SMALL)
    assert split.dataset.ratings.equals(ratings)  # data_seed defaults to 0
    other = load_protocol("synthetic", None, **SMALL, data_seed=3)
    assert not other.dataset.ratings.equals(ratings)
    uh, ih = build_histories(split.history, split.n_users, split.n_items)
    user, item = int(split.test["user"].iloc[0]), int(split.test["item"].iloc[0])
    steps = data.relevant_user_steps(uh, user, item)
    events = uh.events(user)
    np.testing.assert_array_equal(steps, data.item_category[uh.counterpart[events]] == data.item_category[item])
    assert len(data.relevant_user_steps(uh, user, item, length=2)) == 2
    item_steps = data.relevant_item_steps(ih, item)
    ev = ih.events(item)
    by_hand = [data.interest_weights(v, tt)[data.item_category[item]] >= data.main_weight
               for v, tt in zip(ih.counterpart[ev], ih.time[ev])]
    np.testing.assert_array_equal(item_steps, by_hand)
    # batch-level relevance: broadcast over [B, T] histories
    pairs = make_pairs(split.test, uh, ih, mode="full")
    batch = materialize(np.arange(8), pairs, uh, ih)
    relevant = data.user_step_relevance(batch["item"][:, None], batch["user_history"]) & batch["user_history_mask"]
    assert relevant.shape == batch["user_history"].shape and relevant.any()
    untimed = data.item_step_relevance(batch["item"][:, None], batch["item_history"])
    assert untimed.shape == batch["item_history"].shape


def _fit_biases(frame, n_users, n_items, reg=5.0, iterations=10):
    mu = float(frame["rating"].mean())
    u, i, r = frame["user"].to_numpy(), frame["item"].to_numpy(), frame["rating"].to_numpy()
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(iterations):
        bu = np.bincount(u, r - mu - bi[i], n_users) / (np.bincount(u, minlength=n_users) + reg)
        bi = np.bincount(i, r - mu - bu[u], n_items) / (np.bincount(i, minlength=n_items) + reg)
    return mu, bu, bi


def test_learnable_relevant_history_beats_biases():
    data = make_synthetic(n_users=1000, n_items=500, n_ratings=50_000, seed=0)
    split = load_protocol("synthetic", None, n_users=1000, n_items=500, n_ratings=50_000, data_seed=0)
    mu, bu, bi = _fit_biases(split.history, split.n_users, split.n_items)
    test = split.test
    u, i, y = test["user"].to_numpy(), test["item"].to_numpy(), test["rating"].to_numpy()

    def rmse(prediction):
        return float(np.sqrt(np.mean((np.clip(prediction, 1, 5) - y) ** 2)))

    bias = mu + bu[u] + bi[i]
    # "knowing the relevant history": the mean residual of the user's steps in the
    # target item's category (shrunk), versus the mean residual of all her steps
    h = split.history
    hu, hi = h["user"].to_numpy(), h["item"].to_numpy()
    residual = h["rating"].to_numpy() - mu - bu[hu] - bi[hi]
    n_cat = data.n_categories
    key = hu * n_cat + data.item_category[hi]
    per_category = np.bincount(key, residual, split.n_users * n_cat) / (np.bincount(key, minlength=split.n_users * n_cat) + 2)
    per_user = np.bincount(hu, residual, split.n_users) / (np.bincount(hu, minlength=split.n_users) + 2)
    rmse_bias = rmse(bias)
    rmse_all = rmse(bias + per_user[u])
    rmse_relevant = rmse(bias + per_category[u * n_cat + data.item_category[i]])
    rmse_oracle = rmse(data.expected_rating(u, i, test["time"].to_numpy()))
    assert rmse_relevant < rmse_bias - 0.15  # measured: ~0.82 vs ~0.58
    assert rmse_relevant < rmse_all - 0.15  # reading ALL steps does not help
    assert rmse_oracle < rmse_relevant


def test_invalid_arguments():
    with pytest.raises(DataError):
        make_synthetic(n_users=10, n_items=4, n_ratings=100, n_categories=8)
    with pytest.raises(DataError, match="too dense"):
        make_synthetic(n_users=10, n_items=10, n_ratings=90, n_categories=4)


@pytest.mark.slow
def test_one_million_ratings_in_seconds():
    start = time.perf_counter()
    data = make_synthetic(n_users=20_000, n_items=10_000, n_ratings=1_000_000)
    assert len(data.dataset.ratings) == 1_000_000
    assert time.perf_counter() - start < 15.0  # ~2.6 s measured on the 2-core dev machine
