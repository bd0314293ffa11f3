"""Core data containers shared by loaders, protocols, histories and models.

Every loader returns a :class:`Dataset`: one interactions table with contiguous
integer ids plus the mapping back to the source's original ids, titles and item
features. Protocols turn a Dataset into a :class:`ProtocolSplit`.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pandas as pd

# Columns of Dataset.ratings, in this order.
#   user:   int64, contiguous id in [0, n_users)
#   item:   int64, contiguous id in [0, n_items)
#   rating: float32
#   time:   int64, sortable time key (unix seconds, or the row order when the
#           source has no timestamps, e.g. the paper's Clothing data)
#   split:  optional str column ("train" / "test") when the source fixes the split
RATING_COLUMNS = ("user", "item", "rating", "time")


class DataError(ValueError):
    """Bad input data. The message names the file, the line (1-based) and the field."""


@dataclasses.dataclass(frozen=True)
class ItemFeatures:
    """Item features as category paths.

    feature_names: name of each feature id, shape [n_features].
    paths: per contiguous item id, a tuple of paths; each path is a tuple of
      feature ids ordered general -> specific (root first). A flat feature set
      (e.g. MovieLens genres) is one path per feature of length 1.
    hierarchical: True when the paths are real hierarchies (Amazon / Clothing).
    """

    feature_names: np.ndarray
    paths: Sequence[tuple[tuple[int, ...], ...]]
    hierarchical: bool

    @property
    def n_features(self) -> int:
        return int(len(self.feature_names))

    def flat_features(self, item: int) -> tuple[int, ...]:
        """Sorted distinct feature ids of one item (the flat view)."""
        return tuple(sorted({f for path in self.paths[item] for f in path}))


@dataclasses.dataclass(frozen=True)
class Dataset:
    """One interactions table with contiguous ids and the mappings back.

    ratings: DataFrame with RATING_COLUMNS (+ optional "split").
    user_ids: original user id of each contiguous user id, shape [n_users].
    item_ids: original item id of each contiguous item id, shape [n_items].
    item_titles: title/name per contiguous item id, or None.
    item_features: category paths / genres, or None.
    rating_scale: (min, max) rating allowed by the source (used for clipping).
    time_unit: "seconds" (unix time) or "order" (row order, no timestamps).
    source: the path(s) the data came from, for error messages and reports.
    """

    name: str
    ratings: pd.DataFrame
    user_ids: np.ndarray
    item_ids: np.ndarray
    rating_scale: tuple[float, float]
    time_unit: str = "seconds"
    item_titles: Optional[np.ndarray] = None
    item_features: Optional[ItemFeatures] = None
    source: str = ""

    @property
    def n_users(self) -> int:
        return int(len(self.user_ids))

    @property
    def n_items(self) -> int:
        return int(len(self.item_ids))


@dataclasses.dataclass(frozen=True)
class ProtocolSplit:
    """A dataset split by a protocol (global time cut + min_len filter).

    dataset: the full Dataset (ids index its tables and embeddings).
    history: all training interactions (before the min_len filter) as a
      DataFrame with RATING_COLUMNS; histories are built from these.
    train: kept training pairs (both sides have >= min_len training ratings)
      that the model fits, after the validation split is taken out.
    val: validation pairs taken from the kept training pairs.
    test: kept test pairs (both sides kept).
    Each of train/val/test has RATING_COLUMNS.
    """

    name: str
    dataset: Dataset
    history: pd.DataFrame
    train: pd.DataFrame
    val: pd.DataFrame
    test: pd.DataFrame
    min_len: int
    cut: Optional[str] = None
    seed: int = 0

    @property
    def n_users(self) -> int:
        return self.dataset.n_users

    @property
    def n_items(self) -> int:
        return self.dataset.n_items

    @property
    def rating_scale(self) -> tuple[float, float]:
        return self.dataset.rating_scale


# A model batch is a dict of NumPy arrays (B = batch size, Tu / Ti = padded
# history lengths; histories are left-aligned: valid steps first, padding after).
BATCH_SPEC = {
    "user": ("int32", "[B]", "contiguous user id of the pair"),
    "item": ("int32", "[B]", "contiguous item id of the pair"),
    "rating": ("float32", "[B]", "target rating (0 on padding examples)"),
    "weight": ("float32", "[B]", "1 for real examples, 0 for padding examples"),
    "user_history": ("int32", "[B, Tu]", "item ids of the user's history, 0 on padding"),
    "user_history_rating": ("float32", "[B, Tu]", "step ratings; 0 on padding and on the target's own step"),
    "user_history_mask": ("bool", "[B, Tu]", "True on valid steps"),
    "item_history": ("int32", "[B, Ti]", "user ids of the item's history, 0 on padding"),
    "item_history_rating": ("float32", "[B, Ti]", "step ratings; 0 on padding and on the target's own step"),
    "item_history_mask": ("bool", "[B, Ti]", "True on valid steps"),
}
# With ``ModelConfig.recency_windows`` a batch also carries (``batching.materialize(..., recency=...)``)
# "item_recency": float32 [B, K + 1], the item's recency features at the pair's time (``data.recency``).
