"""SASRec (Kang & McAuley, ICDM 2018): causal self-attention over the user's item sequence.

Model (shapes: B sequences, T = max_len steps, d = dim, N = n_items; item id N is padding):
  sequence   [B, T] int32   item ids, time order, LEFT-padded with N (the latest item is at T-1)
  x_0        [B, T, d]      E[sequence] * sqrt(d) + P[0..T-1], dropout, zeroed on padding
  block b    x = x + Dropout(SelfAttention(LN(x)))   causal mask, keys restricted to valid steps
             x = x + FFN(LN(x))                      FFN = Dense(d) ReLU Dropout Dense(d) Dropout
             x = x * valid                            (n_blocks blocks, n_heads heads)
  output h   [B, T, d]      LN(x); h[:, t] summarises sequence[:, :t+1]
  score      h[:, t] . E[i]  (the item table E [N+1, d] is also the output layer)
Loss: at every valid step t the target is sequence[t+1] (label 1) and one negative item drawn
uniformly from the pool, outside the user's training-period items (label 0), fresh every epoch:
  mean over valid steps of  -log sigmoid(h_t . E[pos_t]) - log sigmoid(-h_t . E[neg_t])
plus `l2` * (|E[pos_t]|^2 + |E[neg_t]|^2) (0 by default, as the paper's code), Adam.

Assumptions (implementation choices, not from the paper):
* Sequence source: ``split.history`` (all training-period interactions, the project's histories;
  it is what the test-time user representation is built from), ordered by (time, row) per user.
  During model selection the validation pairs are taken out of it; the candidates of the
  benchmark exclude every history item anyway, and the min_len filter only decides which pairs
  are scored, not what a user's past is. Ranking only (rates=False).
* Long sequences are cut into windows of max_len steps from the most recent end, so every
  interaction is a target once per epoch (the paper keeps only the latest max_len); the first
  step of an older window sees no earlier context.
* max_len 50 on Amazon/Clothing (the paper's value for sparse data; 99% of Clothing users have
  <= 26 training items) and 100 on MovieLens-like data (the paper used 200 on ML-1M; on ml100k
  the median user has 66 items and windows keep every step a target, while 100 halves the cost).
  dim 50, 2 blocks, 1 head as the paper; Adam lr 2e-3 with batch 64 (the paper: 1e-3, 128): one
  window is one example, so ml100k has only ~1.4k examples per epoch. Measured on ml100k (sampled
  val AUC, dropout 0.2): lr 2e-3 / batch 64 / max_len 100 peaks at 0.858 after 7 epochs; the
  paper's 1e-3 / 128 / max_len 200 reaches the same 0.858 only after 24 epochs (~3x the time).
* Model selection: each config of `grid` (default dropout 0.2 / 0.5, the paper's dense / sparse
  values) trains on history minus val with early stopping on the sampled validation AUC (each
  val pair against 50 sampled negatives; the user representation is the encoder output at the
  last step of her sequence without the val items); the best early-stopped model is kept (no
  refit, like BPR). Test scores use the last step of her whole training-period sequence.
* Items never seen in the fit sequences (untrained rows) rank last (unseen_last, BPR's convention).
Deterministic given the seed (host NumPy RNG for windows/negatives, PRNGKey(seed) for init/dropout).
"""
from __future__ import annotations

import time
from typing import Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines import common

DEFAULTS = dict(
    dim=50,
    n_blocks=2,
    n_heads=1,
    dropout=0.2,
    l2=0.0,
    lr=2e-3,
    batch_size=64,
    max_epochs=100,
    patience=3,
    eval_every=1,
    n_val_neg=50,
)


def default_max_len(split: ProtocolSplit) -> int:
    """100 on MovieLens-like (long) sequences, 50 on Amazon/Clothing (see the module docstring)."""
    return 50 if nc.default_dim(split) == 50 else 100


# --------------------------------------------------------------------------- model


class SASRecEncoder(nn.Module):
    """sequence [B, T] (left-padded with n_items) -> h [B, T, dim]; see the module docstring."""

    n_items: int
    max_len: int
    dim: int = 50
    n_blocks: int = 2
    n_heads: int = 1
    dropout: float = 0.2

    @nn.compact
    def __call__(self, sequence: jax.Array, deterministic: bool = True) -> jax.Array:
        length = sequence.shape[1]
        valid = (sequence != self.n_items)[..., None].astype(jnp.float32)  # [B, T, 1]
        # params["item_embed"]["embedding"] [n_items + 1, dim] is also the output layer
        item_embed = nn.Embed(self.n_items + 1, self.dim, name="item_embed")
        pos_embed = nn.Embed(self.max_len, self.dim, name="pos_embed")
        x = item_embed(sequence) * np.sqrt(self.dim) + pos_embed(jnp.arange(length))[None]
        x = nn.Dropout(self.dropout)(x, deterministic=deterministic) * valid
        causal = jnp.tril(jnp.ones((length, length), bool))
        attn_mask = (causal[None] & (sequence != self.n_items)[:, None, :])[:, None]  # [B, 1, T, T]
        for _ in range(self.n_blocks):
            q = nn.LayerNorm(epsilon=1e-8)(x)
            attn = nn.MultiHeadDotProductAttention(num_heads=self.n_heads, qkv_features=self.dim, out_features=self.dim,
                                                   dropout_rate=self.dropout, deterministic=deterministic)(q, q, mask=attn_mask)
            x = x + nn.Dropout(self.dropout)(attn, deterministic=deterministic)
            y = nn.LayerNorm(epsilon=1e-8)(x)
            y = nn.Dropout(self.dropout)(nn.relu(nn.Dense(self.dim)(y)), deterministic=deterministic)
            y = nn.Dropout(self.dropout)(nn.Dense(self.dim)(y), deterministic=deterministic)
            x = (x + y) * valid
        return nn.LayerNorm(epsilon=1e-8)(x)


def bce_loss(h: jax.Array, pos_emb: jax.Array, neg_emb: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over mask of -log s(h.pos) - log s(-h.neg); h, pos_emb, neg_emb [B, T, d], mask [B, T]."""
    pos_logit = jnp.sum(h * pos_emb, axis=-1)
    neg_logit = jnp.sum(h * neg_emb, axis=-1)
    loss = -(jax.nn.log_sigmoid(pos_logit) + jax.nn.log_sigmoid(-neg_logit))
    mask = mask.astype(jnp.float32)
    return jnp.sum(loss * mask) / jnp.maximum(jnp.sum(mask), 1.0)


# --------------------------------------------------------------------------- data


def user_sequences(frame: pd.DataFrame, n_users: int) -> list[np.ndarray]:
    """Per user, her items in time order (ties: row order)."""
    ordered = frame.sort_values(["user", "time"], kind="stable")
    users = ordered["user"].to_numpy(np.int64)
    items = ordered["item"].to_numpy(np.int64)
    bounds = np.concatenate([[0], np.cumsum(np.bincount(users, minlength=n_users))])
    return [items[bounds[u]:bounds[u + 1]] for u in range(n_users)]


def last_windows(sequences: Sequence[np.ndarray], users: np.ndarray, max_len: int, pad: int) -> np.ndarray:
    """[U, max_len] the latest max_len items of each user's sequence, left-padded with `pad`."""
    out = np.full((len(users), max_len), pad, np.int32)
    for row, u in enumerate(users):
        tail = sequences[u][-max_len:]
        if len(tail):
            out[row, max_len - len(tail):] = tail
    return out


def training_windows(sequences: Sequence[np.ndarray], max_len: int, pad: int) -> dict[str, np.ndarray]:
    """Next-item examples cut into windows from the most recent end.

    Returns {"input", "target": [W, max_len] int32 left-padded with `pad`, "user": [W] int32}:
    target[w, t] is the item that follows input[w, t] in the user's sequence.
    """
    inputs, targets, owners = [], [], []
    for u, seq in enumerate(sequences):
        end = len(seq) - 1  # number of (input, target) steps
        while end > 0:
            start = max(0, end - max_len)
            row_in = np.full(max_len, pad, np.int32)
            row_out = np.full(max_len, pad, np.int32)
            row_in[max_len - (end - start):] = seq[start:end]
            row_out[max_len - (end - start):] = seq[start + 1:end + 1]
            inputs.append(row_in)
            targets.append(row_out)
            owners.append(u)
            end = start
    if not inputs:
        raise ValueError("SASRec needs at least one user with two or more training interactions")
    return {"input": np.stack(inputs), "target": np.stack(targets), "user": np.asarray(owners, np.int32)}


def remove_pairs(frame: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """frame without the rows whose (user, item, time) occurs in pairs."""
    if pairs is None or not len(pairs):
        return frame
    cols = ["user", "item", "time"]
    marked = frame[cols].merge(pairs[cols].drop_duplicates(), on=cols, how="left", indicator=True)
    return frame[(marked["_merge"] == "left_only").to_numpy()].reset_index(drop=True)


# --------------------------------------------------------------------------- recommender


class SASRec:
    """SASRec ranking baseline. See the module docstring for the model and every assumption."""

    name = "SASRec"
    rates = False

    def __init__(self, max_len: Optional[int] = None, *, grid: Optional[Sequence[dict]] = None,
                 unseen_last: bool = True, **config):
        self.max_len = max_len
        self.config = common.with_defaults("SASRec", DEFAULTS, config)
        self.grid = grid
        self.unseen_last = unseen_last
        self.params = None
        self.report: dict = {}

    @staticmethod
    def default_grid() -> list[dict]:
        return common.expand_grid(dropout=[0.2, 0.5])

    def _encoder(self, config, n_items: int) -> SASRecEncoder:
        return SASRecEncoder(n_items=n_items, max_len=self.max_len, dim=config["dim"], n_blocks=config["n_blocks"],
                             n_heads=config["n_heads"], dropout=config["dropout"])

    def _fit_config(self, config, split: ProtocolSplit, fit_history: pd.DataFrame, known: nc.UserItemIndex,
                    seed: int, verbose):
        n_users, n_items = split.n_users, split.n_items
        encoder = self._encoder(config, n_items)
        sequences = user_sequences(fit_history, n_users)
        data = training_windows(sequences, self.max_len, n_items)
        pool = np.unique(fit_history["item"].to_numpy(np.int64))
        host_rng = np.random.default_rng(seed)
        valid = data["target"] != n_items
        step_users = np.broadcast_to(data["user"][:, None], valid.shape)[valid]

        def data_fn(epoch):
            negative = np.full(valid.shape, n_items, np.int32)
            negative[valid] = nc.sample_negatives(host_rng, step_users, 1, known, pool)[:, 0]
            return {"negative": negative}

        l2 = config["l2"]

        def loss_fn(params, batch):
            h = encoder.apply(params, batch["input"], deterministic=False, rngs={"dropout": batch["rng"]})
            table = params["params"]["item_embed"]["embedding"]
            pos, neg = table[batch["target"]], table[batch["negative"]]
            mask = (batch["target"] != n_items) & (batch["weight"][:, None] > 0)
            penalty = l2 * jnp.sum(jnp.where(mask[..., None], pos * pos + neg * neg, 0.0)) / jnp.maximum(jnp.sum(mask), 1)
            return bce_loss(h, pos, neg, mask) + penalty

        val_score_fn = None
        if nc.has_validation(split):
            val_users = split.val["user"].to_numpy(np.int64)
            val_items = split.val["item"].to_numpy(np.int64)
            distinct = np.unique(val_users)
            windows = last_windows(sequences, distinct, self.max_len, n_items)
            last_step = make_last_step_fn(encoder)

            def val_score_fn(host_params):
                reprs = _user_representations(last_step, host_params, windows, n_items)
                table = host_params["params"]["item_embed"]["embedding"]
                score = lambda u, i: np.sum(reprs[np.searchsorted(distinct, u)] * table[i], axis=-1)
                return nc.sampled_auc(score, val_users, val_items, known, pool, n_neg=config["n_val_neg"], seed=seed)

        params = encoder.init(jax.random.PRNGKey(seed), np.full((1, self.max_len), n_items, np.int32))
        result = common.fit_early_stopping(
            params, loss_fn, optax.adam(config["lr"]), {"input": data["input"], "target": data["target"]},
            val_score_fn, batch_size=config["batch_size"], max_epochs=config["max_epochs"],
            patience=config["patience"], eval_every=config["eval_every"], seed=seed, higher_is_better=True,
            data_fn=data_fn, verbose=verbose > 1, label=self.name,
        )
        return result

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool | int = True) -> "SASRec":
        start = time.perf_counter()
        if self.max_len is None:
            self.max_len = default_max_len(split)
        n_users, n_items = split.n_users, split.n_items
        history = split.history
        known = nc.UserItemIndex.from_frame(history, n_users, n_items)  # negatives: no training-period interaction
        fit_history = remove_pairs(history, split.val)
        grid = self.grid if self.grid is not None else self.default_grid()
        nc.log(verbose, f"[{self.name}] {split.name}: max_len {self.max_len}, {len(fit_history)} fit steps, grid {grid}")
        best, result, rows = common.grid_search(
            grid, lambda overrides: self._fit_config({**self.config, **overrides}, split, fit_history, known, seed, verbose),
            higher_is_better=True, verbose=bool(verbose), label=f"{self.name} grid",
        )
        config = {**self.config, **best}
        self._last_step = make_last_step_fn(self._encoder(config, n_items))
        self.params = result.params
        self.item_table = np.asarray(self.params["params"]["item_embed"]["embedding"])[:n_items]
        self.item_seen = common.seen_mask(fit_history["item"].to_numpy(np.int64), n_items)
        # test-time user representations: last step of the whole training-period sequence
        windows = last_windows(user_sequences(history, n_users), np.arange(n_users), self.max_len, n_items)
        self.user_repr = _user_representations(self._last_step, self.params, windows, n_items)
        self.report = common.fit_report(self.name, best, config, "val_auc", result, rows, seed, start, verbose,
                                        max_len=self.max_len)
        return self

    # ------------------------------------------------------------------ inference
    def encode(self, sequences: np.ndarray) -> np.ndarray:
        """[U, T] left-padded sequences -> [U, d] encoder outputs at the last step (fitted model)."""
        return _user_representations(self._last_step, self.params, np.asarray(sequences, np.int32), len(self.item_table))

    def score_matrix(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """[U, I] scores h_u . E[i], h_u = encoder output at the last step of u's training-period sequence."""
        if self.params is None:
            raise RuntimeError("fit() the model first")
        users = np.asarray(users, np.int64)
        items = np.asarray(items, np.int64)
        scores = (self.user_repr[users] @ self.item_table[items].T).astype(np.float64)
        if self.unseen_last:
            seen = self.item_seen[items]
            if seen.any() and not seen.all():
                scores = np.where(seen[None, :], scores, scores[:, seen].min(axis=1, keepdims=True) - 1.0)
        return scores

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        return self.score_matrix(np.array([user]), items)[0]

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        raise NotImplementedError("SASRec is a ranking model (rates=False): it predicts no ratings")


def make_last_step_fn(encoder: SASRecEncoder):
    """jit (params, sequence [B, T]) -> [B, d]: deterministic encoder output at the last step."""
    return jax.jit(lambda params, sequence: encoder.apply(params, sequence, deterministic=True)[:, -1])


def _user_representations(last_step, params, windows: np.ndarray, pad: int, chunk: int = 1024) -> np.ndarray:
    """[U, d] last_step outputs over left-padded windows [U, T], in fixed-size chunks (one compilation)."""
    out = []
    for start in range(0, len(windows), chunk):
        part = windows[start:start + chunk]
        m = len(part)
        if m < chunk and len(windows) > chunk:
            part = np.concatenate([part, np.full((chunk - m, part.shape[1]), pad, np.int32)])
        out.append(np.asarray(last_step(params, jnp.asarray(part)))[:m])
    return np.concatenate(out)
