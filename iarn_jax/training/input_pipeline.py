"""Host-side inputs of training and evaluation: prepared pair sets, batches, negatives, prefetch.

* :func:`prepare_data` - CSR histories and the train / val / test pair sets of a split;
* :func:`train_batches` - the host batches of one epoch (with sampled negatives when the objective
  uses them), from a given batch on, so a resumed run builds exactly the batches it skipped;
* :func:`eval_batches` - every batch of a pair set in a fixed order, with the pairs' indices;
* :func:`prefetch` - runs a batch iterator in a background thread;
* :func:`local_rows` - this process's rows of a global batch (multi-host).
"""
from __future__ import annotations

import dataclasses
import queue
import threading
from typing import Any, Iterable, Iterator, Optional, Sequence

import jax
import numpy as np

from iarn_jax.data import batching, histories
from iarn_jax.data.negatives import NegativeSampler, materialize_negatives, negative_rng
from iarn_jax.data.recency import ItemRecency
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.training.config import TrainConfig


@dataclasses.dataclass
class PreparedData:
    """Histories and pair sets of one split, ready for batching."""

    split: ProtocolSplit
    user_histories: Any
    item_histories: Any
    train: Any
    val: Any
    test: Any
    history_mode: str
    recency: Optional[ItemRecency] = None  # the item recency features the model reads, if any

    def with_recency(self, fractions: Sequence[float]) -> "PreparedData":
        """This data with the item recency features of window ``fractions`` (``ModelConfig.recency_windows``;
        empty: none), counted over the training-period item histories."""
        fractions = tuple(fractions or ())
        if not fractions:
            return self if self.recency is None else dataclasses.replace(self, recency=None)
        if self.recency is not None and self.recency.fractions == fractions:
            return self
        return dataclasses.replace(self, recency=ItemRecency.from_histories(self.item_histories, fractions))


def prepare_data(split: ProtocolSplit, history_mode: str = "full") -> PreparedData:
    """Builds CSR histories from the split's training-period interactions and the pair sets.

    Training pairs see their history in `history_mode`; validation pairs too (they
    are training-period interactions); test pairs always see the whole training
    history.
    """
    uh, ih = histories.build_histories(split.history, split.n_users, split.n_items)
    # "full_without_self" pairs record their own step like "full"; the batcher then drops it
    pair_mode = "full" if history_mode == "full_without_self" else history_mode
    return PreparedData(
        split=split,
        user_histories=uh,
        item_histories=ih,
        train=histories.make_pairs(split.train, uh, ih, mode=pair_mode),
        val=histories.make_pairs(split.val, uh, ih, mode=pair_mode),
        test=histories.make_pairs(split.test, uh, ih, mode="full"),
        history_mode=history_mode,
    )


def prefetch(iterator: Iterable, size: int) -> Iterator:
    """Runs `iterator` in a background thread, `size` items ahead (0 = inline)."""
    if size <= 0:
        yield from iterator
        return
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker():
        try:
            for item in iterator:
                buffer.put(item)
        except BaseException as exc:  # surfaced in the consumer
            buffer.put(exc)
        buffer.put(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    while True:
        item = buffer.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def local_rows(batch: dict) -> dict:
    """This process's rows of a global host batch (all rows with one process)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    # per array: the negatives' arrays have k rows per positive, contiguous, so they split the same way
    return {k: v[index * (len(v) // count) : (index + 1) * (len(v) // count)] for k, v in batch.items()}


def make_negative_sampler(data: PreparedData, cfg: TrainConfig) -> NegativeSampler:
    """Negatives among the items of the training and validation pairs that the user never rated in the
    training period (uniform or popularity ** alpha, counts = training-period events)."""
    pool = np.union1d(data.train.item, data.val.item)
    return NegativeSampler(data.user_histories, data.split.n_items, data.item_histories.lengths, pool=pool,
                           distribution=cfg.negative_distribution, alpha=cfg.negative_alpha)


def with_negatives(batch: dict, negatives: np.ndarray, times: np.ndarray, data: PreparedData,
                   cfg: TrainConfig) -> dict:
    """batch + the padded histories of its negatives [B, k] (drawn for positives at ``times`` [B])."""
    return {**batch, **materialize_negatives(negatives, times, data.item_histories, history_mode=cfg.history_mode,
                                             max_len=cfg.max_len, bucket_lengths=cfg.bucket_lengths,
                                             recency=data.recency)}


def train_batches(data: PreparedData, cfg: TrainConfig, epoch: int, start: int = 0,
                  sampler: Optional[NegativeSampler] = None) -> Iterator[dict]:
    """This process's host batches [B, ...] of ``epoch``'s shuffled plan, from batch ``start`` on.

    With ``cfg.uses_negatives`` each batch also holds ``cfg.n_negatives`` negatives per positive,
    drawn from (seed, epoch, batch): a resumed run draws the same ones.
    """
    plan = batching.make_batch_plan(data.train, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                    bucket_lengths=cfg.bucket_lengths, max_len=cfg.max_len,
                                    rare_shape_batches=cfg.rare_shape_batches)
    for k in range(start, len(plan)):
        batch = batching.materialize(plan[k], data.train, data.user_histories, data.item_histories,
                                     max_len=cfg.max_len, drop_self=cfg.history_mode == "full_without_self",
                                     recency=data.recency)
        if cfg.uses_negatives:
            safe = np.maximum(plan.indices[k], 0)
            negatives = sampler.sample(batch["user"], cfg.n_negatives, negative_rng(cfg.seed, epoch, k))
            batch = with_negatives(batch, negatives, data.train.time[safe], data, cfg)
        yield local_rows(batch)


def eval_batches(pairs: Any, data: PreparedData, config: TrainConfig, batch_size: Optional[int] = None,
                 n_devices: Optional[int] = None):
    """(pair indices [B'] with -1 for padding, host batch) of every batch of ``pairs`` in a fixed order,
    histories as training sees them (``drop_self`` for "full_without_self").

    A bucket's last, partly filled batch is cut to :func:`trimmed_rows` rows (B' <= B): evaluation
    sets are spread over many (user, item) length buckets, and scoring full-size batches of padding
    was most of the work (Clothing validation at B = 512: 9 % of the history slots were real).
    n_devices: the devices a batch is split over (default: all), so B' stays a multiple of it.
    """
    plan = batching.make_batch_plan(pairs, batch_size or config.eval_batch_size, shuffle=False,
                                    bucket_lengths=config.bucket_lengths, max_len=config.max_len)
    for entry in plan:
        rows = trimmed_rows(int(np.sum(entry.indices >= 0)), len(entry.indices), n_devices or jax.device_count())
        entry = dataclasses.replace(entry, indices=entry.indices[:rows])
        yield np.asarray(entry.indices), batching.materialize(
            entry, pairs, data.user_histories, data.item_histories, max_len=config.max_len,
            drop_self=config.history_mode == "full_without_self", recency=data.recency)


def trimmed_rows(n_valid: int, batch_size: int, n_devices: int = 1, min_rows: int = 32) -> int:
    """Rows an evaluation batch of ``n_valid`` real pairs (first, padding after) is cut to: the next
    power of two >= n_valid (at least ``min_rows``; few distinct shapes, so few compilations), a
    multiple of ``n_devices``, never above ``batch_size``."""
    rows = max(min_rows, 1 << max(n_valid - 1, 0).bit_length())
    rows = -(-rows // n_devices) * n_devices
    return min(rows, batch_size)
