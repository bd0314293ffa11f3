"""Protocols: time cut, min_len filter, validation split, named protocols' exact counts."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.protocols import (
    custom_protocol,
    data_checksum,
    load_protocol,
    protocol_stats,
    split_by_time,
)
from iarn_jax.data.types import DataError, Dataset
from conftest import DATA_ROOT, require_data


def _dataset(rows, split=None, time_unit="order"):
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "time"])
    frame["rating"] = frame["rating"].astype(np.float32)
    if split is not None:
        frame["split"] = split
    n_users, n_items = int(frame["user"].max()) + 1, int(frame["item"].max()) + 1
    return Dataset(name="toy", ratings=frame, user_ids=np.arange(n_users), item_ids=np.arange(n_items),
                   rating_scale=(1.0, 5.0), time_unit=time_unit)


# Training (time < 100): user 0 rates items 0,1,2 ; user 1 rates items 0,1 ; user 2 rates 0,1,3
#   user counts: u0 3, u1 2, u2 3 -> min_len 3 keeps users 0, 2
#   item counts: i0 3, i1 3, i2 1, i3 1 -> keeps items 0, 1
# Test (time >= 100): (0,1) kept, (1,0) user dropped, (2,2) item dropped, (2,0) kept
TOY = [
    (0, 0, 5, 1), (0, 1, 4, 2), (0, 2, 3, 3),
    (1, 0, 2, 4), (1, 1, 1, 5),
    (2, 0, 4, 6), (2, 1, 5, 7), (2, 3, 2, 8),
    (0, 1, 3, 100), (1, 0, 4, 101), (2, 2, 5, 150), (2, 0, 1, 160),
]


def test_hand_worked_split():
    split = split_by_time(_dataset(TOY), 100, min_len=3, val_fraction=0.0)
    assert len(split.history) == 8  # ALL training ratings, before the filter
    kept = sorted(map(tuple, split.train[["user", "item"]].to_numpy().tolist()))
    assert kept == [(0, 0), (0, 1), (2, 0), (2, 1)]
    assert sorted(map(tuple, split.test[["user", "item"]].to_numpy().tolist())) == [(0, 1), (2, 0)]
    assert len(split.val) == 0 and list(split.train.columns) == ["user", "item", "rating", "time"]
    # a kept user's history still contains the filtered-out item 2
    assert ((split.history["user"] == 0) & (split.history["item"] == 2)).any()
    stats = protocol_stats(split)
    assert (stats["n_users"], stats["n_items"], stats["n_ratings"]) == (2, 2, 6)
    assert (stats["n_users_kept"], stats["n_items_kept"]) == (2, 2)
    assert (stats["n_train"], stats["n_val"], stats["n_test"]) == (4, 0, 2)
    assert stats["avg_user_len"] == 2.0 and stats["time_min"] == 1 and stats["time_max"] == 160


def test_split_column_is_used_when_present():
    split = ["train"] * 8 + ["test"] * 4
    a = split_by_time(_dataset(TOY, split=split), None, min_len=3, val_fraction=0.0)
    b = split_by_time(_dataset(TOY), 100, min_len=3, val_fraction=0.0)
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.test, b.test)
    assert a.cut == "given"


def test_min_len_one_keeps_everything():
    split = split_by_time(_dataset(TOY), 100, min_len=1, val_fraction=0.0)
    assert len(split.train) == 8 and len(split.test) == 4


def test_validation_split_random_and_temporal():
    rng = np.random.default_rng(0)
    rows = [(int(u), int(i), 3, t) for t, (u, i) in enumerate(zip(rng.integers(0, 30, 2000), rng.integers(0, 30, 2000)))]
    rows += [(0, 0, 4, 5000), (1, 1, 4, 5001)]
    data = _dataset(rows)
    a = split_by_time(data, 5000, seed=7)
    b = split_by_time(data, 5000, seed=7)
    c = split_by_time(data, 5000, seed=8)
    n_kept = len(a.train) + len(a.val)
    assert len(a.val) == n_kept // 10
    pd.testing.assert_frame_equal(a.val, b.val)
    assert not a.val.equals(c.val)
    # train and val partition the kept training pairs (times are unique here)
    assert set(a.train["time"]).isdisjoint(a.val["time"])
    capped = split_by_time(data, 5000, val_cap=50)
    assert len(capped.val) == 50
    temporal = split_by_time(data, 5000, val_mode="temporal")
    assert temporal.val["time"].min() > temporal.train["time"].max()
    with pytest.raises(ValueError, match="val_mode"):
        split_by_time(data, 5000, val_mode="future")


def test_empty_splits_raise_clear_errors():
    data = _dataset(TOY)
    with pytest.raises(DataError, match=r"empty training set.*cut 0.*time range 1 \.\. 160"):
        split_by_time(data, 0)
    with pytest.raises(DataError, match=r"empty test set.*cut 161.*time range"):
        split_by_time(data, 161)
    with pytest.raises(DataError, match="no training pair survives"):
        split_by_time(data, 100, min_len=4)
    # the only test rating is by user 3, who has no training ratings
    with pytest.raises(DataError, match="no test pair survives"):
        split_by_time(_dataset(TOY + [(3, 0, 1, 200)]), 170, min_len=1)
    with pytest.raises(DataError, match="no cut given"):
        split_by_time(data, None)


def test_date_cut_message_names_dates():
    rows = [(0, 0, 4, 874_724_710), (0, 1, 4, 880_000_000), (1, 0, 4, 893_286_638)]
    data = _dataset(rows, time_unit="seconds")
    with pytest.raises(DataError, match=r"1990-01-01.*1997-09-20 03:05:10 UTC"):
        split_by_time(data, "1990-01-01", min_len=1)


def test_synthetic_protocol():
    split = load_protocol("synthetic", None, n_users=300, n_items=150, n_ratings=12_000)
    stats = protocol_stats(split)
    assert len(split.dataset.ratings) == 12_000
    # cut at the 90% quantile of time: about 10% of the ratings are test ratings
    n_test_all = int((split.dataset.ratings["time"] >= int(split.cut)).sum())
    assert abs(n_test_all - 1200) <= 5
    assert split.test["time"].min() >= int(split.cut) > split.history["time"].max()
    assert stats["n_train"] == len(split.train) + len(split.val) and stats["n_features"] == 8


def test_unknown_protocol():
    with pytest.raises(ValueError, match="unknown protocol"):
        load_protocol("netflix", DATA_ROOT)


# ---- real data: the benchmark counts (shared/docs/benchmarks.md) ---------------------
@pytest.mark.parametrize("name, folder, n_train, n_test", [
    ("clothing", "iarn-clothing/train.csv", 120_994, 14_134),
    ("ml100k", "movielens/ml-100k/u.data", 77_685, 3_651),
    ("mlsmall", "movielens/ml-latest-small/ratings.csv", 74_870, 882),
])
def test_named_protocol_counts(name, folder, n_train, n_test):
    require_data(folder)
    split = load_protocol(name, DATA_ROOT)
    assert len(split.train) + len(split.val) == n_train
    assert len(split.test) == n_test
    assert len(split.val) == min(n_train // 10, 8000)
    assert split.history["time"].max() < split.test["time"].min()


def test_clothing_table1_statistics():
    require_data("iarn-clothing/train.csv")
    stats = protocol_stats(load_protocol("clothing", DATA_ROOT))
    # kept by the min_len filter (benchmarks.md) ...
    assert (stats["n_users_kept"], stats["n_items_kept"]) == (20_007, 20_786)
    # ... and the paper's Table 1 row for Clothing, exactly
    assert (stats["n_users"], stats["n_items"], stats["n_ratings"], stats["n_features"]) == (19_939, 20_785, 135_128, 690)
    assert round(stats["avg_user_len"], 2) == 6.07 and round(stats["avg_item_len"], 2) == 5.82
    assert (stats["n_train"], stats["n_val"], stats["n_test"], stats["n_history"]) == (120_994, 8_000, 14_134, 164_434)
    assert len(stats["data_sha256"]) == 64


def test_custom_protocol_matches_named_and_checksum():
    path = require_data("movielens/ml-100k")
    custom = custom_protocol("ml100k", path, "1998-03-01")
    named = load_protocol("ml100k", DATA_ROOT)
    pd.testing.assert_frame_equal(custom.train, named.train)
    pd.testing.assert_frame_equal(custom.test, named.test)
    assert data_checksum(custom.dataset) == data_checksum(named.dataset)
    with pytest.raises(DataError, match="empty test set"):
        custom_protocol("ml100k", path, "1999-01-01")


def test_run_experiment_takes_the_validation_split_of_the_config_unless_given(monkeypatch, tmp_path):
    """val_mode=None: the config's val_mode (here "temporal"), recorded in run.json; an explicit
    val_mode wins; the config's ranking section sets the split of a ranking run."""
    import json

    from iarn_jax import configs
    from iarn_jax.training import experiment

    class Stop(Exception):
        pass

    seen = []

    def fake_train(split, *args, **kwargs):
        seen.append(split)
        raise Stop

    monkeypatch.setattr(experiment, "train", fake_train)
    config = configs.get_config("synthetic").unlock()
    config.val_mode = "temporal"
    config.ranking.val_mode = "random"
    for kwargs in ({}, {"val_mode": "random"}, {"objective": "ranking"}):
        with pytest.raises(Stop):
            experiment.run_experiment("synthetic", config=config, workdir=tmp_path / str(len(seen)),
                                      verbose=False, baselines=(), **kwargs)
    temporal, random_, ranking = seen
    assert temporal.val["time"].min() >= temporal.train["time"].max()  # the latest training-period pairs
    for split in (random_, ranking):
        assert split.val["time"].min() < split.train["time"].max()
        pd.testing.assert_frame_equal(split.val, random_.val)
    assert json.loads((tmp_path / "0" / "run.json").read_text())["val_mode"] == "temporal"
    assert "val_mode" not in json.loads((tmp_path / "1" / "run.json").read_text())


@pytest.mark.slow  # trains a model end to end: ~20-45 s on this 2-core machine
def test_run_experiment_validates_on_the_latest_pairs_with_temporal_val_mode(tmp_path):
    """--val_mode=temporal reaches the split: the run's validation pairs are the training period's
    latest, none of them trained on, and run.json records the mode."""
    import json

    from iarn_jax.training.experiment import run_experiment

    _, result = run_experiment(
        "synthetic", val_mode="temporal", workdir=tmp_path / "w", verbose=False, baselines=(),
        model_overrides=dict(embed_dim=8, hidden_size=8, attention_size=8, stationary_dim=0),
        train_overrides=dict(max_steps=2, eval_every=2, max_len=8, bucket_lengths=(8,), batch_size=32,
                             eval_batch_size=64, factor_init="random"))
    split = result.data.split
    assert split.val["time"].min() >= split.train["time"].max()
    assert json.loads((tmp_path / "w" / "run.json").read_text())["val_mode"] == "temporal"


@pytest.mark.slow  # trains a model end to end: ~20-45 s on this 2-core machine
def test_run_experiment_prints_no_rmse_for_a_ranking_only_model(tmp_path, capsys):
    """A model trained on sampled negatives alone scores items, not ratings: the summary line says
    its RMSE is not meaningful instead of printing one, and still gives the full-ranking metrics."""
    from iarn_jax.training.experiment import run_experiment

    metrics, _ = run_experiment(
        "synthetic", objective="ranking", workdir=tmp_path / "w", baselines=(), ranking_eval=True,
        model_overrides=dict(embed_dim=8, hidden_size=8, attention_size=8, stationary_dim=0),
        train_overrides=dict(max_steps=2, eval_every=2, max_len=8, bucket_lengths=(8,), batch_size=32,
                             eval_batch_size=64, factor_init="random"))
    summary = [line for line in capsys.readouterr().out.splitlines() if "ranking objective" in line]
    assert len(summary) == 1, summary
    assert "test RMSE n/a" in summary[0] and f"{metrics['test_rmse']:.4f}" not in summary[0]
    assert f"full-ranking AUC {metrics['full_auc']:.4f}" in summary[0]
