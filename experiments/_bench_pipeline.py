"""Child process of ``experiments.benchmark --pipeline`` (one per size, so peak RSS is per size).

  python -m experiments._bench_pipeline N BATCH_SIZE MAX_LEN   # prints one JSON line

Builds a synthetic rating table of N ratings (50 per user, 100 per item on average, log-normal item
popularity), then times histories, pairs and one epoch's batch plan, and the host time of one batch.
"""
from __future__ import annotations

import json
import resource
import sys
import time

import numpy as np
import pandas as pd

from iarn_jax.data import batching, histories


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def table_size(n: int) -> tuple[int, int]:
    """(users, items) of the synthetic table of N ratings."""
    return max(n // 50, 10), max(n // 100, 10)


def synthetic_ratings(n: int, seed: int = 0) -> pd.DataFrame:
    """N ratings: users uniform, items log-normal popular, ratings 1-5, times in [0, 1e9)."""
    rng = np.random.default_rng(seed)
    n_users, n_items = table_size(n)
    popularity = np.exp(rng.normal(0.0, 1.0, n_items))
    popularity /= popularity.sum()
    return pd.DataFrame({"user": rng.integers(0, n_users, n), "item": rng.choice(n_items, n, p=popularity),
                         "rating": rng.integers(1, 6, n).astype(np.float32), "time": rng.integers(0, 10**9, n)})


def measure(n: int, batch_size: int, max_len: int) -> dict:
    df = synthetic_ratings(n)
    n_users, n_items = table_size(n)
    base = _rss_mb()
    c0, t0 = time.process_time(), time.perf_counter()
    uh, ih = histories.build_histories(df, n_users, n_items)
    t1 = time.perf_counter()
    pairs = histories.make_pairs(df, uh, ih, mode="full")
    t2 = time.perf_counter()
    plan = batching.make_batch_plan(pairs, batch_size, seed=0, epoch=0, max_len=max_len)
    t3, c3 = time.perf_counter(), time.process_time()
    k = min(len(plan), 100)
    for j in range(k):
        batching.materialize(plan[j], pairs, uh, ih, max_len=max_len)
    t4 = time.perf_counter()
    return {"ratings": n, "histories_s": t1 - t0, "pairs_s": t2 - t1, "plan_s": t3 - t2, "total_s": t3 - t0,
            "total_cpu_s": c3 - c0, "batch_ms": 1e3 * (t4 - t3) / k, "batches": len(plan),
            "peak_rss_mb": _rss_mb(), "rss_before_mb": base}


if __name__ == "__main__":
    print(json.dumps(measure(*(int(a) for a in sys.argv[1:4]))))
