"""Evaluation protocols: a global time cut, the min_len filter and a validation split.

The rules (``shared/docs/benchmarks.md``, the reference code's data loader):

* a **global** cut: ratings with ``time < cut`` are training, ``time >= cut``
  test (when the dataset carries a ``split`` column, that split is used);
* ``history`` = ALL training ratings: histories are built from these, so a kept
  user's history still contains items that the filter drops;
* users / items are kept when they have >= ``min_len`` training ratings;
  training and test pairs are kept when both sides are kept (one pass, not an
  iterative k-core);
* validation: a seeded random ``min(floor(val_fraction * N), val_cap)`` of the
  N kept training pairs (the reference code: 10 %, capped at 8,000), or the
  latest pairs by time with ``val_mode="temporal"``; ``train`` excludes them.

The named protocols reproduce the project's benchmark counts exactly (kept
training pairs before the validation split / test pairs): clothing
120,994 / 14,134; ml100k 77,685 / 3,651; mlsmall 74,870 / 882.
"""
from __future__ import annotations

import datetime
import hashlib
import os
import pathlib
from typing import Optional, Union

import numpy as np
import pandas as pd

from iarn_jax.data.types import RATING_COLUMNS, DataError, Dataset, ProtocolSplit

# name -> (folder under data_root, loader format, cut)
NAMED_PROTOCOLS = {
    "clothing": ("iarn-clothing", "clothing", None),
    "ml100k": ("movielens/ml-100k", "ml100k", "1998-03-01"),
    "mlsmall": ("movielens/ml-latest-small", "ml-csv", "2016-01-01"),
    "synthetic": (None, None, None),
}
PROTOCOL_NAMES = tuple(NAMED_PROTOCOLS)
SYNTHETIC_CUT_QUANTILE = 0.9

Cut = Union[None, str, int, np.integer, datetime.datetime, pd.Timestamp]


def _cut_value(cut: Cut) -> int:
    """The cut in the dataset's time units (dates -> unix seconds UTC)."""
    if isinstance(cut, (bool, np.bool_)):
        raise DataError(f"invalid cut {cut!r}")
    if isinstance(cut, (int, np.integer)):
        return _in_int64(int(cut), cut)
    if isinstance(cut, (datetime.datetime, pd.Timestamp)):
        stamp = pd.Timestamp(cut)
        stamp = stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")
        return int(stamp.timestamp())
    if isinstance(cut, str):
        from iarn_jax.data.loaders import parse_time  # lazy: keeps `import protocols` light

        try:
            return _in_int64(int(parse_time(cut)), cut)
        except ValueError as error:
            raise DataError(f"--cut={cut}: {error}") from None
    raise DataError(f"invalid cut {cut!r}: give a date like 1998-03-01, or an int in the data's time units")


_INT64 = np.iinfo(np.int64)


def _in_int64(value: int, given) -> int:
    if not _INT64.min <= value <= _INT64.max:
        raise DataError(f"--cut={given}: out of range for 64-bit times; give a date like 1998-03-01 "
                        f"or unix seconds")
    return value


def _describe_time(value: int, time_unit: str) -> str:
    if time_unit == "seconds":
        try:
            stamp = datetime.datetime.fromtimestamp(int(value), tz=datetime.timezone.utc)
        except (OverflowError, OSError, ValueError):
            return f"{int(value)} (not a date in unix seconds)"
        return f"{stamp:%Y-%m-%d %H:%M:%S} UTC ({int(value)})"
    return str(int(value))


def _time_range(dataset: Dataset) -> str:
    time = dataset.ratings["time"]
    return (f"{_describe_time(time.min(), dataset.time_unit)} .. "
            f"{_describe_time(time.max(), dataset.time_unit)}")


def _as_table(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.loc[:, list(RATING_COLUMNS)].reset_index(drop=True)


def kept_entities(history: pd.DataFrame, n_users: int, n_items: int, min_len: int):
    """Boolean masks [n_users], [n_items]: entities with >= min_len training ratings."""
    user_counts = np.bincount(history["user"].to_numpy(dtype=np.int64), minlength=n_users)
    item_counts = np.bincount(history["item"].to_numpy(dtype=np.int64), minlength=n_items)
    return user_counts >= min_len, item_counts >= min_len


def _validation_positions(train_time: np.ndarray, n_val: int, val_mode: str, seed: int) -> np.ndarray:
    n = len(train_time)
    if val_mode == "random":
        return np.sort(np.random.default_rng(seed).permutation(n)[:n_val])
    if val_mode == "temporal":  # latest pairs by time; ties: later rows first
        order = np.lexsort((np.arange(n), train_time))
        return np.sort(order[n - n_val:]) if n_val else np.zeros(0, dtype=np.int64)
    raise ValueError(f"val_mode must be 'random' or 'temporal', got {val_mode!r}")


def split_by_time(dataset: Dataset, cut: Cut = None, *, min_len: int = 3, val_fraction: float = 0.1,
                  val_cap: int = 8000, val_mode: str = "random", seed: int = 123,
                  name: Optional[str] = None) -> ProtocolSplit:
    """Split ``dataset`` at a global time cut (or by its ``split`` column) and filter.

    cut: a date string ("1998-03-01", UTC), a datetime, or an int in the
      dataset's time units; None when the dataset has a ``split`` column.
    """
    ratings = dataset.ratings
    label = name or dataset.name
    if isinstance(min_len, bool) or not isinstance(min_len, (int, np.integer)) or min_len < 1:
        raise ValueError(f"--min_len={min_len}: must be an integer >= 1")
    if "split" in ratings.columns and cut is None:
        split = ratings["split"].astype(str).to_numpy()
        unknown = sorted(set(np.unique(split)) - {"train", "test"})
        if unknown:
            raise DataError(f"{label}: split column has values {unknown}; expected 'train' / 'test'")
        is_train = split == "train"
        cut_label = "given"
    else:
        if cut is None:
            raise DataError(f"{label}: no cut given and the dataset has no split column "
                            f"(data time range {_time_range(dataset)})")
        if len(ratings) == 0:
            raise DataError(f"{label}: the dataset has no ratings")
        cut_time = _cut_value(cut)
        is_train = ratings["time"].to_numpy(dtype=np.int64) < cut_time
        cut_label = str(cut)
        where = f"cut {cut} ({_describe_time(cut_time, dataset.time_unit)})"
        if not is_train.any():
            raise DataError(f"{label}: empty training set: {where} is at or before the first rating; "
                            f"data time range {_time_range(dataset)}")
        if is_train.all():
            raise DataError(f"{label}: empty test set: {where} is after the last rating; "
                            f"data time range {_time_range(dataset)}")
    history = _as_table(ratings[is_train])
    test_all = _as_table(ratings[~is_train])
    if len(history) == 0:
        raise DataError(f"{label}: empty training set (data time range {_time_range(dataset)})")
    if len(test_all) == 0:
        raise DataError(f"{label}: empty test set (data time range {_time_range(dataset)})")

    keep_user, keep_item = kept_entities(history, dataset.n_users, dataset.n_items, min_len)

    def kept(frame: pd.DataFrame) -> pd.DataFrame:
        mask = keep_user[frame["user"].to_numpy()] & keep_item[frame["item"].to_numpy()]
        return frame[mask].reset_index(drop=True)

    train_kept = kept(history)
    test = kept(test_all)
    if len(train_kept) == 0:
        raise DataError(f"{label}: no training pair survives min_len={min_len} (cut {cut_label}, "
                        f"data time range {_time_range(dataset)})")
    if len(test) == 0:
        raise DataError(f"{label}: no test pair survives min_len={min_len} (cut {cut_label}, "
                        f"data time range {_time_range(dataset)})")
    n_val = min(int(np.floor(val_fraction * len(train_kept))), int(val_cap))
    val_pos = _validation_positions(train_kept["time"].to_numpy(), n_val, val_mode, seed)
    is_val = np.zeros(len(train_kept), dtype=bool)
    is_val[val_pos] = True
    return ProtocolSplit(
        name=label, dataset=dataset, history=history,
        train=train_kept[~is_val].reset_index(drop=True), val=train_kept[is_val].reset_index(drop=True),
        test=test, min_len=min_len, cut=cut_label, seed=seed,
    )


def default_data_root() -> Optional[pathlib.Path]:
    """$IARN_DATA_ROOT, else ``../shared/data`` next to the repository, if it exists."""
    env = os.environ.get("IARN_DATA_ROOT")
    if env:
        return pathlib.Path(env)
    candidate = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data"
    return candidate if candidate.exists() else None


def load_protocol(name: str, data_root=None, *, seed: int = 123, min_len: int = 3,
                  val_mode: str = "random", **synthetic_kwargs) -> ProtocolSplit:
    """A named protocol: clothing | ml100k | mlsmall | synthetic.

    ``seed`` seeds the validation split. ``synthetic_kwargs`` go to
    :func:`iarn_jax.data.synthetic.make_synthetic` (synthetic only; the
    generator's seed is ``data_seed``, default 0; the cut is the 90 % quantile
    of time).
    """
    if name not in NAMED_PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOL_NAMES)}")
    if name == "synthetic":
        from iarn_jax.data.synthetic import make_synthetic

        data_seed = synthetic_kwargs.pop("data_seed", 0)
        dataset = make_synthetic(seed=data_seed, **synthetic_kwargs).dataset
        cut = int(np.quantile(dataset.ratings["time"].to_numpy(), SYNTHETIC_CUT_QUANTILE))
        return split_by_time(dataset, cut, min_len=min_len, val_mode=val_mode, seed=seed, name=name)
    if synthetic_kwargs:
        raise TypeError(f"unexpected arguments for protocol {name!r}: {sorted(synthetic_kwargs)}")
    root = pathlib.Path(data_root) if data_root is not None else default_data_root()
    if root is None:
        raise DataError(f"protocol {name!r} needs data_root (the shared/data folder)")
    folder, fmt, cut = NAMED_PROTOCOLS[name]
    from iarn_jax.data.loaders import load_by_format

    dataset = load_by_format(fmt, root / folder)
    return split_by_time(dataset, cut, min_len=min_len, val_mode=val_mode, seed=seed, name=name)


def custom_protocol(fmt: str, path, cut: Cut, *, seed: int = 123, min_len: int = 3,
                    val_mode: str = "random", name: Optional[str] = None,
                    rating_scale: Optional[tuple[float, float]] = None) -> ProtocolSplit:
    """Any loader format + a cut (None when the data carries its own split).

    rating_scale: (low, high) of a generic csv / parquet table (see load_by_format)."""
    from iarn_jax.data.loaders import load_by_format

    if isinstance(min_len, bool) or not isinstance(min_len, (int, np.integer)) or min_len < 1:
        raise ValueError(f"--min_len={min_len}: must be an integer >= 1")  # before the data is read
    dataset = load_by_format(fmt, path, rating_scale=rating_scale)
    return split_by_time(dataset, cut, min_len=min_len, val_mode=val_mode, seed=seed,
                         name=name or f"{fmt}:{path}")


def data_checksum(dataset: Dataset) -> str:
    """sha256 of the ratings table's bytes (user, item int64; rating float32;
    time int64; then the split labels when present), for run reports."""
    ratings = dataset.ratings
    digest = hashlib.sha256()
    for column, dtype in zip(RATING_COLUMNS, (np.int64, np.int64, np.float32, np.int64)):
        digest.update(np.ascontiguousarray(ratings[column].to_numpy(dtype=dtype)).tobytes())
    if "split" in ratings.columns:
        digest.update("\n".join(ratings["split"].astype(str)).encode())
    return digest.hexdigest()


def protocol_stats(split: ProtocolSplit) -> dict:
    """The paper's Table 1 statistics over the kept data, plus split sizes.

    Following Table 1 (which these definitions reproduce exactly on Clothing:
    19,939 users, 20,785 items, 135,128 ratings, 690 features, 6.07 / 5.82):
    n_users / n_items count the entities of the kept training pairs,
    avg_user_len / avg_item_len = kept training pairs per such entity, and
    n_features counts the distinct features of the items of the kept pairs.
    n_users_kept / n_items_kept count all entities passing the min_len filter.
    """
    dataset = split.dataset
    train_all = pd.concat([split.train, split.val], ignore_index=True)
    kept = pd.concat([train_all, split.test], ignore_index=True)
    keep_user, keep_item = kept_entities(split.history, dataset.n_users, dataset.n_items, split.min_len)
    n_users = int(train_all["user"].nunique())
    n_items = int(train_all["item"].nunique())
    n_features = 0
    if dataset.item_features is not None:
        items = np.unique(kept["item"].to_numpy())
        features = set()
        for item in items:
            features.update(dataset.item_features.flat_features(int(item)))
        n_features = len(features)
    time = kept["time"].to_numpy()
    return {
        "protocol": split.name,
        "cut": split.cut,
        "min_len": split.min_len,
        "seed": split.seed,
        "n_users": n_users,
        "n_items": n_items,
        "n_ratings": int(len(kept)),
        "n_features": n_features,
        "avg_user_len": float(len(train_all) / max(n_users, 1)),
        "avg_item_len": float(len(train_all) / max(n_items, 1)),
        "n_users_kept": int(keep_user.sum()),
        "n_items_kept": int(keep_item.sum()),
        "n_train": int(len(train_all)),
        "n_val": int(len(split.val)),
        "n_test": int(len(split.test)),
        "n_history": int(len(split.history)),
        "n_users_total": dataset.n_users,
        "n_items_total": dataset.n_items,
        "time_unit": dataset.time_unit,
        "time_min": int(time.min()) if len(time) else None,
        "time_max": int(time.max()) if len(time) else None,
        "rating_scale": list(dataset.rating_scale),
        "data_sha256": data_checksum(dataset),
    }
