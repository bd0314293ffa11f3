"""Choose a loader by format name: ``--data FORMAT:PATH`` flags.

Companion files are found beside the given path: Amazon metadata
(``meta_<Category>.json[.gz]``), Netflix ``movie_titles.txt`` (beside the file,
or in the given folder). Generic ``csv`` / ``parquet`` tables must use the
column names ``user,item,rating,time`` (unix seconds); use ``load_table`` for
anything else.
"""
from __future__ import annotations

import math
import pathlib
from typing import Callable, Optional

from iarn_jax.data.loaders._io import report
from iarn_jax.data.loaders.amazon import find_amazon_metadata, load_amazon_ratings_csv, load_amazon_reviews
from iarn_jax.data.loaders.clothing import load_clothing
from iarn_jax.data.loaders.movielens import load_movielens_100k, load_movielens_csv, load_movielens_dat
from iarn_jax.data.loaders.netflix import load_netflix, load_netflix_sample_csv
from iarn_jax.data.loaders.table import load_table
from iarn_jax.data.types import DataError, Dataset

DEFAULT_COLUMNS = {"user": "user", "item": "item", "rating": "rating", "time": "time"}
TITLE_FILES = ("movie_titles.txt", "movie_titles.csv")


def _netflix_titles(path: pathlib.Path) -> Optional[pathlib.Path]:
    folder = path if path.is_dir() else path.parent
    for candidate in [folder / name for name in TITLE_FILES] + [folder.parent / name for name in TITLE_FILES]:
        if candidate.exists():
            return candidate
    return None


def _amazon(loader: Callable, path: pathlib.Path) -> Dataset:
    if path.is_dir():
        raise DataError(f"{path}: give the reviews/ratings file itself, not its folder")
    meta = find_amazon_metadata(path)
    report(f"{path.name}: metadata {'from ' + str(meta) if meta else 'not found (no titles or categories)'}")
    return loader(path, meta)


def _netflix(loader: Callable, path: pathlib.Path) -> Dataset:
    return loader(path, _netflix_titles(path))


FORMATS: dict[str, Callable[[pathlib.Path], Dataset]] = {
    "ml100k": load_movielens_100k,
    "ml-dat": load_movielens_dat,
    "ml-csv": load_movielens_csv,
    "clothing": load_clothing,
    "amazon-json": lambda path: _amazon(load_amazon_reviews, path),
    "amazon-csv": lambda path: _amazon(load_amazon_ratings_csv, path),
    "netflix": lambda path: _netflix(load_netflix, path),
    "netflix-sample": lambda path: _netflix(load_netflix_sample_csv, path),
    "csv": lambda path: load_table(path, DEFAULT_COLUMNS),
    "parquet": lambda path: load_table(path, DEFAULT_COLUMNS),
}


def load_by_format(fmt: str, path: pathlib.Path | str,
                   rating_scale: Optional[tuple[float, float]] = None) -> Dataset:
    """Load ``path`` with the loader registered for ``fmt`` (one of FORMATS).

    rating_scale: (low, high) for the generic ``csv`` / ``parquet`` formats (ratings outside it are
      refused); without it a standard scale is inferred and printed. Other formats know their scale.
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown data format {fmt!r}; known formats: {', '.join(FORMATS)}")
    if rating_scale is not None:
        if fmt not in ("csv", "parquet"):
            raise ValueError(f"--rating_scale applies to the csv / parquet formats only; {fmt!r} "
                             f"has a fixed scale")
        return load_table(pathlib.Path(path), DEFAULT_COLUMNS, rating_scale=check_rating_scale(rating_scale))
    return FORMATS[fmt](pathlib.Path(path))


def check_rating_scale(value) -> tuple[float, float]:
    """(low, high) from a pair or a "LOW,HIGH" string; ValueError naming --rating_scale otherwise."""
    parts = value.split(",") if isinstance(value, str) else list(value)
    try:
        low, high = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"--rating_scale={value!r}: expected LOW,HIGH like 1,5") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"--rating_scale={value!r}: need finite LOW < HIGH, like 1,5")
    return low, high


def parse_data_flag(flag: str) -> tuple[str, str]:
    """``"FORMAT:PATH"`` -> (format, path); the path may itself contain ':'."""
    fmt, sep, path = flag.partition(":")
    fmt = fmt.strip()
    if not sep or not path.strip():
        raise ValueError(f"data flag {flag!r} must look like FORMAT:PATH, e.g. ml100k:/data/ml-100k")
    if fmt not in FORMATS:
        raise ValueError(f"data flag {flag!r}: unknown format {fmt!r}; known formats: {', '.join(FORMATS)}")
    return fmt, path.strip()


def load_data_flag(flag: str) -> Dataset:
    """Load the dataset named by a ``FORMAT:PATH`` flag."""
    return load_by_format(*parse_data_flag(flag))
