"""How recently and how often an item was interacted with before a reference time.

The input of the model's time-aware item bias (``ModelConfig.recency_windows``): for an item ``i``
and a reference time ``t`` the features are

    [log1p(#events of i in [t - w_1, t)), ..., log1p(#events of i in [t - w_K, t)),
     log1p(#events of i before t)]                                  float32 [K + 1]

counted over the training-period events of the item histories. A window ``w_k`` is a fraction of
the training period's span. The reference time is ``min(t, t_end)`` with ``t_end`` = one past the
latest training-period event: a training or validation pair counts the events strictly before its
own time (never itself, never the future), a test pair or a ranking candidate counts up to the end
of the training period, the latest knowledge a model has. Events tied with ``t`` are not counted.

Why: on a global time cut the test period's interactions go mostly to items that were popular just
before the cut (on ml100k, ranking by the count of the last 5 % of the training period gives a
full-ranking AUC of 0.807 against 0.750 for all-time popularity); a static item bias cannot
express that, the recurrent towers see no time. The design follows the time-dependent item bias
b_i(t) of timeSVD++ (Koren, KDD 2009), with counts instead of per-bin parameters so that it also
holds for items rarely seen.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from iarn_jax.data.histories import Histories, _event_keys


@dataclasses.dataclass(frozen=True)
class ItemRecency:
    """Vectorised recency features of (item, time) queries against one set of item histories.

    event_key: int64 [n_events] sorted keys of the item histories' events (see ``_event_keys``).
    offsets: int64 [n_items + 1] the histories' CSR offsets.
    windows: int64 [K] window lengths in the data's time unit.
    t_end: one past the latest event (a reference time is clipped to it).
    fractions: the windows as fractions of the span (what they were built from).
    """

    event_key: np.ndarray
    query_key: Callable[[np.ndarray, np.ndarray], np.ndarray]
    offsets: np.ndarray
    windows: np.ndarray
    t_end: int
    fractions: tuple = ()

    @classmethod
    def from_histories(cls, item_histories: Histories, fractions: Sequence[float]) -> "ItemRecency":
        """Windows ``fractions`` (each in (0, 1]) of the span of ``item_histories``' event times."""
        fractions = tuple(float(f) for f in fractions)
        if any(not 0.0 < f <= 1.0 for f in fractions):
            raise ValueError(f"recency window fractions must be in (0, 1], got {fractions}")
        times = item_histories.time
        t0, t1 = (int(times.min()), int(times.max())) if len(times) else (0, 0)
        span = t1 + 1 - t0
        windows = np.asarray([max(1, int(round(f * span))) for f in fractions], np.int64)
        event_key, query_key = _event_keys(item_histories, times)
        return cls(event_key, query_key, np.asarray(item_histories.offsets, np.int64), windows, t1 + 1, fractions)

    @property
    def n_features(self) -> int:
        return int(self.windows.size) + 1

    def __call__(self, items: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Features float32 [n, K + 1] of ``items`` [n] at reference times ``times`` [n] (int64)."""
        items = np.asarray(items, np.int64).reshape(-1)
        reference = np.minimum(np.asarray(times, np.int64).reshape(-1), self.t_end)
        before = np.searchsorted(self.event_key, self.query_key(items, reference), side="left")
        counts = [before - np.searchsorted(self.event_key, self.query_key(items, reference - w), side="left")
                  for w in self.windows]
        counts.append(before - self.offsets[items])
        return np.log1p(np.stack(counts, axis=1).astype(np.float32))

    def at_end(self, items: np.ndarray) -> np.ndarray:
        """Features [n, K + 1] of ``items`` at the end of the training period (test pairs, ranking)."""
        items = np.asarray(items, np.int64).reshape(-1)
        return self(items, np.full(items.shape, self.t_end, np.int64))


__all__ = ["ItemRecency"]
