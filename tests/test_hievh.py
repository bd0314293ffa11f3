"""HieVH: hierarchy helpers (hand-worked) and fitting on tiny planted rating data."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.types import Dataset, ItemFeatures, ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines.hievh import HieVH, _sibling_means, _vertical, category_parents, leaf_neighbours

# categories: 0 root0, 1 root1, 2..5 leaves; leaf 2 + (i % 4) sits under root i % 2
NAMES = np.array(["root0", "root1", "a", "b", "c", "d"])


def rating_split(n_users=80, n_items=40, per_user=16, seed=0, noise=0.3, n_cold=0):
    """Users of group g rate items of root category g about 5 and the others about 1."""
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for u in range(n_users):
        for i in rng.choice(n_items, size=per_user, replace=False):
            rating = (5.0 if i % 2 == u % 2 else 1.0) + noise * rng.standard_normal()
            rows.append((u, int(i), float(np.clip(rating, 1, 5)), t))
            t += 1
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "time"])
    rank = df.groupby("user").cumcount(ascending=False)
    test, val, train = df[rank < 3], df[rank.isin([3, 4])], df[rank > 4]
    total = n_items + n_cold
    features = ItemFeatures(feature_names=NAMES, paths=[((i % 2, 2 + i % 4),) for i in range(total)], hierarchical=True)
    dataset = Dataset(name="rated", ratings=df, user_ids=np.arange(n_users), item_ids=np.arange(total),
                      rating_scale=(1.0, 5.0), item_features=features)
    return ProtocolSplit(name="rated", dataset=dataset, history=pd.concat([train, val]), train=train, val=val,
                         test=test, min_len=3)


def rmse(pred, target):
    return float(np.sqrt(np.mean((np.clip(pred, 1, 5) - target) ** 2)))


@pytest.fixture(scope="module")
def split():
    return rating_split()


def test_category_parents_majority_and_roots():
    ids = np.array([[[0, 2], [1, 3]], [[0, 2], [0, 0]], [[1, 2], [0, 0]]])
    mask = np.array([[[1, 1], [1, 1]], [[1, 1], [0, 0]], [[1, 1], [0, 0]]], bool)
    parents = category_parents(ids, mask, 4)
    assert parents.tolist() == [4, 4, 0, 1]  # 2 under 0 twice, under 1 once -> 0; roots point at 4


def test_sibling_means_hand_worked():
    category = jnp.array([[1.0], [3.0], [10.0], [20.0], [30.0]])
    parents = jnp.array([5, 5, 0, 0, 1])  # roots 0,1; 2,3 children of 0; 4 only child of 1
    sib = np.asarray(_sibling_means(category, parents))[:, 0]
    assert sib.tolist() == [3.0, 1.0, 20.0, 10.0, 0.0]


def test_vertical_weights_average_levels_then_paths():
    dense = {"category": jnp.array([[1.0], [3.0], [10.0]]), "category_bias": jnp.array([0.0, 1.0, 2.0]),
             "level_logits": jnp.array([0.0, 0.0])}  # equal level weights
    ids = jnp.array([[[0, 1], [2, 0]]])
    mask = jnp.array([[[1.0, 1.0], [1.0, 0.0]]])
    h, cb = _vertical(dense, ids, mask)
    # path 1: mean(1, 3) = 2; path 2: 10 -> mean over paths 6
    np.testing.assert_allclose(np.asarray(h), [[6.0]], rtol=1e-6)
    np.testing.assert_allclose(np.asarray(cb), [(0.5 + 2.0) / 2], rtol=1e-6)


def test_leaf_neighbours_group_fit_items_by_leaf():
    features = ItemFeatures(feature_names=NAMES, paths=[((0, 2),), ((0, 2),), ((1, 3),), ((0, 2),), ()],
                            hierarchical=True)
    ids, mask = nc.path_matrix(features, 5)
    leaf, indptr, members = leaf_neighbours(ids, mask, fit_items=np.array([0, 1, 2]))
    assert leaf[:, 0].tolist() == [2, 2, 3, 2, -1]
    assert members[indptr[2]:indptr[3]].tolist() == [0, 1]  # item 3 is not in the fit data
    assert members[indptr[3]:indptr[4]].tolist() == [2]


def test_hievh_fits_planted_ratings(split):
    model = HieVH(dim=8, batch_size=128, max_epochs=25, patience=25, grid=None, refit=False).fit(split, seed=0, verbose=False)
    assert model.rates
    pred = model.predict(split.test["user"].to_numpy(), split.test["item"].to_numpy())
    target = split.test["rating"].to_numpy()
    assert rmse(pred, target) < 0.6  # the global mean scores ~1.9 on these data
    assert rmse(pred, target) < 0.4 * rmse(np.full_like(target, split.train["rating"].mean()), target)
    # ranking: own-group items above the others
    scores = model.score_items(0, np.arange(40))
    assert scores[0::2].min() > scores[1::2].max()
    assert len(model.selection_["level_weights"]) == 2


@pytest.mark.slow
def test_hievh_cold_items_use_their_categories():
    split = rating_split(n_cold=4)
    model = HieVH(dim=8, batch_size=128, max_epochs=25, patience=25, grid=None, refit=False, unseen_last=False)
    model.fit(split, seed=0, verbose=False)
    cold = np.arange(40, 44)  # categories like items 0..3: even -> group 0
    pred = model.predict(np.zeros(4, np.int64), cold)
    assert pred[0] > pred[1] + 0.5 and pred[2] > pred[3] + 0.5
    model.unseen_last = True  # only affects ranking
    scores = model.score_items(0, np.arange(44))
    assert scores[cold].max() < scores[:40].min()


@pytest.mark.slow
def test_hievh_grid_selects_on_validation_rmse(split):
    model = HieVH(dim=4, batch_size=256, max_epochs=3, grid=({"l2": 0.01}, {"l2": 1.0}), refit=False)
    model.fit(split, seed=0, verbose=False)
    assert [g["config"] for g in model.selection_["grid"]] == [{"l2": 0.01}, {"l2": 1.0}]
    best = min(model.selection_["grid"], key=lambda g: g["val_rmse"])
    assert model.selection_["config"] == best["config"]


def test_hievh_flat_features_and_no_features():
    """Flat features (one per item: parity) carry a cold item's preference; without features every
    cold item gets the same prediction (nothing tells them apart), while trained items still fit."""
    split = rating_split(n_cold=4)
    flat = ItemFeatures(feature_names=NAMES[:2], paths=[((i % 2,),) for i in range(44)], hierarchical=False)
    cold, warm = np.arange(40, 44), np.arange(0, 4)  # even items: user 0's group
    for features in (flat, None):
        ds = Dataset(name="x", ratings=split.dataset.ratings, user_ids=split.dataset.user_ids,
                     item_ids=split.dataset.item_ids, rating_scale=(1.0, 5.0), item_features=features)
        s = ProtocolSplit(name="x", dataset=ds, history=split.history, train=split.train, val=split.val,
                          test=split.test, min_len=3)
        model = HieVH(dim=4, batch_size=256, max_epochs=10, patience=10, grid=None, refit=False,
                      unseen_last=False).fit(s, seed=0, verbose=False)
        user0 = np.zeros(4, np.int64)
        pred_cold, pred_warm = model.predict(user0, cold), model.predict(user0, warm)
        assert pred_warm[0] > pred_warm[1] + 1.0 and pred_warm[2] > pred_warm[3] + 1.0
        if features is None:
            assert np.ptp(pred_cold) < 1e-9
        else:  # same feature -> same prediction; the liked group's above the other
            assert pred_cold[0] == pytest.approx(pred_cold[2]) and pred_cold[1] == pytest.approx(pred_cold[3])
            assert pred_cold[0] > pred_cold[1] + 0.3


@pytest.mark.slow
def test_hievh_on_ml100k(data_root):
    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.evaluate import ranking

    split = load_protocol("ml100k", data_root)
    model = HieVH().fit(split, seed=0, verbose=True)
    result = ranking.evaluate_rating(model.predict, split.test, split.rating_scale)
    print("HieVH ml100k", result)
    assert result["rmse"] < 1.05  # global mean 1.1243, BaselineOnly 0.9813
