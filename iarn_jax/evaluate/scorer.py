"""Full-ranking scorer for the IARN family: every (user, candidate) pair, without redundant work.

The model is factored (``iarn_jax.models.iarn``) into per-entity encodings and a pair part. The
scorer uses that factoring so that the full-ranking workload (one user against ~all items) does
each piece of work only as often as it must:

* **items** are encoded ONCE for the whole evaluation (step inputs, hoisted input projection,
  attention bi-RNN contexts projected by M1, the summary projected by the user tower's M2). The
  encodings are cached on the device, grouped by the padded length bucket of the item's history
  (the same buckets and ``max_len`` cap as training), so padding stays small;
* each **user** is encoded once per evaluation (one history, one call);
* only the **pair part** (``IARN.pair``: interacting gates of both sides, the two gated scans, the
  heads and the inner product) runs per pair, vectorised over chunks of candidates from one item
  bucket. One jit-compiled call per (user bucket, item bucket) scores a whole bucket with
  ``lax.map`` over chunks, so memory is bounded by the chunk (``chunk_elements`` floats for the
  largest [chunk, steps, gate width] intermediate) and Python dispatch is a handful of calls per
  user. Compilations: one per (user bucket, item bucket) pair that occurs.

For the variants whose recurrent state does not depend on the pair (TAGM, RNN, LSTM) a score is
``<user_repr, item_repr> + biases``: the scorer caches the item representations [N, h] and scores
users with one matrix product (``score_matrix``), the fast path.

Ranking scores (``score="rating"``, default) are exactly the model's predicted ratings
(``IARN.__call__`` on the same pair with whole training histories and no self-step), unclipped,
bias terms included when the config has them. ``score="interaction"`` drops the bias terms and
ranks by ``<user_repr, item_repr>`` alone, as the authors' ranking code does (reference notes 4.2;
only the item bias changes a user's ranking). Histories follow training's conventions
(``TrainConfig.max_len`` keeps the most recent steps; step ratings as in ``batching.materialize``).

Typical use::

    scorer = RankingScorer.from_result(train_result)            # items = the kept-item universe
    metrics = evaluate_ranking(scorer.score_items, split, users,
                               score_matrix_fn=scorer.score_matrix if scorer.fast else None)
"""
from __future__ import annotations

import copy
import dataclasses
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iarn_jax.data import batching
from iarn_jax.data.histories import Histories
from iarn_jax.data.recency import ItemRecency
from iarn_jax.models.iarn import IARN, SideEncoding, concatenate_encodings, model_variables
from iarn_jax.training.compile_options import compiler_options_for


def _pow2_floor(x: int) -> int:
    return 1 << max(int(x), 1).bit_length() - 1


def _pow2_ceil(x: int) -> int:
    return 1 << max(int(x) - 1, 0).bit_length()


def padded_histories(histories: Histories, entities: np.ndarray, T: int, max_len: Optional[int],
                     n_real: Optional[int] = None):
    """(ids, ratings, mask) [n, T] of whole training histories (most recent ``max_len`` steps),
    exactly as ``batching.materialize`` builds them for a pair whose own step is not in the history.
    Rows from ``n_real`` on are padding rows (empty histories)."""
    entities = np.asarray(entities, dtype=np.int64)
    lengths = histories.lengths[entities].copy()
    if n_real is not None:
        lengths[n_real:] = 0
    no_self = np.full(entities.shape, -1, dtype=np.int64)
    return batching._side(histories, entities, lengths, no_self, T, max_len, True)


@dataclasses.dataclass
class _Bucket:
    """The cached encodings of the items whose padded history length is ``T``.

    positions: int64 [n] positions (in ``RankingScorer.items``) of the bucket's items, in row order.
    encoding: SideEncoding of ``n_padded`` entities (a multiple of ``max_chunk``); entities past n
      are padding (item 0 with an empty history; their scores are dropped).
    max_chunk: the largest chunk (a power of two) that divides ``n_padded``.
    """

    T: int
    positions: np.ndarray
    encoding: Any
    max_chunk: int

    @property
    def n(self) -> int:
        return int(self.positions.size)


class RankingScorer:
    """Scores users against a fixed item set (default: the benchmark's kept-item universe).

    model, params: the IARN module and its trained parameters.
    constants: the model's non-trainable variables ({} or its ``"features"`` tables; see
      ``iarn_jax.models.features.feature_variables``), an argument of every compiled call.
    user_histories, item_histories: the CSR training histories (``PreparedData``).
    items: the item ids to cache (candidates must come from them).
    max_len, bucket_lengths: history cap and padding buckets (use the training config's).
    chunk_size: most candidates per vectorised pair call (a power of two). On the 2-core CPU
      (clothing, steady state) 128-1024 are within noise of each other, 256 was fastest in one
      run (139k vs 99k pairs/s at 1024), 64 slower, 4096 slower.
    chunk_elements: bound on the largest per-chunk intermediate, [chunk, tu + ti, gate width]
      floats; longer histories get smaller chunks.
    encode_batch: rows per encoding call when the item cache is built.
    score: "rating" (predicted ratings, biases included) or "interaction" (<user_repr, item_repr>
      only, the authors' ranking score).
    """

    def __init__(
        self,
        model: IARN,
        params: Any,
        user_histories: Histories,
        item_histories: Histories,
        items: Sequence[int],
        *,
        max_len: Optional[int] = None,
        bucket_lengths: Sequence[int] = batching.DEFAULT_BUCKETS,
        chunk_size: int = 256,
        chunk_elements: int = 1 << 22,
        encode_batch: int = 512,
        score: str = "rating",
        constants: Optional[Mapping[str, Any]] = None,
    ):
        if score not in ("rating", "interaction"):
            raise ValueError(f"score must be 'rating' or 'interaction', got {score!r}")
        self.score = score
        self.model = model
        self.config = model.config
        self.params = params
        self.variables = jax.device_put(model_variables(params, constants))  # params + feature tables
        self.user_histories = user_histories
        self.item_histories = item_histories
        # [n_items, K + 1] every item's recency features as of the end of the training period
        self.item_recency = (ItemRecency.from_histories(item_histories, self.config.recency_windows)
                             .at_end(np.arange(item_histories.n_entities)) if self.config.recency_windows else None)
        self.items = np.asarray(items, dtype=np.int64)
        self.max_len = max_len
        self.bucket_lengths = tuple(bucket_lengths)
        self.chunk_size = _pow2_floor(chunk_size)
        self.chunk_elements = int(chunk_elements)
        self.encode_batch = int(encode_batch)
        self.fast = not self.config.interacting  # pair-independent states: matrix-product path
        self._position = np.full(item_histories.n_entities, -1, dtype=np.int64)
        self._position[self.items] = np.arange(self.items.size)
        options = compiler_options_for()
        self._encode = {side: jax.jit(self._encode_fn(side), compiler_options=options) for side in ("user", "item")}
        self._represent = {side: jax.jit(self._represent_fn(side), compiler_options=options)
                           for side in ("user", "item")}
        self._score_bucket = jax.jit(self._score_bucket_fn, static_argnums=(2,), compiler_options=options)
        self._compiled: set = set()
        t0 = time.perf_counter()
        if self.fast:
            self.item_repr, self.item_bias = self._representations("item", self.items)
        else:
            self.buckets = self._build_buckets()
        self.encode_seconds = time.perf_counter() - t0

    @classmethod
    def from_result(cls, result, items: Optional[Sequence[int]] = None, **kwargs) -> "RankingScorer":
        """A scorer for a ``TrainResult`` (its params, histories, max_len and buckets).
        items: default the kept-item universe of the result's split."""
        from iarn_jax.evaluate.ranking import kept_item_universe

        data = result.data
        if items is None:
            items = kept_item_universe(data.split)
        kwargs.setdefault("max_len", result.train_config.max_len)
        kwargs.setdefault("bucket_lengths", result.train_config.bucket_lengths)
        kwargs.setdefault("constants", result.constants)
        return cls(result.model, result.params, data.user_histories, data.item_histories, items, **kwargs)

    def with_user_histories(self, user_histories: Histories) -> "RankingScorer":
        """The same scorer (shared item cache and compiled calls) reading users' steps from
        ``user_histories`` (e.g. a history given at request time; ``iarn_jax.serve.new_users``)."""
        view = copy.copy(self)
        view.user_histories = user_histories
        return view

    # -- jitted pieces -----------------------------------------------------------------------------
    def _encode_fn(self, side: str):
        method = IARN.encode_user if side == "user" else IARN.encode_item
        model = self.model

        def encode(variables, entity, ids, ratings, mask, *recency):  # recency: item side, recency_windows
            return model.apply(variables, entity, ids, ratings, mask, *recency, method=method)

        return encode

    def _represent_fn(self, side: str):
        """(head output [n, h], bias [n]) of encodings whose final state is pair-independent."""
        model = self.model

        def represent(module, encoding):
            tower = module.user_tower if side == "user" else module.item_tower
            representation = tower.represent(encoding.final_state, encoding.entity,
                                             feature_tables=module.feature_tables())
            return representation, tower.bias(encoding.entity, encoding.recency,
                                              feature_tables=module.feature_tables())

        def fn(variables, entity, ids, ratings, mask, *recency):
            encoding = self._encode_fn(side)(variables, entity, ids, ratings, mask, *recency)
            return model.apply(variables, encoding, method=represent)

        return fn

    def _score_bucket_fn(self, variables, user_encoding, chunk, item_encoding):
        """Predictions [n_padded] of one user [1, ...] against a bucket's items, ``chunk`` at a time."""
        model = self.model
        n = item_encoding.entity.shape[0]

        def one(start):
            item_chunk = item_encoding.map_entities(lambda x, axis: jax.lax.dynamic_slice_in_dim(x, start, chunk, axis))
            prediction, aux = model.apply(variables, user_encoding, item_chunk, method=IARN.pair)
            return prediction - aux["bias"] if self.score == "interaction" else prediction

        return jax.lax.map(one, jnp.arange(0, n, chunk)).reshape(n)

    # -- encodings ---------------------------------------------------------------------------------
    def _histories(self, side: str) -> Histories:
        return self.user_histories if side == "user" else self.item_histories

    def _padded_length(self, side: str, entities: np.ndarray) -> np.ndarray:
        lengths = batching.capped_lengths(self._histories(side).lengths[entities], self.max_len)
        return batching.bucket_length(lengths, self.bucket_lengths, self.max_len)

    def _batches(self, side: str, entities: np.ndarray, T: int, batch: int, n_rows: Optional[int] = None):
        """Padded inputs of ``entities`` (one bucket) in batches of ``batch`` rows (one compile per
        T), ``n_rows`` rows in all (default: ``entities`` rounded up to whole batches); rows past
        ``entities`` are padding (entity 0, empty history)."""
        n_rows = -(-entities.size // batch) * batch if n_rows is None else n_rows
        for start in range(0, n_rows, batch):
            rows = entities[start : start + batch]
            padded = np.zeros(batch, dtype=np.int64)
            padded[: rows.size] = rows
            ids, ratings, mask = padded_histories(self._histories(side), padded, T, self.max_len, rows.size)
            inputs = (padded.astype(np.int32), ids, ratings, mask)
            if side == "item" and self.item_recency is not None:
                inputs = inputs + (self.item_recency[padded],)
            yield rows.size, inputs

    def _representations(self, side: str, entities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(representations [n, h (+ S)], biases [n]) of non-interacting variants, in ``entities`` order."""
        entities = np.asarray(entities, dtype=np.int64)
        h = self.config.hidden_size + self.config.stationary_dim
        reprs = np.zeros((entities.size, h), np.float32)
        bias = np.zeros(entities.size, np.float32)
        T_all = self._padded_length(side, entities)
        for T in np.unique(T_all):
            index = np.flatnonzero(T_all == T)
            batch = min(self.encode_batch, _pow2_ceil(index.size))
            start = 0
            for n, inputs in self._batches(side, entities[index], int(T), batch):
                r, b = self._represent[side](self.variables, *inputs)
                reprs[index[start : start + n]] = np.asarray(r)[:n]
                bias[index[start : start + n]] = np.asarray(b)[:n]
                start += n
        return reprs, bias

    def _build_buckets(self) -> list:
        buckets = []
        T_all = self._padded_length("item", self.items)
        for T in np.unique(T_all):
            positions = np.flatnonzero(T_all == T)
            max_chunk = min(self.chunk_size, _pow2_ceil(positions.size))
            n_padded = -(-positions.size // max_chunk) * max_chunk
            batch = min(_pow2_floor(self.encode_batch), max_chunk)  # divides max_chunk, so n_padded
            parts = [self._encode["item"](self.variables, *inputs)
                     for _, inputs in self._batches("item", self.items[positions], int(T), batch, n_padded)]
            encoding = concatenate_encodings(parts)
            buckets.append(_Bucket(T=int(T), positions=positions, encoding=encoding, max_chunk=max_chunk))
        return buckets

    def _chunk(self, bucket: _Bucket, user_T: int) -> int:
        cfg = self.config
        width = max(4 * cfg.attention_size if cfg.interacting else 2 * cfg.attention_size, cfg.hidden_size)
        fit = self.chunk_elements // max((user_T + bucket.T) * width, 1)
        return max(1, min(bucket.max_chunk, _pow2_floor(fit)))

    # -- scoring -----------------------------------------------------------------------------------
    def encode_user(self, user: int) -> SideEncoding:
        entity = np.asarray([user], dtype=np.int64)
        T = int(self._padded_length("user", entity)[0])
        ids, ratings, mask = padded_histories(self.user_histories, entity, T, self.max_len)
        return self._encode["user"](self.variables, entity.astype(np.int32), ids, ratings, mask)

    def score_all(self, user: int) -> np.ndarray:
        """Scores [len(items)] of ``user`` against every cached item, in ``items`` order."""
        if self.fast:
            return self.score_matrix(np.asarray([user]), self.items)[0]
        user_encoding = self.encode_user(int(user))
        user_T = user_encoding.steps
        outputs = []
        for bucket in self.buckets:  # dispatched asynchronously, gathered below
            chunk = self._chunk(bucket, user_T)
            self._compiled.add((user_T, bucket.T, chunk))
            outputs.append(self._score_bucket(self.variables, user_encoding, chunk, bucket.encoding))
        scores = np.empty(self.items.size, np.float32)
        for bucket, out in zip(self.buckets, outputs):
            scores[bucket.positions] = np.asarray(out)[: bucket.n]
        return scores

    def positions(self, items: np.ndarray) -> np.ndarray:
        items = np.asarray(items, dtype=np.int64)
        pos = self._position[items]
        if (pos < 0).any():
            missing = items[pos < 0][:5]
            raise KeyError(f"items {missing.tolist()} are not in the scorer's item set")
        return pos

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        """Scores [I] of one user against candidate ``items`` (all must be in the item set)."""
        positions = self.positions(items)
        if self.fast:
            u_repr, u_bias = self._representations("user", np.asarray([user]))
            return self._combine(u_repr, u_bias, positions)[0]
        return self.score_all(user)[positions]

    __call__ = score_items

    def _combine(self, u_repr: np.ndarray, u_bias: np.ndarray, positions: np.ndarray) -> np.ndarray:
        scores = u_repr @ self.item_repr[positions].T
        if self.score == "interaction":
            return scores
        scores = scores + u_bias[:, None] + self.item_bias[positions][None, :]
        if self.config.bias == "global_user_item":
            scores = scores + np.float32(self.config.global_mean)
        return scores

    def score_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Scores [U, I]; one matrix product for TAGM/RNN/LSTM, a per-user loop for IARN."""
        users = np.asarray(users, dtype=np.int64)
        positions = self.positions(items)
        if self.fast:
            u_repr, u_bias = self._representations("user", users)
            return self._combine(u_repr, u_bias, positions)
        return np.stack([self.score_all(int(u))[positions] for u in users]) if users.size else np.zeros((0, positions.size), np.float32)

    @property
    def n_compiled_shapes(self) -> int:
        """Distinct (user bucket, item bucket, chunk) shapes of the pair call used so far."""
        return len(self._compiled)


def iarn_ranking_metrics(result, split, users, *, progress: bool = True, **scorer_kwargs) -> dict:
    """``evaluate_ranking`` of a TrainResult with a RankingScorer; adds "encode_seconds"
    (the item cache, included in "seconds") and "scorer" settings to the returned dict."""
    from iarn_jax.evaluate.ranking import evaluate_ranking, kept_item_universe

    start = time.perf_counter()
    scorer = RankingScorer.from_result(result, kept_item_universe(split), **scorer_kwargs)
    metrics = evaluate_ranking(
        scorer.score_items, split, users, progress=progress,
        score_matrix_fn=scorer.score_matrix if scorer.fast else None,
    )
    total = time.perf_counter() - start
    metrics.update(
        encode_seconds=scorer.encode_seconds,
        seconds=total,
        pairs_per_second=metrics["n_pairs"] / total if total > 0 else float("nan"),
        scorer={"chunk_size": scorer.chunk_size, "chunk_elements": scorer.chunk_elements,
                "fast_path": scorer.fast, "compiled_shapes": scorer.n_compiled_shapes},
    )
    return metrics


__all__ = ["RankingScorer", "iarn_ranking_metrics", "padded_histories"]
