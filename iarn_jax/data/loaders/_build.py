"""Turn parsed rows into a :class:`Dataset`: validation, duplicates, ids, features.

Rules shared by every loader (stated once, here):

* **Ids.** Contiguous ids follow the *sorted original ids* (numeric order for
  integer ids, lexicographic order for string ids): ``user_ids[k]`` is the
  k-th smallest original user id that has at least one rating. Only rated
  users/items get ids. (Clothing is the exception: its ids are already
  contiguous 0-based integers and are kept as they are.)
* **Duplicates.** Of several ratings of the same (user, item) pair, the one
  with the latest time is kept; on equal times, the one read last (later line,
  later file). The number dropped is always reported (stderr) and stored in
  ``ratings.attrs["duplicates_dropped"]``.
* **Order.** ``Dataset.ratings`` is sorted by time, ties in input order, with a
  fresh 0..n-1 index.
* **Ratings** must be finite and inside ``rating_scale``; otherwise a
  DataError names the file, line and field.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._io import report
from iarn_jax.data.types import RATING_COLUMNS, DataError, Dataset, ItemFeatures


def check_ratings(
    ratings: np.ndarray,
    rating_scale: tuple[float, float],
    lines: np.ndarray,
    files: np.ndarray,
    sources: Sequence[str],
    field: str,
) -> None:
    """Raise DataError at the first rating that is not finite or outside rating_scale."""
    low, high = rating_scale
    values = np.asarray(ratings, dtype=np.float64)
    bad = ~np.isfinite(values) | (values < low) | (values > high)
    if bad.any():
        row = int(np.argmax(bad))
        problem = (f"rating {float(values[row]):g} is outside the rating scale [{low:g}, {high:g}]"
                   if np.isfinite(values[row]) else f"not a finite number: {float(values[row]):g}")
        raise DataError(f"{sources[int(files[row])]}: line {int(lines[row])}: field '{field}': {problem}")


# Plausible unix seconds: not negative, not after 2100-01-01; a warning before 1990-01-01.
LATEST_SECONDS = 4_102_444_800
WARN_BEFORE_SECONDS = 631_152_000


def check_times(
    times: np.ndarray, lines: np.ndarray, files: np.ndarray, sources: Sequence[str], field: str
) -> None:
    """Unix-second times: DataError for negative or far-future times (milliseconds are named as
    such); a warning line for times before 1990."""
    values = np.asarray(times, dtype=np.int64)
    if len(values) == 0:
        return

    def where(mask: np.ndarray) -> tuple[str, int]:
        row = int(np.argmax(mask))
        return f"{sources[int(files[row])]}: line {int(lines[row])}: field '{field}'", int(values[row])

    late = values > LATEST_SECONDS
    if late.any():
        place, value = where(late)
        if value > 100 * LATEST_SECONDS:
            unit = "milliseconds" if value < 100_000 * LATEST_SECONDS else "microseconds or nanoseconds"
            raise DataError(f"{place}: time {value} looks like {unit} since 1970, not unix seconds; "
                            f"convert the column to seconds")
        raise DataError(f"{place}: time {value} is after 2100-01-01 as unix seconds; expected unix seconds")
    negative = values < 0
    if negative.any():
        place, value = where(negative)
        raise DataError(f"{place}: time {value} is negative (before 1970-01-01); expected unix seconds")
    early = values < WARN_BEFORE_SECONDS
    if early.any():
        place, value = where(early)
        report(f"warning: {int(early.sum()):,} time(s) before 1990-01-01, first at {place}: {value}; "
               f"check that the times are unix seconds")


def drop_duplicate_pairs(frame: pd.DataFrame, name: str) -> tuple[pd.DataFrame, int]:
    """Sort by (time, input order) and keep the last rating of each (user, item) pair."""
    order = np.lexsort((np.arange(len(frame)), frame["time"].to_numpy()))
    frame = frame.iloc[order]
    keep = ~frame.duplicated(subset=["user", "item"], keep="last").to_numpy()
    n_dropped = int(len(frame) - keep.sum())
    if n_dropped:
        report(
            f"{name}: dropped {n_dropped:,} duplicate (user, item) ratings "
            "(kept the latest by time; on equal times the later line)"
        )
        frame = frame[keep]
    return frame.reset_index(drop=True), n_dropped


def build_dataset(
    raw: pd.DataFrame,
    *,
    name: str,
    sources: Sequence[str],
    rating_scale: tuple[float, float],
    rating_field: str = "rating",
    time_unit: str = "seconds",
    time_field: str = "time",
    user_ids: Optional[np.ndarray] = None,
    item_ids: Optional[np.ndarray] = None,
) -> Dataset:
    """Validated, de-duplicated Dataset from raw rows.

    raw: columns user, item (original ids), rating, time (int64), _line
      (1-based line of each row), optional file (index into ``sources``;
      0 when absent) and optional split.
    user_ids / item_ids: pass both when ``raw`` already holds contiguous ids
      (then they are the original ids per contiguous id); otherwise ids are
      assigned from the sorted original ids.
    """
    if len(raw) == 0:
        raise DataError(f"{sources[0] if sources else name}: line 1: field '{rating_field}': no ratings")
    files = raw["file"].to_numpy() if "file" in raw else np.zeros(len(raw), dtype=np.int64)
    check_ratings(raw["rating"].to_numpy(), rating_scale, raw["_line"].to_numpy(), files, sources, rating_field)
    if time_unit == "seconds":
        check_times(raw["time"].to_numpy(), raw["_line"].to_numpy(), files, sources, time_field)
    frame = pd.DataFrame(
        {
            "user": raw["user"].to_numpy(),
            "item": raw["item"].to_numpy(),
            "rating": raw["rating"].to_numpy(dtype=np.float32),
            "time": raw["time"].to_numpy(dtype=np.int64),
        }
    )
    if "split" in raw:
        frame["split"] = raw["split"].to_numpy()
    frame, n_dropped = drop_duplicate_pairs(frame, name)
    if user_ids is None or item_ids is None:
        user_codes, user_ids = pd.factorize(frame["user"], sort=True)
        item_codes, item_ids = pd.factorize(frame["item"], sort=True)
        frame["user"] = user_codes.astype(np.int64)
        frame["item"] = item_codes.astype(np.int64)
        user_ids, item_ids = np.asarray(user_ids), np.asarray(item_ids)
    else:
        frame["user"] = frame["user"].astype(np.int64)
        frame["item"] = frame["item"].astype(np.int64)
    columns = list(RATING_COLUMNS) + (["split"] if "split" in frame else [])
    frame = frame[columns]
    frame.attrs["duplicates_dropped"] = n_dropped
    return Dataset(
        name=name,
        ratings=frame,
        user_ids=user_ids,
        item_ids=item_ids,
        rating_scale=(float(rating_scale[0]), float(rating_scale[1])),
        time_unit=time_unit,
        source=", ".join(str(s) for s in sources),
    )


def align_titles(item_ids: np.ndarray, titles: Mapping) -> np.ndarray:
    """Title per contiguous item id ("" where the source has none), as an object array."""
    series = pd.Series(titles, dtype=object) if not isinstance(titles, pd.Series) else titles
    aligned = np.array(series.reindex(pd.Index(item_ids)).to_numpy(dtype=object), dtype=object, copy=True)
    aligned[pd.isna(aligned)] = ""
    return aligned


def name_path_features(
    item_ids: np.ndarray,
    paths_by_item: Mapping[object, Sequence[Sequence[str]]],
    *,
    hierarchical: bool,
    feature_names: Optional[Iterable[str]] = None,
) -> ItemFeatures:
    """ItemFeatures from paths written with feature *names*.

    feature_names: the vocabulary in id order; by default the sorted distinct
      names over all items of ``paths_by_item`` (rated or not), so the ids do
      not depend on which items were rated. Items without paths get ().
    """
    if feature_names is None:
        feature_names = sorted({n for paths in paths_by_item.values() for path in paths for n in path})
    names = np.asarray(list(feature_names), dtype=object)
    index = {name: k for k, name in enumerate(names)}
    empty: tuple = ()
    paths = [
        tuple(tuple(index[n] for n in path) for path in paths_by_item.get(item, empty) if len(path))
        for item in item_ids.tolist()
    ]
    return ItemFeatures(feature_names=names, paths=paths, hierarchical=hierarchical)
