"""Per-user candidate lists for full ranking: the test-time benchmark (``evaluate.ranking``) and
validation-time ranking (BPR's model selection) build them the same way.

``RankingTask.from_frames(known, targets, users)``: for each user, the candidates are a universe of
items (default: the items of ``known`` and ``targets``) minus the user's ``known`` items; the
positives are the user's ``targets`` items among them. Positions index the sorted universe.
"""
from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import pandas as pd


def _items_by_user(frame: pd.DataFrame, users: np.ndarray) -> list[np.ndarray]:
    """Sorted distinct items of each requested user in ``frame``."""
    user_col = frame["user"].to_numpy(np.int64)
    item_col = frame["item"].to_numpy(np.int64)
    order = np.argsort(user_col, kind="mergesort")
    user_sorted, item_sorted = user_col[order], item_col[order]
    starts = np.searchsorted(user_sorted, users, side="left")
    ends = np.searchsorted(user_sorted, users, side="right")
    return [np.unique(item_sorted[s:e]) for s, e in zip(starts, ends)]


@dataclasses.dataclass(frozen=True)
class RankingTask:
    """Per-user candidate lists, stored compactly.

    universe: sorted item ids every candidate list is drawn from [I].
    users: evaluated users [U].
    known: per user, universe positions of items removed from the candidates.
    positives: per user, universe positions of the positive items.
    """

    universe: np.ndarray
    users: np.ndarray
    known: list
    positives: list

    @classmethod
    def from_frames(
        cls,
        known: pd.DataFrame,
        targets: pd.DataFrame,
        users: Sequence[int],
        universe: Optional[np.ndarray] = None,
    ) -> "RankingTask":
        """Candidates = universe (default: items of known ∪ targets) minus the
        user's known items; positives = the user's target items among them.
        Users whose positives are all known are kept with no positive; the
        evaluation skips them."""
        users = np.asarray(users, dtype=np.int64)
        if universe is None:
            universe = np.union1d(known["item"].to_numpy(np.int64), targets["item"].to_numpy(np.int64))
        universe = np.asarray(universe, dtype=np.int64)
        known_items = _items_by_user(known, users)
        target_items = _items_by_user(targets, users)

        def positions(items):
            items = items[np.isin(items, universe, assume_unique=True)]
            return np.searchsorted(universe, items)

        known_pos = [positions(k) for k in known_items]
        positive_pos = [np.setdiff1d(positions(t), kp, assume_unique=True) for t, kp in zip(target_items, known_pos)]
        return cls(universe=universe, users=users, known=known_pos, positives=positive_pos)

    def candidate_mask(self, index: int) -> np.ndarray:
        mask = np.ones(self.universe.size, dtype=bool)
        mask[self.known[index]] = False
        return mask
