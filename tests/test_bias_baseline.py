import numpy as np

from iarn_jax.models.baselines.bias import BiasBaseline


def _loop_als(users, items, ratings, n_users, n_items, reg_u, reg_i, sweeps):
    """Plain-loop ALS exactly as Surprise's BaselineOnly describes it."""
    mu = ratings.mean()
    bu, bi = np.zeros(n_users), np.zeros(n_items)
    for _ in range(sweeps):
        for i in range(n_items):
            rows = [k for k in range(len(items)) if items[k] == i]
            bi[i] = sum(ratings[k] - mu - bu[users[k]] for k in rows) / (reg_i + len(rows))
        for u in range(n_users):
            rows = [k for k in range(len(users)) if users[k] == u]
            bu[u] = sum(ratings[k] - mu - bi[items[k]] for k in rows) / (reg_u + len(rows))
    return mu, bu, bi


def test_bias_baseline_matches_loop_als():
    rng = np.random.default_rng(0)
    users = rng.integers(0, 7, 60)
    items = rng.integers(0, 5, 60)
    ratings = rng.integers(1, 6, 60).astype(float)
    model = BiasBaseline(reg_user=3.0, reg_item=2.0, sweeps=4).fit_arrays(users, items, ratings, 8, 6)
    mu, bu, bi = _loop_als(users, items, ratings, 8, 6, 3.0, 2.0, 4)
    np.testing.assert_allclose(model.b_user, bu, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.b_item, bi, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(model.predict(np.array([1]), np.array([2])), mu + bu[1] + bi[2], rtol=1e-6)
    assert model.b_user[7] == 0.0 and model.b_item[5] == 0.0  # unseen entities get no bias


def test_feature_biases_converge_to_the_closed_form_ridge_solution():
    """features=True: the sweeps converge to the ridge solution of
    min sum (mu + b_u + b_i + mean_{f in F(i)} c_f - r)^2 + reg_u |b_u|^2 + reg_i |b_i|^2 + reg_f |c|^2,
    solved here in one linear system over all parameters (repeated feature ids count once; an item
    without features has no feature term)."""
    rng = np.random.default_rng(1)
    n_users, n_items, n_features = 7, 6, 4
    users = rng.integers(0, n_users, 80)
    items = rng.integers(0, n_items, 80)
    ratings = rng.integers(1, 6, 80).astype(float)
    item_features = np.array([[0, 2, -1], [1, -1, -1], [3, 3, 0], [-1, -1, -1], [2, 1, 0], [0, -1, -1]])
    model = BiasBaseline(reg_user=3.0, reg_item=2.0, sweeps=400, features=True, reg_feature=1.5).fit_arrays(
        users, items, ratings, n_users, n_items, item_features=item_features, n_features=n_features + 1)

    weights = np.zeros((n_items, n_features + 1))
    for i, row in enumerate(item_features):
        present = sorted({f for f in row if f >= 0})
        weights[i, present] = 1.0 / len(present) if present else 0.0
    design = np.zeros((users.size, n_users + n_items + n_features + 1))
    design[np.arange(users.size), users] = 1
    design[np.arange(users.size), n_users + items] = 1
    design[:, n_users + n_items:] = weights[items]
    reg = np.concatenate([np.full(n_users, 3.0), np.full(n_items, 2.0), np.full(n_features + 1, 1.5)])
    mu = ratings.mean()
    solution = np.linalg.solve(design.T @ design + np.diag(reg), design.T @ (ratings - mu))
    np.testing.assert_allclose(model.b_user, solution[:n_users], atol=1e-8)
    np.testing.assert_allclose(model.b_item, solution[n_users:n_users + n_items], atol=1e-8)
    np.testing.assert_allclose(model.feature_bias, solution[n_users + n_items:], atol=1e-8)
    assert model.feature_bias[n_features] == 0.0  # a feature no item has
    np.testing.assert_allclose(model.predict(users, items), mu + design @ solution, atol=1e-6)
    np.testing.assert_allclose(model.item_bias()[3], model.b_item[3])  # no features: b_i alone


def test_tuned_fit_chooses_the_grid_point_of_lowest_validation_rmse_then_refits_on_train_and_val():
    import pandas as pd

    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.evaluate import metrics
    from iarn_jax.models.baselines.bias import REG_GRID

    split = load_protocol("synthetic", None, n_users=120, n_items=60, n_ratings=3000, seed=0)
    train, val = split.train, split.val
    val_rmse = {}
    for reg_user, reg_item in REG_GRID:
        model = BiasBaseline(reg_user, reg_item).fit_arrays(
            train["user"].to_numpy(), train["item"].to_numpy(), train["rating"].to_numpy(float), split.n_users, split.n_items)
        val_rmse[reg_user, reg_item] = metrics.rmse(model.predict(val["user"].to_numpy(), val["item"].to_numpy()),
                                                    val["rating"].to_numpy(), split.rating_scale)
    chosen = min(val_rmse, key=val_rmse.get)
    tuned = BiasBaseline(tuned=True).fit(split)
    assert (tuned.reg_user, tuned.reg_item) == chosen and tuned.val_rmse == val_rmse[chosen]
    both = pd.concat([train, val])
    refit = BiasBaseline(*chosen).fit_arrays(both["user"].to_numpy(), both["item"].to_numpy(),
                                              both["rating"].to_numpy(float), split.n_users, split.n_items)
    np.testing.assert_allclose(tuned.b_user, refit.b_user)
    np.testing.assert_allclose(tuned.b_item, refit.b_item)
