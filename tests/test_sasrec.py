"""Tests of the SASRec baseline: causal masking, the loss, a planted next-item pattern, determinism."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.types import Dataset, ProtocolSplit
from iarn_jax.models.baselines import sasrec
from iarn_jax.models.baselines.sasrec import SASRec, SASRecEncoder, bce_loss

N_ITEMS, MAX_LEN = 30, 8


def _encoder_and_params(seed=0):
    encoder = SASRecEncoder(n_items=N_ITEMS, max_len=MAX_LEN, dim=16, n_blocks=2, n_heads=1, dropout=0.2)
    params = encoder.init(jax.random.PRNGKey(seed), np.full((1, MAX_LEN), N_ITEMS, np.int32))
    return encoder, params


def test_causal_mask_future_items_do_not_change_past_outputs():
    encoder, params = _encoder_and_params()
    seq = np.array([[3, 7, 1, 12, 5, 9, 20, 4]], np.int32)
    base = np.asarray(encoder.apply(params, seq, deterministic=True))
    for t in range(1, MAX_LEN):
        changed = seq.copy()
        changed[0, t] = (seq[0, t] + 11) % N_ITEMS
        out = np.asarray(encoder.apply(params, changed, deterministic=True))
        np.testing.assert_allclose(out[0, :t], base[0, :t], atol=1e-6, rtol=0)
        assert np.abs(out[0, t] - base[0, t]).max() > 1e-3, f"position {t} ignores its own item"


def test_padding_steps_do_not_change_valid_outputs():
    """Left padding: whatever the hidden states of padded steps are, valid steps never see them.

    Padded steps' states are forced to large random values at every LayerNorm (the inputs of the
    attention keys/values and of the FFN); the outputs of the valid steps must not move.
    """
    import flax.linen as nn

    encoder, params = _encoder_and_params()
    pad = N_ITEMS
    seq = np.array([[pad, pad, pad, 3, 7, 1, 12, 5]], np.int32)
    padded = jnp.asarray(seq == pad)[..., None]
    base = np.asarray(encoder.apply(params, seq, deterministic=True))
    noise = 50.0 * jax.random.normal(jax.random.PRNGKey(9), (1, MAX_LEN, 16))

    def scramble_padding(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if isinstance(context.module, nn.LayerNorm) and context.method_name == "__call__":
            out = jnp.where(padded, out + noise, out)
        return out

    with nn.intercept_methods(scramble_padding):
        scrambled = np.asarray(encoder.apply(params, seq, deterministic=True))
    valid = seq[0] != pad
    assert np.abs(scrambled[0, ~valid] - base[0, ~valid]).max() > 1.0  # the interception took effect
    np.testing.assert_allclose(scrambled[0, valid], base[0, valid], atol=1e-6, rtol=0)


def test_bce_loss_matches_numpy():
    rng = np.random.default_rng(0)
    h, pos, neg = (rng.normal(size=(2, 3, 4)).astype(np.float32) for _ in range(3))
    mask = np.array([[0, 1, 1], [1, 1, 0]], bool)
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))
    pos_logit, neg_logit = (h * pos).sum(-1), (h * neg).sum(-1)
    expected = (-(np.log(sig(pos_logit)) + np.log(1.0 - sig(neg_logit))))[mask].mean()
    got = float(bce_loss(jnp.asarray(h), jnp.asarray(pos), jnp.asarray(neg), jnp.asarray(mask)))
    assert got == pytest.approx(expected, rel=1e-5)


def test_training_windows_targets_follow_inputs():
    pad = 99
    data = sasrec.training_windows([np.arange(10), np.array([5]), np.array([1, 2])], max_len=4, pad=pad)
    for row_in, row_out in zip(data["input"], data["target"]):
        valid = row_in != pad
        np.testing.assert_array_equal(row_out[valid], row_in[valid] + 1)
    # user 0: 9 steps -> windows of 4, 4, 1 (most recent first); user 1: none; user 2: one step
    assert list(data["user"]) == [0, 0, 0, 2]
    assert (data["input"][0] == [5, 6, 7, 8]).all() and (data["target"][0] == [6, 7, 8, 9]).all()


def planted_split(n_users=120, n_pairs=8, seed=0) -> ProtocolSplit:
    """Items come in pairs (a, b = a + n_pairs): every user who takes a takes b right after.

    Each user's training sequence is a shuffled run of pair items (a then b); the last training
    item is a lone `a`, and the test positive is its partner b. Validation pairs are random
    training pairs, as in the protocols.
    """
    rng = np.random.default_rng(seed)
    n_items = 2 * n_pairs
    rows, test_rows = [], []
    for u in range(n_users):
        firsts = rng.permutation(n_pairs)
        t = 0
        for a in firsts[:3]:
            rows += [(u, int(a), 4.0, t), (u, int(a) + n_pairs, 4.0, t + 1)]
            t += 2
        last = int(firsts[3])
        rows.append((u, last, 4.0, t))
        test_rows.append((u, last + n_pairs, 4.0, t + 1))
    cols = ["user", "item", "rating", "time"]
    history = pd.DataFrame(rows, columns=cols)
    test = pd.DataFrame(test_rows, columns=cols)
    is_val = rng.random(len(history)) < 0.1
    train, val = history[~is_val].reset_index(drop=True), history[is_val].reset_index(drop=True)
    ratings = pd.concat([history, test], ignore_index=True)
    dataset = Dataset(name="planted", ratings=ratings, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                      rating_scale=(1.0, 5.0))
    return ProtocolSplit(name="planted", dataset=dataset, history=history, train=train, val=val, test=test, min_len=1)


def _planted_model():
    return SASRec(max_len=8, grid=[{"dropout": 0.1}], dim=32, lr=5e-3, batch_size=32, max_epochs=40,
                  patience=4, eval_every=2)


@pytest.mark.slow  # ~20-30 s on 2 shared cores
def test_planted_next_item_ranked_first():
    split = planted_split()
    model = _planted_model().fit(split, seed=0, verbose=False)
    hits, aucs = 0, []
    for u, target in split.test[["user", "item"]].to_numpy():
        known = set(split.history.loc[split.history.user == u, "item"])
        candidates = np.array([i for i in range(split.n_items) if i not in known])
        scores = model.score_items(int(u), candidates)
        pos = scores[candidates == target][0]
        neg = scores[candidates != target]
        aucs.append((pos > neg).mean() + 0.5 * (pos == neg).mean())
        hits += int(candidates[np.argmax(scores)] == target)
    print(f"planted: AUC {np.mean(aucs):.3f}, top-1 {hits}/{len(split.test)}")
    assert np.mean(aucs) >= 0.9, np.mean(aucs)
    assert hits >= 0.6 * len(split.test), hits


@pytest.mark.slow  # two fits, ~15-30 s on 2 shared cores
def test_same_seed_same_scores():
    split = planted_split(n_users=40)
    kwargs = dict(max_len=8, grid=[{"dropout": 0.2}], dim=16, n_blocks=1, max_epochs=2, eval_every=1)
    users, items = np.arange(10), np.arange(split.n_items)
    first = SASRec(**kwargs).fit(split, seed=3, verbose=False).score_matrix(users, items)
    second = SASRec(**kwargs).fit(split, seed=3, verbose=False).score_matrix(users, items)
    np.testing.assert_array_equal(first, second)


def test_predict_is_ranking_only():
    assert SASRec.rates is False
    with pytest.raises(NotImplementedError):
        SASRec().predict(np.zeros(1, int), np.zeros(1, int))
