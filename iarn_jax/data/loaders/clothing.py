"""The IARN paper's own Amazon Clothing data (``iarn-clothing/``).

Files: ``train.csv`` and ``test.csv`` (``user,item,rating,row``) and
``item_category.csv`` (``item,category,position``). Ids are the authors'
0-based integers and are kept as the contiguous ids. There are no timestamps:
``time`` is a global order, ``time_unit == "order"``: train rows get their rank
in ``row`` order (0..n_train-1), test rows ``n_train +`` their rank, so every
train row comes before every test row. The fixed split is kept in a ``split``
column ("train" / "test").

Category paths: each item's categories in ``position`` order form one or two
concatenated general -> specific paths; a new path starts at every *top-level*
category, defined as a category whose most frequent position (over all items;
ties -> the smaller position) is 0. Feature names are the category ids as
strings (no names exist).
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._build import build_dataset
from iarn_jax.data.loaders._io import read_bytes, read_delimited
from iarn_jax.data.types import DataError, Dataset, ItemFeatures

RATING_SCALE = (1.0, 5.0)


def _read_split(path: pathlib.Path, split: str, time_offset: int) -> pd.DataFrame:
    fields = [("user", "int"), ("item", "int"), ("rating", "float"), ("row", "int")]
    frame = read_delimited(read_bytes(path), str(path), fields, header=True)
    for field in ("user", "item"):
        negative = frame[field].to_numpy() < 0
        if negative.any():
            line = int(frame["_line"].iloc[int(np.argmax(negative))])
            raise DataError(f"{path}: line {line}: field '{field}': negative id")
    rank = np.empty(len(frame), dtype=np.int64)
    rank[np.argsort(frame["row"].to_numpy(), kind="stable")] = np.arange(len(frame))
    frame["time"] = time_offset + rank
    frame["split"] = split
    return frame.drop(columns="row")


def top_level_categories(items: np.ndarray, categories: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Sorted ids of the categories whose most frequent position is 0 (ties -> smaller position)."""
    del items
    counts = pd.crosstab(categories, positions)
    return np.asarray(counts.index[counts.to_numpy().argmax(axis=1) == 0], dtype=np.int64)


def split_category_paths(categories: list[int], top_level: set[int]) -> tuple[tuple[int, ...], ...]:
    """Split one item's ordered categories into paths, each starting at a top-level id."""
    paths: list[list[int]] = []
    for category in categories:
        if category in top_level or not paths:
            paths.append([category])
        else:
            paths[-1].append(category)
    return tuple(tuple(path) for path in paths)


def read_item_categories(path: pathlib.Path, n_items: int) -> ItemFeatures:
    """Hierarchical ItemFeatures from ``item_category.csv`` (see the module doc)."""
    fields = [("item", "int"), ("category", "int"), ("position", "int")]
    table = read_delimited(read_bytes(path), str(path), fields, header=True)
    for field in ("item", "category", "position"):
        negative = table[field].to_numpy() < 0
        if negative.any():
            line = int(table["_line"].iloc[int(np.argmax(negative))])
            raise DataError(f"{path}: line {line}: field '{field}': negative value")
    table = table.sort_values(["item", "position"], kind="stable")
    items, categories = table["item"].to_numpy(), table["category"].to_numpy()
    top_level = set(top_level_categories(items, categories, table["position"].to_numpy()).tolist())
    n_features = int(categories.max()) + 1
    n_items = max(n_items, int(items.max()) + 1)
    starts = np.flatnonzero(np.r_[True, items[1:] != items[:-1]])
    ends = np.r_[starts[1:], len(items)]
    paths: list[tuple] = [()] * n_items
    for start, end in zip(starts.tolist(), ends.tolist()):
        paths[int(items[start])] = split_category_paths(categories[start:end].tolist(), top_level)
    names = np.asarray([str(k) for k in range(n_features)], dtype=object)
    return ItemFeatures(feature_names=names, paths=paths, hierarchical=True)


def load_clothing(path: pathlib.Path | str) -> Dataset:
    """The paper's Clothing data from its folder (see the module doc)."""
    folder = pathlib.Path(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: expected the iarn-clothing folder (train.csv, test.csv, item_category.csv)")
    train = _read_split(folder / "train.csv", "train", 0)
    test = _read_split(folder / "test.csv", "test", len(train))
    train["file"], test["file"] = 0, 1
    raw = pd.concat([train, test], ignore_index=True)
    n_users = int(raw["user"].max()) + 1
    n_items = int(raw["item"].max()) + 1
    category_path = folder / "item_category.csv"
    features = read_item_categories(category_path, n_items) if category_path.exists() else None
    if features is not None:
        n_items = len(features.paths)
    dataset = build_dataset(
        raw,
        name=folder.absolute().name,
        sources=[str(folder / "train.csv"), str(folder / "test.csv")],
        rating_scale=RATING_SCALE,
        time_unit="order",
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(n_items, dtype=np.int64),
    )
    return dataclasses.replace(dataset, item_features=features)
