"""Metrics against brute-force O(P*N) / explicit-loop references."""
from __future__ import annotations

import math

import numpy as np
import pytest

from iarn_jax.evaluate import metrics


def brute_auc(scores, positives):
    pos = [s for s, p in zip(scores, positives) if p]
    neg = [s for s, p in zip(scores, positives) if not p]
    if not pos or not neg:
        return math.nan
    total = 0.0
    for sp in pos:
        for sn in neg:
            total += 1.0 if sp > sn else (0.5 if sp == sn else 0.0)
    return total / (len(pos) * len(neg))


def brute_ranked_labels(scores, positives):
    """Explicit pessimistic ranking: repeatedly pick the best remaining item,
    a negative before a positive on equal score."""
    remaining = list(range(len(scores)))
    labels = []
    while remaining:
        best = remaining[0]
        for idx in remaining[1:]:
            if scores[idx] > scores[best] or (
                scores[idx] == scores[best] and not positives[idx] and positives[best]
            ):
                best = idx
        labels.append(bool(positives[best]))
        remaining.remove(best)
    return labels


def brute_ndcg(scores, positives, k):
    labels = brute_ranked_labels(scores, positives)
    n_pos = sum(bool(p) for p in positives)
    if n_pos == 0:
        return math.nan
    dcg = sum(1.0 / math.log2(r + 2) for r, hit in enumerate(labels[:k]) if hit)
    idcg = sum(1.0 / math.log2(r + 2) for r in range(min(n_pos, k)))
    return dcg / idcg


def brute_hr(scores, positives, k):
    if not any(positives):
        return math.nan
    return float(any(brute_ranked_labels(scores, positives)[:k]))


def random_case(rng, n, tie_levels=None):
    if tie_levels is None:
        scores = rng.normal(size=n)
    else:
        scores = rng.integers(0, tie_levels, size=n).astype(float)
    positives = rng.random(n) < rng.uniform(0.05, 0.6)
    return scores, positives


def test_rmse_mae_clip():
    pred = np.array([0.0, 3.0, 6.0, 4.5])
    target = np.array([1.0, 4.0, 5.0, 4.0])
    # clipped: 1, 3, 5, 4.5 -> errors 0, -1, 0, 0.5
    assert metrics.rmse(pred, target, (1, 5)) == pytest.approx(math.sqrt((1 + 0.25) / 4))
    assert metrics.mae(pred, target, (1, 5)) == pytest.approx(1.5 / 4)
    assert metrics.rmse(np.array([0.1]), np.array([0.5]), (0.5, 5.0)) == pytest.approx(0.0)
    assert math.isnan(metrics.rmse([], [], (1, 5)))


def test_midranks_hand_case():
    np.testing.assert_allclose(metrics.midranks(np.array([3.0, 1.0, 3.0, 2.0, 3.0])), [4, 1, 4, 2, 4])


def test_auc_hand_cases():
    assert metrics.auc([3, 2, 1], [True, False, False]) == 1.0
    assert metrics.auc([1, 2, 3], [True, False, False]) == 0.0
    assert metrics.auc([1, 1, 1, 1], [True, False, True, False]) == 0.5
    # pos {2, 1}, neg {1, 0}: (2>1)+(2>0)+(1=1 -> .5)+(1>0) = 3.5 / 4
    assert metrics.auc([2, 1, 1, 0], [True, True, False, False]) == 0.875
    assert math.isnan(metrics.auc([1, 2], [False, False]))
    assert math.isnan(metrics.auc([1, 2], [True, True]))


@pytest.mark.parametrize("tie_levels", [None, 2, 4, 10])
def test_auc_matches_brute_force(tie_levels):
    rng = np.random.default_rng(0 if tie_levels is None else tie_levels)
    for _ in range(60):
        scores, positives = random_case(rng, int(rng.integers(2, 40)), tie_levels)
        expected = brute_auc(scores, positives)
        got = metrics.auc(scores, positives)
        if math.isnan(expected):
            assert math.isnan(got)
        else:
            assert got == pytest.approx(expected, abs=1e-12)


def test_topk_hand_cases():
    # Ranked: 0.9(pos), 0.8(neg), 0.7(pos): DCG = 1 + 1/log2(4) = 1.5; IDCG = 1 + 1/log2(3).
    scores = [0.7, 0.9, 0.8]
    positives = [True, True, False]
    assert metrics.ndcg_at_k(scores, positives, k=3) == pytest.approx(1.5 / (1 + 1 / math.log2(3)))
    assert metrics.ndcg_at_k(scores, positives, k=1) == pytest.approx(1.0)
    assert metrics.hit_rate_at_k(scores, positives, k=1) == 1.0
    # Pessimistic ties: a positive tied with 10 negatives at the top is ranked 11th.
    scores = [1.0] * 11 + [0.0]
    positives = [True] + [False] * 11
    assert metrics.hit_rate_at_k(scores, positives, k=10) == 0.0
    assert metrics.ndcg_at_k(scores, positives, k=10) == 0.0
    assert metrics.hit_rate_at_k(scores, positives, k=11) == 1.0
    assert metrics.ndcg_at_k(scores, positives, k=11) == pytest.approx(1 / math.log2(12))
    assert math.isnan(metrics.ndcg_at_k([1, 2], [False, False]))


@pytest.mark.parametrize("tie_levels", [None, 2, 3, 8])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_topk_matches_explicit_loop(tie_levels, k):
    rng = np.random.default_rng(100 * k + (tie_levels or 0))
    for _ in range(40):
        # Sizes on both sides of the partition shortcut (n > 4k).
        scores, positives = random_case(rng, int(rng.integers(1, 60)), tie_levels)
        for fn, ref in ((metrics.ndcg_at_k, brute_ndcg), (metrics.hit_rate_at_k, brute_hr)):
            expected = ref(scores, positives, k)
            got = fn(scores, positives, k)
            if math.isnan(expected):
                assert math.isnan(got)
            else:
                assert got == pytest.approx(expected, abs=1e-12)


def test_topk_independent_of_candidate_order():
    rng = np.random.default_rng(7)
    scores, positives = random_case(rng, 50, tie_levels=3)
    perm = rng.permutation(50)
    for k in (1, 5, 10):
        assert metrics.ndcg_at_k(scores, positives, k) == metrics.ndcg_at_k(scores[perm], positives[perm], k)


def test_user_ranking_metrics_keys_and_checks():
    out = metrics.user_ranking_metrics([0.1, 0.5, 0.3], [False, True, False], k=10)
    assert out == {"auc": 1.0, "ndcg10": 1.0, "hr10": 1.0}
    with pytest.raises(ValueError):
        metrics.auc([1.0, np.nan], [True, False])
    with pytest.raises(ValueError):
        metrics.auc([1.0, 2.0], [True])
