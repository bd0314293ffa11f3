"""Histories (CSR) and PairSet visibility: hand-worked full vs causal example."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.histories import build_histories, make_pairs

# A tiny table with ties in time (rows are in this order):
#   row user item rating time
#    0   0    0    5     10
#    1   0    1    3     20   <- ties with row 3 for user 0 (row order decides)
#    2   1    0    4     20   <- ties with row 6 for item 0
#    3   0    2    1     20
#    4   1    2    2      5
#    5   2    1    2     30
#    6   2    0    3     20
TABLE = pd.DataFrame({
    "user": [0, 0, 1, 0, 1, 2, 2],
    "item": [0, 1, 0, 2, 2, 1, 0],
    "rating": np.array([5, 3, 4, 1, 2, 2, 3], dtype=np.float32),
    "time": [10, 20, 20, 20, 5, 30, 20],
})
N_USERS, N_ITEMS = 4, 3  # user 3 has no history


def test_csr_hand_worked():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    # users: u0 = rows 0, 1, 3; u1 = rows 4, 2; u2 = rows 6, 5; u3 empty
    np.testing.assert_array_equal(uh.offsets, [0, 3, 5, 7, 7])
    np.testing.assert_array_equal(uh.counterpart, [0, 1, 2, 2, 0, 0, 1])
    np.testing.assert_array_equal(uh.rating, [5, 3, 1, 2, 4, 3, 2])
    np.testing.assert_array_equal(uh.time, [10, 20, 20, 5, 20, 20, 30])
    # items: i0 = rows 0, 2, 6; i1 = rows 1, 5; i2 = rows 4, 3
    np.testing.assert_array_equal(ih.offsets, [0, 3, 5, 7])
    np.testing.assert_array_equal(ih.counterpart, [0, 1, 2, 0, 2, 1, 0])
    np.testing.assert_array_equal(ih.rating, [5, 4, 3, 3, 2, 2, 1])
    assert uh.counterpart.dtype == np.int32 and uh.rating.dtype == np.float32
    assert uh.time.dtype == np.int64 and uh.offsets.dtype == np.int64
    np.testing.assert_array_equal(uh.lengths, [3, 2, 2, 0])


def test_full_pairs_hand_worked():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="full")
    np.testing.assert_array_equal(pairs.user_len, [3, 3, 2, 3, 2, 2, 2])
    np.testing.assert_array_equal(pairs.item_len, [3, 2, 3, 2, 2, 2, 3])
    # position of the pair's own interaction in the whole history
    np.testing.assert_array_equal(pairs.user_self, [0, 1, 1, 2, 0, 1, 0])
    np.testing.assert_array_equal(pairs.item_self, [0, 0, 1, 1, 0, 1, 2])


def test_causal_pairs_hand_worked():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    pairs = make_pairs(TABLE, uh, ih, mode="causal")
    # events strictly before the pair's time (ties in time are not visible)
    np.testing.assert_array_equal(pairs.user_len, [0, 1, 1, 1, 0, 1, 0])
    np.testing.assert_array_equal(pairs.item_len, [0, 0, 1, 1, 0, 1, 1])
    assert (pairs.user_self == -1).all() and (pairs.item_self == -1).all()
    # no pair sees an event at or after its own time
    for k in range(len(pairs)):
        seen = uh.time[uh.offsets[pairs.user[k]]: uh.offsets[pairs.user[k]] + pairs.user_len[k]]
        assert (seen < pairs.time[k]).all()


def test_test_pairs_see_whole_history_without_self():
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    test = pd.DataFrame({"user": [0, 3, 2], "item": [1, 2, 2], "rating": [4.0, 1.0, 5.0], "time": [100, 100, 40]})
    for mode in ("full", "causal"):
        pairs = make_pairs(test, uh, ih, mode=mode)
        np.testing.assert_array_equal(pairs.user_len, [3, 0, 2])
        np.testing.assert_array_equal(pairs.item_len, [2, 2, 2])
        assert (pairs.user_self == -1).all() and (pairs.item_self == -1).all()


def test_csr_matches_python_grouping():
    rng = np.random.default_rng(3)
    n = 3000
    df = pd.DataFrame({
        "user": rng.integers(0, 50, n), "item": rng.integers(0, 80, n),
        "rating": rng.integers(1, 6, n).astype(np.float32), "time": rng.integers(0, 40, n),  # many ties
    })
    uh, ih = build_histories(df, 50, 80)
    for side, hist, counterpart_col in (("user", uh, "item"), ("item", ih, "user")):
        groups = {}
        for row in range(n):
            groups.setdefault(int(df[side][row]), []).append((int(df["time"][row]), row))
        for entity in range(hist.n_entities):
            expected_rows = [row for _, row in sorted(groups.get(entity, []))]
            got = hist.events(entity)
            np.testing.assert_array_equal(hist.counterpart[got], df[counterpart_col].to_numpy()[expected_rows])
            np.testing.assert_array_equal(hist.rating[got], df["rating"].to_numpy()[expected_rows])
            np.testing.assert_array_equal(hist.time[got], df["time"].to_numpy()[expected_rows])
    # full mode: the own event is found where it really is (same counterpart and time)
    pairs = make_pairs(df, uh, ih, mode="full")
    assert (pairs.user_self >= 0).all() and (pairs.item_self >= 0).all()
    flat = uh.offsets[pairs.user] + pairs.user_self
    np.testing.assert_array_equal(uh.counterpart[flat], pairs.item)
    np.testing.assert_array_equal(uh.time[flat], pairs.time)
    # causal mode agrees with a brute-force count
    causal = make_pairs(df, uh, ih, mode="causal")
    for k in range(0, n, 97):
        events = uh.events(int(causal.user[k]))
        assert causal.user_len[k] == int((uh.time[events] < causal.time[k]).sum())


def test_bad_ids_and_mode():
    with pytest.raises(ValueError):
        build_histories(TABLE, 2, N_ITEMS)
    uh, ih = build_histories(TABLE, N_USERS, N_ITEMS)
    with pytest.raises(ValueError, match="mode"):
        make_pairs(TABLE, uh, ih, mode="future")
