"""Bucketed batch plans and padded batches (BATCH_SPEC)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.batching import (
    bucket_length,
    coarse_length,
    iterate_batches,
    iterate_eval_batches,
    make_batch_plan,
    materialize,
    padding_fraction,
    unbatch,
)
from iarn_jax.data.histories import build_histories, make_pairs
from iarn_jax.data.types import BATCH_SPEC

# The hand-worked table of tests/test_histories.py (rows in this order; ties in time):
# u0 = items [0, 1, 2] ratings [5, 3, 1]; u1 = [2, 0]; u2 = items [0, 1] ratings [3, 2];
# i0 = users [0, 1, 2]; i1 = users [0, 2] ratings [3, 2]; i2 = users [1, 0].
TABLE = pd.DataFrame({
    "user": [0, 0, 1, 0, 1, 2, 2],
    "item": [0, 1, 0, 2, 2, 1, 0],
    "rating": np.array([5, 3, 4, 1, 2, 2, 3], dtype=np.float32),
    "time": [10, 20, 20, 20, 5, 30, 20],
})
N_USERS, N_ITEMS = 4, 3


def _random_setup(n=2500, n_users=60, n_items=40, seed=0, mode="full"):
    rng = np.random.default_rng(seed)
    df = pd.DataFrame({
        "user": rng.integers(0, n_users, n), "item": rng.integers(0, n_items, n),
        "rating": rng.integers(1, 6, n).astype(np.float32), "time": rng.integers(0, 10_000, n),
    })
    uh, ih = build_histories(df, n_users, n_items)
    return df, uh, ih, make_pairs(df, uh, ih, mode=mode)


def test_bucket_lengths():
    got = bucket_length(np.array([0, 1, 8, 9, 256, 257, 300, 400]))
    np.testing.assert_array_equal(got, [8, 8, 8, 16, 256, 320, 320, 448])
    np.testing.assert_array_equal(bucket_length(np.array([3, 40, 50]), max_len=50), [8, 50, 50])


def test_hand_worked_batch_full_mode():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="full")
    batch = materialize(np.array([1, -1, 5]), pairs, uh, ih)
    # pair 1 = (u0, i1): u0's history items [0, 1, 2] ratings [5, 3, 1]; own step 1 zeroed
    assert batch["user_history"].shape == (3, 8) and batch["item_history"].shape == (3, 8)
    np.testing.assert_array_equal(batch["user_history"][0, :4], [0, 1, 2, 0])
    np.testing.assert_array_equal(batch["user_history_rating"][0, :4], [5, 0, 1, 0])
    np.testing.assert_array_equal(batch["user_history_mask"][0, :4], [True, True, True, False])
    # i1's history users [0, 2] ratings [3, 2]; own step 0 zeroed
    np.testing.assert_array_equal(batch["item_history"][0, :3], [0, 2, 0])
    np.testing.assert_array_equal(batch["item_history_rating"][0, :3], [0, 2, 0])
    # padding example
    assert batch["weight"].tolist() == [1.0, 0.0, 1.0]
    assert batch["rating"][1] == 0 and not batch["user_history_mask"][1].any() and not batch["item_history_mask"][1].any()
    assert batch["user_history"][1].sum() == 0 and batch["user_history_rating"][1].sum() == 0
    # pair 5 = (u2, i1, rating 2): u2 = items [0, 1] ratings [3, 0 (own)]
    assert batch["rating"][2] == 2 and batch["user"][2] == 2 and batch["item"][2] == 1
    np.testing.assert_array_equal(batch["user_history"][2, :2], [0, 1])
    np.testing.assert_array_equal(batch["user_history_rating"][2, :2], [3, 0])


def test_max_len_keeps_most_recent_steps():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="full")
    batch = materialize(np.array([0, 1, 3]), pairs, uh, ih, max_len=2)
    assert batch["user_history"].shape == (3, 2)
    # u0's history is items [0, 1, 2] (ratings 5, 3, 1): the last two are kept
    np.testing.assert_array_equal(batch["user_history"], [[1, 2], [1, 2], [1, 2]])
    # pair 0's own step (position 0) was cut off: nothing zeroed; pair 1 owns step 1
    # (column 0 after the cap), pair 3 owns step 2 (column 1)
    np.testing.assert_array_equal(batch["user_history_rating"], [[3, 1], [0, 1], [3, 0]])


def test_causal_batch_has_no_self_and_no_future():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="causal")
    batch = materialize(np.arange(len(pairs)), pairs, uh, ih)
    np.testing.assert_array_equal(batch["user_history_mask"].sum(1), [0, 1, 1, 1, 0, 1, 0])
    # pair 3 (u0, i2, t20) sees only u0's event at t10 (item 0, rating 5)
    assert batch["user_history"][3, 0] == 0 and batch["user_history_rating"][3, 0] == 5


def test_batch_matches_spec_and_plan_invariants():
    _, uh, ih, pairs = _random_setup()
    plan = make_batch_plan(pairs, 32, seed=1, epoch=0)
    seen = plan.indices[plan.indices >= 0]
    assert np.array_equal(np.sort(seen), np.arange(len(pairs)))  # each pair exactly once
    assert plan.indices.shape[1] == 32
    for k in range(len(plan)):
        members = plan.indices[k][plan.indices[k] >= 0]
        # one bucket per batch: every member's bucket is the batch's padded length
        assert (bucket_length(pairs.user_len[members]) == plan.user_T[k]).all()
        assert (bucket_length(pairs.item_len[members]) == plan.item_T[k]).all()
    batch = materialize(plan[0], pairs, uh, ih)
    assert set(batch) == set(BATCH_SPEC)
    B, Tu, Ti = 32, plan.user_T[0], plan.item_T[0]
    shapes = {"[B]": (B,), "[B, Tu]": (B, Tu), "[B, Ti]": (B, Ti)}
    for key, (dtype, shape, _) in BATCH_SPEC.items():
        assert batch[key].dtype == np.dtype(dtype), key
        assert batch[key].shape == shapes[shape], key
    # valid steps first, never more steps than the bucket
    mask = batch["user_history_mask"]
    assert (np.diff(mask.astype(int), axis=1) <= 0).all()
    assert (batch["user_history"][~mask] == 0).all() and (batch["user_history_rating"][~mask] == 0).all()


def test_padding_examples_fill_last_batch_of_each_bucket():
    _, uh, ih, pairs = _random_setup(n=300)
    plan = make_batch_plan(pairs, 64, seed=0, epoch=0)
    shapes = set(zip(plan.user_T.tolist(), plan.item_T.tolist()))
    # at most one partial batch per bucket
    n_partial = int(((plan.indices < 0).any(axis=1)).sum())
    assert n_partial <= len(shapes)
    assert plan.indices.size == len(plan) * 64 and (plan.indices >= 0).sum() == len(pairs)


def test_plan_is_a_pure_function_of_seed_and_epoch():
    _, uh, ih, pairs = _random_setup()
    a = make_batch_plan(pairs, 16, seed=5, epoch=2)
    b = make_batch_plan(pairs, 16, seed=5, epoch=2)
    c = make_batch_plan(pairs, 16, seed=5, epoch=3)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.user_T, b.user_T)
    assert not np.array_equal(a.indices, c.indices)
    np.testing.assert_array_equal(np.sort(a.indices[a.indices >= 0]), np.sort(c.indices[c.indices >= 0]))


def test_resume_from_batch_k():
    _, uh, ih, pairs = _random_setup(n=600)
    full = list(iterate_batches(pairs, uh, ih, 16, seed=3, epoch=1))
    resumed = list(iterate_batches(pairs, uh, ih, 16, seed=3, epoch=1, start=5))
    assert len(resumed) == len(full) - 5
    for x, y in zip(full[5:], resumed):
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_own_step_rating_is_zeroed_everywhere_in_full_mode():
    df, uh, ih, pairs = _random_setup(n=800)
    plan = make_batch_plan(pairs, 64, seed=0, epoch=0, max_len=5)
    for k in range(len(plan)):
        batch = materialize(plan[k], pairs, uh, ih, max_len=5)
        idx = plan.indices[k]
        for row in np.flatnonzero(idx >= 0):
            p = idx[row]
            kept = min(pairs.user_len[p], 5)
            column = pairs.user_self[p] - (pairs.user_len[p] - kept)
            if 0 <= column < kept:
                assert batch["user_history_rating"][row, column] == 0
                assert batch["user_history"][row, column] == pairs.item[p]
        assert batch["user_history"].shape[1] <= 5 and batch["item_history"].shape[1] <= 5
        assert (batch["user_history_mask"].sum(1) <= 5).all()
    no_ratings = materialize(plan[0], pairs, uh, ih, max_len=5, with_ratings=False)
    assert (no_ratings["user_history_rating"] == 0).all() and no_ratings["user_history_mask"].any()


def test_eval_batches_keep_order_and_unbatch():
    _, uh, ih, pairs = _random_setup(n=500)
    plan, batches = iterate_eval_batches(pairs, uh, ih, 48)
    outputs = [batch["rating"] * 10 + batch["user"] for batch in batches]
    np.testing.assert_allclose(unbatch(plan, outputs), pairs.rating * 10 + pairs.user)
    again = make_batch_plan(pairs, 48, shuffle=False, seed=9, epoch=4)
    np.testing.assert_array_equal(plan.indices, again.indices)  # no randomness without shuffle
    within = plan.indices[0][plan.indices[0] >= 0]
    assert (np.diff(within) > 0).all()  # original order inside a bucket


def test_padding_fraction_hand_worked():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="full")
    plan = make_batch_plan(pairs, 4, seed=0, epoch=0, bucket_lengths=(4,))
    # 7 pairs in one (4, 4) bucket -> 2 batches of 4 = 8 examples x (4 + 4) cells = 64
    # valid cells: user lengths 3+3+2+3+2+2+2 = 17, item lengths 3+2+3+2+2+2+3 = 17
    assert len(plan) == 2
    assert padding_fraction(plan, pairs) == pytest.approx(1 - 34 / 64)


def test_empty_pairs():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE.iloc[:0], uh, ih)
    plan = make_batch_plan(pairs, 8, seed=0, epoch=0)
    assert len(plan) == 0 and padding_fraction(plan, pairs) == 0.0
    batch = materialize(np.full(4, -1), pairs, uh, ih)
    assert batch["weight"].sum() == 0 and batch["user_history"].shape == (4, 8)


def test_coarse_length_hand_worked():
    got = [coarse_length(t) for t in (1, 8, 16, 17, 64, 65, 256, 257, 512, 600)]
    assert got == [16, 16, 16, 64, 64, 256, 256, 512, 512, 768]
    assert coarse_length(17, max_len=32) == 32 and coarse_length(8, max_len=8) == 8


@pytest.mark.parametrize("threshold", [3, 1000])
def test_rare_buckets_are_padded_to_coarse_shapes_with_the_same_batches(threshold):
    _, uh, ih, pairs = _random_setup(n=600)
    own = make_batch_plan(pairs, 16, seed=2, epoch=1)
    merged = make_batch_plan(pairs, 16, seed=2, epoch=1, rare_shape_batches=threshold)
    np.testing.assert_array_equal(merged.indices, own.indices)  # same pairs, same batches, same order
    own_shapes = list(zip(own.user_T.tolist(), own.item_T.tolist()))
    counts = {shape: own_shapes.count(shape) for shape in own_shapes}
    for k, shape in enumerate(own_shapes):
        expected = (coarse_length(shape[0]), coarse_length(shape[1])) if counts[shape] < threshold else shape
        assert (merged.user_T[k], merged.item_T[k]) == expected
    assert any(counts[s] < threshold for s in own_shapes)
    assert len(set(zip(merged.user_T.tolist(), merged.item_T.tolist()))) < len(counts)
    # a padded batch holds the same histories, only with more padding steps after them
    k = next(k for k, s in enumerate(own_shapes) if counts[s] < threshold and merged.user_T[k] > s[0])
    small, large = materialize(own[k], pairs, uh, ih), materialize(merged[k], pairs, uh, ih)
    for side, T in (("user", own.user_T[k]), ("item", own.item_T[k])):
        for field in ("history", "history_rating", "history_mask"):
            np.testing.assert_array_equal(large[f"{side}_{field}"][:, :T], small[f"{side}_{field}"])
            assert not large[f"{side}_history_mask"][:, T:].any()
