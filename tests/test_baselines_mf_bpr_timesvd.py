"""MF / bias-only / BPR / MostPop / TimeSVD++ and the shared training utilities.

References: closed-form ridge regression (bias-only), explicit loops over the
TimeSVD++ formula, brute-force negative-sampling checks, planted structure.
"""
from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd
import pytest

from iarn_jax.data.types import Dataset, ProtocolSplit
from iarn_jax.evaluate import ranking
from iarn_jax.models.baselines import common
from iarn_jax.models.baselines.bpr import BPR, MostPop, sample_negatives
from iarn_jax.models.baselines.mf import MF
from iarn_jax.models.baselines.timesvdpp import AMAZON_SPAN_DAYS, DayClock, TimeSVDpp, deviation


def frame(users, items, ratings, times):
    return pd.DataFrame(
        {
            "user": np.asarray(users, np.int64),
            "item": np.asarray(items, np.int64),
            "rating": np.asarray(ratings, np.float32),
            "time": np.asarray(times, np.int64),
        }
    )


def split_from(train, val, test, n_users, n_items, name="synthetic", time_unit="seconds", history=None):
    """A ProtocolSplit over ids 0..n-1 (ratings 1-5); history = train + val unless given."""
    history = pd.concat([train, val], ignore_index=True) if history is None else history
    dataset = Dataset(
        name=name,
        ratings=pd.concat([history, test], ignore_index=True),
        user_ids=np.arange(n_users),
        item_ids=np.arange(n_items),
        rating_scale=(1.0, 5.0),
        time_unit=time_unit,
    )
    return ProtocolSplit(name=name, dataset=dataset, history=history, train=train, val=val, test=test, min_len=1)


def low_rank_split(seed=0, n_users=40, n_items=30, density=0.5, noise=0.1):
    """Ratings from a rank-2 model plus biases; random train/val/test pairs."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(size=(n_users, 2)), rng.normal(size=(n_items, 2))
    bu, bi = 0.3 * rng.normal(size=n_users), 0.3 * rng.normal(size=n_items)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    ratings = np.clip(3.0 + bu[users] + bi[items] + 0.6 * np.sum(p[users] * q[items], 1) + noise * rng.normal(size=users.size), 1, 5)
    times = rng.integers(0, 100 * 86400, users.size)
    part = rng.random(users.size)
    tr, va, te = part < 0.7, (part >= 0.7) & (part < 0.85), part >= 0.85
    f = lambda m: frame(users[m], items[m], ratings[m], times[m])  # noqa: E731
    return split_from(f(tr), f(va), f(te), n_users, n_items)


# ------------------------------------------------------------------ common
def test_regularisation_weights_and_grid():
    users = np.array([0, 0, 1, 2, 2, 2])
    items = np.array([1, 0, 1, 1, 0, 1])
    wu, wi = common.regularisation_weights(users, items, 3, 2, "uniform")
    np.testing.assert_allclose(wu, [1 / 2, 1 / 2, 1, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_allclose(wi, [1 / 4, 1 / 2, 1 / 4, 1 / 4, 1 / 2, 1 / 4])
    wu, wi = common.regularisation_weights(users, items, 3, 2, "frequency")
    assert np.all(wu == 1) and np.all(wi == 1)
    assert common.expand_grid(a=[1, 2], b=["x"]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


def test_epoch_fn_padding_gives_exact_full_batch_mean():
    """With SGD, one epoch over padded batches equals the per-batch updates of
    the real examples only (padding has weight 0)."""
    x = np.arange(7, dtype=np.float32)
    data = {"x": x}

    def loss_fn(params, batch):
        return common.weighted_mean((params["w"] - batch["x"]) ** 2, batch["weight"])

    epoch = common.make_epoch_fn(loss_fn, optax.sgd(0.1), n_examples=7, batch_size=7)
    params, _, loss = epoch({"w": jnp.zeros(())}, optax.sgd(0.1).init({"w": jnp.zeros(())}), data, __import__("jax").random.PRNGKey(0))
    # one full-batch step: w = 0 - 0.1 * mean(2 (0 - x)) = 0.2 * mean(x)
    assert float(params["w"]) == pytest.approx(0.2 * x.mean(), rel=1e-6)
    assert float(loss) == pytest.approx(np.mean(x**2), rel=1e-6)
    # batch 4 of 7: two steps, the second on 3 real examples + 1 padding
    epoch = common.make_epoch_fn(loss_fn, optax.sgd(0.1), n_examples=7, batch_size=4)
    params, _, _ = epoch({"w": jnp.zeros(())}, optax.sgd(0.1).init({"w": jnp.zeros(())}), data, __import__("jax").random.PRNGKey(3))
    assert 0.0 < float(params["w"]) < x.max()


def test_fit_early_stopping_keeps_best_and_stops():
    scores = iter([5.0, 3.0, 4.0, 4.5, 4.2, 1.0])

    def loss_fn(params, batch):
        return common.weighted_mean((params["w"] - batch["x"]) ** 2, batch["weight"])

    result = common.fit_early_stopping(
        {"w": jnp.zeros(())}, loss_fn, optax.sgd(0.1), {"x": np.ones(4, np.float32)},
        lambda params: next(scores), batch_size=4, max_epochs=10, patience=3, verbose=False,
    )
    assert result.best_epoch == 2 and result.best_score == 3.0 and result.epochs_run == 5
    # parameters of epoch 2: w = 1 - 0.8^2
    assert float(result.params["w"]) == pytest.approx(1 - 0.8**2, rel=1e-5)


def test_sample_negatives_brute_force():
    rng = np.random.default_rng(0)
    n_items = 12
    users = rng.integers(0, 5, 30)
    items = rng.integers(0, 10, 30)  # items 10, 11 never in the pool
    keys = np.unique(users * n_items + items)
    pool = np.unique(items)
    negatives = sample_negatives(users, pool, keys, n_items, np.random.default_rng(1))
    user_items = {u: set(items[users == u]) for u in range(5)}
    for u, j in zip(users, negatives):
        assert j in pool and j not in user_items[u]


# ---------------------------------------------------------------------- MF
def test_bias_only_matches_closed_form_ridge():
    """Uniform-mode bias-only MF trained to convergence = ridge regression
    min sum (mu + b_u + b_i - r)^2 + lam (sum b_u^2 + sum b_i^2)."""
    rng = np.random.default_rng(0)
    n_users, n_items, lam = 6, 5, 2.0
    users = np.concatenate([np.arange(n_users), rng.integers(0, n_users, 25)])
    items = np.concatenate([np.arange(n_items), rng.integers(0, n_items, 26)])[: users.size]
    ratings = rng.integers(1, 6, users.size).astype(float)
    train = frame(users, items, ratings, np.zeros(users.size))
    split = split_from(train, train.iloc[:0], train.iloc[:3], n_users, n_items)
    model = MF(0, grid=[{}], reg_mode="uniform", reg_bias=lam, lr=0.05, batch_size=users.size, max_epochs=3000)
    model.fit(split, verbose=False)

    mu = ratings.mean()
    design = np.zeros((users.size, n_users + n_items))
    design[np.arange(users.size), users] = 1
    design[np.arange(users.size), n_users + items] = 1
    solution = np.linalg.solve(design.T @ design + lam * np.eye(n_users + n_items), design.T @ (ratings - mu))
    np.testing.assert_allclose(model.params["user_bias"], solution[:n_users], atol=2e-3)
    np.testing.assert_allclose(model.params["item_bias"], solution[n_users:], atol=2e-3)
    np.testing.assert_allclose(model.predict(users, items), mu + design @ solution, atol=4e-3)


def test_mf_beats_bias_only_on_low_rank_data_and_scores_consistent():
    split = low_rank_split()
    mf = MF(4, grid=[{"lr": 0.02, "reg": 0.01}], batch_size=128, max_epochs=150, patience=10).fit(split, verbose=False)
    bias = MF(0, grid=[{"lr": 0.05, "reg": 0.01}], batch_size=128, max_epochs=150).fit(split, verbose=False)
    mf_rmse = ranking.evaluate_rating(mf.predict, split.test, split.rating_scale)["rmse"]
    bias_rmse = ranking.evaluate_rating(bias.predict, split.test, split.rating_scale)["rmse"]
    assert mf_rmse < 0.8 * bias_rmse, (mf_rmse, bias_rmse)
    assert mf.report["best_epoch"] >= 1 and mf.report["val_rmse"] < 1.0
    # score_matrix / score_items agree with predict (all items seen in train here)
    users, items = np.array([0, 3]), np.arange(split.n_items)
    matrix = mf.score_matrix(users, items)
    for row, u in enumerate(users):
        np.testing.assert_allclose(matrix[row], mf.predict(np.full(items.size, u), items), rtol=1e-5)
        np.testing.assert_allclose(mf.score_items(int(u), items), matrix[row], rtol=1e-6)


def test_mf_unseen_items_zeroed_and_ranked_last():
    train = frame([0, 0, 1, 1, 2], [0, 1, 0, 1, 1], [5, 3, 4, 2, 3], [0] * 5)
    split = split_from(train, train.iloc[:0], train.iloc[:1], n_users=3, n_items=4)
    mf = MF(2, grid=[{}], max_epochs=5, batch_size=8).fit(split, verbose=False)
    assert np.all(mf.params["item_factors"][2:] == 0) and np.all(mf.params["item_bias"][2:] == 0)
    scores = mf.score_items(0, np.arange(4))
    assert scores[2] == scores[3] < scores[:2].min()
    mf.unseen_last = False
    assert mf.score_items(0, np.arange(4))[2] == pytest.approx(mf.mu + mf.params["user_bias"][0])


# --------------------------------------------------------------- BPR / pop
def clustered_split(seed=0, n_users=40, n_items=30):
    """Users of group g interact only with items of group g (3 groups)."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        group_items = np.arange(u % 3, n_items, 3)
        for i in rng.choice(group_items, 6, replace=False):
            rows.append((u, i))
    rows = np.array(rows)
    part = rng.random(len(rows))
    f = lambda m: frame(rows[m, 0], rows[m, 1], np.full(m.sum(), 5.0), np.arange(m.sum()))  # noqa: E731
    return split_from(f(part < 0.6), f((part >= 0.6) & (part < 0.8)), f(part >= 0.8), n_users, n_items)


def test_bpr_learns_planted_groups_and_mostpop_counts():
    split = clustered_split()
    users = ranking.eligible_test_users(split)
    bpr = BPR(8, grid=[{"lr": 0.02, "reg": 0.01}], batch_size=64, max_epochs=60, eval_every=5, patience=5).fit(split, verbose=False)
    result = ranking.evaluate_ranking(None, split, users, score_matrix_fn=bpr.score_matrix, progress=False)
    # Oracle that knows the planted groups (ties inside a group count half).
    oracle = ranking.evaluate_ranking(
        lambda u, items: (items % 3 == u % 3).astype(float), split, users, progress=False
    )
    assert result["auc"] > oracle["auc"] - 0.05, (result, oracle)
    assert bpr.report["val_auc"] > 0.75
    np.testing.assert_allclose(bpr.score_items(1, np.arange(5)), bpr.score_matrix(np.array([1]), np.arange(5))[0])

    pop = MostPop().fit(split)
    counts = split.history["item"].value_counts()
    for item in range(split.n_items):
        assert pop.score_items(0, np.array([item]))[0] == counts.get(item, 0)
    pop_result = ranking.evaluate_ranking(pop.score_items, split, users, progress=False)
    assert pop_result["auc"] < result["auc"] - 0.2


def test_bpr_feature_factors_fold_into_item_factors_as_a_numpy_loop_does():
    from iarn_jax.models.baselines.bpr import fold_features, make_loss_fn

    rng = np.random.default_rng(0)
    flat = np.array([[0, 2], [1, -1], [-1, -1], [2, -1]])  # item 2 has no feature
    params = {"user_factors": rng.normal(size=(3, 4)), "item_factors": rng.normal(size=(4, 4)),
              "item_bias": rng.normal(size=4), "feature_factors": rng.normal(size=(3, 4)),
              "feature_bias": rng.normal(size=3)}
    folded = fold_features(params, flat)
    assert set(folded) == {"user_factors", "item_factors", "item_bias"}
    for i in range(4):
        fs = [f for f in flat[i] if f >= 0]
        q = params["item_factors"][i] + (np.mean([params["feature_factors"][f] for f in fs], 0) if fs else 0)
        b = params["item_bias"][i] + (np.mean([params["feature_bias"][f] for f in fs]) if fs else 0)
        np.testing.assert_allclose(folded["item_factors"][i], q, rtol=1e-6)
        np.testing.assert_allclose(folded["item_bias"][i], b, rtol=1e-6)
    # the training loss scores with the folded parameters (reg 0: the loss is -log sigmoid(x_ui - x_uj))
    batch = {"user": np.array([0, 2]), "item": np.array([0, 2]), "negative": np.array([1, 3]), "weight": np.ones(2)}
    loss = make_loss_fn(0.0, 0.0, jnp.asarray(flat))({k: jnp.asarray(v, jnp.float32) for k, v in params.items()}, batch)
    x = [folded["item_bias"][i] - folded["item_bias"][j] + folded["user_factors"][u] @ (folded["item_factors"][i] - folded["item_factors"][j])
         for u, i, j in zip(batch["user"], batch["item"], batch["negative"])]
    np.testing.assert_allclose(float(loss), np.mean(np.log1p(np.exp(-np.array(x)))), rtol=1e-5)


# --------------------------------------------------------------- TimeSVD++
def test_deviation_and_day_clock():
    np.testing.assert_allclose(deviation(np.array([10.0, 2.0, 5.0]), np.array([2.0, 10.0, 5.0]), 0.4), [8**0.4, -(8**0.4), 0.0], rtol=1e-6)
    clock = DayClock("seconds")
    np.testing.assert_array_equal(clock.days([0, 86399, 86400, 3 * 86400 + 5]), [0, 0, 1, 3])
    clock = DayClock("order", t_min=0, t_max=1000)
    np.testing.assert_array_equal(clock.days([0, 500, 1000]), [0, AMAZON_SPAN_DAYS // 2, AMAZON_SPAN_DAYS])


def brute_timesvd(model, user, item, t):
    """Explicit evaluation of Koren's formula from the fitted parameters."""
    p = model.params
    day = int(model.clock.days([t])[0])
    n_u = [j for uu, j in zip(model.fit_users, model.fit_items) if uu == user]
    implicit = sum((p["implicit"][j] for j in n_u), np.zeros(model.factors)) / math.sqrt(max(len(n_u), 1))
    t_u = np.mean([d for uu, d in zip(model.fit_users, model.clock.days(model._fit_times)) if uu == user])
    dev = math.copysign(abs(day - t_u) ** 0.4, day - t_u)
    span = model.last_day - model.first_day + 1
    b = min(max((day - model.first_day) * 30 // span, 0), 29)
    fit_days = {(int(uu), int(d)) for uu, d in zip(model.fit_users, model.clock.days(model._fit_times))}
    b_ut = c_ut = 0.0
    if (user, day) in fit_days:
        key = user * (model.last_day + 2) + (day - model.first_day)
        index = int(np.searchsorted(model.day_keys, key))
        b_ut, c_ut = p["day_bias"][index], p["day_scale"][index]
    return (
        model.mu + p["user_bias"][user] + p["alpha"][user] * dev + b_ut
        + (p["item_bias"][item] + p["item_bin_bias"][item, b]) * (1 + p["user_scale"][user] + c_ut)
        + float(np.dot(p["item_factors"][item], p["user_factors"][user] + implicit))
    )


def test_timesvdpp_matches_explicit_formula_and_learns():
    split = low_rank_split(seed=1)
    model = TimeSVDpp(3, grid=[{"lr": 0.02, "reg": 0.02, "reg_bias": 0.01, "reg_time": 0.1}], batch_size=128, max_epochs=60, patience=8)
    model.fit(split, verbose=False)
    model._fit_times = split.train["time"].to_numpy()
    test_rmse = ranking.evaluate_rating(model.predict_at, split.test, split.rating_scale, with_time=True)["rmse"]
    mean_rmse = float(np.sqrt(np.mean((split.test["rating"] - split.train["rating"].mean()) ** 2)))
    assert test_rmse < 0.8 * mean_rmse, (test_rmse, mean_rmse)
    # seen (user, day) pairs (training rows) and unseen ones (test rows; days after the cut)
    train, test = split.train, split.test
    rows = [(int(r.user), int(r.item), int(r.time)) for r in train.head(5).itertuples()]
    rows += [(int(r.user), int(r.item), int(r.time)) for r in test.head(5).itertuples()]
    rows += [(0, 1, 500 * 86400)]  # far after the fit data: last bin, no day terms
    users, items, times = map(np.array, zip(*rows))
    got = model.predict_at(users, items, times)
    expected = [brute_timesvd(model, u, i, t) for u, i, t in rows]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    # predict() = prediction on the first day after the fit data
    after = (model.last_day + 1) * 86400
    np.testing.assert_allclose(model.predict(users, items), model.predict_at(users, items, np.full(users.size, after)), rtol=1e-6)


@pytest.mark.slow
def test_timesvdpp_row_order_time():
    split = low_rank_split(seed=2)
    order_split = split_from(
        split.train.assign(time=np.arange(len(split.train))),
        split.val.assign(time=np.arange(len(split.val))),
        split.test.assign(time=len(split.train) + np.arange(len(split.test))),
        split.n_users, split.n_items, name="clothing", time_unit="order",
    )
    model = TimeSVDpp(grid=[{"lr": 0.02}], batch_size=256, max_epochs=3).fit(order_split, verbose=False)
    assert model.factors == 50 and model.clock.time_unit == "order"
    assert model.clock.days([order_split.test["time"].max()])[0] == AMAZON_SPAN_DAYS
    assert np.all(np.isfinite(model.predict_frame(order_split.test)))


def test_grid_search_steps_past_the_edge_until_validation_stops_improving():
    from iarn_jax.models.baselines import common

    calls = []

    def fit_fn(config):
        calls.append(config["reg"])
        score = (np.log(config["reg"]) - np.log(0.8)) ** 2  # best at reg = 0.8
        return common.FitResult(params=None, best_score=score, best_epoch=1, epochs_run=1, seconds=0.0, curve=[])

    grid = common.expand_grid(lr=[0.01], reg=[0.1, 0.2, 0.4])
    best, result, rows = common.grid_search(grid, fit_fn, verbose=False, extend={"reg": 2.0})
    assert calls == [0.1, 0.2, 0.4, 0.8, 1.6]  # 0.8 improved, 1.6 did not: stop
    assert best == {"lr": 0.01, "reg": 0.8} and len(rows) == 5
    # an interior optimum triggers nothing; the lower edge steps downwards
    calls.clear()
    common.grid_search(common.expand_grid(reg=[0.4, 0.8, 1.6]), fit_fn, verbose=False, extend={"reg": 2.0})
    assert calls == [0.4, 0.8, 1.6]
    calls.clear()
    best, *_ = common.grid_search(common.expand_grid(reg=[1.6, 3.2]), fit_fn, verbose=False, extend={"reg": 2.0})
    assert calls == [1.6, 3.2, 0.8, 0.4] and best["reg"] == 0.8


def test_recentpop_counts_the_last_window_and_picks_it_on_the_latest_events():
    """Item 0 was popular early, item 1 is popular at the end: all-time popularity ranks 0 first,
    the recent window ranks 1 first, and the holdout (the latest events, mostly item 1) picks a
    window short enough to see that."""
    import types

    from iarn_jax.models.baselines.bpr import RecentPop

    times = np.r_[np.arange(0, 60), np.arange(80, 100), np.arange(80, 100, 4)]
    items = np.r_[np.zeros(60, int), np.ones(20, int), np.full(5, 2)]
    split = types.SimpleNamespace(name="toy", n_items=4, history=pd.DataFrame({"item": items, "time": times}))
    fixed = RecentPop(window=0.2).fit(split, verbose=False)  # window = round(0.2 * 100) = 20: times >= 80
    totals = np.bincount(items, minlength=4)
    np.testing.assert_allclose(fixed.counts, [0, 20, 5, 0] + totals / (totals.max() + 1.0))
    assert list(np.argsort(-fixed.score_items(0, np.arange(4)))) == [1, 2, 0, 3]
    chosen = RecentPop().fit(split, verbose=False)
    assert chosen.window < 0.5 and np.argmax(chosen.counts) == 1
    assert np.argmax(RecentPop(window=1.0).fit(split, verbose=False).counts) == 0  # all-time: item 0
