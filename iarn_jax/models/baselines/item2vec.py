"""Item2Vec (Barkan & Koenigstein 2016) and MP2Vec / Meta-Prod2Vec (Vasile et al., RecSys 2016).

One skip-gram-with-negative-sampling trainer serves both.

Sequences: each user's time-ordered fit items (split.train, plus split.val on the
final refit). Every occurrence of an item is a *target* i; each epoch draws
`contexts` context items j from the same user's sequence, uniformly among the
other positions within `window` steps (window=None: the whole history, as
Item2Vec treats a user's set as one context). Loss of a pair (i, j), with K =
`n_neg` negatives drawn from the unigram^0.75 distribution of the fit items:

  L_{J|I} = -log s(v_i . u_j) - sum_k log s(-v_i . u_k)

Meta-Prod2Vec adds the item metadata M (MovieLens genres / Clothing categories,
flat view) to the same vocabulary (input vectors v and output vectors u for
items and features alike) and four side terms, weighted by `alpha` (the IARN
paper sets alpha = 0.1):

  L = L_{J|I} + alpha * (L_{M|I} + L_{J|M} + L_{M|M} + L_{I|M})

  M|I: the target item predicts the context item's feature  (v_i   . u_{m_j})
  J|M: the target's feature predicts the context item       (v_{m_i} . u_j)
  M|M: the target's feature predicts the context's feature  (v_{m_i} . u_{m_j})
  I|M: the target's feature predicts the target item        (v_{m_i} . u_i)

Score: the user's profile is the mean of the L2-normalised input vectors v of
the user's fit items; score(u, c) = cos-similarity mean = v_c/|v_c| . profile_u
(similarity="cosine", the default) or the unnormalised mean dot product (similarity="dot").

Assumptions (implementation choices, not from the papers):
* Contexts are sampled (`contexts` per target occurrence and epoch) instead of
  enumerating all pairs of a user's history (quadratic in history length).
* Each metadata term uses one feature per item, drawn uniformly from the item's
  flat features afresh per pair and epoch; terms whose item has no features are
  masked. Feature negatives (for M|I, M|M) are drawn from the features'
  unigram^0.75 distribution (counted over fit-item occurrences); item negatives
  are shared by J|I, J|M and I|M within a pair.
* Negatives are not filtered against the user's history (plain word2vec).
* Vectors v, u start U(-0.5/d, 0.5/d) and 0-ish (word2vec); tables are updated
  sparsely with row-wise Adagrad (`table_lr`), no L2 (word2vec has none).
* Items never seen in the fit data get zero vectors (score 0); with
  unseen_last=True (default, the project's BPR convention) they rank below
  every fit item.
* Ranking only (rates=False). Model selection: each config of `grid` is
  trained on split.train with early stopping on the sampled validation AUC;
  the best is refit on train + val for its best epoch count (refit=True).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines import common

DEFAULT_GRID = ({"window": None}, {"window": 3})


def sample_context_pairs(indptr: np.ndarray, contexts: int, window: Optional[int], rng: np.random.Generator):
    """Target and context positions (into the CSR item array) for every occurrence.

    indptr: [n_users + 1] CSR offsets of the users' time-ordered sequences.
    Returns (target_pos, context_pos), each [n_pairs]: `contexts` pairs per
    occurrence in a sequence of length >= 2, the context drawn uniformly among
    the other positions at distance <= window (window=None: whole sequence).
    """
    lengths = np.diff(indptr)
    seq_of = np.repeat(np.arange(len(lengths)), lengths)
    start = indptr[:-1][seq_of]
    length = lengths[seq_of]
    pos = np.arange(indptr[-1]) - start  # position within its sequence
    keep = length >= 2
    pos, start, length = pos[keep], start[keep], length[keep]
    pos = np.repeat(pos, contexts)
    start = np.repeat(start, contexts)
    length = np.repeat(length, contexts)
    if window is None:
        lo, hi = np.zeros_like(pos), length - 1
    else:
        lo, hi = np.maximum(pos - window, 0), np.minimum(pos + window, length - 1)
    span = hi - lo  # number of other positions in [lo, hi]
    draw = lo + np.floor(rng.random(len(pos)) * span).astype(np.int64)
    draw = draw + (draw >= pos)  # skip the target itself
    return start + pos, start + draw


def sgns(target: jax.Array, positive: jax.Array, negatives: jax.Array) -> jax.Array:
    """Negative-sampling loss [B]: target [B, d], positive [B, d], negatives [B, K, d]."""
    pos = jax.nn.log_sigmoid(jnp.sum(target * positive, -1))
    neg = jax.nn.log_sigmoid(-jnp.einsum("bd,bkd->bk", target, negatives)).sum(-1)
    return -(pos + neg)


def skipgram_loss(rows: Mapping[str, jax.Array], batch: Mapping[str, jax.Array], alpha: Optional[float]) -> jax.Array:
    """Weighted mean over the batch of L_{J|I} (+ alpha * the four metadata terms; alpha None: none).

    rows: gathered vectors, [B, d] ``in_i`` v_i, ``out_j`` u_j, ``out_i`` u_i, ``in_mi`` v_{m_i},
    ``out_mj`` u_{m_j}; [B, K, d] ``neg_items``, ``neg_feats``. batch: ``weight`` [B] and, with
    metadata, ``has_mi`` / ``has_mj`` [B] (1 when the item has a feature, else its terms are masked).
    """
    loss = sgns(rows["in_i"], rows["out_j"], rows["neg_items"])
    if alpha is not None:
        mi, mj = batch["has_mi"], batch["has_mj"]
        side = (mj * sgns(rows["in_i"], rows["out_mj"], rows["neg_feats"])
                + mi * sgns(rows["in_mi"], rows["out_j"], rows["neg_items"])
                + mi * mj * sgns(rows["in_mi"], rows["out_mj"], rows["neg_feats"])
                + mi * sgns(rows["in_mi"], rows["out_i"], rows["neg_items"]))
        loss = loss + alpha * side
    w = batch["weight"]
    return jnp.sum(w * loss) / jnp.maximum(jnp.sum(w), 1.0)


@dataclasses.dataclass
class SkipGramRecommender:
    """Item2Vec (alpha = 0, no metadata) and MP2Vec (metadata, alpha > 0). See the module docstring."""

    use_metadata: bool = False
    alpha: float = 0.1
    dim: Optional[int] = None
    window: Optional[int] = None
    contexts: int = 5
    n_neg: int = 5
    batch_size: int = 1024
    table_lr: float = 0.5
    similarity: str = "cosine"
    max_epochs: int = 20
    patience: int = 3
    grid: Optional[Sequence[Mapping[str, Any]]] = DEFAULT_GRID
    refit: bool = True
    unseen_last: bool = True
    name: str = "Item2Vec"
    rates: bool = False

    vectors_: Optional[np.ndarray] = dataclasses.field(default=None, repr=False)
    selection_: Optional[dict] = dataclasses.field(default=None, repr=False)

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "SkipGramRecommender":
        if self.similarity not in ("cosine", "dot"):
            raise ValueError(f"similarity must be 'cosine' or 'dot', got {self.similarity!r}")
        start = time.perf_counter()
        dim = self.dim or nc.default_dim(split)
        n_users, n_items = split.n_users, split.n_items
        feat_ids, feat_mask = nc.flat_feature_matrix(split.dataset.item_features if self.use_metadata else None, n_items)
        n_features = split.dataset.item_features.n_features if (self.use_metadata and split.dataset.item_features) else 0
        if self.use_metadata and n_features == 0:
            nc.log(verbose, f"[{self.name}] {split.name} has no item features: MP2Vec reduces to Item2Vec")
        configs = nc.grid_configs(self.grid)
        nc.log(verbose, f"[{self.name}] {split.name}: dim {dim}, {len(split.train)} train pairs, "
                        f"{n_features} features, grid {configs}")

        def train_on(frame, overrides, **kwargs):
            known = nc.UserItemIndex.from_frame(frame, n_users, n_items)
            return dataclasses.replace(self, **overrides)._train(known, feat_ids, feat_mask, n_features, dim, seed,
                                                                 verbose, **kwargs)

        pool = np.unique(split.train["item"].to_numpy(np.int64))
        selection = common.select_and_refit(
            configs, lambda c: train_on(split.train, c, val=(split.val, pool), label=f"{self.name} {c}"),
            lambda c, epochs: train_on(nc.fit_frame(split, include_val=True), c, epochs=epochs,
                                       label=f"{self.name} refit"),
            refit=self.refit, select=nc.has_validation(split) and (len(configs) > 1 or self.refit),
            higher_is_better=True, verbose=bool(verbose), label=f"{self.name} grid")
        frame = nc.fit_frame(split, include_val=True) if selection.refitted else split.train
        known = nc.UserItemIndex.from_frame(frame, n_users, n_items)
        self.seen_ = common.seen_mask(known.items, n_items)
        self.vectors_ = np.where(self.seen_[:, None], np.asarray(selection.final.params["tables"]["in"][:n_items]), 0.0)
        self.known_ = known
        self.profiles_ = _profiles(self.vectors_, known, self.similarity)
        self._normed = _normalise(self.vectors_) if self.similarity == "cosine" else self.vectors_
        self.selection_ = nc.selection_record(self.name, selection, configs, "val_auc", self.max_epochs, start, verbose,
                                              dim=dim)
        return self

    def _train(self, known, feat_ids, feat_mask, n_features, dim, seed, verbose, *, val=None, epochs=None, label=""):
        n_items = known.n_items
        vocab = n_items + n_features
        key = jax.random.PRNGKey(seed)
        k_in, k_out, k_epochs = jax.random.split(key, 3)
        tables = {"in": jax.random.uniform(k_in, (vocab, dim), minval=-0.5 / dim, maxval=0.5 / dim),
                  "out": 1e-3 * jax.random.normal(k_out, (vocab, dim))}
        use_meta = self.use_metadata and n_features > 0
        alpha = float(self.alpha)

        def loss_fn(rows, dense, batch, rng):
            return skipgram_loss(rows, batch, alpha if use_meta else None)

        lookups = {"in_i": nc.Lookup("in", "i"), "out_j": nc.Lookup("out", "j"), "neg_items": nc.Lookup("out", "neg_items")}
        if use_meta:
            lookups.update({"in_mi": nc.Lookup("in", "mi"), "out_mj": nc.Lookup("out", "mj"),
                            "out_i": nc.Lookup("out", "i"), "neg_feats": nc.Lookup("out", "neg_feats")})
        trainer = nc.SparseTrainer(loss_fn, lookups, table_lr=self.table_lr)
        state = trainer.init(tables, {})

        seq_items = known.items
        item_counts = np.bincount(seq_items, minlength=n_items)
        item_pool = np.flatnonzero(item_counts)
        item_probs = nc.unigram_probs(item_counts[item_pool])
        n_feat_of = feat_mask.sum(1)
        if use_meta:
            feat_counts = np.bincount(feat_ids[seq_items][feat_mask[seq_items]], minlength=n_features)
            feat_pool = np.flatnonzero(feat_counts)
            feat_probs = nc.unigram_probs(feat_counts[feat_pool])
        rng = np.random.default_rng(seed)

        def random_feature(items):
            """One uniformly drawn flat feature per item (vocabulary id), and whether it has any."""
            counts = n_feat_of[items]
            pick = np.floor(rng.random(len(items)) * np.maximum(counts, 1)).astype(np.int64)
            return (n_items + feat_ids[items, pick]).astype(np.int32), (counts > 0).astype(np.float32)

        def run_epoch(state, epoch):
            t_pos, c_pos = sample_context_pairs(known.indptr, self.contexts, self.window, rng)
            i, j = seq_items[t_pos], seq_items[c_pos]
            arrays = {"i": i.astype(np.int32), "j": j.astype(np.int32),
                      "neg_items": item_pool[_draw(rng, item_probs, (len(i), self.n_neg))].astype(np.int32)}
            if use_meta:
                arrays["mi"], arrays["has_mi"] = random_feature(i)
                arrays["mj"], arrays["has_mj"] = random_feature(j)
                arrays["neg_feats"] = (n_items + feat_pool[_draw(rng, feat_probs, (len(i), self.n_neg))]).astype(np.int32)
            batches = nc.epoch_batches(arrays, self.batch_size, rng)
            return trainer.epoch(state, batches, jax.random.fold_in(k_epochs, epoch))

        evaluate = None
        if val is not None:
            val_frame, pool = val
            val_u = val_frame["user"].to_numpy(np.int64)
            val_i = val_frame["item"].to_numpy(np.int64)

            def evaluate(state):
                vectors = np.asarray(state["tables"]["in"][:n_items])
                profiles = _profiles(vectors, known, self.similarity)
                normed = _normalise(vectors) if self.similarity == "cosine" else vectors
                fn = lambda u, it: np.sum(profiles[u] * normed[it], axis=-1)
                return nc.sampled_auc(fn, val_u, val_i, known, pool, seed=seed)

        return common.early_stopping(state, run_epoch, evaluate, max_epochs=epochs or self.max_epochs,
                                     patience=self.patience, higher_is_better=True, min_delta=nc.MIN_DELTA,
                                     verbose=verbose, label=label)

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError(f"{self.name} is a ranking model (rates=False): it predicts no ratings")

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        if self.vectors_ is None:
            raise RuntimeError("fit() the model first")
        items = np.asarray(items, np.int64)
        scores = self._normed[items] @ self.profiles_[int(user)]
        return nc.rank_unseen_last(scores, self.seen_[items]) if self.unseen_last else scores

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return np.sum(self.profiles_[np.asarray(users, np.int64)] * self._normed[np.asarray(items, np.int64)], axis=-1)


def Item2Vec(**kwargs) -> SkipGramRecommender:
    """Item2Vec: skip-gram with negative sampling over users' item histories."""
    kwargs.setdefault("name", "Item2Vec")
    return SkipGramRecommender(use_metadata=False, alpha=0.0, **kwargs)


def MP2Vec(alpha: float = 0.1, **kwargs) -> SkipGramRecommender:
    """Meta-Prod2Vec: Item2Vec plus item metadata in the context (alpha = 0.1 as the IARN paper)."""
    kwargs.setdefault("name", "MP2Vec")
    return SkipGramRecommender(use_metadata=True, alpha=alpha, **kwargs)


def _draw(rng: np.random.Generator, probs: np.ndarray, shape) -> np.ndarray:
    """Indices drawn from a categorical distribution (inverse CDF, faster than rng.choice with p)."""
    cdf = np.cumsum(probs)
    return np.minimum(np.searchsorted(cdf, rng.random(shape) * cdf[-1], side="right"), len(probs) - 1)


def _normalise(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


def _profiles(vectors: np.ndarray, known: nc.UserItemIndex, similarity: str) -> np.ndarray:
    """[n_users, d] mean of the (normalised) vectors of each user's fit items (0 for users without any)."""
    normed = _normalise(vectors) if similarity == "cosine" else vectors
    counts = np.diff(known.indptr)
    profiles = np.zeros((known.n_users, vectors.shape[1]), np.float32)
    has = counts > 0
    if has.any():
        sums = np.add.reduceat(normed[known.items].astype(np.float64), known.indptr[:-1][has], axis=0)
        profiles[has] = sums / counts[has][:, None]
    return profiles
