"""Ranking / rating evaluation against brute-force set computations."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from iarn_jax.evaluate import ranking
from tests.test_baselines_mf_bpr_timesvd import split_from
from tests.test_metrics import brute_auc, brute_hr, brute_ndcg


def frame(rows):
    return pd.DataFrame(rows, columns=["user", "item", "rating", "time"]).astype(
        {"user": "int64", "item": "int64", "rating": "float32", "time": "int64"}
    )


def make_split(history, test, n_users, n_items, name="toy", train=None, val=None):
    history, test = frame(history), frame(test)
    train = history if train is None else frame(train)
    val = history.iloc[:0] if val is None else frame(val)
    return split_from(train, val, test, n_users, n_items, name=name, history=history)


def random_split(seed, n_users=30, n_items=40, name="toy"):
    rng = np.random.default_rng(seed)
    pairs = {(int(u), int(i)) for u, i in zip(rng.integers(0, n_users, 400), rng.integers(0, n_items - 3, 400))}
    pairs = sorted(pairs)
    rng.shuffle(pairs)
    history = [(u, i, float(rng.integers(1, 6)), t) for t, (u, i) in enumerate(pairs[:300])]
    test = [(u, i, float(rng.integers(1, 6)), 1000 + t) for t, (u, i) in enumerate(pairs[300:])]
    # Items n_items-3 .. n_items-1 are never seen: they must never be candidates.
    return make_split(history, test, n_users, n_items, name=name)


def brute_lists(split, user):
    seen = set(split.history["item"]) | set(split.test["item"])
    train_items = set(split.history.loc[split.history["user"] == user, "item"])
    test_items = set(split.test.loc[split.test["user"] == user, "item"])
    candidates = sorted(seen - train_items)
    positives = [c in test_items for c in candidates]
    return np.asarray(candidates), np.asarray(positives)


def toy_scorer(user, items):
    # Deterministic, with many ties.
    return ((np.asarray(items) * 7 + user * 3) % 5).astype(float)


def test_candidates_hand_case():
    history = [(0, 0, 5, 0), (0, 1, 4, 1), (1, 1, 3, 2), (1, 2, 3, 3), (2, 3, 1, 4)]
    test = [(0, 2, 1, 10), (0, 4, 2, 11), (1, 0, 5, 12), (2, 3, 4, 13)]  # user 2 re-rates a training item
    split = make_split(history, test, n_users=3, n_items=6)
    task = ranking.benchmark_task(split, [0, 1, 2])
    np.testing.assert_array_equal(task.universe, [0, 1, 2, 3, 4])  # item 5 unseen
    # user 0: candidates {2, 3, 4}, positives {2, 4}
    np.testing.assert_array_equal(task.universe[task.candidate_mask(0)], [2, 3, 4])
    np.testing.assert_array_equal(task.universe[task.positives[0]], [2, 4])
    np.testing.assert_array_equal(task.universe[task.positives[1]], [0])
    assert task.positives[2].size == 0  # its only test item is a training item
    np.testing.assert_array_equal(ranking.eligible_test_users(split), [0, 1])

    # user 0 scores: item2 -> 4, item3 -> 3, item4 -> 2: AUC = 0.5 (one pos above, one below).
    scores = {2: 4.0, 3: 3.0, 4: 2.0, 0: 0.0, 1: 0.0}
    result = ranking.evaluate_ranking(
        lambda u, items: np.array([scores[i] if u == 0 else float(i == 0) for i in items]),
        split, [0, 1, 2], k=1, progress=False,
    )
    # user 1: candidates {0, 3, 4}; positive 0 scored 1 vs 0, 0 -> AUC 1, HR@1 1.
    assert result["n_users"] == 2
    assert result["auc"] == pytest.approx((0.5 + 1.0) / 2)
    assert result["hr1"] == pytest.approx(1.0)
    assert result["ndcg1"] == pytest.approx(1.0)
    assert result["n_pairs"] == 6


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_ranking_matches_brute_force(seed):
    split = random_split(seed)
    users = ranking.eligible_test_users(split)
    result = ranking.evaluate_ranking(toy_scorer, split, users, k=5, progress=False, return_per_user=True)
    expected = {"auc": [], "ndcg5": [], "hr5": []}
    n_pairs = 0
    for user in users:
        candidates, positives = brute_lists(split, user)
        assert positives.any()
        scores = toy_scorer(user, candidates)
        expected["auc"].append(brute_auc(scores, positives))
        expected["ndcg5"].append(brute_ndcg(scores, positives, 5))
        expected["hr5"].append(brute_hr(scores, positives, 5))
        n_pairs += candidates.size
    for name, values in expected.items():
        np.testing.assert_allclose(result["per_user"][name], values, atol=1e-12)
        assert result[name] == pytest.approx(np.mean(values))
    assert result["n_users"] == users.size
    assert result["n_pairs"] == n_pairs


def test_matrix_path_equals_per_user_path():
    split = random_split(5)
    users = ranking.eligible_test_users(split)

    def matrix_fn(us, items):
        return np.stack([toy_scorer(u, items) for u in us])

    single = ranking.evaluate_ranking(toy_scorer, split, users, progress=False)
    # Tiny chunks force several score_matrix_fn calls.
    chunked = ranking.evaluate_ranking(None, split, users, score_matrix_fn=matrix_fn, chunk_elements=100, progress=False)
    for name in ("auc", "ndcg10", "hr10", "n_users", "n_pairs"):
        assert chunked[name] == pytest.approx(single[name])


def test_sample_eval_users():
    split = random_split(3, n_users=60)
    eligible = ranking.eligible_test_users(split)
    assert eligible.size > 20
    sample = ranking.sample_eval_users(split, n_users=20, seed=0)
    assert sample.size == 20 and np.all(np.diff(sample) > 0)
    assert set(sample) <= set(eligible)
    np.testing.assert_array_equal(sample, ranking.sample_eval_users(split, n_users=20, seed=0))
    assert not np.array_equal(sample, ranking.sample_eval_users(split, n_users=20, seed=1))
    np.testing.assert_array_equal(ranking.sample_eval_users(split, n_users=10_000), eligible)
    assert ranking.default_n_eval_users(split) == 1000
    assert ranking.default_n_eval_users(random_split(3, name="ml100k")) == 500


def test_evaluate_rating_and_min_len():
    # user 0 has 3 training ratings, user 1 has 1; item 0 has 2, item 1 has 2.
    history = [(0, 0, 5, 0), (0, 1, 4, 1), (0, 2, 3, 2), (1, 0, 3, 3), (2, 1, 2, 4)]
    test = [(0, 0, 4, 10), (0, 1, 2, 11), (1, 1, 5, 12), (0, 2, 1, 13)]
    split = make_split(history, test, n_users=3, n_items=3)

    def predict(users, items):
        return np.asarray(users, float) + np.asarray(items, float) + 2.0  # 2, 3, 4, 4

    out = ranking.evaluate_rating(predict, split.test, split.rating_scale)
    errors = np.array([2 - 4, 3 - 2, 4 - 5, 4 - 1], float)
    assert out["rmse"] == pytest.approx(math.sqrt(np.mean(errors**2)))
    assert out["mae"] == pytest.approx(np.mean(np.abs(errors)))
    assert out["n"] == 4

    rows = ranking.rmse_by_min_len(predict, split, lengths=(1, 2, 3))
    assert [r["n"] for r in rows] == [4, 2, 0]  # L=2: user 0 (3) with items 0, 1 (2 each); item 2 has 1
    assert rows[1]["rmse"] == pytest.approx(math.sqrt((4 + 1) / 2))
    assert math.isnan(rows[2]["rmse"])
