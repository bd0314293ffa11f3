"""Netflix Prize loaders: the official per-movie format and the 10k sample CSV.

Official format (``combined_data_*.txt`` and ``training_set/mv_*.txt``): a
``MovieID:`` line, then ``CustomerID,Rating,YYYY-MM-DD`` lines for that movie.
Dates are days; ``time`` is the unix seconds of midnight UTC.
``movie_titles.txt``: Latin-1 ``MovieID,YearOfRelease,Title`` (titles contain
commas; the year may be ``NULL``).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import pathlib
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._build import align_titles, build_dataset
from iarn_jax.data.loaders._io import (
    dates_to_unix_seconds,
    decode,
    read_bytes,
    read_delimited,
    split_lines,
    strip_trailing_newlines,
)
from iarn_jax.data.types import DataError, Dataset

RATING_SCALE = (1.0, 5.0)
DATE_FORMAT = "%Y-%m-%d"


def resolve_netflix_files(paths) -> list[pathlib.Path]:
    """Rating files from one file, a list of files, or a folder.

    A folder yields its ``combined_data_*.txt`` files, else the ``mv_*.txt``
    files of its ``training_set/`` subfolder, else its own ``mv_*.txt``.
    """
    if isinstance(paths, (str, pathlib.Path)):
        path = pathlib.Path(paths)
        if not path.is_dir():
            return [path]
        for pattern in ("combined_data_*.txt", "training_set/mv_*.txt", "mv_*.txt"):
            found = sorted(path.glob(pattern))
            if found:
                return found
        raise DataError(f"{path}: no combined_data_*.txt or training_set/mv_*.txt files in this folder")
    files = [pathlib.Path(p) for p in paths]
    if not files:
        raise DataError("load_netflix: no rating files given")
    return files


def _locate_field_count(data: bytes, path: pathlib.Path) -> Optional[DataError]:
    for number, line in enumerate(split_lines(decode(data, str(path), "latin-1")), start=1):
        if line.count(",") > 2:
            return DataError(f"{path}: line {number}: field 4 (after 'Date'): expected at most 3 fields "
                             f"(CustomerID,Rating,Date), found {line.count(',') + 1}")
    return None


def read_netflix_ratings(path: pathlib.Path | str) -> pd.DataFrame:
    """One official-format file as raw rows: user, item, rating, time, line."""
    path = pathlib.Path(path)
    data = strip_trailing_newlines(read_bytes(path))
    if not data.strip():
        raise DataError(f"{path}: line 1: field 'MovieID': empty file")
    try:
        frame = pd.read_csv(
            io.BytesIO(data), sep=",", header=None, names=["a", "rating", "date"], index_col=False,
            dtype={"a": str, "rating": str, "date": str}, keep_default_na=False, na_values=[""],
            skip_blank_lines=False, quoting=csv.QUOTE_NONE, engine="c",
        )
    except (ValueError, pd.errors.ParserError) as error:
        raise (_locate_field_count(data, path) or DataError(f"{path}: cannot parse ({error})")) from None
    lines = np.arange(1, len(frame) + 1, dtype=np.int64)

    def fail(rows_index: np.ndarray, bad: np.ndarray, field: str, problem: str):
        row = int(rows_index[np.argmax(bad)])
        raise DataError(f"{path}: line {row + 1}: field '{field}': {problem}")

    everything = np.arange(len(frame))
    empty = frame["a"].isna().to_numpy()
    if empty.any():
        fail(everything, empty, "CustomerID", "empty line")
    is_movie = (frame["rating"].isna() & frame["date"].isna()).to_numpy()
    if not is_movie[0]:
        fail(everything, np.ones(1, bool), "MovieID", "the file must start with a 'MovieID:' line")
    movie_rows, rows = np.flatnonzero(is_movie), np.flatnonzero(~is_movie)
    header = frame["a"].iloc[movie_rows]
    movie_ids = pd.to_numeric(header.str.slice(0, -1), errors="coerce")
    bad = (~header.str.endswith(":") | movie_ids.isna()).to_numpy()
    if bad.any():
        fail(movie_rows, bad, "MovieID", f"expected 'MovieID:', got {header.iloc[np.argmax(bad)]!r}")
    for field, column in (("Rating", "rating"), ("Date", "date")):
        missing = frame[column].iloc[rows].isna().to_numpy()
        if missing.any():
            fail(rows, missing, field, "missing value")
    users = pd.to_numeric(frame["a"].iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
    ratings = pd.to_numeric(frame["rating"].iloc[rows], errors="coerce").to_numpy(dtype=np.float64)
    for field, column, values in (("CustomerID", "a", users), ("Rating", "rating", ratings)):
        bad = ~np.isfinite(values) | ((values != np.round(values)) if field == "CustomerID" else False)
        if bad.any():
            fail(rows, bad, field, f"not {'an integer' if field == 'CustomerID' else 'a number'}: "
                 f"{frame[column].iloc[rows[np.argmax(bad)]]!r}")
    last_movie_row = np.maximum.accumulate(np.where(is_movie, np.arange(len(frame)), 0))
    movie_of_row = np.zeros(len(frame), dtype=np.int64)
    movie_of_row[is_movie] = movie_ids.to_numpy(dtype=np.int64)
    rating_lines = lines[rows]
    return pd.DataFrame({
        "user": users.astype(np.int64),
        "item": movie_of_row[last_movie_row][rows],
        "rating": ratings,
        "time": dates_to_unix_seconds(frame["date"].iloc[rows].to_numpy(dtype=object), rating_lines, str(path),
                                      "Date", DATE_FORMAT),
        "_line": rating_lines,
    })


def read_netflix_titles(path: pathlib.Path | str) -> pd.DataFrame:
    """``movie_titles.txt`` as columns movie (int64), year (nullable Int64), title."""
    path = pathlib.Path(path)
    text = decode(strip_trailing_newlines(read_bytes(path)), str(path), "latin-1")
    movies, years, titles = [], [], []
    for number, line in enumerate(split_lines(text), start=1):
        parts = line.split(",", 2)
        if len(parts) < 3:
            field = ("YearOfRelease", "Title")[len(parts) - 1] if parts else "MovieID"
            raise DataError(f"{path}: line {number}: field '{field}': expected 'MovieID,YearOfRelease,Title'")
        movie, year, title = parts
        if not movie.strip().isdigit():
            raise DataError(f"{path}: line {number}: field 'MovieID': not an integer: {movie!r}")
        if year.strip() != "NULL" and not year.strip().isdigit():
            raise DataError(f"{path}: line {number}: field 'YearOfRelease': not a year or NULL: {year!r}")
        movies.append(int(movie))
        years.append(None if year.strip() == "NULL" else int(year))
        titles.append(title)
    return pd.DataFrame({
        "movie": np.asarray(movies, dtype=np.int64),
        "year": pd.array(years, dtype="Int64"),
        "title": np.asarray(titles, dtype=object),
    })


def _with_titles(dataset: Dataset, titles_path) -> Dataset:
    if titles_path is None:
        return dataset
    titles = read_netflix_titles(titles_path)
    series = pd.Series(titles["title"].to_numpy(), index=titles["movie"].to_numpy())
    return dataclasses.replace(dataset, item_titles=align_titles(dataset.item_ids, series))


def load_netflix(paths: str | pathlib.Path | Sequence, titles_path=None) -> Dataset:
    """Netflix Prize ratings in the official per-movie format (see module doc)."""
    files = resolve_netflix_files(paths)
    frames = []
    for index, path in enumerate(files):
        frame = read_netflix_ratings(path)
        frame["file"] = index
        frames.append(frame)
    raw = pd.concat(frames, ignore_index=True)
    name = files[0].absolute().parent.name if len(files) > 1 else files[0].stem
    dataset = build_dataset(raw, name=name or "netflix", sources=[str(p) for p in files],
                            rating_scale=RATING_SCALE, rating_field="Rating")
    return _with_titles(dataset, titles_path)


def load_netflix_sample_csv(path: str | pathlib.Path, titles_path=None) -> Dataset:
    """The 10k sample CSV with header ``MovieID,UserID,Rating,Date`` (YYYY-MM-DD)."""
    path = pathlib.Path(path)
    fields = [("MovieID", "int"), ("UserID", "int"), ("Rating", "float"), ("Date", "str")]
    raw = read_delimited(read_bytes(path), str(path), fields, header=True)
    time = dates_to_unix_seconds(raw["Date"].to_numpy(dtype=object), raw["_line"].to_numpy(), str(path),
                                 "Date", DATE_FORMAT)
    raw = pd.DataFrame({"user": raw["UserID"], "item": raw["MovieID"], "rating": raw["Rating"],
                        "time": time, "_line": raw["_line"]})
    dataset = build_dataset(raw, name=path.stem, sources=[str(path)], rating_scale=RATING_SCALE,
                            rating_field="Rating")
    return _with_titles(dataset, titles_path)
