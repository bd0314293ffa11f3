"""Length-bucketed batches of (user, item) pairs with padded histories.

A :class:`BatchPlan` is only index arrays: batch ``k`` is the pair indices
``plan.indices[k]`` (``-1`` marks a padding example) and the padded history
lengths ``(plan.user_T[k], plan.item_T[k])``. The plan is a pure function of
``(seed, epoch)``, so training can resume at batch ``k`` of an epoch by
rebuilding the plan. :func:`materialize` turns one plan entry into a dict of
NumPy arrays matching :data:`iarn_jax.data.types.BATCH_SPEC`.

Bucketing: each pair's visible history length on each side (capped at
``max_len``) is rounded up to the smallest bucket length >= it (lengths above
the last bucket: the next multiple of 64; never more than ``max_len``). Pairs
with the same (user bucket, item bucket) are batched together, so a batch has
one (Tu, Ti) shape and a small, bounded set of shapes reaches ``jax.jit``.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Iterator, Optional, Sequence, Union

import numpy as np

from iarn_jax.data.histories import Histories, PairSet

if TYPE_CHECKING:
    from iarn_jax.data.recency import ItemRecency

DEFAULT_BUCKETS = (8, 16, 32, 64, 128, 256)
_LONG_MULTIPLE = 64


@dataclasses.dataclass(frozen=True)
class BatchPlan:
    """One epoch's batches as index arrays.

    indices: int64 [n_batches, batch_size] pair indices, -1 for padding examples.
    user_T, item_T: int32 [n_batches] padded history lengths of each batch.
    max_len: the history cap the plan was made with (None = no cap).
    """

    indices: np.ndarray
    user_T: np.ndarray
    item_T: np.ndarray
    max_len: Optional[int] = None

    def __len__(self) -> int:
        return int(len(self.indices))

    def __getitem__(self, k: int) -> "BatchEntry":
        return BatchEntry(self.indices[k], int(self.user_T[k]), int(self.item_T[k]))

    @property
    def batch_size(self) -> int:
        return int(self.indices.shape[1])


@dataclasses.dataclass(frozen=True)
class BatchEntry:
    indices: np.ndarray
    user_T: int
    item_T: int


def capped_lengths(lengths: np.ndarray, max_len: Optional[int]) -> np.ndarray:
    lengths = np.asarray(lengths, dtype=np.int64)
    return lengths if max_len is None else np.minimum(lengths, max_len)


def bucket_length(lengths: np.ndarray, bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
                  max_len: Optional[int] = None) -> np.ndarray:
    """Padded length of each (already capped) history length.

    The smallest bucket >= length; above the last bucket, the smallest multiple
    of 64 >= length; with a cap, never above ``max_len``. Always >= 1.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    buckets = np.asarray(sorted(bucket_lengths), dtype=np.int64)
    where = np.searchsorted(buckets, lengths, side="left")
    inside = where < len(buckets)
    long = -(-lengths // _LONG_MULTIPLE) * _LONG_MULTIPLE
    padded = np.where(inside, buckets[np.minimum(where, len(buckets) - 1)], long)
    if max_len is not None:
        padded = np.minimum(padded, max_len)
    return np.maximum(padded, 1).astype(np.int32)


_COARSE_LONG_MULTIPLE = 256


def coarse_length(T: int, max_len: Optional[int] = None) -> int:
    """The padded length of a rare bucket's side: 16, 64 or 256 (the smallest >= T), above 256 the next
    multiple of 256; never above ``max_len`` (nor below T)."""
    if T > _COARSE_LONG_MULTIPLE:
        coarse = -(-T // _COARSE_LONG_MULTIPLE) * _COARSE_LONG_MULTIPLE
    else:
        coarse = 16
        while coarse < T:
            coarse *= 4
    return int(coarse if max_len is None else min(coarse, max(max_len, T)))


def make_batch_plan(pairs: PairSet, batch_size: int, *, seed: int = 0, epoch: int = 0,
                    shuffle: bool = True, bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
                    max_len: Optional[int] = None, rare_shape_batches: int = 0) -> BatchPlan:
    """Bucketed batches of exactly ``batch_size`` examples (padding examples: -1).

    shuffle=True: pairs are shuffled within buckets and the batch order is
    shuffled, as a pure function of (seed, epoch). shuffle=False (evaluation):
    buckets in ascending (Tu, Ti) order and pairs in their original order within
    a bucket; use :func:`unbatch` to map per-batch outputs back to pair order.
    Every pair appears in exactly one batch.

    rare_shape_batches: a (user, item) bucket with fewer batches than this is padded to
    :func:`coarse_length` on both sides (its pairs and batches stay the same), so the rare buckets
    share a few shapes: every distinct shape is one XLA compilation of the train step (~7 s for
    Clothing's model on 2 cores), and Clothing has 35 buckets, 20 of them with at most 5 batches per
    epoch. 0: every bucket keeps its own shape.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_len is not None and max_len < 1:
        raise ValueError(f"max_len must be >= 1 or None, got {max_len}")
    user_T = bucket_length(capped_lengths(pairs.user_len, max_len), bucket_lengths, max_len)
    item_T = bucket_length(capped_lengths(pairs.item_len, max_len), bucket_lengths, max_len)
    rng = np.random.default_rng([int(seed), int(epoch)])
    n = len(pairs)
    order = rng.permutation(n) if shuffle else np.arange(n)
    # stable sort by bucket keeps the (shuffled or original) order within a bucket
    key = user_T.astype(np.int64) * (int(item_T.max(initial=1)) + 1) + item_T
    order = order[np.argsort(key[order], kind="stable")]
    sorted_key = key[order]
    starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]]) if n else np.zeros(0, np.int64)
    ends = np.r_[starts[1:], n].astype(np.int64)
    rows, batch_user_T, batch_item_T = [], [], []
    for start, end in zip(starts, ends):  # one iteration per bucket (few), not per pair
        members = order[start:end]
        n_batches = -(-len(members) // batch_size)
        block = np.full(n_batches * batch_size, -1, dtype=np.int64)
        block[: len(members)] = members
        rows.append(block.reshape(n_batches, batch_size))
        shape = int(user_T[members[0]]), int(item_T[members[0]])
        if n_batches < rare_shape_batches:
            shape = coarse_length(shape[0], max_len), coarse_length(shape[1], max_len)
        batch_user_T.append(np.full(n_batches, shape[0], dtype=np.int32))
        batch_item_T.append(np.full(n_batches, shape[1], dtype=np.int32))
    if rows:
        indices = np.concatenate(rows)
        batch_user_T = np.concatenate(batch_user_T)
        batch_item_T = np.concatenate(batch_item_T)
    else:
        indices = np.zeros((0, batch_size), dtype=np.int64)
        batch_user_T = batch_item_T = np.zeros(0, dtype=np.int32)
    if shuffle:
        batch_order = rng.permutation(len(indices))
        indices, batch_user_T, batch_item_T = indices[batch_order], batch_user_T[batch_order], batch_item_T[batch_order]
    return BatchPlan(indices=indices, user_T=batch_user_T, item_T=batch_item_T, max_len=max_len)


def _side(histories: Histories, entity, visible_len, self_pos, T: int, max_len: Optional[int],
          with_ratings: bool, drop_self: bool = False):
    """Padded [B, T] counterpart ids / ratings / mask for one side (vectorised).

    drop_self=False: the pair's own step (``self_pos``) stays in the history with rating 0.
    drop_self=True: the own step is removed from the sequence (the later steps move up by one), so a
    pair sees its entity's history *without* the interaction being predicted, as a test pair does.
    """
    visible_len = np.asarray(visible_len, dtype=np.int64)
    self_pos = np.asarray(self_pos, dtype=np.int64)
    has_self = (self_pos >= 0) & (self_pos < visible_len)
    if drop_self:
        visible_len = visible_len - has_self
    kept = capped_lengths(visible_len, max_len)
    if len(kept) and kept.max(initial=0) > T:
        raise ValueError(f"history length {kept.max()} does not fit the padded length {T}")
    steps = np.arange(T, dtype=np.int64)[None, :]
    mask = steps < kept[:, None]
    if not mask.any():  # also covers histories without events
        return np.zeros(mask.shape, np.int32), np.zeros(mask.shape, np.float32), mask
    # keep the MOST RECENT `kept` steps of the visible prefix
    position = (visible_len - kept)[:, None] + steps  # [B, T] position in the (self-free) prefix
    if drop_self:
        position = position + (has_self[:, None] & (position >= self_pos[:, None]))
    flat = np.where(mask, histories.offsets[entity][:, None] + position, 0)
    ids = np.where(mask, histories.counterpart[flat], 0).astype(np.int32)
    if with_ratings:
        ratings = np.where(mask, histories.rating[flat], 0.0).astype(np.float32)
        if not drop_self:
            column = self_pos - (visible_len - kept)  # own step after the cap
            own = has_self & (column >= 0) & (column < kept)
            ratings[np.flatnonzero(own), column[own]] = 0.0
    else:
        ratings = np.zeros(mask.shape, dtype=np.float32)
    return ids, ratings, mask


def materialize(entry: Union[BatchEntry, np.ndarray, Sequence[int]], pairs: PairSet,
                user_histories: Histories, item_histories: Histories, *,
                max_len: Optional[int] = None, with_ratings: bool = True,
                bucket_lengths: Sequence[int] = DEFAULT_BUCKETS, drop_self: bool = False,
                recency: Optional["ItemRecency"] = None) -> dict:
    """The padded batch dict (BATCH_SPEC) of one plan entry or of bare pair indices.

    drop_self=True removes each pair's own interaction from both histories (see :func:`_side`)
    instead of zeroing its rating. ``recency`` (an :class:`iarn_jax.data.recency.ItemRecency`) adds
    ``item_recency`` float32 [B, K + 1]: each pair's item features at the pair's time (0 on padding).

    Histories are left-aligned (valid steps first); ``max_len`` keeps the most
    recent steps; ``*_history_rating`` is 0 on padding and on the pair's own
    step (with_ratings=False: 0 everywhere). Index -1 is a padding example
    (weight 0, rating 0, empty histories). With bare indices, each side is
    padded to the bucket of the batch's longest history.
    """
    if isinstance(entry, BatchEntry):
        indices, user_T, item_T = np.asarray(entry.indices, dtype=np.int64), entry.user_T, entry.item_T
    else:
        indices = np.asarray(entry, dtype=np.int64)
        user_T = item_T = None
    real = indices >= 0
    safe = np.where(real, indices, 0)
    if real.any():
        user = pairs.user[safe].astype(np.int64)
        item = pairs.item[safe].astype(np.int64)
        user_len = np.where(real, pairs.user_len[safe], 0).astype(np.int64)
        item_len = np.where(real, pairs.item_len[safe], 0).astype(np.int64)
        user_self = np.where(real, pairs.user_self[safe], -1)
        item_self = np.where(real, pairs.item_self[safe], -1)
        rating = np.where(real, pairs.rating[safe], 0.0).astype(np.float32)
        user = np.where(real, user, 0)
        item = np.where(real, item, 0)
        time = np.where(real, pairs.time[safe], 0).astype(np.int64)
    else:
        n = len(indices)
        user = item = user_len = item_len = time = np.zeros(n, dtype=np.int64)
        user_self = item_self = np.full(n, -1)
        rating = np.zeros(n, dtype=np.float32)
    if user_T is None:
        user_T = int(bucket_length(capped_lengths(user_len, max_len).max(initial=0)[None], bucket_lengths, max_len)[0])
        item_T = int(bucket_length(capped_lengths(item_len, max_len).max(initial=0)[None], bucket_lengths, max_len)[0])
    u_ids, u_ratings, u_mask = _side(user_histories, user, user_len, user_self, user_T, max_len, with_ratings,
                                     drop_self)
    i_ids, i_ratings, i_mask = _side(item_histories, item, item_len, item_self, item_T, max_len, with_ratings,
                                     drop_self)
    batch = {
        "user": user.astype(np.int32),
        "item": item.astype(np.int32),
        "rating": rating,
        "weight": real.astype(np.float32),
        "user_history": u_ids,
        "user_history_rating": u_ratings,
        "user_history_mask": u_mask,
        "item_history": i_ids,
        "item_history_rating": i_ratings,
        "item_history_mask": i_mask,
    }
    if recency is not None:
        batch["item_recency"] = np.where(real[:, None], recency(item, time), 0.0).astype(np.float32)
    return batch


def iterate_batches(pairs: PairSet, user_histories: Histories, item_histories: Histories,
                    batch_size: int, *, seed: int = 0, epoch: int = 0, start: int = 0,
                    shuffle: bool = True, bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
                    max_len: Optional[int] = None, with_ratings: bool = True) -> Iterator[dict]:
    """Yield the batch dicts of one epoch, from batch ``start`` on (for resuming)."""
    plan = make_batch_plan(pairs, batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                           bucket_lengths=bucket_lengths, max_len=max_len)
    for k in range(start, len(plan)):
        yield materialize(plan[k], pairs, user_histories, item_histories,
                          max_len=max_len, with_ratings=with_ratings)


def iterate_eval_batches(pairs: PairSet, user_histories: Histories, item_histories: Histories,
                         batch_size: int, *, bucket_lengths: Sequence[int] = DEFAULT_BUCKETS,
                         max_len: Optional[int] = None, with_ratings: bool = True):
    """(plan, generator of batch dicts) in a fixed, unshuffled order.

    Collect one [batch_size] output per batch and call ``unbatch(plan, outputs)``
    to get them in pair order.
    """
    plan = make_batch_plan(pairs, batch_size, shuffle=False, bucket_lengths=bucket_lengths, max_len=max_len)

    def batches():
        for k in range(len(plan)):
            yield materialize(plan[k], pairs, user_histories, item_histories,
                              max_len=max_len, with_ratings=with_ratings)

    return plan, batches()


def unbatch(plan: BatchPlan, outputs) -> np.ndarray:
    """Per-batch outputs ([n_batches, batch_size, ...] or a list of [batch_size, ...])
    back in pair order; padding examples are dropped."""
    stacked = np.asarray(outputs) if not isinstance(outputs, (list, tuple)) else np.stack([np.asarray(o) for o in outputs])
    if stacked.shape[:2] != plan.indices.shape:
        raise ValueError(f"outputs have shape {stacked.shape[:2]}, the plan {plan.indices.shape}")
    flat_index = plan.indices.reshape(-1)
    flat_out = stacked.reshape((-1,) + stacked.shape[2:])
    real = flat_index >= 0
    result = np.empty((int(real.sum()),) + stacked.shape[2:], dtype=stacked.dtype)
    result[flat_index[real]] = flat_out[real]
    return result


def padding_fraction(plan: BatchPlan, pairs: PairSet) -> float:
    """Share of history cells (user and item sides together) that are padding,
    counting padding examples as all padding."""
    real = plan.indices >= 0
    safe = np.where(real, plan.indices, 0)
    used_user = np.where(real, capped_lengths(pairs.user_len, plan.max_len)[safe], 0).sum() if len(pairs) else 0
    used_item = np.where(real, capped_lengths(pairs.item_len, plan.max_len)[safe], 0).sum() if len(pairs) else 0
    total = plan.batch_size * (plan.user_T.astype(np.int64).sum() + plan.item_T.astype(np.int64).sum())
    return float(1.0 - (used_user + used_item) / total) if total else 0.0
