"""Histories given at request time: new users and fresh ratings, without retraining.

A user's representation is computed from her history by the user tower, so a history that was not
in training is scored by running the tower on it:

* **a new user** (``user=None``): her history is the given ratings. She has no learned per-user
  parameters, so she is served by the model with one extra user row (:func:`with_unknown_user`)
  whose per-user parameters are neutral: the per-user bias is the mean of the trained users' biases
  and every other per-user table (e.g. the stationary factor p_u of ``stationary_dim > 0``, and the
  item tower's embedding of the user) is zero. The extra row is found generically (the parameters
  whose shape grows with ``n_users``), so new per-user tables get zeros too.
* **an existing user with fresh ratings**: her training history followed by the new ratings (in
  time order; ties keep the training events first), with her own learned parameters.

The item side always sees its **training-period history**: a request's ratings are not added to
the items' histories (that would change every other user's scores) and the item encodings stay
cached.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data.histories import Histories


def parse_history(served, history, *, after_time: Optional[int] = None) -> pd.DataFrame:
    """A request history as a table (item = contiguous id, rating, time), sorted by time.

    history: a list of (item, rating[, time]) tuples or a DataFrame with columns item, rating
      [, time]; items are original ids. time: unix seconds (int), or anything pandas.Timestamp
      reads ("2024-05-01") when the data's times are seconds; missing times are taken as just after
      the training period (``after_time``), in the given order.
    """
    if isinstance(history, pd.DataFrame):
        frame = history.copy()
    else:
        rows = [tuple(row) for row in history]
        if any(len(row) not in (2, 3) for row in rows):
            raise ValueError("history rows are (item, rating) or (item, rating, time)")
        frame = pd.DataFrame({"item": [r[0] for r in rows], "rating": [r[1] for r in rows],
                              "time": [r[2] if len(r) == 3 else None for r in rows]})
    if "item" not in frame or "rating" not in frame:
        raise ValueError("a history table needs the columns item and rating (and optionally time)")
    if len(frame) == 0:
        raise ValueError("the history is empty: give at least one (item, rating, time)")
    items = served.item_index(frame["item"].tolist())
    rating = frame["rating"].to_numpy(np.float32)
    low, high = served.rating_scale
    if (rating < low).any() or (rating > high).any():
        raise ValueError(f"history ratings must lie in the rating scale [{low:g}, {high:g}]")
    start = int(after_time if after_time is not None else served.data.user_histories.time.max(initial=0)) + 1
    times = frame["time"].tolist() if "time" in frame else [None] * len(frame)
    seconds = served.dataset.time_unit == "seconds"
    time = np.asarray([start + k if t is None or (isinstance(t, float) and np.isnan(t)) else _to_time(t, seconds)
                       for k, t in enumerate(times)], dtype=np.int64)
    out = pd.DataFrame({"item": items, "rating": rating, "time": time})
    return out.sort_values("time", kind="stable").reset_index(drop=True)


def _to_time(value, seconds: bool) -> int:
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return int(value)
    if not seconds:
        raise ValueError(f"time {value!r}: this data's times are row orders (integers), not dates")
    stamp = pd.Timestamp(value)
    return int(stamp.timestamp()) if stamp.tzinfo else int(stamp.tz_localize("UTC").timestamp())


def with_history(base: Histories, row: int, events: pd.DataFrame, *, extend: bool) -> Histories:
    """``base`` with entity ``row``'s history replaced by (``extend``: her events followed by)
    ``events`` (item, rating, time); ``row`` may be ``base.n_entities`` (one more entity).
    Copies the flat arrays once (O(events)); other entities are unchanged."""
    n = max(base.n_entities, row + 1)
    lengths = np.zeros(n, np.int64)
    lengths[: base.n_entities] = base.lengths
    start = int(base.offsets[row]) if row < base.n_entities else int(base.offsets[-1])
    stop = int(base.offsets[row + 1]) if row < base.n_entities else start
    counterpart = events["item"].to_numpy(np.int32)
    rating = events["rating"].to_numpy(np.float32)
    time = events["time"].to_numpy(np.int64)
    if extend and stop > start:
        counterpart = np.r_[base.counterpart[start:stop], counterpart]
        rating = np.r_[base.rating[start:stop], rating]
        time = np.r_[base.time[start:stop], time]
        order = np.argsort(time, kind="stable")  # training events first on ties
        counterpart, rating, time = counterpart[order], rating[order], time[order]
    lengths[row] = len(counterpart)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return Histories(
        offsets=offsets,
        counterpart=np.concatenate([base.counterpart[:start], counterpart, base.counterpart[stop:]]).astype(np.int32),
        rating=np.concatenate([base.rating[:start], rating, base.rating[stop:]]).astype(np.float32),
        time=np.concatenate([base.time[:start], time, base.time[stop:]]).astype(np.int64),
    )


@dataclasses.dataclass(frozen=True, eq=False)
class UnknownUserModel:
    """The model with one extra user row (id ``row`` = n_users) whose per-user parameters are
    neutral (see the module doc). Known users' predictions are unchanged by the extra row."""

    model: Any
    params: Any
    model_config: Any
    row: int


def with_unknown_user(served) -> UnknownUserModel:
    """:class:`UnknownUserModel` of a ServedModel (built once, then cached on it)."""
    if "unknown_user" in served._cache:
        return served._cache["unknown_user"]
    import jax
    import jax.numpy as jnp

    from iarn_jax.serve.model_io import abstract_params
    from iarn_jax.training.loop import build_model

    config = served.model_config
    grown = dataclasses.replace(config, n_users=config.n_users + 1)
    model = build_model(grown, served.data.split)
    before = abstract_params(served.model, served.constants)
    after = abstract_params(model, served.constants)  # the same items, so the same feature tables

    def pad(path, value, old, new):
        if old.shape == new.shape:
            return value
        axis = next(a for a, (x, y) in enumerate(zip(old.shape, new.shape)) if x != y)
        names = [getattr(p, "key", getattr(p, "name", "")) for p in path]
        if names[-1] == "entity_bias" and "user_tower" in names:
            row = jnp.mean(value, axis=axis, keepdims=True)  # an unknown user's bias: the users' mean
        else:
            shape = list(value.shape)
            shape[axis] = new.shape[axis] - old.shape[axis]
            row = jnp.zeros(shape, value.dtype)
        return jnp.concatenate([jnp.asarray(value), row.astype(value.dtype)], axis=axis)

    params = jax.tree_util.tree_map_with_path(pad, served.params, before, after)
    unknown = UnknownUserModel(model=model, params=params, model_config=grown, row=config.n_users)
    served._cache["unknown_user"] = unknown
    return unknown


def request_histories(served, user: Optional[int], history) -> tuple[Any, Any, Histories, int]:
    """(model, params, user histories, user row) that score ``user`` (contiguous id, or None for a
    new user) with the request ``history`` (None: her training history)."""
    if history is None:
        if user is None:
            raise ValueError("give a user (original id) or a history=[(item, rating, time), ...]")
        return served.model, served.params, served.data.user_histories, int(user)
    events = parse_history(served, history)
    if user is None:
        unknown = with_unknown_user(served)
        hist = with_history(served.data.user_histories, unknown.row, events, extend=False)
        return unknown.model, unknown.params, hist, unknown.row
    hist = with_history(served.data.user_histories, int(user), events, extend=True)
    return served.model, served.params, hist, int(user)


__all__ = ["UnknownUserModel", "parse_history", "request_histories", "with_history", "with_unknown_user"]
