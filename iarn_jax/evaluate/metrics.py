"""Rating and per-user ranking metrics (NumPy, no JAX).

Rating metrics (the contract in ``docs/benchmarks.md``): predictions are
clipped to the rating range before the error is taken.

Ranking metrics work on ONE user's candidate list: ``scores`` [N] (higher =
better) and a boolean ``positives`` [N] mask. Conventions:

* AUC counts ties half (Mann-Whitney U with mid-ranks), O(N log N).
* Top-k metrics (NDCG@k, HR@k) break ties **pessimistically**: among items with
  exactly the same score, negatives are ranked before positives. A constant
  scorer therefore gets NDCG@k = HR@k = 0 unless it ranks fewer than k
  negatives, and the result never depends on the order of the candidates.
* NDCG@k uses binary gains: DCG = sum over positives at 1-based rank r <= k of
  1 / log2(r + 1), divided by the ideal DCG of min(P, k) positives.
* A list without positives (or, for AUC, without negatives) has no defined
  value: the functions return NaN and callers skip such users.
"""
from __future__ import annotations

import math

import numpy as np


def _clip(pred, rating_scale) -> np.ndarray:
    low, high = rating_scale
    return np.clip(np.asarray(pred, dtype=np.float64), low, high)


def rmse(pred, target, rating_scale) -> float:
    """Root mean squared error of clipped predictions. NaN on empty input."""
    target = np.asarray(target, dtype=np.float64)
    if target.size == 0:
        return float("nan")
    return float(np.sqrt(np.mean((_clip(pred, rating_scale) - target) ** 2)))


def mae(pred, target, rating_scale) -> float:
    """Mean absolute error of clipped predictions. NaN on empty input."""
    target = np.asarray(target, dtype=np.float64)
    if target.size == 0:
        return float("nan")
    return float(np.mean(np.abs(_clip(pred, rating_scale) - target)))


def _check(scores, positives) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    positives = np.asarray(positives, dtype=bool).reshape(-1)
    if scores.shape != positives.shape:
        raise ValueError(f"scores {scores.shape} and positives {positives.shape} differ in shape")
    if not np.all(np.isfinite(scores)):
        raise ValueError("scores contain NaN or inf")
    return scores, positives


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks in ascending order; tied values share their mean rank."""
    values = np.asarray(values)
    n = values.shape[0]
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values in sorted order.
    new_run = np.empty(n, dtype=bool)
    if n:
        new_run[0] = True
        new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks start+1 .. end
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = run_rank[run_id]
    return ranks


def auc(scores, positives) -> float:
    """P(score of a random positive > a random negative), ties counted half."""
    scores, positives = _check(scores, positives)
    n_pos = int(positives.sum())
    n_neg = positives.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(midranks(scores)[positives].sum())
    u_statistic = rank_sum - n_pos * (n_pos + 1) / 2.0
    return u_statistic / (n_pos * n_neg)


def pessimistic_order(scores, positives) -> np.ndarray:
    """Candidate indices by descending score, negatives first within ties."""
    scores, positives = _check(scores, positives)
    # lexsort: the last key is the primary one.
    return np.lexsort((positives.astype(np.int8), -scores))


def _top_k_hits(scores, positives, k: int) -> tuple[np.ndarray, int]:
    scores, positives = _check(scores, positives)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_pos = int(positives.sum())
    n = scores.size
    if n > 4 * k:
        # Only items scoring >= the k-th largest score can enter the top k.
        kth = np.partition(scores, n - k)[n - k]
        keep = np.flatnonzero(scores >= kth)
        order = keep[pessimistic_order(scores[keep], positives[keep])]
    else:
        order = pessimistic_order(scores, positives)
    return positives[order[:k]], n_pos


def ndcg_at_k(scores, positives, k: int = 10) -> float:
    """Binary-gain NDCG@k with pessimistic tie-breaking (see module doc)."""
    hits, n_pos = _top_k_hits(scores, positives, k)
    if n_pos == 0:
        return float("nan")
    discounts = 1.0 / np.log2(np.arange(2, hits.size + 2))
    dcg = float(discounts[hits].sum())
    ideal = float((1.0 / np.log2(np.arange(2, min(n_pos, k) + 2))).sum())
    return dcg / ideal


def hit_rate_at_k(scores, positives, k: int = 10) -> float:
    """1.0 if any positive is in the top k (pessimistic ties), else 0.0."""
    hits, n_pos = _top_k_hits(scores, positives, k)
    if n_pos == 0:
        return float("nan")
    return float(hits.any())


def user_ranking_metrics(scores, positives, k: int = 10) -> dict[str, float]:
    """AUC, NDCG@k and HR@k of one user's candidate list."""
    return {
        "auc": auc(scores, positives),
        f"ndcg{k}": ndcg_at_k(scores, positives, k),
        f"hr{k}": hit_rate_at_k(scores, positives, k),
    }


def nanmean(values) -> float:
    values = np.asarray(values, dtype=np.float64)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan
