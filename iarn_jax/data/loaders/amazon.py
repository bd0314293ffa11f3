"""Amazon review data (McAuley 2014 and Ni/Li/McAuley 2018 releases).

* Reviews: JSON lines (gzip or plain, detected by magic bytes) with
  ``reviewerID, asin, overall, unixReviewTime``. Lines that are not strict
  JSON are read as Python literals (2014 files).
* Ratings-only CSV (2018): no header, ``item,user,rating,timestamp``
  (**item first**).
* Metadata: ``asin``, ``title`` and either ``category`` (2018: one path, root
  first) or ``categories`` (2014: a list of paths, root first). Category names
  are HTML-unescaped and stripped; empty levels are skipped. The **full path is
  kept, root included** (e.g. "Magazine Subscriptions" is level 0 of every
  2018 Magazine path): drop the root downstream if it is not wanted. Extra
  "levels" that are really marketing sentences (Gift Cards) are kept as they
  are. Metadata lines repeating an ``asin`` are dropped (the first line is
  kept) and the count is reported. Titles that are HTML fragments (most 2018
  Magazine titles read ``<span class="a-size-medium ...``) become "".
"""
from __future__ import annotations

import ast
import dataclasses
import html
import json
import pathlib
from typing import Optional

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._build import align_titles, build_dataset, name_path_features
from iarn_jax.data.loaders._io import decode, read_bytes, read_delimited, report, split_lines, strip_trailing_newlines
from iarn_jax.data.types import DataError, Dataset

RATING_SCALE = (1.0, 5.0)
REVIEW_FIELDS = ("reviewerID", "asin", "overall", "unixReviewTime")


def _parse_record(line: str, path: pathlib.Path, number: int) -> dict:
    """One JSON (or Python-literal) object per line."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        try:
            record = ast.literal_eval(line)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(f"{path}: line {number}: field '(record)': not a JSON object or Python literal") from None
    if not isinstance(record, dict):
        raise DataError(f"{path}: line {number}: field '(record)': expected an object, got {type(record).__name__}")
    return record


def iter_records(path: pathlib.Path | str):
    """(line number, dict) for each line of a JSON-lines file; blank lines raise."""
    path = pathlib.Path(path)
    text = decode(strip_trailing_newlines(read_bytes(path)), str(path), "utf-8")
    if not text.strip():
        raise DataError(f"{path}: line 1: field '(record)': empty file")
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            raise DataError(f"{path}: line {number}: field '(record)': empty line")
        yield number, _parse_record(line, path, number)


def _field(record: dict, name: str, path, number: int):
    value = record.get(name)
    if value is None or value == "":
        raise DataError(f"{path}: line {number}: field '{name}': missing value")
    return value


def read_reviews(path: pathlib.Path | str) -> pd.DataFrame:
    """Reviews as raw rows: user, item (strings), rating, time (unix seconds), line."""
    path = pathlib.Path(path)
    users, items, ratings, times, lines = [], [], [], [], []
    for number, record in iter_records(path):
        user, item, rating, time = (_field(record, name, path, number) for name in REVIEW_FIELDS)
        if isinstance(rating, bool) or not isinstance(rating, (int, float, str)):
            raise DataError(f"{path}: line {number}: field 'overall': not a number: {rating!r}")
        try:
            rating = float(rating)
        except ValueError:
            raise DataError(f"{path}: line {number}: field 'overall': not a number: {rating!r}") from None
        if isinstance(time, bool) or not isinstance(time, (int, str)) or not str(time).strip().lstrip("-").isdigit():
            raise DataError(f"{path}: line {number}: field 'unixReviewTime': not an integer: {time!r}")
        if not -(2**63) <= int(time) < 2**63:
            raise DataError(f"{path}: line {number}: field 'unixReviewTime': out of the 64-bit range: {time!r}")
        users.append(str(user))
        items.append(str(item))
        ratings.append(rating)
        times.append(int(time))
        lines.append(number)
    return pd.DataFrame({
        "user": np.asarray(users, dtype=object), "item": np.asarray(items, dtype=object),
        "rating": np.asarray(ratings, dtype=np.float64), "time": np.asarray(times, dtype=np.int64),
        "_line": np.asarray(lines, dtype=np.int64),
    })


def _clean_path(levels, path, number: int, field: str) -> list[str]:
    if not isinstance(levels, (list, tuple)):
        raise DataError(f"{path}: line {number}: field '{field}': expected a list, got {type(levels).__name__}")
    cleaned = [html.unescape(str(level)).strip() for level in levels]
    return [level for level in cleaned if level]


def _clean_title(title) -> str:
    """Unescaped title; "" when missing or an HTML fragment (a 2018 scraping quirk)."""
    text = html.unescape(str(title)).strip() if title else ""
    return "" if text.startswith("<") else text


def read_metadata(path: pathlib.Path | str) -> tuple[dict[str, str], dict[str, list[list[str]]]]:
    """(titles, category paths) per asin from a 2014 or 2018 metadata file."""
    path = pathlib.Path(path)
    titles: dict[str, str] = {}
    paths: dict[str, list[list[str]]] = {}
    n_repeated = 0
    for number, record in iter_records(path):
        asin = str(_field(record, "asin", path, number))
        if asin in paths:
            n_repeated += 1
            continue
        titles[asin] = _clean_title(record.get("title"))
        if "category" in record:
            path_list = [_clean_path(record["category"], path, number, "category")]
        elif "categories" in record:
            groups = record["categories"]
            if not isinstance(groups, (list, tuple)):
                raise DataError(f"{path}: line {number}: field 'categories': expected a list of lists")
            path_list = [_clean_path(group, path, number, "categories") for group in groups]
        else:
            path_list = []
        paths[asin] = [p for p in path_list if p]
    if n_repeated:
        report(f"{path}: dropped {n_repeated:,} metadata lines repeating an earlier asin (kept the first)")
    return titles, paths


def _with_metadata(dataset: Dataset, meta_path: Optional[pathlib.Path | str]) -> Dataset:
    if meta_path is None:
        return dataset
    titles, paths = read_metadata(meta_path)
    features = name_path_features(dataset.item_ids, paths, hierarchical=True)
    return dataclasses.replace(
        dataset,
        item_titles=align_titles(dataset.item_ids, titles),
        item_features=features,
        source=f"{dataset.source}, {meta_path}",
    )


def _name(path: pathlib.Path) -> str:
    name = path.name
    for suffix in (".gz", ".json", ".csv"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def load_amazon_reviews(path: pathlib.Path | str, meta_path: Optional[pathlib.Path | str] = None) -> Dataset:
    """Amazon reviews (2014 or 2018 JSON lines), with titles/category paths from ``meta_path``."""
    path = pathlib.Path(path)
    raw = read_reviews(path)
    dataset = build_dataset(raw, name=_name(path), sources=[str(path)], rating_scale=RATING_SCALE,
                            rating_field="overall", time_field="unixReviewTime")
    return _with_metadata(dataset, meta_path)


def load_amazon_ratings_csv(path: pathlib.Path | str, meta_path: Optional[pathlib.Path | str] = None) -> Dataset:
    """Amazon 2018 ratings-only CSV (no header; ``item,user,rating,timestamp``, item first)."""
    path = pathlib.Path(path)
    fields = [("item", "str"), ("user", "str"), ("rating", "float"), ("timestamp", "int")]
    raw = read_delimited(read_bytes(path), str(path), fields, sep=",", quoted=True)
    raw = raw.rename(columns={"timestamp": "time"})
    dataset = build_dataset(raw, name=_name(path), sources=[str(path)], rating_scale=RATING_SCALE,
                            time_field="timestamp")
    return _with_metadata(dataset, meta_path)


def find_amazon_metadata(path: pathlib.Path | str) -> Optional[pathlib.Path]:
    """The ``meta_<Category>.json[.gz]`` file beside a reviews/ratings file, if any.

    ``Magazine_Subscriptions_5.json.gz`` / ``Magazine_Subscriptions.csv`` /
    ``reviews_Clothing_Shoes_and_Jewelry_5.json.gz`` map to
    ``meta_Magazine_Subscriptions`` / ``meta_Clothing_Shoes_and_Jewelry``.
    """
    path = pathlib.Path(path)
    category = _name(path)
    category = category[: -len("_5")] if category.endswith("_5") else category
    category = category[len("reviews_"):] if category.startswith("reviews_") else category
    for suffix in (".json.gz", ".json", ".gz"):
        candidate = path.parent / f"meta_{category}{suffix}"
        if candidate.exists():
            return candidate
    return None
