"""MovieLens loaders: 100K (``u.data``), 1M/10M (``.dat``) and the CSV releases.

Genres are flat features: each genre of a movie is one path of length 1.
"""
from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
import pandas as pd

from iarn_jax.data.loaders._build import align_titles, build_dataset, name_path_features
from iarn_jax.data.loaders._io import (
    decode,
    decode_utf8_or_latin1,
    read_bytes,
    read_delimited,
    split_lines,
    strip_trailing_newlines,
)
from iarn_jax.data.types import DataError, Dataset, ItemFeatures

# Genre order of ml-100k's u.genre (used when u.genre is absent).
ML100K_GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery",
    "Romance", "Sci-Fi", "Thriller", "War", "Western",
)
NO_GENRES = "(no genres listed)"


def _resolve(path: pathlib.Path | str, default_file: str) -> tuple[pathlib.Path, pathlib.Path]:
    """(folder, ratings file) for a path that is either the folder or the ratings file."""
    path = pathlib.Path(path)
    if path.is_dir():
        return path, path / default_file
    if not path.exists():
        raise DataError(f"{path}: file not found")
    return path.absolute().parent, path


# --------------------------------------------------------------------------- 100K


def read_ml100k_genres(path: pathlib.Path) -> tuple[str, ...]:
    """Genre names of ``u.genre`` (``name|index`` lines), in index order."""
    text = decode(strip_trailing_newlines(read_bytes(path)), str(path), "latin-1")
    genres: dict[int, str] = {}
    for number, line in enumerate(split_lines(text), start=1):
        if not line.strip():
            continue
        name, sep, index = line.rpartition("|")
        if not sep or not index.strip().isdigit():
            raise DataError(f"{path}: line {number}: field 'genre index': expected 'name|index', got {line!r}")
        genres[int(index)] = name
    if sorted(genres) != list(range(len(genres))):
        raise DataError(f"{path}: line 1: field 'genre index': indices are not 0..{len(genres) - 1}")
    return tuple(genres[k] for k in range(len(genres)))


def read_ml100k_items(path: pathlib.Path, genres: tuple[str, ...]) -> pd.DataFrame:
    """``u.item`` as a DataFrame: movie id, title and one 0/1 column per genre."""
    fields = [("movie id", "int"), ("title", "text"), ("release date", "text"),
              ("video release date", "text"), ("IMDb URL", "text")]
    fields += [(genre, "int") for genre in genres]
    items = read_delimited(read_bytes(path), str(path), fields, sep="|", encoding="latin-1")
    flags = items[list(genres)].to_numpy()
    bad = (flags != 0) & (flags != 1)
    if bad.any():
        row, col = map(int, np.argwhere(bad)[0])
        raise DataError(f"{path}: line {int(items['_line'].iloc[row])}: field '{genres[col]}': "
                        f"genre flag must be 0 or 1, got {flags[row, col]}")
    return items



def _ratings_dataset(folder: pathlib.Path, ratings_path: pathlib.Path, columns: tuple[str, str, str, str],
                     rating_scale: tuple[float, float], **read_options) -> Dataset:
    """A ratings file with the source's (user, item, rating, time) column names -> Dataset (errors name the
    file, line and the source's field)."""
    user, item, rating, time = columns
    fields = [(user, "int"), (item, "int"), (rating, "float"), (time, "int")]
    raw = read_delimited(read_bytes(ratings_path), str(ratings_path), fields, **read_options)
    raw = raw.rename(columns={user: "user", item: "item", rating: "rating", time: "time"})
    return build_dataset(raw, name=folder.absolute().name, sources=[str(ratings_path)], rating_scale=rating_scale,
                         rating_field=rating, time_field=time)

def load_movielens_100k(path: pathlib.Path | str) -> Dataset:
    """MovieLens 100K from its folder (or its ``u.data`` / ``uN.base`` file).

    Ratings: tab-separated ``user, item, rating, timestamp`` (1-5, unix
    seconds). Titles and the 19 genre flags come from ``u.item`` (Latin-1) with
    genre names from ``u.genre``, when those files sit beside the ratings file.
    """
    folder, ratings_path = _resolve(path, "u.data")
    dataset = _ratings_dataset(folder, ratings_path, ("user id", "item id", "rating", "timestamp"), (1.0, 5.0),
                               sep="\t")
    item_file = folder / "u.item"
    if not item_file.exists():
        return dataset
    genre_file = folder / "u.genre"
    genres = read_ml100k_genres(genre_file) if genre_file.exists() else ML100K_GENRES
    items = read_ml100k_items(item_file, genres).set_index("movie id")
    titles = items["title"]
    flags = items[list(genres)]
    rows = flags.reindex(pd.Index(dataset.item_ids)).fillna(0).to_numpy(dtype=np.int64)
    paths = [tuple((int(g),) for g in np.flatnonzero(row)) for row in rows]
    features = ItemFeatures(feature_names=np.asarray(genres, dtype=object), paths=paths, hierarchical=False)
    return dataclasses.replace(dataset, item_titles=align_titles(dataset.item_ids, titles), item_features=features)


# --------------------------------------------------------------------------- 1M / 10M


def _dat_to_tab(data: bytes, path: str) -> bytes:
    """``a::b::c`` lines as tab-separated bytes (the numeric ratings.dat has no tabs)."""
    if b"\t" in data:
        line = data.count(b"\n", 0, data.index(b"\t")) + 1
        raise DataError(f"{path}: line {line}: field 'UserID': unexpected tab character in a '::' file")
    return data.replace(b"::", b"\t")


def read_movies_dat(path: pathlib.Path) -> pd.DataFrame:
    """``movies.dat`` (``MovieID::Title::Genres``; UTF-8 or Latin-1) as movie, title, genres."""
    text = decode_utf8_or_latin1(strip_trailing_newlines(read_bytes(path)))
    rows = []
    for number, line in enumerate(split_lines(text), start=1):
        movie, sep, rest = line.partition("::")
        title, sep2, genres = rest.rpartition("::")
        if not sep or not sep2:
            raise DataError(f"{path}: line {number}: field 'Genres': expected 'MovieID::Title::Genres'")
        if not movie.strip().isdigit():
            raise DataError(f"{path}: line {number}: field 'MovieID': not an integer: {movie!r}")
        rows.append((int(movie), title, genres))
    return pd.DataFrame(rows, columns=["movie", "title", "genres"])


def _genre_paths(movies: pd.DataFrame) -> dict[int, list[list[str]]]:
    """movie -> one length-1 path per genre (``|``-separated; none for '(no genres listed)')."""
    result: dict[int, list[list[str]]] = {}
    for movie, genres in zip(movies["movie"].tolist(), movies["genres"].tolist()):
        names = [g.strip() for g in str(genres).split("|") if g.strip() and g.strip() != NO_GENRES]
        result[movie] = [[g] for g in names]
    return result


def _with_movies(dataset: Dataset, movies: pd.DataFrame) -> Dataset:
    titles = pd.Series(movies["title"].to_numpy(dtype=object), index=movies["movie"].to_numpy())
    titles = titles[~titles.index.duplicated(keep="first")]
    features = name_path_features(dataset.item_ids, _genre_paths(movies), hierarchical=False)
    return dataclasses.replace(dataset, item_titles=align_titles(dataset.item_ids, titles), item_features=features)


def load_movielens_dat(path: pathlib.Path | str) -> Dataset:
    """MovieLens 1M / 10M from its folder (or its ``ratings.dat``).

    ``ratings.dat``: ``UserID::MovieID::Rating::Timestamp``. The rating scale is
    (0.5, 5) when any rating is fractional or below 1 (10M uses half stars),
    else (1, 5) (1M). Titles and genres (sorted names = feature ids) come from
    ``movies.dat`` beside it, decoded as UTF-8 or else Latin-1 (1M).
    """
    folder, ratings_path = _resolve(path, "ratings.dat")
    fields = [("UserID", "int"), ("MovieID", "int"), ("Rating", "float"), ("Timestamp", "int")]
    data = _dat_to_tab(read_bytes(ratings_path), str(ratings_path))
    raw = read_delimited(data, str(ratings_path), fields, sep="\t")
    raw = raw.rename(columns={"UserID": "user", "MovieID": "item", "Rating": "rating", "Timestamp": "time"})
    ratings = raw["rating"].to_numpy()
    half_stars = bool(((ratings < 1) | (ratings != np.round(ratings))).any())
    scale = (0.5, 5.0) if half_stars else (1.0, 5.0)
    dataset = build_dataset(raw, name=folder.absolute().name, sources=[str(ratings_path)], rating_scale=scale,
                            rating_field="Rating", time_field="Timestamp")
    movies_path = folder / "movies.dat"
    return _with_movies(dataset, read_movies_dat(movies_path)) if movies_path.exists() else dataset


# --------------------------------------------------------------------------- CSV releases


def load_movielens_csv(path: pathlib.Path | str) -> Dataset:
    """MovieLens latest(-small) / 20M / 25M / 32M from its folder (or ``ratings.csv``).

    ``ratings.csv``: header ``userId,movieId,rating,timestamp`` (0.5-5).
    ``movies.csv``: ``movieId,title,genres`` with quoted titles; genre names
    sorted = feature ids; ``(no genres listed)`` gives no features.
    """
    folder, ratings_path = _resolve(path, "ratings.csv")
    dataset = _ratings_dataset(folder, ratings_path, ("userId", "movieId", "rating", "timestamp"), (0.5, 5.0),
                               header=True)
    movies_path = folder / "movies.csv"
    if not movies_path.exists():
        return dataset
    movie_fields = [("movieId", "int"), ("title", "text"), ("genres", "text")]
    movies = read_delimited(read_bytes(movies_path), str(movies_path), movie_fields, header=True, quoted=True)
    movies = movies.rename(columns={"movieId": "movie"}).fillna({"title": "", "genres": ""})
    return _with_movies(dataset, movies)
