"""Tests for iarn_jax.data.loaders: real shared datasets, format fixtures, bad input."""
from __future__ import annotations

import collections
import gzip
import json
import time

import numpy as np
import pandas as pd
import pytest
from conftest import require_data

from iarn_jax.data.loaders import (
    FORMATS,
    load_amazon_ratings_csv,
    load_amazon_reviews,
    load_by_format,
    load_clothing,
    load_data_flag,
    load_movielens_100k,
    load_movielens_csv,
    load_movielens_dat,
    load_netflix,
    load_netflix_sample_csv,
    load_table,
    parse_data_flag,
    parse_time,
    read_amazon_metadata,
    read_amazon_reviews,
    read_netflix_titles,
    split_category_paths,
)
from iarn_jax.data.types import RATING_COLUMNS, DataError, Dataset

MAGAZINE = "amazon/magazine_subscriptions_2018/"
GIFT = "amazon/gift_cards_2018/"


def check_contract(dataset: Dataset) -> None:
    """Invariants every loader promises (types.py + loaders/_build.py)."""
    ratings = dataset.ratings
    assert list(ratings.columns[:4]) == list(RATING_COLUMNS)
    assert ratings["user"].dtype == np.int64 and ratings["item"].dtype == np.int64
    assert ratings["rating"].dtype == np.float32 and ratings["time"].dtype == np.int64
    assert ratings["user"].min() >= 0 and ratings["user"].max() < dataset.n_users
    assert ratings["item"].min() >= 0 and ratings["item"].max() < dataset.n_items
    assert (np.diff(ratings["time"].to_numpy()) >= 0).all(), "ratings must be sorted by time"
    assert not ratings.duplicated(["user", "item"]).any()
    low, high = dataset.rating_scale
    assert ratings["rating"].between(low, high).all()
    assert list(ratings.index) == list(range(len(ratings)))
    if dataset.item_titles is not None:
        assert len(dataset.item_titles) == dataset.n_items
    if dataset.item_features is not None:
        features = dataset.item_features
        assert len(features.paths) == dataset.n_items
        used = [f for paths in features.paths for path in paths for f in path]
        assert all(0 <= f < features.n_features for f in used)


def raw_count(dataset: Dataset) -> int:
    return len(dataset.ratings) + dataset.ratings.attrs["duplicates_dropped"]


# --------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def ml100k():
    return load_movielens_100k(require_data("movielens/ml-100k"))


def test_ml100k_counts_titles_and_genres(ml100k):
    check_contract(ml100k)
    assert (len(ml100k.ratings), ml100k.n_users, ml100k.n_items) == (100_000, 943, 1_682)
    assert ml100k.rating_scale == (1.0, 5.0)
    assert ml100k.ratings.attrs["duplicates_dropped"] == 0
    assert list(ml100k.user_ids[:3]) == [1, 2, 3] and list(ml100k.item_ids) == list(range(1, 1683))
    assert ml100k.ratings["time"].min() == parse_time("1997-09-20 03:05:10")
    assert ml100k.ratings["time"].max() == parse_time("1998-04-22 23:10:38")
    features = ml100k.item_features
    assert features.n_features == 19 and not features.hierarchical
    assert features.feature_names[0] == "unknown" and features.feature_names[-1] == "Western"
    assert ml100k.item_titles[0] == "Toy Story (1995)"
    assert [features.feature_names[f] for f in features.flat_features(0)] == ["Animation", "Children's", "Comedy"]
    assert features.paths[0] == ((3,), (4,), (5,))  # one length-1 path per genre


def test_ml100k_accepts_the_ratings_file(ml100k):
    same = load_movielens_100k(require_data("movielens/ml-100k/u.data"))
    pd.testing.assert_frame_equal(same.ratings, ml100k.ratings)


def test_ml_latest_small_counts_and_movies():
    dataset = load_movielens_csv(require_data("movielens/ml-latest-small"))
    check_contract(dataset)
    assert (len(dataset.ratings), dataset.n_users, dataset.n_items) == (100_836, 610, 9_724)
    assert dataset.rating_scale == (0.5, 5.0)
    assert sorted(dataset.ratings["rating"].unique()) == [x / 2 for x in range(1, 11)]
    assert dataset.ratings["time"].min() == parse_time("1996-03-29 18:36:55")
    assert dataset.ratings["time"].max() == parse_time("2018-09-24 14:27:30")
    item = {movie: k for k, movie in enumerate(dataset.item_ids.tolist())}
    assert dataset.item_titles[item[11]] == "American President, The (1995)"  # quoted, with a comma
    names = dataset.item_features.feature_names
    assert "(no genres listed)" not in set(names) and len(names) == 19
    assert dataset.item_features.paths[item[122888]] == ()  # "(no genres listed)"


@pytest.fixture(scope="module")
def magazine_csv():
    root = require_data(MAGAZINE)
    return load_amazon_ratings_csv(root / "Magazine_Subscriptions.csv", root / "meta_Magazine_Subscriptions.json.gz")


def test_magazine_ratings_csv_counts_and_duplicates(magazine_csv):
    check_contract(magazine_csv)
    assert raw_count(magazine_csv) == 89_689
    assert magazine_csv.ratings.attrs["duplicates_dropped"] == 1_371
    assert (magazine_csv.n_users, magazine_csv.n_items) == (72_098, 2_428)
    assert magazine_csv.ratings["time"].min() == parse_time("2001-10-26")
    assert magazine_csv.ratings["time"].max() == parse_time("2018-09-19")
    assert (magazine_csv.ratings["time"] % 86_400 == 0).all()  # day resolution


def test_magazine_duplicate_rule_matches_an_independent_computation(magazine_csv):
    path = require_data(MAGAZINE + "Magazine_Subscriptions.csv")
    raw = pd.read_csv(path, header=None, names=["item", "user", "rating", "time"])
    raw["line"] = np.arange(len(raw))
    expected = raw.sort_values(["time", "line"]).groupby(["user", "item"]).tail(1)
    got = magazine_csv.ratings.assign(
        user=magazine_csv.user_ids[magazine_csv.ratings["user"]],
        item=magazine_csv.item_ids[magazine_csv.ratings["item"]],
    )
    merged = expected.merge(got, on=["user", "item"], suffixes=("_expected", "_got"))
    assert len(merged) == len(got) == 89_689 - 1_371
    assert (merged["rating_expected"] == merged["rating_got"]).all()
    assert (merged["time_expected"] == merged["time_got"]).all()


def test_magazine_metadata_paths(magazine_csv):
    titles, paths = read_amazon_metadata(require_data(MAGAZINE + "meta_Magazine_Subscriptions.json.gz"))
    assert len(paths) == 2_320
    depths = collections.Counter(len(p[0]) if p else 0 for p in paths.values())
    assert depths == {0: 442, 2: 323, 3: 692, 4: 515, 5: 348}
    names = {level for p in paths.values() for path in p for level in path}
    assert not any("&amp;" in name for name in names) and "Professional & Trade" in names
    assert all(path[0] == "Magazine Subscriptions" for p in paths.values() for path in p)  # root kept
    features = magazine_csv.item_features
    assert features.hierarchical and set(features.feature_names) == names
    raw = pd.read_csv(require_data(MAGAZINE + "Magazine_Subscriptions.csv"), header=None, usecols=[0])[0]
    assert raw.isin(paths).mean() == pytest.approx(0.950, abs=0.0005)  # README coverage, raw rows
    assert raw.map(lambda asin: bool(paths.get(asin))).mean() == pytest.approx(0.885, abs=0.0005)
    with_path = {asin: bool(p) for asin, p in zip(magazine_csv.item_ids, features.paths)}
    assert with_path == {asin: bool(paths.get(asin)) for asin in magazine_csv.item_ids}


def test_magazine_five_core_counts_and_coverage():
    root = require_data(MAGAZINE)
    dataset = load_amazon_reviews(root / "Magazine_Subscriptions_5.json.gz", root / "meta_Magazine_Subscriptions.json.gz")
    check_contract(dataset)
    assert raw_count(dataset) == 2_375 and (dataset.n_users, dataset.n_items) == (348, 157)
    assert dataset.ratings["time"].min() == parse_time("2001-11-12")
    assert dataset.ratings["time"].max() == parse_time("2018-05-20")
    reviews = read_amazon_reviews(root / "Magazine_Subscriptions_5.json.gz")
    _, paths = read_amazon_metadata(root / "meta_Magazine_Subscriptions.json.gz")
    assert reviews["item"].isin(paths).mean() == pytest.approx(0.973, abs=0.0005)
    assert reviews["item"].map(lambda asin: bool(paths.get(asin))).mean() == pytest.approx(0.932, abs=0.0005)


def test_gift_cards_five_core():
    root = require_data(GIFT)
    dataset = load_amazon_reviews(root / "Gift_Cards_5.json.gz", root / "meta_Gift_Cards.json.gz")
    check_contract(dataset)
    assert raw_count(dataset) == 2_972 and (dataset.n_users, dataset.n_items) == (458, 148)
    titles, paths = read_amazon_metadata(root / "meta_Gift_Cards.json.gz")
    assert len(paths) == 1_547
    assert set(dataset.item_ids.tolist()) <= set(paths)
    assert all(title != "" for title in dataset.item_titles)


def test_netflix_sample_and_titles():
    root = require_data("netflix")
    dataset = load_netflix_sample_csv(root / "netflix-user-ratings-10k.csv", root / "movie_titles.txt")
    check_contract(dataset)
    assert (len(dataset.ratings), dataset.n_users, dataset.n_items) == (10_000, 9_687, 3_451)
    assert (dataset.item_ids.min(), dataset.item_ids.max()) == (8, 17_764)
    assert dataset.ratings["time"].min() == parse_time("2000-01-07")
    assert dataset.ratings["time"].max() == parse_time("2005-12-31")
    assert dataset.item_titles[0] == "What the #$*! Do We Know!?"  # movie 8
    titles = read_netflix_titles(root / "movie_titles.txt")
    assert len(titles) == 17_770 and titles["movie"].tolist() == list(range(1, 17_771))
    assert titles.loc[titles["movie"] == 72, "title"].item() == "At Home Among Strangers, A Stranger Among His Own"
    assert titles["year"].isna().sum() > 0  # NULL years


@pytest.fixture(scope="module")
def clothing():
    return load_clothing(require_data("iarn-clothing"))


def test_clothing_split_order_and_ids(clothing):
    check_contract(clothing)
    ratings = clothing.ratings
    assert ratings["split"].value_counts().to_dict() == {"train": 164_434, "test": 20_742}
    assert (clothing.n_users, clothing.n_items) == (22_018, 50_044)
    assert clothing.time_unit == "order"
    assert list(clothing.user_ids) == list(range(22_018))
    train, test = ratings[ratings["split"] == "train"], ratings[ratings["split"] == "test"]
    assert train["time"].max() < test["time"].min()
    assert sorted(ratings["time"]) == list(range(185_176))
    first = pd.read_csv(require_data("iarn-clothing/train.csv"), nrows=1)
    assert tuple(train.iloc[0][["user", "item", "rating"]]) == tuple(first.iloc[0][["user", "item", "rating"]])
    assert (train["rating"] == 5).sum() == 99_138 and (test["rating"] == 5).sum() == 12_351


def test_clothing_category_paths_reproduce_the_readme(clothing):
    features = clothing.item_features
    assert features.hierarchical and features.n_features == 835 and features.feature_names[834] == "834"
    assert collections.Counter(len(paths) for paths in features.paths) == {1: 48_473, 2: 1_571}
    lengths = collections.Counter(len(path) for paths in features.paths for path in paths)
    assert lengths == {1: 25_122, 2: 5_978, 3: 7_687, 4: 9_849, 5: 1_415, 6: 1_564}
    per_item = collections.Counter(sum(len(path) for path in paths) for paths in features.paths)
    assert per_item == {1: 24_066, 2: 5_574, 3: 6_559, 4: 10_158, 5: 1_686, 6: 1_966, 7: 35}
    table = pd.read_csv(require_data("iarn-clothing/item_category.csv"))
    first_item = table[table["item"] == 0].sort_values("position")["category"].tolist()
    assert [c for path in features.paths[0] for c in path] == first_item  # file order kept


def test_split_category_paths_by_hand():
    assert split_category_paths([0, 13, 5, 22, 13], {0, 22}) == ((0, 13, 5), (22, 13))
    assert split_category_paths([7, 3], {0}) == ((7, 3),)
    assert split_category_paths([], {0}) == ()


# --------------------------------------------------------------------------- format fixtures


def write(path, text: str, encoding: str = "utf-8"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text.encode(encoding))
    return path


def test_ml_1m_dat_fixture(tmp_path, capsys):
    folder = tmp_path / "ml-1m"
    write(folder / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n"
                                  "1::661::4::978302109\n")
    write(folder / "movies.dat", "661::James and the Giant Peach (1996)::Animation|Children's|Musical\n"
                                 "1193::Vie est belle, La (Life is Rosey) (1987)::Comedy|Drama\n"
                                 "2000::Pokémon: The First Movie (1998)::Animation\n", "latin-1")
    dataset = load_movielens_dat(folder)
    check_contract(dataset)
    assert dataset.rating_scale == (1.0, 5.0)
    assert list(dataset.user_ids) == [1, 2] and list(dataset.item_ids) == [661, 1193]
    assert dataset.ratings.attrs["duplicates_dropped"] == 1
    assert "dropped 1 duplicate" in capsys.readouterr().err
    kept = dataset.ratings[(dataset.ratings["user"] == 0) & (dataset.ratings["item"] == 0)]
    assert kept["rating"].tolist() == [4.0]  # same time: the later line wins
    assert list(dataset.item_titles) == ["James and the Giant Peach (1996)", "Vie est belle, La (Life is Rosey) (1987)"]
    names = list(dataset.item_features.feature_names)
    assert names == ["Animation", "Children's", "Comedy", "Drama", "Musical"]
    assert dataset.item_features.paths[1] == ((2,), (3,))
    assert load_movielens_dat(folder / "ratings.dat").ratings.equals(dataset.ratings)


def test_ml_10m_dat_fixture_half_stars_and_utf8(tmp_path):
    folder = tmp_path / "ml-10M100K"
    write(folder / "ratings.dat", "1::122::5::838985046\n1::185::4.5::838983525\n2::122::0.5::868245777\n")
    write(folder / "movies.dat", "122::Boomerang (1992)::Comedy|Romance\n185::Net, The (1995)::Action|Crime|Thriller\n"
                                 "186::Amélie (2001)::Comedy\n")
    dataset = load_movielens_dat(folder)
    check_contract(dataset)
    assert dataset.rating_scale == (0.5, 5.0)
    assert sorted(dataset.ratings["rating"]) == [0.5, 4.5, 5.0]
    assert list(dataset.item_titles) == ["Boomerang (1992)", "Net, The (1995)"]


def test_ml_csv_fixture(tmp_path):
    folder = tmp_path / "ml-25m"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\r\n5,10,3.5,1000\r\n5,20,4.0,900\r\n7,10,1.0,1100\r\n")
    write(folder / "movies.csv", 'movieId,title,genres\n10,"Cry, the Beloved Country (1995)",Drama\n'
                                 "20,Ben-hur (2016),(no genres listed)\n")
    dataset = load_movielens_csv(folder)
    check_contract(dataset)
    assert dataset.ratings["time"].tolist() == [900, 1000, 1100]
    assert dataset.ratings["item"].tolist() == [1, 0, 0]
    assert list(dataset.item_titles) == ["Cry, the Beloved Country (1995)", "Ben-hur (2016)"]
    assert dataset.item_features.paths == [((0,),), ()]


NETFLIX_1 = "1:\n1488844,3,2005-09-06\n822109,5,2005-05-13\n2:\n2059652,4,2005-09-05\n"
NETFLIX_2 = "3:\n1488844,2,2004-01-31\n2:\n1488844,1,2003-12-31\n"
NETFLIX_TITLES = "1,2003,Dinosaur Planet\n2,NULL,Isle of Man TT 2004 Review\n3,1997,Character, The\n"


def test_netflix_combined_data_fixture(tmp_path):
    write(tmp_path / "combined_data_1.txt", NETFLIX_1)
    write(tmp_path / "combined_data_2.txt", NETFLIX_2)
    write(tmp_path / "movie_titles.txt", NETFLIX_TITLES, "latin-1")
    dataset = load_netflix(tmp_path, tmp_path / "movie_titles.txt")
    check_contract(dataset)
    assert len(dataset.ratings) == 5 and dataset.rating_scale == (1.0, 5.0)
    assert list(dataset.user_ids) == [822109, 1488844, 2059652] and list(dataset.item_ids) == [1, 2, 3]
    first = dataset.ratings.iloc[0]  # 2003-12-31: user 1488844, movie 2 (second file)
    assert (first["user"], first["item"], first["rating"], first["time"]) == (1, 1, 1.0, parse_time("2003-12-31"))
    assert list(dataset.item_titles) == ["Dinosaur Planet", "Isle of Man TT 2004 Review", "Character, The"]
    from_list = load_netflix([tmp_path / "combined_data_1.txt", tmp_path / "combined_data_2.txt"])
    pd.testing.assert_frame_equal(from_list.ratings, dataset.ratings)
    assert len(load_netflix(tmp_path / "combined_data_1.txt").ratings) == 3
    titles = read_netflix_titles(tmp_path / "movie_titles.txt")
    assert titles["year"].isna().tolist() == [False, True, False]


def test_netflix_training_set_folder(tmp_path):
    write(tmp_path / "training_set" / "mv_0000001.txt", "1:\n10,3,2005-09-06\n")
    write(tmp_path / "training_set" / "mv_0000002.txt", "2:\n10,4,2005-09-07\n11,5,2005-09-07\n")
    dataset = load_netflix(tmp_path)
    assert len(dataset.ratings) == 3 and list(dataset.item_ids) == [1, 2]


AMAZON_2014_REVIEWS = [
    {"reviewerID": "A2", "asin": "B01", "overall": 5.0, "unixReviewTime": 1400000000, "reviewText": "ok"},
    {"reviewerID": "A1", "asin": "B02", "overall": 3.0, "unixReviewTime": 1300000000},
    {"reviewerID": "A1", "asin": "B01", "overall": 2.0, "unixReviewTime": 1350000000},
]
AMAZON_2014_META = (
    "{'asin': 'B01', 'title': 'Tee &amp; Shirt', 'categories': [['Clothing, Shoes & Jewelry', 'Women', "
    "'Clothing'], ['Clothing, Shoes & Jewelry', 'Novelty &amp; More']]}\n"
    "{'asin': 'B02', 'categories': [['Clothing, Shoes & Jewelry', 'Men']], 'price': 3.5}\n"
    "{'asin': 'B09', 'title': \"Dad's hat\", 'categories': [['Clothing, Shoes & Jewelry', 'Men', 'Hats']]}\n"
)


def test_amazon_2014_reviews_and_python_literal_metadata(tmp_path):
    reviews = tmp_path / "reviews_Clothing_Shoes_and_Jewelry_5.json.gz"
    reviews.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in AMAZON_2014_REVIEWS).encode()))
    meta = write(tmp_path / "meta_Clothing_Shoes_and_Jewelry.json", AMAZON_2014_META)  # plain, not gzip
    dataset = load_amazon_reviews(reviews, meta)
    check_contract(dataset)
    assert list(dataset.user_ids) == ["A1", "A2"] and list(dataset.item_ids) == ["B01", "B02"]
    assert dataset.ratings["time"].tolist() == [1300000000, 1350000000, 1400000000]
    assert list(dataset.item_titles) == ["Tee & Shirt", ""]
    features = dataset.item_features
    names = list(features.feature_names)
    assert names == sorted(["Clothing, Shoes & Jewelry", "Women", "Clothing", "Novelty & More", "Men", "Hats"])
    as_names = [[[names[f] for f in path] for path in paths] for paths in features.paths]
    assert as_names[0] == [["Clothing, Shoes & Jewelry", "Women", "Clothing"], ["Clothing, Shoes & Jewelry", "Novelty & More"]]
    assert as_names[1] == [["Clothing, Shoes & Jewelry", "Men"]]
    via_flag = load_data_flag(f"amazon-json:{reviews}")  # finds meta_*.json beside it
    assert list(via_flag.item_titles) == ["Tee & Shirt", ""]


def test_amazon_2018_ratings_csv_fixture_item_first(tmp_path, capsys):
    path = write(tmp_path / "Toys.csv", "I1,U1,5.0,100\nI1,U2,4.0,200\nI2,U1,3.0,300\nI1,U1,1.0,50\n")
    dataset = load_amazon_ratings_csv(path)
    assert list(dataset.user_ids) == ["U1", "U2"] and list(dataset.item_ids) == ["I1", "I2"]
    kept = dataset.ratings[(dataset.ratings["user"] == 0) & (dataset.ratings["item"] == 0)]
    assert kept[["rating", "time"]].values.tolist() == [[5.0, 100]]  # latest time wins over the later line
    assert "dropped 1 duplicate" in capsys.readouterr().err


def test_load_table_csv_with_dates_and_string_ids(tmp_path):
    path = write(tmp_path / "events.csv", "who,what,stars,when\nbob,x,4,2020-01-02\nann,y,2,2020-01-01\nann,x,5,2020-01-03\n")
    dataset = load_table(path, {"user": "who", "item": "what", "rating": "stars", "time": "when"},
                         time_format="%Y-%m-%d", rating_scale=(1, 5))
    check_contract(dataset)
    assert list(dataset.user_ids) == ["ann", "bob"]
    assert dataset.ratings["time"].tolist() == [parse_time("2020-01-01"), parse_time("2020-01-02"), parse_time("2020-01-03")]
    assert dataset.rating_scale == (1.0, 5.0)


def test_load_table_parquet_int_ids_datetimes_and_inferred_scale(tmp_path):
    pytest.importorskip("pyarrow")
    path = tmp_path / "events.parquet"
    pd.DataFrame({
        "u": [10, 2, 10], "i": [7, 7, 8], "r": [0.5, 3.0, 2.5],
        "t": pd.to_datetime(["2021-05-01 00:00:10", "2021-05-01 00:00:00", "2021-05-02 00:00:00"], utc=True),
    }).to_parquet(path)
    dataset = load_table(path, {"user": "u", "item": "i", "rating": "r", "time": "t"})
    check_contract(dataset)
    assert list(dataset.user_ids) == [2, 10] and dataset.user_ids.dtype == np.int64
    assert dataset.rating_scale == (0.5, 5.0)  # the first standard scale holding every rating (issue 13)
    assert dataset.ratings["time"].tolist() == [parse_time("2021-05-01"), parse_time("2021-05-01") + 10,
                                                parse_time("2021-05-02")]


def test_load_table_without_time_uses_row_order(tmp_path):
    path = write(tmp_path / "plain.tsv", "user\titem\trating\n3\t1\t2\n1\t1\t4\n")
    dataset = load_table(path, {"user": "user", "item": "item", "rating": "rating"}, sep="\t")
    assert dataset.time_unit == "order" and dataset.ratings["time"].tolist() == [0, 1]
    assert dataset.ratings["user"].tolist() == [1, 0]


def test_load_table_source_columns_may_use_any_name(tmp_path):
    path = write(tmp_path / "odd.csv", "line,file,user,split\n9,8,7.5,6\n")
    dataset = load_table(path, {"user": "line", "item": "file", "rating": "user", "time": "split"})
    assert (dataset.user_ids[0], dataset.item_ids[0], dataset.ratings["rating"][0], dataset.ratings["time"][0]) == (9, 8, 7.5, 6)


def test_dispatcher_formats_and_flags(tmp_path):
    path = write(tmp_path / "r.csv", "user,item,rating,time\n1,2,3,4\n")
    assert len(load_by_format("csv", path).ratings) == 1
    pd.DataFrame({"user": [1], "item": [2], "rating": [3.0], "time": [4]}).to_parquet(tmp_path / "r.parquet")
    assert len(load_by_format("parquet", tmp_path / "r.parquet").ratings) == 1
    assert set(FORMATS) == {"ml100k", "ml-dat", "ml-csv", "clothing", "amazon-json", "amazon-csv",
                            "netflix", "netflix-sample", "csv", "parquet"}
    assert parse_data_flag("ml100k:/data/ml-100k") == ("ml100k", "/data/ml-100k")
    assert parse_data_flag("csv:C:/x.csv") == ("csv", "C:/x.csv")
    for bad in ("ml100k", "nope:/x", "csv:"):
        with pytest.raises(ValueError):
            parse_data_flag(bad)
    with pytest.raises(ValueError, match="unknown data format"):
        load_by_format("xml", path)


def test_dispatcher_on_real_netflix_finds_titles():
    dataset = load_data_flag(f"netflix-sample:{require_data('netflix/netflix-user-ratings-10k.csv')}")
    assert dataset.item_titles[0] == "What the #$*! Do We Know!?"


def test_parse_time():
    assert parse_time("1970-01-02") == 86_400
    assert parse_time("1970-01-01 01:01") == 3_660
    assert parse_time("1970-01-01T00:00:07Z") == 7
    assert parse_time("1234") == 1_234 and parse_time(5) == 5
    with pytest.raises(ValueError):
        parse_time("yesterday")


# --------------------------------------------------------------------------- bad input


def ml100k_folder(tmp_path, data: str):
    return write(tmp_path / "ml-100k" / "u.data", data).parent


BAD_INPUTS = {
    # case: (file name, writer(tmp_path) -> callable loading it, expected fragments)
    "missing field": ("u.data", lambda t: lambda: load_movielens_100k(ml100k_folder(t, "1\t2\t3\t4\n1\t2\t3\n")),
                      ["line 2", "'timestamp'"]),
    "extra field": ("ratings.csv", lambda t: lambda: load_movielens_csv(write(
        t / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,2,3,4\n1,2,3,4,5\n").parent),
        ["line 4", "field 5", "expected 4 fields, found 5"]),
    "missing column": ("ratings.csv", lambda t: lambda: load_movielens_csv(write(
        t / "ml" / "ratings.csv", "userId,movieId,rating\n1,2,3\n").parent), ["line 1", "'timestamp'"]),
    "non-numeric rating": ("ratings.dat", lambda t: lambda: load_movielens_dat(write(
        t / "ml-1m" / "ratings.dat", "1::2::3::4\n1::3::x::4\n").parent), ["line 2", "'Rating'", "'x'"]),
    "rating out of range": ("u.data", lambda t: lambda: load_movielens_100k(ml100k_folder(
        t, "1\t2\t3\t4\n1\t3\t6\t4\n1\t4\t1\t4\n")), ["line 2", "'rating'", "outside the rating scale"]),
    "zero rating in half-star data": ("ratings.csv", lambda t: lambda: load_movielens_csv(write(
        t / "ml" / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,0.0,4\n").parent), ["line 2", "'rating'"]),
    "NaN rating": ("Magazine.csv", lambda t: lambda: load_amazon_ratings_csv(write(
        t / "Magazine.csv", "I,U,5.0,1\nI,V,nan,1\n")), ["line 2", "'rating'", "finite"]),
    "empty rating": ("Magazine.csv", lambda t: lambda: load_amazon_ratings_csv(write(
        t / "Magazine.csv", "I,U,5.0,1\nI,V,,1\nI,W,4,1\n")), ["line 2", "'rating'", "missing"]),
    "bad id": ("u.data", lambda t: lambda: load_movielens_100k(ml100k_folder(t, "1\t2\t3\t4\nu7\t2\t3\t4\n")),
               ["line 2", "'user id'"]),
    "unparseable date": ("sample.csv", lambda t: lambda: load_netflix_sample_csv(write(
        t / "sample.csv", "MovieID,UserID,Rating,Date\n1,2,3,2005-01-01\n1,3,3,2005-13-45\n")),
        ["line 3", "'Date'", "2005-13-45"]),
    "unparseable unix time": ("events.csv", lambda t: lambda: load_table(write(
        t / "events.csv", "u,i,r,t\n1,2,3,100\n1,3,3,soon\n"), {"user": "u", "item": "i", "rating": "r", "time": "t"}),
        ["line 3", "'t'"]),
    "empty file": ("u.data", lambda t: lambda: load_movielens_100k(ml100k_folder(t, "")), ["line 1", "empty file"]),
    "header only": ("sample.csv", lambda t: lambda: load_netflix_sample_csv(write(
        t / "sample.csv", "MovieID,UserID,Rating,Date\n")), ["line 2", "no data rows"]),
    "blank line": ("u.data", lambda t: lambda: load_movielens_100k(ml100k_folder(t, "1\t2\t3\t4\n\n1\t3\t3\t4\n")),
                   ["line 2", "'user id'"]),
    "missing file": ("nothere.csv", lambda t: lambda: load_amazon_ratings_csv(t / "nothere.csv"), ["not found"]),
    "json syntax": ("r.json", lambda t: lambda: load_amazon_reviews(write(
        t / "r.json", json.dumps(AMAZON_2014_REVIEWS[0]) + "\n{oops\n")), ["line 2", "'(record)'"]),
    "json missing field": ("r.json", lambda t: lambda: load_amazon_reviews(write(
        t / "r.json", '{"reviewerID": "A", "asin": "B", "unixReviewTime": 5}\n')), ["line 1", "'overall'"]),
    "json bad time": ("r.json", lambda t: lambda: load_amazon_reviews(write(
        t / "r.json", '{"reviewerID": "A", "asin": "B", "overall": 5, "unixReviewTime": "05 1, 2014"}\n')),
        ["line 1", "'unixReviewTime'"]),
    "netflix rating before movie": ("combined_data_1.txt", lambda t: lambda: load_netflix(write(
        t / "combined_data_1.txt", "10,3,2005-09-06\n")), ["line 1", "'MovieID'"]),
    "netflix bad movie line": ("combined_data_1.txt", lambda t: lambda: load_netflix(write(
        t / "combined_data_1.txt", "1:\n10,3,2005-09-06\nx2:\n")), ["line 3", "'MovieID'"]),
    "netflix bad customer": ("combined_data_1.txt", lambda t: lambda: load_netflix(write(
        t / "combined_data_1.txt", "1:\n10,3,2005-09-06\nab,3,2005-09-06\n")), ["line 3", "'CustomerID'"]),
    "netflix bad date": ("combined_data_1.txt", lambda t: lambda: load_netflix(write(
        t / "combined_data_1.txt", "1:\n10,3,2005-09-06\n11,3,06/09/2005\n")), ["line 3", "'Date'"]),
    "netflix extra field": ("combined_data_1.txt", lambda t: lambda: load_netflix(write(
        t / "combined_data_1.txt", "1:\n10,3,2005-09-06\n11,3,2005-09-06,x\n")), ["line 3", "field 4", "found 4"]),
    "netflix titles": ("movie_titles.txt", lambda t: lambda: read_netflix_titles(write(
        t / "movie_titles.txt", "1,2003,A\n2,20x4,B\n")), ["line 2", "'YearOfRelease'"]),
    "table missing column": ("t.csv", lambda t: lambda: load_table(write(t / "t.csv", "u,i,r\n1,2,3\n"),
                             {"user": "u", "item": "i", "rating": "r", "time": "t"}), ["line 1", "'t'"]),
    "clothing negative id": ("train.csv", lambda t: lambda: load_clothing(_clothing(t, "1,2,5,0\n-1,3,4,1\n")),
                             ["line 3", "'user'"]),
    "clothing rating": ("train.csv", lambda t: lambda: load_clothing(_clothing(t, "1,2,5,0\n1,3,7,1\n")),
                        ["line 3", "'rating'", "rating 7 is outside"]),
}


def _clothing(tmp_path, train_rows: str):
    folder = tmp_path / "iarn-clothing"
    write(folder / "train.csv", "user,item,rating,row\n" + train_rows)
    write(folder / "test.csv", "user,item,rating,row\n1,3,4,0\n")
    return folder


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_names_file_line_and_field(tmp_path, case):
    filename, make, fragments = BAD_INPUTS[case]
    with pytest.raises(DataError) as raised:
        make(tmp_path)()
    message = str(raised.value)
    assert filename in message, message
    for fragment in fragments:
        assert fragment in message, message


def test_bad_parquet_column(tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"user": [1], "item": [2], "rating": [3.0]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet: line 1 \(schema\): missing column 'time'"):
        load_by_format("parquet", tmp_path / "x.parquet")


def test_bad_parquet_rating_names_row(tmp_path):
    pytest.importorskip("pyarrow")
    pd.DataFrame({"user": [1, 2], "item": [2, 2], "rating": [3.0, np.nan], "time": [1, 2]}).to_parquet(tmp_path / "x.parquet")
    with pytest.raises(DataError, match=r"x\.parquet: line 2: field 'rating'"):
        load_by_format("parquet", tmp_path / "x.parquet")


# --------------------------------------------------------------------------- speed


@pytest.mark.slow
def test_two_million_rows_load_in_seconds(tmp_path):
    rng = np.random.default_rng(0)
    n = 2_000_000
    table = pd.DataFrame({"u": rng.integers(1, 100_000, n), "i": rng.integers(1, 20_000, n),
                          "r": rng.integers(1, 6, n), "t": rng.integers(8e8, 9e8, n)})
    table.to_csv(tmp_path / "u.data", sep="\t", header=False, index=False)
    (tmp_path / "ratings.dat").write_bytes((tmp_path / "u.data").read_bytes().replace(b"\t", b"::"))
    n_pairs = len(table.drop_duplicates(["u", "i"]))
    for loader, name in ((load_movielens_100k, "u.data"), (load_movielens_dat, "ratings.dat")):
        start = time.perf_counter()
        dataset = loader(tmp_path / name)
        assert time.perf_counter() - start < 20, loader.__name__
        assert len(dataset.ratings) == n_pairs and raw_count(dataset) == n
