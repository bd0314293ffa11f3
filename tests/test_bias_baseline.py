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
