"""Issue 13: every bad input or bad run state is one clear line (exit status 2) or a printed decision.

DATA_CASES: corrupted inputs for every loader format, built in a temporary folder from small
generated files and run through the launchers' error path in-process (``experiments.data_stats``'s
``compute_stats`` and ``experiments.train``'s ``main`` under ``experiments._cli.guarded``).
FLAG_CASES: bad flags of ``experiments.train``. STATE: resume / overwrite / corrupt progress /
non-finite metrics / output paths, on tiny training runs. A few real subprocess runs check exit
status 2 and no traceback; the kill -9 case is ``slow``.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from absl import flags

from conftest import REPO_ROOT
from experiments import _cli

FLAGS = flags.FLAGS
CUT = "2000-07-01"
# (user, item, rating, unix seconds): 6 training rows before CUT, 3 test rows after it.
ROWS = [(1, 1, 4, 946684800), (1, 2, 3, 947684800), (2, 1, 5, 948684800), (2, 2, 2, 949684800),
        (3, 1, 4, 950684800), (3, 3, 3, 951684800), (1, 3, 5, 970000000), (2, 3, 4, 970001000),
        (3, 2, 1, 970002000)]
FIELDS = ("user", "item", "rating", "time")


def _date(t) -> str:
    if isinstance(t, (int, np.integer)):
        return datetime.datetime.fromtimestamp(int(t), tz=datetime.timezone.utc).strftime("%Y-%m-%d")
    return str(t)


def _rows(mut: dict) -> list[list]:
    """ROWS with mutations {(row, field): value} applied."""
    rows = [list(r) for r in ROWS]
    for (row, field), value in mut.items():
        rows[row][FIELDS.index(field)] = value
    return rows


def _lines(rows, fmt: str) -> list[str]:
    return [fmt.format(u=u, i=i, r=r, t=t) for u, i, r, t in rows]


def build(fmt: str, folder: pathlib.Path, mut: dict, extra: dict) -> tuple[str, dict]:
    """Writes one dataset of format ``fmt`` with mutated rows; returns (path for --data, names)."""
    rows = _rows(mut)
    files: dict[str, object] = {}
    if fmt == "ml100k":
        files["u.data"] = "\n".join(_lines(rows, "{u}\t{i}\t{r}\t{t}"))
        files["u.item"] = "\n".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|" + "|".join(["0"] * 18 + ["1"])
                                    for i in (1, 2, 3))
        target = ""
    elif fmt == "ml-dat":
        files["ratings.dat"] = "\n".join(_lines(rows, "{u}::{i}::{r}::{t}"))
        files["movies.dat"] = "1::A (1995)::Comedy\n2::B (1996)::Drama\n3::C (1997)::Action|Drama"
        target = ""
    elif fmt == "ml-csv":
        files["ratings.csv"] = "userId,movieId,rating,timestamp\n" + "\n".join(_lines(rows, "{u},{i},{r},{t}"))
        files["movies.csv"] = 'movieId,title,genres\n1,"A, The (1995)",Comedy\n2,B (1996),Drama\n3,C (1997),Action'
        target = ""
    elif fmt == "clothing":
        table = [[u - 1, i - 1, r, k % 6] for k, (u, i, r, t) in enumerate(ROWS)]  # 0-based ids, row order
        for (row, field), value in mut.items():  # the clothing "time" is its row column
            table[row][FIELDS.index(field)] = value
        train, test = table[:6], table[6:]
        files["train.csv"] = "user,item,rating,row\n" + "\n".join(",".join(map(str, r)) for r in train)
        files["test.csv"] = "user,item,rating,row\n" + "\n".join(",".join(map(str, r)) for r in test)
        files["item_category.csv"] = "item,category,position\n0,0,0\n1,0,0\n1,1,1\n2,0,0"
        target = ""
    elif fmt == "amazon-json":
        files["reviews.json"] = "\n".join(json.dumps({"reviewerID": f"U{u}", "asin": f"I{i}", "overall": r,
                                                      "unixReviewTime": t}) for u, i, r, t in rows)
        target = "reviews.json"
    elif fmt == "amazon-csv":
        files["ratings.csv"] = "\n".join(_lines(rows, "I{i},U{u},{r},{t}"))
        target = "ratings.csv"
    elif fmt == "netflix":
        by_item: dict = {}
        for u, i, r, t in rows:
            by_item.setdefault(i, []).append(f"{u},{r},{_date(t)}")
        files["combined_data_1.txt"] = "\n".join(f"{i}:\n" + "\n".join(v) for i, v in by_item.items())
        files["movie_titles.txt"] = "1,1995,A\n2,1996,B\n3,1997,C"
        target = "combined_data_1.txt"
    elif fmt == "netflix-sample":
        files["sample.csv"] = "MovieID,UserID,Rating,Date\n" + "\n".join(f"{i},{u},{r},{_date(t)}" for u, i, r, t in rows)
        target = "sample.csv"
    elif fmt == "csv":
        files["ratings.csv"] = "user,item,rating,time\n" + "\n".join(_lines(rows, "{u},{i},{r},{t}"))
        target = "ratings.csv"
    elif fmt == "parquet":
        files["ratings.parquet"] = pd.DataFrame(rows, columns=list(FIELDS))
        target = "ratings.parquet"
    else:
        raise AssertionError(fmt)
    files.update(extra)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        if content is None:
            continue
        path = folder / name
        if isinstance(content, pd.DataFrame):
            if pytest.importorskip("pyarrow"):
                content.to_parquet(path)
        elif isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content + "\n", encoding="latin-1")
    for name, content in extra.items():
        if content is None and (folder / name).exists():
            (folder / name).unlink()
    return str(folder / target) if target else str(folder), files


def case(id, fmt, mut=None, expect=(), *, extra=None, code=2, cut=CUT, min_len=1, rating_scale=None):
    return pytest.param(fmt, mut or {}, tuple(expect), extra or {}, code, cut, min_len, rating_scale, id=id)


# expect: substrings of the one error line (always also the file name when a file is at fault),
# or of the printed decision when code == 0.
DATA_CASES = [
    # ---- MovieLens 100K (u.data, u.item)
    case("ml100k-user-not-int", "ml100k", {(0, "user"): "x1"}, ["u.data", "line 1", "'user id'", "not an integer"]),
    case("ml100k-rating-6", "ml100k", {(1, "rating"): 6}, ["u.data", "line 2", "'rating'", "outside the rating scale"]),
    case("ml100k-rating-nan", "ml100k", {(2, "rating"): "nan"}, ["u.data", "line 3", "'rating'", "finite"]),
    case("ml100k-time-ms", "ml100k", {(0, "time"): 946684800000}, ["u.data", "'timestamp'", "milliseconds"]),
    case("ml100k-time-negative", "ml100k", {(3, "time"): -5}, ["u.data", "line 4", "'timestamp'", "negative"]),
    case("ml100k-time-int64-overflow", "ml100k", {(0, "time"): 10**20}, ["u.data", "line 1", "'timestamp'", "64-bit"]),
    case("ml100k-time-before-1990-warns", "ml100k", {(0, "time"): 86400}, ["warning", "before 1990", "u.data",
                                                                            "'timestamp'"], code=0),
    case("ml100k-genre-flag-2", "ml100k", expect=["u.item", "line 2", "genre flag must be 0 or 1"],
         extra={"u.item": "1|A|||x|" + "|".join(["0"] * 19) + "\n2|B|||x|" + "|".join(["2"] + ["0"] * 18)}),
    case("ml100k-uitem-bad-id", "ml100k", expect=["u.item", "line 1", "'movie id'"],
         extra={"u.item": "one|A|||x|" + "|".join(["0"] * 19)}),
    case("ml100k-ugenre-bad-line", "ml100k", expect=["u.genre", "line 1", "'genre index'"],
         extra={"u.genre": "Action"}),
    case("ml100k-empty-udata", "ml100k", expect=["u.data", "empty file"], extra={"u.data": ""}),
    case("ml100k-missing-field", "ml100k", expect=["u.data", "line 1", "'timestamp'", "expected 4 fields"],
         extra={"u.data": "1\t1\t4\n1\t2\t3\t947684800"}),
    case("ml100k-missing-folder-file", "ml100k", expect=["u.data", "file not found"], extra={"u.data": None}),
    # ---- MovieLens 1M / 10M (.dat)
    case("mldat-rating-7", "ml-dat", {(0, "rating"): 7}, ["ratings.dat", "line 1", "'Rating'", "outside"]),
    case("mldat-time-text", "ml-dat", {(4, "time"): "soon"}, ["ratings.dat", "line 5", "'Timestamp'", "not an integer"]),
    case("mldat-time-ms", "ml-dat", {(2, "time"): 948684800000}, ["ratings.dat", "line 3", "'Timestamp'", "milliseconds"]),
    case("mldat-time-us", "ml-dat", {(2, "time"): 948684800000000}, ["ratings.dat", "'Timestamp'", "microseconds"]),
    case("mldat-tab-char", "ml-dat", {(1, "item"): "2\t"}, ["ratings.dat", "line 2", "'UserID'", "tab"]),
    case("mldat-movies-bad-line", "ml-dat", expect=["movies.dat", "line 1", "'Genres'"], extra={"movies.dat": "1 A"}),
    case("mldat-movies-bad-id", "ml-dat", expect=["movies.dat", "line 1", "'MovieID'"],
         extra={"movies.dat": "x::A::Comedy"}),
    case("mldat-user-missing", "ml-dat", {(0, "user"): ""}, ["ratings.dat", "line 1", "'UserID'", "missing"]),
    # ---- MovieLens CSV releases
    case("mlcsv-rating-0", "ml-csv", {(0, "rating"): 0}, ["ratings.csv", "line 2", "'rating'", "[0.5, 5]"]),
    case("mlcsv-time-overflow", "ml-csv", {(1, "time"): 99999999999999999999}, ["ratings.csv", "line 3",
                                                                               "'timestamp'", "64-bit"]),
    case("mlcsv-extra-field", "ml-csv", {(0, "time"): "946684800,7"}, ["ratings.csv", "line 2", "expected 4 fields"]),
    case("mlcsv-missing-column", "ml-csv", expect=["ratings.csv", "line 1", "missing column 'timestamp'"],
         extra={"ratings.csv": "userId,movieId,rating,time\n1,1,4,946684800"}),
    case("mlcsv-movies-bad-id", "ml-csv", expect=["movies.csv", "line 2", "'movieId'"],
         extra={"movies.csv": "movieId,title,genres\nabc,A,Comedy"}),
    case("mlcsv-time-negative", "ml-csv", {(5, "time"): -1}, ["ratings.csv", "line 7", "'timestamp'", "negative"]),
    # ---- the paper's Clothing data
    case("clothing-negative-user", "clothing", {(0, "user"): -1}, ["train.csv", "line 2", "'user'", "negative"], cut=None),
    case("clothing-rating-9", "clothing", {(1, "rating"): 9}, ["train.csv", "line 3", "'rating'", "outside"], cut=None),
    case("clothing-row-missing", "clothing", {(7, "time"): ""}, ["test.csv", "line 3", "'row'", "missing"], cut=None),
    case("clothing-category-negative", "clothing", expect=["item_category.csv", "line 2", "'category'", "negative"],
         extra={"item_category.csv": "item,category,position\n0,-3,0"}, cut=None),
    case("clothing-no-train-file", "clothing", expect=["train.csv", "file not found"], extra={"train.csv": None},
         cut=None),
    # ---- Amazon reviews (JSON lines)
    case("amazonjson-bad-json", "amazon-json", expect=["reviews.json", "line 1"],
         extra={"reviews.json": '{"reviewerID": "U1", "asin": '}),
    case("amazonjson-missing-overall", "amazon-json", expect=["reviews.json", "line 1", "'overall'"],
         extra={"reviews.json": '{"reviewerID": "U1", "asin": "I1", "unixReviewTime": 946684800}'}),
    case("amazonjson-overall-text", "amazon-json", {(0, "rating"): "abc"}, ["reviews.json", "line 1", "'overall'",
                                                                           "not a number"]),
    case("amazonjson-time-text", "amazon-json", {(2, "time"): "x"}, ["reviews.json", "line 3", "'unixReviewTime'"]),
    case("amazonjson-time-overflow", "amazon-json", {(2, "time"): 10**19}, ["reviews.json", "line 3",
                                                                           "'unixReviewTime'", "64-bit"]),
    case("amazonjson-time-ms", "amazon-json", {(0, "time"): 946684800123}, ["reviews.json", "line 1",
                                                                           "'unixReviewTime'", "milliseconds"]),
    case("amazonjson-rating-6", "amazon-json", {(3, "rating"): 6}, ["reviews.json", "line 4", "'overall'", "outside"]),
    # ---- Amazon 2018 ratings CSV
    case("amazoncsv-rating-0", "amazon-csv", {(0, "rating"): 0}, ["ratings.csv", "line 1", "'rating'", "outside"]),
    case("amazoncsv-time-text", "amazon-csv", {(1, "time"): "2000-01-01"}, ["ratings.csv", "line 2", "'timestamp'"]),
    case("amazoncsv-time-ms", "amazon-csv", {(1, "time"): 947684800000}, ["ratings.csv", "line 2", "'timestamp'",
                                                                         "milliseconds"]),
    case("amazoncsv-time-negative", "amazon-csv", {(1, "time"): -947684800}, ["ratings.csv", "line 2", "negative"]),
    # ---- Netflix Prize files
    case("netflix-rating-6", "netflix", {(0, "rating"): 6}, ["combined_data_1.txt", "'Rating'", "outside"]),
    case("netflix-bad-date", "netflix", {(0, "time"): "2000-13-45"}, ["combined_data_1.txt", "line 2", "'Date'"]),
    case("netflix-no-movie-line", "netflix", expect=["combined_data_1.txt", "line 1"],
         extra={"combined_data_1.txt": "1,5,2000-01-01"}),
    case("netflix-user-text", "netflix", {(0, "user"): "abc"}, ["combined_data_1.txt", "line 2", "'CustomerID'"]),
    # ---- Netflix 10k sample CSV
    case("netflixsample-bad-date", "netflix-sample", {(0, "time"): "yesterday"}, ["sample.csv", "line 2", "'Date'"]),
    case("netflixsample-rating-0", "netflix-sample", {(1, "rating"): 0}, ["sample.csv", "line 3", "'Rating'"]),
    case("netflixsample-missing-column", "netflix-sample", expect=["sample.csv", "line 1", "missing column 'Date'"],
         extra={"sample.csv": "MovieID,UserID,Rating\n1,1,4"}),
    # ---- generic CSV
    case("csv-stray-99", "csv", {(1, "rating"): 99}, ["ratings.csv", "line 3", "'rating'", "rating 99",
                                                      "standard rating scale [1, 5]"]),
    case("csv-stated-scale-refuses", "csv", {(1, "rating"): 4.5}, ["ratings.csv", "line 3", "'rating'",
                                                                   "rating 4.5", "[1, 4]"], rating_scale="1,4"),
    case("csv-stated-scale-accepts", "csv", {(1, "rating"): 9}, [], code=0, rating_scale="1,10"),
    case("csv-inferred-scale-printed", "csv", {}, ["rating scale [1, 5]", "ratings.csv",
                                                   "--rating_scale"], code=0),
    case("csv-inferred-half-stars", "csv", {(0, "rating"): 0.5}, ["rating scale [0.5, 5]"], code=0),
    case("csv-rating-scale-malformed", "csv", {}, ["--rating_scale", "LOW,HIGH"], rating_scale="1-5"),
    case("csv-rating-scale-reversed", "csv", {}, ["--rating_scale", "LOW < HIGH"], rating_scale="5,1"),
    case("csv-time-ms", "csv", {(0, "time"): 946684800000}, ["ratings.csv", "line 2", "'time'", "milliseconds"]),
    case("csv-time-negative", "csv", {(0, "time"): -3}, ["ratings.csv", "line 2", "'time'", "negative"]),
    case("csv-time-2200", "csv", {(0, "time"): 7258118400}, ["ratings.csv", "line 2", "'time'", "after 2100"]),
    case("csv-time-before-1990-warns", "csv", {(0, "time"): 100}, ["warning", "before 1990", "ratings.csv"], code=0),
    case("csv-time-overflow", "csv", {(0, "time"): 10**25}, ["ratings.csv", "line 2", "'time'", "64-bit"]),
    case("csv-rating-text", "csv", {(2, "rating"): "good"}, ["ratings.csv", "line 4", "'rating'", "not a number"]),
    case("csv-rating-inf", "csv", {(2, "rating"): "inf"}, ["ratings.csv", "line 4", "'rating'", "finite"]),
    case("csv-missing-rating-column", "csv", expect=["ratings.csv", "line 1", "missing column 'rating'"],
         extra={"ratings.csv": "user,item,stars,time\n1,1,4,946684800"}),
    case("csv-user-missing", "csv", {(3, "user"): ""}, ["ratings.csv", "line 5", "'user'", "missing"]),
    case("csv-binary-garbage", "csv", expect=["ratings.csv", "not valid utf-8"],
         extra={"ratings.csv": b"user,item,rating,time\n1,1,\xff\xfe,946684800\n"}),
    case("csv-gzip-truncated", "csv", expect=["ratings.csv", "gzip"], extra={"ratings.csv": b"\x1f\x8b\x08\x00abc"}),
    # ---- generic Parquet
    case("parquet-stray-99", "parquet", {(4, "rating"): 99}, ["ratings.parquet", "line 5", "'rating'", "rating 99"]),
    case("parquet-stated-scale-refuses", "parquet", {(4, "rating"): 6}, ["ratings.parquet", "line 5", "[1, 5]"],
         rating_scale="1,5"),
    case("parquet-time-ms", "parquet", {(0, "time"): 946684800000}, ["ratings.parquet", "line 1", "milliseconds"]),
    case("parquet-time-negative", "parquet", {(6, "time"): -970000000}, ["ratings.parquet", "line 7", "negative"]),
    case("parquet-rating-nan", "parquet", {(0, "rating"): float("nan")}, ["ratings.parquet", "line 1", "'rating'"]),
    case("parquet-corrupt-file", "parquet", expect=["ratings.parquet", "not a readable Parquet file"],
         extra={"ratings.parquet": b"PAR1 not really"}),
    case("parquet-missing-column", "parquet", expect=["ratings.parquet", "missing column 'time'"],
         extra={"ratings.parquet": pd.DataFrame({"user": [1], "item": [1], "rating": [4.0]})}),
    # ---- protocol flags on good data
    case("cut-int64-overflow", "csv", {}, ["--cut", "64-bit"], cut="99999999999999999999999"),
    case("cut-unparsable", "csv", {}, ["cannot parse time", "next tuesday"], cut="next tuesday"),
    case("cut-before-data", "csv", {}, ["empty training set", "data time range"], cut="1995-01-01"),
    case("cut-after-data", "csv", {}, ["empty test set", "data time range"], cut="2010-01-01"),
    case("min-len-negative", "csv", {}, ["--min_len=-3", ">= 1"], min_len=-3),
    case("min-len-zero", "ml100k", {}, ["--min_len=0", ">= 1"], min_len=0),
    case("min-len-too-high", "csv", {}, ["no training pair survives min_len=50"], min_len=50),
    case("rating-scale-on-fixed-format", "ml100k", {}, ["--rating_scale", "csv / parquet"], rating_scale="1,5"),
]


def _run_guarded(fn, capsys) -> tuple[int, str]:
    try:
        _cli.guarded(fn)(["prog"])
        code = 0
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("fmt,mut,expect,extra,code,cut,min_len,rating_scale", DATA_CASES)
def test_bad_data_is_one_line_naming_file_and_field(tmp_path, capsys, fmt, mut, expect, extra, code, cut, min_len,
                                                    rating_scale):
    from experiments import data_stats

    path, _ = build(fmt, tmp_path / "data", mut, extra)
    got, err = _run_guarded(lambda argv: data_stats.compute_stats(
        "synthetic", data=f"{fmt}:{path}", cut=cut, min_len=min_len, rating_scale=rating_scale), capsys)
    assert got == code, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    if code == 2:
        assert len(lines) == 1, err
        text = lines[0]
    else:
        assert not lines, err
        text = err
    for needle in expect:
        assert needle in text, f"{needle!r} not in {text!r}"


def test_at_least_sixty_cases():
    assert len(DATA_CASES) + len(FLAG_CASES) + len(STATE_CASE_NAMES) >= 60
    assert {p.values[0] for p in DATA_CASES} >= {"ml100k", "ml-dat", "ml-csv", "clothing", "amazon-json",
                                                 "amazon-csv", "netflix", "netflix-sample", "csv", "parquet"}


# --------------------------------------------------------------------------- experiments.train flags


def _train_main(argv, capsys) -> tuple[int, str]:
    """experiments.train's main, in-process, through the launcher's flag parser and error path."""
    from experiments import train as train_cli

    train_cli.define_flags()  # launchers define their flags when run (once per process)
    FLAGS.unparse_flags()
    try:
        rest = _cli.parse_flags(["train", "--nocompilation_cache", *argv])  # never touch ~/.cache from a test
        code = _run_guarded(lambda _: train_cli.main(rest), capsys)
    except SystemExit as exit_:
        code = (exit_.code, capsys.readouterr().err)
    finally:
        FLAGS.unparse_flags()
    return code


FLAG_CASES = [
    pytest.param(["--set=model.embed_dim=abc"], ["--set=model.embed_dim=abc", "'embed_dim'", "expects int"],
                 id="set-embed-dim-abc"),
    pytest.param(["--set=model.embed_dim=2S"], ["'embed_dim'", "expects int", "'2S'"], id="set-embed-dim-2S"),
    pytest.param(["--set=model.embed_dim=2.5"], ["'embed_dim'", "expects int"], id="set-embed-dim-float"),
    pytest.param(["--set=train.learning_rate=fast"], ["'learning_rate'", "expects float"], id="set-lr-text"),
    pytest.param(["--set=model.use_rating_input=1"], ["'use_rating_input'", "expects bool"], id="set-bool-as-int"),
    pytest.param(["--set=train.bucket_lengths=(8,'a')"], ["'bucket_lengths'", "expects tuple"], id="set-tuple-bad"),
    pytest.param(["--set=train.max_seconds=soon"], ["'max_seconds'", "expects Optional[float]"], id="set-optional-bad"),
    pytest.param(["--set=model.nosuch=1"], ["bad --set", "model.FIELD=VALUE"], id="set-unknown-field"),
    pytest.param(["--set=embed_dim"], ["bad --set"], id="set-no-value"),
    pytest.param(["--set=train.learning_rate=-1"], ["learning_rate must be positive"], id="config-negative-lr"),
    pytest.param(["--set=model.dropout=1.5"], ["dropout must be in [0, 1)"], id="config-dropout-range"),
    pytest.param(["--min_len=abc"], ["--min_len", "abc"], id="flag-min-len-text"),
    pytest.param(["--model=transformer"], ["--model", "transformer"], id="flag-unknown-model"),
    pytest.param(["--data=csv:/nowhere/ratings.csv"], ["--data needs --cut"], id="data-without-cut"),
    pytest.param(["--data=xyz:/tmp/a", "--cut=2000-01-01"], ["unknown format 'xyz'"], id="data-unknown-format"),
    pytest.param(["--data=/tmp/a.csv", "--cut=2000-01-01"], ["FORMAT:PATH"], id="data-no-format"),
    pytest.param(["--data=csv:/nowhere/ratings.csv", "--cut=2000-01-01"], ["/nowhere/ratings.csv", "file not found"],
                 id="data-missing-file"),
    pytest.param(["--rating_scale=1,5"], ["--rating_scale", "csv"], id="rating-scale-on-protocol"),
    pytest.param(["extra_positional"], ["unexpected arguments"], id="positional-argument"),
]


@pytest.mark.parametrize("argv,expect", FLAG_CASES)
def test_train_flags_are_one_line_errors(argv, expect, capsys):
    code, err = _train_main(argv, capsys)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    for needle in expect:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def test_set_values_of_the_right_type_are_accepted():
    from experiments.train import parse_overrides

    model, train = parse_overrides(["model.embed_dim=8", "model.dropout=0", "model.feature_encoder=None",
                                    "train.max_len=None", "train.bucket_lengths=(8, 16)", "train.max_seconds=5",
                                    "train.history_mode=causal", "model.use_rating_input=True"])
    assert model == {"embed_dim": 8, "dropout": 0.0, "feature_encoder": None, "use_rating_input": True}
    assert train == {"max_len": None, "bucket_lengths": (8, 16), "max_seconds": 5.0, "history_mode": "causal"}


# --------------------------------------------------------------------------- subprocess: real exit status


def _subprocess(module: str, *args, env_extra=None, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "IARN_DEBUG"}
    env.update(JAX_PLATFORMS="cpu", **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.slow
def test_subprocess_train_and_data_stats_exit_2_without_traceback(tmp_path):
    path, _ = build("csv", tmp_path / "d", {(1, "rating"): 99}, {})
    for module in ("experiments.train", "experiments.data_stats"):
        out = _subprocess(module, f"--data=csv:{path}", f"--cut={CUT}")
        assert out.returncode == 2, out.stderr
        assert "Traceback" not in out.stderr
        errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and "ratings.csv" in errors[0] and "'rating'" in errors[0], out.stderr
    flag = _subprocess("experiments.train", "--set=model.embed_dim=abc")
    assert flag.returncode == 2 and "Traceback" not in flag.stderr and "'embed_dim'" in flag.stderr
    bad_flag = _subprocess("experiments.data_stats", "--min_len=abc")
    assert bad_flag.returncode == 2 and bad_flag.stderr.count("error: ") == 1, bad_flag.stderr


def test_subprocess_debug_shows_the_traceback(tmp_path):
    path, _ = build("csv", tmp_path / "d", {(0, "time"): 946684800000}, {})
    out = _subprocess("experiments.data_stats", f"--data=csv:{path}", f"--cut={CUT}", env_extra={"IARN_DEBUG": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "milliseconds" in out.stderr


# --------------------------------------------------------------------------- run state

STATE_CASE_NAMES = [
    "resume-other-model", "resume-other-learning-rate", "resume-other-seed", "resume-other-embed-dim",
    "resume-other-data-shape", "resume-allowed-max-steps", "resume-stored-config-lacks-new-field",
    "rerun-finished-without-flag", "rerun-partial-without-flag", "overwrite-finished", "resume-empty-workdir",
    "progress-empty-falls-back", "progress-garbage-falls-back", "progress-dangling-falls-back",
    "progress-corrupt-no-fallback", "interrupted-write-leftover-tmp", "results-json-folder",
    "results-json-under-a-file", "resume-and-overwrite", "workdir-is-a-file", "resume-other-data-flags",
    "nan-validation-metric", "kill-9-during-checkpoint-write",
]


@pytest.fixture(scope="module")
def tiny():
    """A small synthetic split, a tiny model and a 20-step config (one bucket shape)."""
    from iarn_jax.data import protocols
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training.config import TrainConfig

    split = protocols.load_protocol("synthetic", n_users=120, n_items=60, n_ratings=2500, seed=123)
    model = ModelConfig(variant="rnn", embed_dim=4, hidden_size=4, attention_size=4)
    cfg = TrainConfig(batch_size=32, eval_batch_size=64, eval_every=10, max_steps=20, log_every=0, prefetch=0,
                      bucket_lengths=(32,), max_len=32, seed=1, bias_init="zeros")
    return split, model, cfg


@pytest.fixture(scope="module")
def finished(tiny, tmp_path_factory):
    """A finished run's workdir and a partial one (stopped after the step-10 checkpoint)."""
    from iarn_jax.training import loop

    split, model, cfg = tiny
    root = tmp_path_factory.mktemp("state")
    loop.train(split, model, cfg, workdir=root / "finished", verbose=False)
    with pytest.MonkeyPatch.context() as patch:  # interrupted right after the step-10 checkpoint
        patch.setattr(loop, "_STOP_AFTER_STEPS", 10)
        loop.train(split, model, cfg, workdir=root / "partial", verbose=False)
    return root


def _copy(src: pathlib.Path, dst: pathlib.Path) -> pathlib.Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def _snapshot(workdir: pathlib.Path) -> dict:
    return {str(p.relative_to(workdir)): p.read_bytes() for p in sorted(workdir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("change,field", [
    (lambda m, c: (m.__class__(**{**m.__dict__, "variant": "lstm"}), c), "model.variant"),
    (lambda m, c: (m, c.__class__(**{**c.__dict__, "learning_rate": 0.5})), "train.learning_rate"),
    (lambda m, c: (m, c.__class__(**{**c.__dict__, "seed": 7})), "train.seed"),
    (lambda m, c: (m.__class__(**{**m.__dict__, "embed_dim": 6}), c), "model.embed_dim"),
], ids=["resume-other-model", "resume-other-learning-rate", "resume-other-seed", "resume-other-embed-dim"])
def test_resume_refuses_a_different_configuration_before_writing(tiny, finished, tmp_path, change, field):
    from iarn_jax.training import loop
    from iarn_jax.training.run_records import RunStateError

    split, model, cfg = tiny
    workdir = _copy(finished / "partial", tmp_path / "w")
    before = _snapshot(workdir)
    model2, cfg2 = change(model, cfg)
    with pytest.raises(RunStateError) as info:
        loop.train(split, model2, cfg2, workdir=workdir, verbose=False, resume=True)
    message = str(info.value)
    assert "\n" not in message and field in message and "config.json" in message and "max_epochs" in message
    assert _snapshot(workdir) == before  # nothing in the workdir changed


@pytest.mark.slow
def test_resume_other_data_shape_and_flags(tiny, finished, tmp_path):
    from iarn_jax.data import protocols
    from iarn_jax.training import loop, run_records

    split, model, cfg = tiny
    workdir = _copy(finished / "partial", tmp_path / "w")
    other = protocols.load_protocol("synthetic", n_users=130, n_items=60, n_ratings=2500, seed=123)
    with pytest.raises(run_records.RunStateError, match="model.n_users"):
        loop.train(other, model, cfg, workdir=workdir, verbose=False, resume=True)
    (workdir / "run.json").write_text(json.dumps({"protocol": "synthetic", "data": None, "cut": None}))
    with pytest.raises(run_records.RunStateError, match="cut: None -> '2001-01-01'"):
        run_records.check_run_info(workdir, {"protocol": "synthetic", "data": None, "cut": "2001-01-01"}, resume=True)


def test_resume_refuses_another_validation_split_even_when_run_json_predates_the_key(tmp_path):
    """run.json records val_mode only when it is not "random": a Clothing run trained with random
    validation pairs (no key) must not resume under the temporal default, nor the other way round."""
    from iarn_jax.training import run_records

    (tmp_path / "results.json").write_text("{}")  # a finished run
    (tmp_path / "run.json").write_text(json.dumps({"protocol": "clothing", "cut": None}))
    with pytest.raises(run_records.RunStateError, match="val_mode: 'random' -> 'temporal'"):
        run_records.check_run_info(tmp_path, {"protocol": "clothing", "cut": None, "val_mode": "temporal"},
                                   resume=True)
    run_records.check_run_info(tmp_path, {"protocol": "clothing", "cut": None, "val_mode": "random"}, resume=True)
    run_records.check_run_info(tmp_path, {"protocol": "clothing", "cut": None}, resume=True)
    (tmp_path / "run.json").write_text(json.dumps({"protocol": "clothing", "cut": None, "val_mode": "temporal"}))
    with pytest.raises(run_records.RunStateError, match="val_mode: 'temporal' -> 'random'"):
        run_records.check_run_info(tmp_path, {"protocol": "clothing", "cut": None}, resume=True)


@pytest.mark.slow
def test_resume_accepts_allowed_changes_and_older_configs(tiny, finished, tmp_path, capsys):
    from iarn_jax.training import loop

    split, model, cfg = tiny
    workdir = _copy(finished / "partial", tmp_path / "w")
    stored = json.loads((workdir / "config.json").read_text())
    del stored["model"]["gate_match"], stored["train"]["checkpoint_every_eval"]  # an older run: fields added
    (workdir / "config.json").write_text(json.dumps(stored))
    result = loop.train(split, model, cfg.__class__(**{**cfg.__dict__, "max_steps": 30}), workdir=workdir,
                        verbose=False, resume=True)
    assert result.metrics["steps"] == 30
    assert "resume with changed train.max_steps 20 -> 30" in capsys.readouterr().err


@pytest.mark.slow
def test_rerun_of_a_finished_or_partial_run_is_refused_and_overwrite_replaces(tiny, finished, tmp_path, capsys):
    from iarn_jax.training import loop
    from iarn_jax.training.run_records import RunStateError

    split, model, cfg = tiny
    for name, what in (("finished", "a finished run"), ("partial", "a partial run")):
        workdir = _copy(finished / name, tmp_path / name)
        before = _snapshot(workdir)
        with pytest.raises(RunStateError) as info:
            loop.train(split, model, cfg, workdir=workdir, verbose=False)
        assert what in str(info.value) and "--resume" in str(info.value) and "--overwrite" in str(info.value)
        assert _snapshot(workdir) == before
    workdir = tmp_path / "finished"
    loop.train(split, model, cfg, workdir=workdir, verbose=False, overwrite=True)
    assert "--overwrite: replacing a finished run" in capsys.readouterr().err
    events = [json.loads(line)["event"] for line in (workdir / "log.jsonl").read_text().splitlines()]
    assert events.count("start") == 1 and events.count("done") == 1


def test_resume_on_an_empty_workdir_says_it_starts_from_scratch(tiny, tmp_path, capsys):
    from iarn_jax.training import loop

    split, model, cfg = tiny
    loop.train(split, model, cfg.__class__(**{**cfg.__dict__, "max_steps": 10}), workdir=tmp_path / "new",
               verbose=False, resume=True)
    assert "holds no checkpoint; starting from scratch" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("content", ["", "{not json", '{"checkpoint": "state_000000999", "step": 999, "schedule": {}}'],
                         ids=["progress-empty-falls-back", "progress-garbage-falls-back",
                              "progress-dangling-falls-back"])
def test_corrupt_progress_falls_back_to_the_newest_complete_checkpoint(tiny, finished, tmp_path, capsys, content):
    from iarn_jax.training import checkpoint, loop

    split, model, cfg = tiny
    workdir = _copy(finished / "partial", tmp_path / "w")
    (workdir / "checkpoints" / "progress.json").write_text(content)
    assert checkpoint.find_checkpoint(workdir / "checkpoints") == (10, "state_000000010")
    resumed = loop.train(split, model, cfg, workdir=workdir, verbose=False, resume=True)
    assert "falling back to the newest complete checkpoint state_000000010" in capsys.readouterr().err
    full = json.loads((finished / "finished" / "results.json").read_text())
    assert resumed.metrics["test_rmse"] == full["test_rmse"]  # the same run, continued exactly


def test_corrupt_progress_without_a_complete_checkpoint_is_a_clear_error(finished, tmp_path):
    from iarn_jax.training import checkpoint
    from iarn_jax.training.run_records import RunStateError

    workdir = _copy(finished / "partial", tmp_path / "w")
    (workdir / "checkpoints" / "progress.json").write_text("")
    for sidecar in (workdir / "checkpoints").glob("progress_*.json"):
        sidecar.unlink()
    with pytest.raises(RunStateError, match="progress.json: corrupt, empty"):
        checkpoint.load_progress(workdir / "checkpoints")


@pytest.mark.slow
def test_leftover_of_an_interrupted_checkpoint_write_is_ignored(tiny, finished, tmp_path):
    from iarn_jax.training import checkpoint, loop

    split, model, cfg = tiny
    workdir = _copy(finished / "partial", tmp_path / "w")
    leftover = workdir / "checkpoints" / "state_000000020.orbax-checkpoint-tmp-1234"
    leftover.mkdir()
    (leftover / "partial").write_bytes(b"\0" * 10)
    assert checkpoint.find_checkpoint(workdir / "checkpoints") == (10, "state_000000010")
    resumed = loop.train(split, model, cfg, workdir=workdir, verbose=False, resume=True)
    full = json.loads((finished / "finished" / "results.json").read_text())
    assert resumed.metrics["test_rmse"] == full["test_rmse"]


def test_output_paths_and_workdir_are_checked_before_training(tmp_path):
    from iarn_jax.training.experiment import run_experiment
    from iarn_jax.training.run_records import RunStateError, check_workdir

    (tmp_path / "afile").write_text("x")
    for results_json, needle in ((tmp_path, "is a folder"), (tmp_path / "afile" / "r.json", "is a file")):
        with pytest.raises(RunStateError, match=needle):
            run_experiment("synthetic", workdir=tmp_path / "w", results_json=results_json, verbose=False)
        assert not (tmp_path / "w").exists()  # nothing was written, nothing was trained
    with pytest.raises(RunStateError, match="contradict"):
        check_workdir(tmp_path / "w", resume=True, overwrite=True)
    with pytest.raises(RunStateError, match="is a file, not a folder"):
        check_workdir(tmp_path / "afile", resume=False, overwrite=False)


def _poison_validation(monkeypatch, diverges) -> None:
    """The validation RMSE becomes NaN on the calls n (1-based) where ``diverges(n)``."""
    from iarn_jax.training import evaluation

    real, calls = evaluation.rating_metrics, {"n": 0}

    def poisoned(pred, target, scale):
        calls["n"] += 1
        out = real(pred, target, scale)
        return {**out, "rmse": float("nan")} if diverges(calls["n"]) else out

    monkeypatch.setattr(evaluation, "rating_metrics", poisoned)


def _log_records(workdir: pathlib.Path) -> list:
    return [json.loads(line) for line in (workdir / "log.jsonl").read_text().splitlines()]


def test_nan_validation_metric_stops_and_names_the_last_good_checkpoint(tiny, tmp_path, monkeypatch):
    from iarn_jax.training import loop
    from iarn_jax.training.run_records import DivergenceError

    split, model, cfg = tiny
    _poison_validation(monkeypatch, lambda n: n == 2)
    with pytest.raises(DivergenceError) as info:  # no retries: the first divergence stops the run
        loop.train(split, model, dataclasses.replace(cfg, divergence_retries=0), workdir=tmp_path / "w",
                   verbose=False)
    message = str(info.value)
    assert "validation RMSE is nan at step 20" in message and "state_000000010 (step 10), left intact" in message
    assert isinstance(info.value, FloatingPointError)
    progress = json.loads((tmp_path / "w" / "checkpoints" / "progress.json").read_text())
    assert progress["checkpoint"] == "state_000000010"
    assert (tmp_path / "w" / "checkpoints" / "state_000000010").is_dir()


def test_a_diverged_validation_goes_back_to_the_best_parameters_and_the_run_finishes(tiny, tmp_path, monkeypatch):
    from iarn_jax.training import loop

    split, model, cfg = tiny
    cfg = dataclasses.replace(cfg, max_steps=40, divergence_retries=1)
    _poison_validation(monkeypatch, lambda n: n == 2)  # the 2nd validation (step 20) diverges once
    result = loop.train(split, model, cfg, workdir=tmp_path / "w", verbose=False)
    records = _log_records(tmp_path / "w")
    recover = [r for r in records if r["event"] == "recover"]
    assert len(recover) == 1 and recover[0]["step"] == 20 and recover[0]["best_step"] == 10
    assert "validation RMSE is nan at step 20" in recover[0]["error"]
    assert recover[0]["learning_rate"] == pytest.approx(cfg.learning_rate * cfg.lr_decay)
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [10, 30, 40]  # the run continued after step 20
    assert all(r["learning_rate"] == pytest.approx(cfg.learning_rate * cfg.lr_decay) for r in evals[1:])
    assert result.metrics["divergence_recoveries"] == 1 and math.isfinite(result.metrics["test_rmse"])
    assert result.metrics["steps"] == 40


def test_divergence_after_the_last_retry_stops_with_the_count(tiny, tmp_path, monkeypatch):
    from iarn_jax.training import loop
    from iarn_jax.training.run_records import DivergenceError

    split, model, cfg = tiny
    cfg = dataclasses.replace(cfg, max_steps=60, divergence_retries=2)
    _poison_validation(monkeypatch, lambda n: n >= 2)  # every validation after the first diverges
    with pytest.raises(DivergenceError, match=r"nan at step 40; .*\(after 2 of 2 divergence retries\)"):
        loop.train(split, model, cfg, workdir=tmp_path / "w", verbose=False)
    records = _log_records(tmp_path / "w")
    assert [r["step"] for r in records if r["event"] == "recover"] == [20, 30]


def test_a_non_finite_training_loss_is_recovered_from_like_a_diverged_validation(tiny, tmp_path, monkeypatch):
    from iarn_jax.training import loop

    split, model, cfg = tiny
    cfg = dataclasses.replace(cfg, max_steps=30, log_every=5)
    real_make = loop.make_train_step

    def make_poisoned(*args, **kwargs):  # step 13's loss and parameters become NaN
        step = real_make(*args, **kwargs)
        counter = {"n": 0}

        def poisoned(state, batch):
            state, metrics = step(state, batch)
            counter["n"] += 1
            if counter["n"] == 13:
                state = state.replace(params=jax.tree_util.tree_map(lambda x: x * jnp.nan, state.params))
                metrics = {**metrics, "loss": metrics["loss"] * jnp.nan}
            return state, metrics

        return poisoned

    monkeypatch.setattr(loop, "make_train_step", make_poisoned)
    result = loop.train(split, model, cfg, workdir=tmp_path / "w", verbose=False)
    records = _log_records(tmp_path / "w")
    recover = [r for r in records if r["event"] == "recover"]
    assert len(recover) == 1 and recover[0]["step"] == 15  # found at the next loss fetch (log_every 5)
    assert "diverged at step 13: loss nan" in recover[0]["error"] and recover[0]["best_step"] == 10
    evals = [r for r in records if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [10, 20, 30] and all(math.isfinite(r["val_rmse"]) for r in evals)
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(result.params))


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume(tmp_path):
    """A real training process killed with SIGKILL while checkpoints are being written resumes."""
    workdir = tmp_path / "w"
    common = ["--protocol=synthetic", f"--workdir={workdir}", "--model=rnn", "--set=model.embed_dim=4",
              "--set=model.hidden_size=4", "--set=model.attention_size=4", "--set=train.eval_every=2",
              "--set=train.max_steps=400", "--set=train.max_epochs=100", "--set=train.log_every=0",
              "--set=train.stop_patience=1000", "--set=train.decay_patience=1000", "--nocompilation_cache"]
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.Popen([sys.executable, "-m", "experiments.train", *common], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = workdir / "checkpoints"
    deadline = time.time() + 240
    try:
        while time.time() < deadline:  # kill while a checkpoint write is in flight (a tmp folder exists)
            if ckpt.is_dir() and any(".orbax-checkpoint-tmp" in p.name for p in ckpt.iterdir()) and \
                    (ckpt / "progress.json").exists():
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    from iarn_jax.training import checkpoint

    assert checkpoint.find_checkpoint(ckpt) is not None
    out = _subprocess("experiments.train", *common, "--resume", "--set=train.max_steps=30", timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resumed from step" in out.stdout


def test_resume_reads_a_legacy_feature_encoder_name(tmp_path):
    """A run whose config.json names its encoder in the old one-string form resumes with the typed
    fields (the same model); a different encoder is still refused."""
    import dataclasses as dc

    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training.run_records import RunStateError, prepare_workdir

    typed = {"protocol": "p", "model": dc.asdict(ModelConfig(feature_encoder="hier", feature_inputs="step")),
             "train": {}}
    legacy_model = {k: v for k, v in typed["model"].items() if not k.startswith("feature_")}
    (tmp_path / "config.json").write_text(json.dumps({**typed, "model": {**legacy_model, "feature_encoder": "hier:step"}}))
    prepare_workdir(tmp_path, typed, resume=True, overwrite=False)
    other = {**typed, "model": dc.asdict(ModelConfig(feature_encoder="hier", feature_inputs="both"))}
    with pytest.raises(RunStateError, match="feature_inputs"):
        prepare_workdir(tmp_path, other, resume=True, overwrite=False)
