"""Generic tables: any CSV or Parquet file with a column mapping.

``columns`` maps the Dataset's names to the file's: ``{"user": "uid", "item":
"iid", "rating": "stars", "time": "ts"}``. ``time`` may be left out (then the
row order is the time, ``time_unit == "order"``). Times are unix seconds
(integers; floats are floored), datetime columns (Parquet), or strings parsed
with ``time_format`` (UTC). Ids that are all integers become int64, otherwise
strings. Without ``rating_scale`` the scale is the first standard scale of
STANDARD_SCALES that holds every rating (printed); a rating outside every
standard scale is refused (pass ``rating_scale``, flag ``--rating_scale``).
For Parquet files, the "line" in error messages is the 1-based row number.
"""
from __future__ import annotations

import pathlib
from typing import Mapping, Optional

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._build import build_dataset, check_ratings
from iarn_jax.data.loaders._io import (
    dates_to_unix_seconds,
    datetime_to_unix_seconds,
    read_bytes,
    read_delimited,
    report,
)
from iarn_jax.data.types import DataError, Dataset

PARQUET_SUFFIXES = (".parquet", ".pq")
REQUIRED = ("user", "item", "rating")
# Tried in this order when no rating_scale is given: the first that holds every rating is used.
STANDARD_SCALES = ((0.0, 1.0), (1.0, 5.0), (0.5, 5.0), (0.0, 5.0), (1.0, 10.0))


def infer_rating_scale(ratings: np.ndarray, lines: np.ndarray, path: str, field: str) -> tuple[float, float]:
    """The first standard scale holding every rating (printed); else DataError at the first
    rating outside the standard scale that holds the most ratings."""
    inside = [(ratings >= low) & (ratings <= high) for low, high in STANDARD_SCALES]
    for scale, ok in zip(STANDARD_SCALES, inside):
        if ok.all():
            report(f"{path}: rating scale [{scale[0]:g}, {scale[1]:g}] (the first standard scale holding every "
                   f"'{field}' value; pass --rating_scale=LOW,HIGH to state another)")
            return scale
    best = max(range(len(STANDARD_SCALES)), key=lambda k: int(inside[k].sum()))
    row = int(np.argmax(~inside[best]))
    low, high = STANDARD_SCALES[best]
    raise DataError(f"{path}: line {int(lines[row])}: field '{field}': rating {float(ratings[row]):g} is outside "
                    f"the standard rating scale [{low:g}, {high:g}] of the other ratings; fix the row, or pass "
                    f"--rating_scale=LOW,HIGH")


def _fail(path, lines, bad: np.ndarray, field: str, problem: str):
    row = int(np.argmax(bad))
    raise DataError(f"{path}: line {int(lines[row])}: field '{field}': {problem}")


def normalize_ids(values: pd.Series, lines: np.ndarray, path: str, field: str) -> np.ndarray:
    """int64 ids when every value is an integer, else string ids; missing ids raise."""
    missing = values.isna().to_numpy()
    if missing.any():
        _fail(path, lines, missing, field, "missing value")
    if pd.api.types.is_bool_dtype(values.dtype):
        _fail(path, lines, np.ones(len(values), bool), field, "boolean ids are not supported")
    numbers = values if pd.api.types.is_numeric_dtype(values.dtype) else pd.to_numeric(values, errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    if np.isfinite(numbers).all() and (numbers == np.round(numbers)).all():
        if pd.api.types.is_integer_dtype(values.dtype):
            return values.to_numpy(dtype=np.int64)
        return numbers.astype(np.int64)
    if pd.api.types.is_numeric_dtype(values.dtype):
        _fail(path, lines, ~np.isfinite(numbers) | (numbers != np.round(numbers)), field, "numeric id is not an integer")
    return values.astype(str).to_numpy(dtype=object)


def normalize_times(values: pd.Series, lines: np.ndarray, path: str, field: str,
                    time_format: Optional[str]) -> np.ndarray:
    """int64 unix seconds from a datetime, numeric or formatted-string column."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        missing = values.isna().to_numpy()
        if missing.any():
            _fail(path, lines, missing, field, "missing value")
        return datetime_to_unix_seconds(values)
    if time_format is not None:
        return dates_to_unix_seconds(values.astype(object).to_numpy(dtype=object), lines, path, field, time_format)
    numbers = values if pd.api.types.is_numeric_dtype(values.dtype) else pd.to_numeric(values, errors="coerce")
    numbers = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    bad = ~np.isfinite(numbers)
    if bad.any():
        _fail(path, lines, bad, field,
              f"not unix seconds: {values.iloc[int(np.argmax(bad))]!r} (pass time_format for dates)")
    if pd.api.types.is_integer_dtype(values.dtype):
        return values.to_numpy(dtype=np.int64)
    return np.floor(numbers).astype(np.int64)


def _check_mapping(columns: Mapping[str, str]) -> None:
    unknown = set(columns) - {"user", "item", "rating", "time"}
    missing = [key for key in REQUIRED if key not in columns]
    if unknown or missing:
        raise ValueError(
            f"columns must map user, item, rating (and optionally time) to file columns; "
            f"missing {missing}, unknown {sorted(unknown)}"
        )


def _read_parquet(path: pathlib.Path, wanted: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{path}: file not found")
    try:
        import pyarrow.parquet as pq
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("reading Parquet needs pyarrow (pip install 'iarn_jax[parquet]')") from error
    try:
        schema_names = pq.read_schema(path).names
    except Exception as error:  # pyarrow raises several types for corrupt files
        raise DataError(f"{path}: line 1: field '(file)': not a readable Parquet file ({error})") from None
    for name in wanted:
        if name not in schema_names:
            raise DataError(f"{path}: line 1 (schema): missing column '{name}' (found: {', '.join(schema_names)})")
    frame = pd.read_parquet(path, columns=wanted)
    if len(frame) == 0:
        raise DataError(f"{path}: line 1: field '{wanted[0]}': empty file (no rows)")
    return frame


def _read_csv(path: pathlib.Path, columns: Mapping[str, str], sep: str, time_format: Optional[str]) -> pd.DataFrame:
    kinds = {"user": "str", "item": "str", "rating": "float", "time": "int" if time_format is None else "str"}
    fields = [(columns[key], kinds[key]) for key in ("user", "item", "rating", "time") if key in columns]
    return read_delimited(read_bytes(path), str(path), fields, sep=sep, header=True, quoted=True)


def load_table(
    path: pathlib.Path | str,
    columns: Mapping[str, str],
    *,
    sep: str = ",",
    time_format: Optional[str] = None,
    rating_scale: Optional[tuple[float, float]] = None,
) -> Dataset:
    """A CSV (with header) or Parquet (by extension) ratings table (see the module doc)."""
    _check_mapping(columns)
    path = pathlib.Path(path)
    wanted = [columns[key] for key in ("user", "item", "rating", "time") if key in columns]
    if path.suffix.lower() in PARQUET_SUFFIXES:
        frame = _read_parquet(path, wanted)
        lines = np.arange(1, len(frame) + 1, dtype=np.int64)
    else:
        frame = _read_csv(path, columns, sep, time_format)
        lines = frame["_line"].to_numpy()
    source = str(path)
    ratings = pd.to_numeric(frame[columns["rating"]], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    check_ratings(ratings, (-np.inf, np.inf), lines, np.zeros(len(lines), np.int64), [source], columns["rating"])
    if "time" in columns:
        time = normalize_times(frame[columns["time"]], lines, source, columns["time"], time_format)
    else:
        time = np.arange(len(frame), dtype=np.int64)
    raw = pd.DataFrame({
        "user": normalize_ids(frame[columns["user"]], lines, source, columns["user"]),
        "item": normalize_ids(frame[columns["item"]], lines, source, columns["item"]),
        "rating": ratings,
        "time": time,
        "_line": lines,
    })
    scale = rating_scale if rating_scale is not None else infer_rating_scale(ratings, lines, source, columns["rating"])
    return build_dataset(raw, name=path.stem, sources=[source], rating_scale=scale,
                         rating_field=columns["rating"], time_unit="seconds" if "time" in columns else "order",
                         time_field=columns.get("time", "time"))
