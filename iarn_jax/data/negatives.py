"""Sampled negative items for the ranking objectives, and their padded item histories.

* :class:`NegativeSampler` draws, for each positive (user, item) pair, ``k`` items the user has no
  training-period interaction with (uniformly, or with probability proportional to
  ``popularity ** alpha``), from a fixed candidate pool (default: every item with a training
  event). Rejection sampling against the sorted keys ``user * n_items + item`` of the user
  histories: a drawn item is never one of the user's training items.
* :func:`negative_rng` makes the draws a pure function of ``(seed, epoch, batch)``, so a resumed run
  draws exactly the negatives an uninterrupted one would.
* :func:`materialize_negatives` pads the negatives' item histories like any other item side
  (:data:`NEGATIVE_SPEC`; rows ``j*k .. j*k+k-1`` belong to positive ``j``), bucketed to the
  longest history of the batch.

A negative item sees the history a positive item would see at the same time: its whole training
history (``history_mode`` "full" / "full_without_self") or its events strictly before the
positive's time ("causal").
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

from iarn_jax.data.batching import DEFAULT_BUCKETS, _side, bucket_length, capped_lengths
from iarn_jax.data.histories import Histories, _causal_lengths

DISTRIBUTIONS = ("uniform", "popularity")

NEGATIVE_SPEC = {
    "neg_item": ("int32", "[B*k]", "sampled negative item ids, k per positive, row-major"),
    "neg_item_history": ("int32", "[B*k, Tn]", "user ids of each negative item's history, 0 on padding"),
    "neg_item_history_rating": ("float32", "[B*k, Tn]", "step ratings, 0 on padding"),
    "neg_item_history_mask": ("bool", "[B*k, Tn]", "True on valid steps"),
}
# with an ``ItemRecency`` also "neg_item_recency": float32 [B*k, K + 1] at the positives' times.


def negative_rng(seed: int, epoch: int, batch: int) -> np.random.Generator:
    """The generator of the negatives of batch ``batch`` of epoch ``epoch`` (resume-exact)."""
    return np.random.default_rng([int(seed), int(epoch), int(batch), 0x4E4547])


class NegativeSampler:
    """Draws items a user has not interacted with in the training period.

    user_histories: the training-period user histories (their items are never drawn for that user).
    n_items: size of the item id space.
    pool: candidate items (default: every item with at least one training event).
    distribution: "uniform" over the pool, or "popularity": P(item) ~ count ** alpha (count = its
      number of training events).
    """

    def __init__(self, user_histories: Histories, n_items: int, item_counts: np.ndarray, *,
                 pool: Optional[np.ndarray] = None, distribution: str = "uniform", alpha: float = 0.75):
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"unknown negative distribution {distribution!r}; choose one of {DISTRIBUTIONS}")
        item_counts = np.asarray(item_counts, dtype=np.float64)
        self.n_items = int(n_items)
        self.pool = np.flatnonzero(item_counts > 0) if pool is None else np.unique(np.asarray(pool, np.int64))
        if self.pool.size == 0:
            raise ValueError("no candidate items to draw negatives from (no item has a training event)")
        weights = np.ones(self.pool.size) if distribution == "uniform" else item_counts[self.pool] ** alpha
        cumulative = np.cumsum(weights)
        self._cdf = cumulative / cumulative[-1]
        users = np.repeat(np.arange(user_histories.n_entities, dtype=np.int64), user_histories.lengths)
        self._seen = np.unique(users * self.n_items + user_histories.counterpart.astype(np.int64))
        self._user_counts = np.bincount(users, minlength=user_histories.n_entities)

    def _draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        index = np.searchsorted(self._cdf, rng.random(n), side="right")
        return self.pool[np.minimum(index, self.pool.size - 1)]

    def seen(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """bool [...]: whether each (user, item) is a training-period interaction."""
        keys = np.asarray(users, np.int64) * self.n_items + np.asarray(items, np.int64)
        where = np.searchsorted(self._seen, keys)
        return (where < self._seen.size) & (self._seen[np.minimum(where, self._seen.size - 1)] == keys)

    def sample(self, users: np.ndarray, k: int, rng: np.random.Generator, max_rounds: int = 100) -> np.ndarray:
        """int64 [len(users), k]: k negatives per user (with replacement; never a training item)."""
        users = np.asarray(users, dtype=np.int64)
        out = self._draw(users.size * k, rng).reshape(users.size, k)
        rows = np.repeat(users, k).reshape(users.size, k)
        bad = self.seen(rows, out)
        for _ in range(max_rounds):
            if not bad.any():
                return out
            out[bad] = self._draw(int(bad.sum()), rng)
            bad[bad] = self.seen(rows[bad], out[bad])
        stuck = np.unique(rows[bad])
        raise ValueError(f"could not draw negatives for users {stuck[:5].tolist()}: they have interacted with "
                         f"(nearly) every candidate item ({self._user_counts[stuck[0]]} of {self.pool.size})")


def materialize_negatives(negatives: np.ndarray, times: np.ndarray, item_histories: Histories, *,
                          history_mode: str = "full", max_len: Optional[int] = None,
                          bucket_lengths: Sequence[int] = DEFAULT_BUCKETS, recency=None) -> dict:
    """The NEGATIVE_SPEC arrays of negatives [B, k] drawn for positives at ``times`` [B]; with
    ``recency`` (an ``ItemRecency``) also ``neg_item_recency`` [B*k, K + 1] at the positives' times."""
    negatives = np.asarray(negatives, dtype=np.int64)
    b, k = negatives.shape
    items = negatives.reshape(-1)
    if history_mode == "causal":
        lengths = _causal_lengths(item_histories, items, np.repeat(np.asarray(times, np.int64), k))
    else:
        lengths = item_histories.lengths[items]
    lengths = np.asarray(lengths, np.int64)
    T = int(bucket_length(capped_lengths(lengths, max_len).max(initial=0)[None], bucket_lengths, max_len)[0])
    no_self = np.full(items.shape, -1, dtype=np.int64)
    ids, ratings, mask = _side(item_histories, items, lengths, no_self, T, max_len, True)
    arrays = {"neg_item": items.astype(np.int32), "neg_item_history": ids,
              "neg_item_history_rating": ratings, "neg_item_history_mask": mask}
    if recency is not None:
        arrays["neg_item_recency"] = recency(items, np.repeat(np.asarray(times, np.int64), k))
    return arrays
