"""Full-ranking and rating evaluation on a ProtocolSplit (contract: docs/benchmarks.md).

Ranking protocol, for each evaluated user u:

* candidates: every item of the protocol's kept pairs (``split.train`` ∪
  ``split.val`` ∪ ``split.test``: items with >= min_len training ratings that
  occur in a kept pair), minus u's training items (u's items in
  ``split.history``, all training-period interactions). This is the reference
  code's universe (test items ∪ the filtered training split); items dropped by
  the min_len filter can never be positives, so keeping them would hand every
  popularity-aware scorer a free AUC gain (on Clothing ~29k of 50k items);
* positives: u's test items (any rating); every other candidate is a negative;
  no sampling;
* metrics per user (``metrics.py``): AUC with ties counted half, NDCG@k and HR@k
  with pessimistic tie-breaking; then plain means over the evaluated users.

Evaluated users: ``sample_eval_users`` draws a fixed random sample (seeded) of
the test users that have at least one positive: 1000 users, 500 on MovieLens
(and Netflix, as in the reference code).

Scoring interfaces:

* ``score_fn(user: int, items: int[I]) -> float[I]``: one user at a time;
* ``score_matrix_fn(users: int[U], items: int[I]) -> float[U, I]``: for models
  whose scores factorize (MF, BPR, MostPop); every user of a chunk is scored
  against the whole candidate universe, then each row is restricted to that
  user's candidates. Chunks hold at most ``chunk_elements`` scores.

The candidate lists are a ``data.candidates.RankingTask`` (also BPR's validation task, with the fit
pairs as "known" and the validation pairs as targets).
"""
from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data.candidates import RankingTask
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.evaluate import metrics
from iarn_jax.progress import Progress

ScoreFn = Callable[[int, np.ndarray], np.ndarray]
ScoreMatrixFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
PredictFn = Callable[[np.ndarray, np.ndarray], np.ndarray]

_SMALL_SAMPLE_PREFIXES = ("ml", "movielens", "netflix")


def benchmark_task(split: ProtocolSplit, users: Sequence[int]) -> RankingTask:
    """The benchmark's test-time ranking task for ``users`` (universe: kept items)."""
    return RankingTask.from_frames(split.history, split.test, users, universe=kept_item_universe(split))


def kept_item_universe(split: ProtocolSplit) -> np.ndarray:
    """Sorted items of the kept train, validation and test pairs."""
    return np.unique(np.concatenate([f["item"].to_numpy(np.int64) for f in (split.train, split.val, split.test)]))


def eligible_test_users(split: ProtocolSplit) -> np.ndarray:
    """Sorted test users with at least one test item outside their training items."""
    test_users = np.unique(split.test["user"].to_numpy(np.int64))
    task = benchmark_task(split, test_users)
    return np.asarray([u for u, p in zip(task.users, task.positives) if p.size > 0], dtype=np.int64)


def default_n_eval_users(split: ProtocolSplit) -> int:
    """500 on MovieLens (and Netflix) protocols, 1000 elsewhere."""
    names = (split.name.lower(), split.dataset.name.lower())
    return 500 if any(n.startswith(_SMALL_SAMPLE_PREFIXES) for n in names) else 1000


def sample_eval_users(split: ProtocolSplit, n_users: Optional[int] = None, seed: int = 0) -> np.ndarray:
    """A fixed random sample (sorted) of test users that have a test positive.

    n_users: defaults to ``default_n_eval_users(split)``; all eligible users
    are returned when there are fewer.
    """
    if n_users is None:
        n_users = default_n_eval_users(split)
    eligible = eligible_test_users(split)
    if eligible.size <= n_users:
        return eligible
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=n_users, replace=False))


def evaluate_task(
    task: RankingTask,
    score_fn: Optional[ScoreFn] = None,
    *,
    score_matrix_fn: Optional[ScoreMatrixFn] = None,
    k: int = 10,
    progress: bool = True,
    chunk_elements: int = 1 << 23,
    return_per_user: bool = False,
    label: str = "ranking",
) -> dict:
    """Mean AUC / NDCG@k / HR@k over the task's users with a positive.

    Returns {"auc", f"ndcg{k}", f"hr{k}", "n_users", "n_pairs", "seconds",
    "score_seconds", "pairs_per_second"}; ``pairs_per_second`` counts the
    (user, candidate) pairs of the evaluated lists over the whole wall time.
    With ``return_per_user`` also "per_user": {"user", "auc", ...} arrays.
    """
    if score_fn is None and score_matrix_fn is None:
        raise ValueError("give score_fn or score_matrix_fn")
    start = time.perf_counter()
    score_seconds = 0.0
    names = ("auc", f"ndcg{k}", f"hr{k}")
    per_user = {name: [] for name in names}
    evaluated_users: list[int] = []
    n_pairs = 0
    index = np.flatnonzero([p.size > 0 for p in task.positives])
    progress_bar = Progress(index.size, label=label, unit="users", enabled=progress)
    n_universe = max(task.universe.size, 1)
    chunk = max(1, chunk_elements // n_universe) if score_matrix_fn is not None else 1

    for chunk_start in range(0, index.size, chunk):
        chunk_index = index[chunk_start : chunk_start + chunk]
        if score_matrix_fn is not None:
            t0 = time.perf_counter()
            matrix = np.asarray(score_matrix_fn(task.users[chunk_index], task.universe))
            score_seconds += time.perf_counter() - t0
            if matrix.shape != (chunk_index.size, task.universe.size):
                raise ValueError(f"score_matrix_fn returned {matrix.shape}, expected {(chunk_index.size, task.universe.size)}")
        for row, i in enumerate(chunk_index):
            mask = task.candidate_mask(i)
            is_positive = np.zeros(task.universe.size, dtype=bool)
            is_positive[task.positives[i]] = True
            if score_matrix_fn is not None:
                scores = matrix[row][mask]
            else:
                t0 = time.perf_counter()
                scores = np.asarray(score_fn(int(task.users[i]), task.universe[mask])).reshape(-1)
                score_seconds += time.perf_counter() - t0
            values = metrics.user_ranking_metrics(scores, is_positive[mask], k)
            for name in names:
                per_user[name].append(values[name])
            evaluated_users.append(int(task.users[i]))
            n_pairs += int(mask.sum())
        progress_bar.update(min(chunk_start + chunk, index.size))
    progress_bar.close()

    seconds = time.perf_counter() - start
    result = {name: metrics.nanmean(per_user[name]) for name in names}
    result.update(
        n_users=len(evaluated_users),
        n_pairs=n_pairs,
        seconds=seconds,
        score_seconds=score_seconds,
        pairs_per_second=n_pairs / seconds if seconds > 0 else float("nan"),
    )
    if return_per_user:
        result["per_user"] = {"user": np.asarray(evaluated_users), **{n: np.asarray(v) for n, v in per_user.items()}}
    return result


def evaluate_ranking(
    score_fn: Optional[ScoreFn],
    split: ProtocolSplit,
    users: Sequence[int],
    *,
    k: int = 10,
    progress: bool = True,
    score_matrix_fn: Optional[ScoreMatrixFn] = None,
    chunk_elements: int = 1 << 23,
    return_per_user: bool = False,
) -> dict:
    """The benchmark's full-ranking evaluation of ``users`` on ``split.test``.

    When ``score_matrix_fn`` is given it is used (chunked) and ``score_fn``
    may be None. See ``evaluate_task`` for the returned dict.
    """
    task = benchmark_task(split, users)
    return evaluate_task(
        task,
        score_fn,
        score_matrix_fn=score_matrix_fn,
        k=k,
        progress=progress,
        chunk_elements=chunk_elements,
        return_per_user=return_per_user,
        label=f"ranking {split.name}",
    )


def evaluate_rating(predict_fn: PredictFn, pairs: pd.DataFrame, rating_scale, *, with_time: bool = False) -> dict:
    """{"rmse", "mae", "n"} of ``predict_fn(users, items)`` on ``pairs`` (clipped).

    with_time: call ``predict_fn(users, items, times)`` instead (time-aware
    models such as TimeSVD++'s ``predict_at``).
    """
    users = pairs["user"].to_numpy(np.int64)
    items = pairs["item"].to_numpy(np.int64)
    target = pairs["rating"].to_numpy(np.float64)
    args = (users, items, pairs["time"].to_numpy(np.int64)) if with_time else (users, items)
    pred = np.asarray(predict_fn(*args), dtype=np.float64).reshape(-1) if len(pairs) else np.zeros(0)
    return {
        "rmse": metrics.rmse(pred, target, rating_scale),
        "mae": metrics.mae(pred, target, rating_scale),
        "n": int(len(pairs)),
    }


def rmse_by_min_len(
    predict_fn: PredictFn,
    split: ProtocolSplit,
    lengths: Sequence[int] = (3, 10, 20, 30, 50, 100),
    *,
    with_time: bool = False,
) -> list[dict]:
    """Test RMSE/MAE on the test pairs whose user and item both have >= L
    training interactions (counted in ``split.history``), for each L."""
    user_counts = split.history["user"].value_counts()
    item_counts = split.history["item"].value_counts()
    test = split.test
    test_user_count = test["user"].map(user_counts).fillna(0).to_numpy()
    test_item_count = test["item"].map(item_counts).fillna(0).to_numpy()
    out = []
    for length in lengths:
        keep = (test_user_count >= length) & (test_item_count >= length)
        row = evaluate_rating(predict_fn, test[keep], split.rating_scale, with_time=with_time)
        out.append({"min_len": int(length), "rmse": row["rmse"], "mae": row["mae"], "n": row["n"]})
    return out
