"""Dataset loaders: one per source format, each returning a :class:`Dataset`.

Shared rules (ids from sorted original ids, duplicates -> keep the latest,
ratings sorted by time, DataError naming file/line/field) are documented in
:mod:`iarn_jax.data.loaders._build`.

=================  ==========================================  ===========================
format (flag)      loader                                      source
=================  ==========================================  ===========================
ml100k             load_movielens_100k(path)                   MovieLens 100K folder
ml-dat             load_movielens_dat(path)                    MovieLens 1M / 10M folder
ml-csv             load_movielens_csv(path)                    MovieLens latest/20M/25M/32M
clothing           load_clothing(path)                         the paper's iarn-clothing/
amazon-json        load_amazon_reviews(path, meta_path)        Amazon 2014/2018 reviews
amazon-csv         load_amazon_ratings_csv(path, meta_path)    Amazon 2018 ratings CSV
netflix            load_netflix(paths, titles_path)            Netflix Prize official files
netflix-sample     load_netflix_sample_csv(path, titles_path)  Netflix 10k sample CSV
csv / parquet      load_table(path, columns, ...)              any ratings table
=================  ==========================================  ===========================
"""
from iarn_jax.data.loaders._io import parse_time
from iarn_jax.data.loaders.amazon import (
    find_amazon_metadata,
    load_amazon_ratings_csv,
    load_amazon_reviews,
    read_metadata as read_amazon_metadata,
    read_reviews as read_amazon_reviews,
)
from iarn_jax.data.loaders.clothing import load_clothing, split_category_paths, top_level_categories
from iarn_jax.data.loaders.dispatch import FORMATS, load_by_format, load_data_flag, parse_data_flag
from iarn_jax.data.loaders.movielens import load_movielens_100k, load_movielens_csv, load_movielens_dat
from iarn_jax.data.loaders.netflix import load_netflix, load_netflix_sample_csv, read_netflix_titles
from iarn_jax.data.loaders.table import load_table

__all__ = [
    "FORMATS",
    "find_amazon_metadata",
    "load_amazon_ratings_csv",
    "load_amazon_reviews",
    "load_by_format",
    "load_clothing",
    "load_data_flag",
    "load_movielens_100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "load_netflix",
    "load_netflix_sample_csv",
    "load_table",
    "parse_data_flag",
    "parse_time",
    "read_amazon_metadata",
    "read_amazon_reviews",
    "read_netflix_titles",
    "split_category_paths",
    "top_level_categories",
]
