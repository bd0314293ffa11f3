"""NCF / NeuMF (He et al., WWW 2017): GMF and MLP towers fused by a final linear layer.

Model (the paper's NeuMF, without pre-training):
  gmf      = p_u^G * q_i^G                                  (element-wise, size d)
  mlp      = ReLU MLP over [p_u^M ; q_i^M]   (layers `mlp_layers`, default (64, 32):
             the IARN paper sets NCF's hidden units to 64)
  logit    = h^T [gmf ; mlp] + b,   y_hat = sigmoid(logit)
Loss: binary cross-entropy (log loss) over the user's training pairs (label 1)
and `n_neg` sampled negatives per positive (label 0, default 4 as in NeuMF),
negatives drawn uniformly, each epoch afresh, from the items of the fit data,
excluding the user's own fit items; plus per-example L2 `l2` on the embedding
rows a batch touches.

Assumptions (implementation choices, not from the papers):
* Ranking only (rates=False): the score of (u, i) is the logit. Items absent
  from the fit data have untrained factors; with unseen_last=True (default, the
  project's BPR convention) they rank below every fit item.
* Embedding tables are updated sparsely with row-wise Adagrad (`table_lr`),
  the MLP and output layer with Adam (`dense_lr`); NeuMF used Adam throughout
  (a dense Adam step over 50k-row tables would make each step O(table size)).
* Embeddings start N(0, 0.01^2) (as NeuMF's code), d = 25 on MovieLens-like
  data and 50 on Amazon/Clothing (the IARN paper's latent size) unless `dim` is given.
* Model selection: each config of `grid` is trained on split.train with early
  stopping on the sampled validation AUC (each split.val pair against 50
  sampled negatives); the best config is then refit on train + val for its
  best epoch count (refit=True). No test data is used.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines import common

DEFAULT_GRID = ({"l2": 1e-5}, {"l2": 1e-4})


class NeuMFHead(nn.Module):
    """The dense part of NeuMF: the MLP tower and the fusing output layer."""

    mlp_layers: Sequence[int] = (64, 32)

    @nn.compact
    def __call__(self, gmf_user, gmf_item, mlp_user, mlp_item):
        gmf = gmf_user * gmf_item
        hidden = jnp.concatenate([mlp_user, mlp_item], axis=-1)
        for width in self.mlp_layers:
            hidden = nn.relu(nn.Dense(width)(hidden))
        return nn.Dense(1)(jnp.concatenate([gmf, hidden], axis=-1))[..., 0]


@dataclasses.dataclass
class NCF:
    """NeuMF ranking baseline. See the module docstring for the model and every assumption."""

    dim: Optional[int] = None
    mlp_layers: Sequence[int] = (64, 32)
    n_neg: int = 4
    batch_size: int = 1024
    table_lr: float = 0.05
    dense_lr: float = 1e-3
    l2: float = 1e-5
    max_epochs: int = 30
    patience: int = 3
    grid: Optional[Sequence[Mapping[str, Any]]] = DEFAULT_GRID
    refit: bool = True
    unseen_last: bool = True
    name: str = "NCF"
    rates: bool = False

    # fitted state
    params_: Optional[dict] = dataclasses.field(default=None, repr=False)
    selection_: Optional[dict] = dataclasses.field(default=None, repr=False)

    # ------------------------------------------------------------------ fit
    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "NCF":
        start = time.perf_counter()
        dim = self.dim or nc.default_dim(split)
        n_users, n_items = split.n_users, split.n_items
        configs = nc.grid_configs(self.grid)
        nc.log(verbose, f"[{self.name}] {split.name}: dim {dim}, {len(split.train)} train pairs, grid {configs}")

        def train_on(frame, overrides, **kwargs):
            known = nc.UserItemIndex.from_frame(frame, n_users, n_items)
            pool = np.unique(frame["item"].to_numpy(np.int64))
            return dataclasses.replace(self, **overrides)._train(frame, known, pool, dim, seed, verbose, **kwargs)

        selection = common.select_and_refit(
            configs, lambda c: train_on(split.train, c, split=split, label=f"{self.name} {c}"),
            lambda c, epochs: train_on(nc.fit_frame(split, include_val=True), c, epochs=epochs, label=f"{self.name} refit"),
            refit=self.refit, select=nc.has_validation(split) and (len(configs) > 1 or self.refit),
            higher_is_better=True, verbose=bool(verbose), label=f"{self.name} grid")
        frame = nc.fit_frame(split, include_val=True) if selection.refitted else split.train
        state = selection.final.params
        mlp_layers = tuple(dataclasses.replace(self, **selection.config).mlp_layers)
        self.seen_ = common.seen_mask(frame["item"].to_numpy(np.int64), n_items)
        self.params_ = {"tables": state["tables"], "dense": state["dense"], "mlp_layers": mlp_layers}
        self._score_all = _make_score_all(mlp_layers)
        self.selection_ = nc.selection_record(self.name, selection, configs, "val_auc", self.max_epochs, start, verbose,
                                              dim=dim)
        return self

    def _train(self, frame, known, pool, dim, seed, verbose, *, split=None, epochs=None, label=""):
        n_users, n_items = known.n_users, known.n_items
        key = jax.random.PRNGKey(seed)
        k_tables, k_dense, k_epochs = jax.random.split(key, 3)
        ks = jax.random.split(k_tables, 4)
        tables = {name: 0.01 * jax.random.normal(k, (n, dim)) for name, k, n in
                  zip(("gmf_user", "gmf_item", "mlp_user", "mlp_item"), ks, (n_users, n_items, n_users, n_items))}
        head = NeuMFHead(tuple(self.mlp_layers))
        zeros = jnp.zeros((1, dim))
        dense = head.init(k_dense, zeros, zeros, zeros, zeros)
        l2 = self.l2

        def loss_fn(rows, dense, batch, rng):
            logits = head.apply(dense, rows["gmf_user"], rows["gmf_item"], rows["mlp_user"], rows["mlp_item"])
            bce = optax.sigmoid_binary_cross_entropy(logits, batch["label"])
            reg = sum(jnp.sum(r * r, axis=-1) for r in rows.values())
            w = batch["weight"]
            return jnp.sum(w * (bce + l2 * reg)) / jnp.maximum(jnp.sum(w), 1.0)

        lookups = {"gmf_user": nc.Lookup("gmf_user", "user"), "gmf_item": nc.Lookup("gmf_item", "item"),
                   "mlp_user": nc.Lookup("mlp_user", "user"), "mlp_item": nc.Lookup("mlp_item", "item")}
        trainer = nc.SparseTrainer(loss_fn, lookups, table_lr=self.table_lr, dense_optimizer=optax.adam(self.dense_lr))
        state = trainer.init(tables, dense)
        pos_users = frame["user"].to_numpy(np.int32)
        pos_items = frame["item"].to_numpy(np.int32)
        rng = np.random.default_rng(seed)

        def run_epoch(state, epoch):
            neg = nc.sample_negatives(rng, pos_users, self.n_neg, known, pool).astype(np.int32)
            users = np.concatenate([pos_users, np.repeat(pos_users, self.n_neg)])
            items = np.concatenate([pos_items, neg.reshape(-1)])
            labels = np.concatenate([np.ones(len(pos_users), np.float32), np.zeros(neg.size, np.float32)])
            batches = nc.epoch_batches({"user": users, "item": items, "label": labels}, self.batch_size, rng)
            return trainer.epoch(state, batches, jax.random.fold_in(k_epochs, epoch))

        evaluate = None
        if split is not None:
            score_pairs = _make_score_pairs(tuple(self.mlp_layers))
            val_u = split.val["user"].to_numpy(np.int64)
            val_i = split.val["item"].to_numpy(np.int64)

            def evaluate(state):
                fn = nc.chunked(lambda u, i: score_pairs(state["tables"], state["dense"], u, i))
                return nc.sampled_auc(fn, val_u, val_i, known, pool, seed=seed)

        return common.early_stopping(state, run_epoch, evaluate, max_epochs=epochs or self.max_epochs,
                                     patience=self.patience, higher_is_better=True, min_delta=nc.MIN_DELTA,
                                     verbose=verbose, label=label)

    # ------------------------------------------------------------------ inference
    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError("NCF is a ranking model (rates=False): it predicts no ratings")

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        """Logits of one user against candidate items (all items scored once, then indexed)."""
        if self.params_ is None:
            raise RuntimeError("fit() the model first")
        items = np.asarray(items, np.int64)
        scores = np.asarray(self._score_all(self.params_["tables"], self.params_["dense"], jnp.int32(user)))[items]
        return nc.rank_unseen_last(scores, self.seen_[items]) if self.unseen_last else scores

    def score_pairs(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        fn = _make_score_pairs(self.params_["mlp_layers"])
        return nc.chunked(lambda u, i: fn(self.params_["tables"], self.params_["dense"], u, i))(
            np.asarray(users, np.int32), np.asarray(items, np.int32))


def _make_score_pairs(mlp_layers):
    head = NeuMFHead(tuple(mlp_layers))

    @jax.jit
    def score_pairs(tables, dense, users, items):
        return head.apply(dense, tables["gmf_user"][users], tables["gmf_item"][items],
                          tables["mlp_user"][users], tables["mlp_item"][items])

    return score_pairs


def _make_score_all(mlp_layers):
    head = NeuMFHead(tuple(mlp_layers))

    @jax.jit
    def score_all(tables, dense, user):
        n_items = tables["gmf_item"].shape[0]
        gu = jnp.broadcast_to(tables["gmf_user"][user], (n_items, tables["gmf_user"].shape[1]))
        mu = jnp.broadcast_to(tables["mlp_user"][user], (n_items, tables["mlp_user"].shape[1]))
        return head.apply(dense, gu, tables["gmf_item"], mu, tables["mlp_item"])

    return score_all
