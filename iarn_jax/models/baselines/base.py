"""The interface every baseline recommender implements."""
from __future__ import annotations

from typing import Protocol

import numpy as np

from iarn_jax.data.types import ProtocolSplit


class Recommender(Protocol):
    """A fitted recommender.

    rates: True when predict() returns ratings (RMSE applies), False for
      ranking-only models (BPR, NCF, Item2Vec, MP2Vec).
    """

    name: str
    rates: bool

    def fit(self, split: ProtocolSplit, *, seed: int = 0, verbose: bool = True) -> "Recommender":
        """Fits on split.train (hyper-parameters may be chosen on split.val)."""

    def predict(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Predicted ratings [N] for pairs (users[n], items[n]); unclipped."""

    def score_items(self, user: int, items: np.ndarray) -> np.ndarray:
        """Ranking scores [I] of one user against candidate items (higher = better)."""
