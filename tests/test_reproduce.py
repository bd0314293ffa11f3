"""The comparison table logic (best / runner-up marks) and the reproduce command end to end on tiny
synthetic data with two cheap methods, including the per-method cache (a re-run does not refit)."""
from __future__ import annotations

import json

import numpy as np
import pytest

from experiments import reproduce
from iarn_jax.data.protocols import load_protocol
from iarn_jax.evaluate import metrics
from iarn_jax.reports import figures, registry, runner, tables


def hand_rows():
    return [
        {"method": "A", "rmse": 1.10, "mae": 0.90, "auc": 0.60, "ndcg10": 0.01, "hr10": 0.02, "seconds": 1.0},
        {"method": "B", "rmse": None, "mae": None, "auc": 0.70, "ndcg10": 0.03, "hr10": 0.02, "seconds": 2.0},
        {"method": "C", "rmse": 1.00, "mae": 0.80, "auc": 0.65, "ndcg10": 0.03, "hr10": 0.01, "seconds": 3.0},
        {"method": "D", "rmse": 1.05, "mae": float("nan"), "auc": 0.50, "ndcg10": 0.02, "hr10": 0.00, "seconds": 4.0},
    ]


def test_mark_best_and_runner_up():
    rows = hand_rows()
    assert tables.mark_best(rows, "rmse", higher_is_better=False) == ["", "", "best", "runner_up"]
    assert tables.mark_best(rows, "mae", higher_is_better=False) == ["runner_up", "", "best", ""]
    assert tables.mark_best(rows, "auc", higher_is_better=True) == ["", "best", "runner_up", ""]
    # ties share the mark; the next distinct value is the runner-up
    assert tables.mark_best(rows, "ndcg10", higher_is_better=True) == ["", "best", "best", "runner_up"]
    assert tables.mark_best(rows, "hr10", higher_is_better=True) == ["best", "best", "runner_up", ""]
    # compared at the displayed precision (4 digits)
    close = [{"auc": 0.70001}, {"auc": 0.69999}, {"auc": 0.6}]
    assert tables.mark_best(close, "auc", True) == ["best", "best", "runner_up"]
    assert tables.mark_best([{"auc": None}], "auc", True) == [""]


def test_markdown_table():
    text = tables.markdown_table(hand_rows(), title="T")
    lines = text.splitlines()
    assert lines[0] == "T"
    assert lines[2] == "| Method | RMSE | MAE | AUC | NDCG@10 | HR@10 | seconds |"
    row_b = next(line for line in lines if line.startswith("| B |"))
    assert row_b == "| B | – | – | **0.7000** | **0.0300** | **0.0200** | 2 |"
    row_c = next(line for line in lines if line.startswith("| C |"))
    assert row_c == "| C | **1.0000** | **0.8000** | 0.6500* | **0.0300** | 0.0100* | 3 |"
    row_d = next(line for line in lines if line.startswith("| D |"))
    assert "| 1.0500* | – |" in row_d


def test_parse_methods():
    assert registry.parse_methods(None) == list(registry.TABLE2_METHODS)
    assert registry.parse_methods("TimeSVD++, iarn,iarn") == ["timesvdpp", "iarn"]
    with pytest.raises(ValueError):
        registry.parse_methods("nope")


@pytest.fixture(scope="module")
def tiny_split():
    return load_protocol("synthetic", None, n_users=120, n_items=60, n_ratings=3000)


def test_reproduce_end_to_end_with_cache(tiny_split, tmp_path, monkeypatch):
    workdir = tmp_path / "work"
    results = tmp_path / "rows.json"
    out = reproduce.reproduce("synthetic", split=tiny_split, table=2, methods="bias,mostpop", workdir=workdir,
                              results_json=results, verbose=False)
    rows = json.loads(results.read_text())
    assert [r["method"] for r in rows] == ["BiasOnly", "MostPop"]
    assert all(set(r) == set(tables.ROW_KEYS) for r in rows)
    bias, pop = rows
    assert bias["rmse"] is not None and 0.3 < bias["rmse"] < 2.0 and bias["mae"] <= bias["rmse"]
    assert pop["rmse"] is None and pop["mae"] is None  # ranking-only: no rating metrics
    for row in rows:
        assert 0.0 <= row["auc"] <= 1.0 and 0.0 <= row["hr10"] <= 1.0 and row["seconds"] > 0
    assert out["rows"] == rows
    assert (workdir / "table2.md").read_text().count("\n| ") == 3  # header + 2 rows
    record = json.loads((workdir / "table2.json").read_text())
    assert record["protocol"] == "synthetic" and record["checksum"] == runner.split_checksum(tiny_split)
    assert len(record["users"]) == record["n_users"] > 0
    # the RMSE equals the bias model's own clipped test RMSE
    from iarn_jax.models.baselines.bias import BiasBaseline

    model = BiasBaseline().fit(tiny_split, seed=0, verbose=False)
    test = tiny_split.test
    pred = model.predict(test["user"].to_numpy(), test["item"].to_numpy())
    assert bias["rmse"] == pytest.approx(metrics.rmse(pred, test["rating"].to_numpy(), tiny_split.rating_scale))

    # second run: everything comes from the cache, nothing is refitted
    def no_refit(*args, **kwargs):
        raise AssertionError("a cached method was refitted")

    monkeypatch.setattr(runner, "run_method", no_refit)
    again = reproduce.reproduce("synthetic", split=tiny_split, table=2, methods="bias,mostpop", workdir=workdir,
                                verbose=False)
    assert again["rows"] == rows
    # a different evaluation sample is a different fingerprint: it must refit
    with pytest.raises(AssertionError, match="refitted"):
        reproduce.reproduce("synthetic", split=tiny_split, table=2, methods="bias", workdir=workdir,
                            n_eval_users=5, verbose=False)


def test_figure3_rows_from_cached_predictions(tiny_split):
    test = tiny_split.test
    target = test["rating"].to_numpy(np.float64)
    outputs = {"bias": runner.MethodOutput(row={}, test_predictions=target + 0.5),
               "mostpop": runner.MethodOutput(row={}, test_predictions=None)}
    rows = figures.figure3_rows(tiny_split, outputs, ["bias", "mostpop"], lengths=(3, 10, 10_000))
    assert [r["min_len"] for r in rows] == [3, 10]  # no test pair reaches L = 10000
    assert rows[0]["n"] >= rows[1]["n"] > 0
    assert rows[0]["BiasOnly"] == pytest.approx(metrics.rmse(target + 0.5, target, tiny_split.rating_scale))
    assert "MostPop" not in rows[0]
    text = tables.figure3_markdown(rows, ["BiasOnly"])
    assert text.splitlines()[0].startswith("| min length L | test pairs | BiasOnly |")


@pytest.mark.slow
def test_iarn_variant_row_and_figure3(tiny_split, tmp_path):
    """An IARN variant through the whole path: train, RMSE, full-ranking scorer, cache, Figure 3."""
    overrides = {"max_steps": 30, "eval_every": 15, "batch_size": 64, "log_every": 0, "prefetch": 0}
    result = runner.run_comparison(tiny_split, ["iarn"], workdir=tmp_path, verbose=False,
                                       train_overrides=overrides, n_eval_users=10)
    row = result["rows"][0]
    assert row["method"] == "IARN" and row["rmse"] is not None and 0 <= row["auc"] <= 1
    pred = result["outputs"]["iarn"].test_predictions
    assert pred.shape == (len(tiny_split.test),)
    assert row["rmse"] == pytest.approx(metrics.rmse(pred, tiny_split.test["rating"].to_numpy(), tiny_split.rating_scale))
    assert runner.load_cached(tmp_path, "iarn", {"protocol": "other"}) is None  # fingerprint mismatch
    rows = figures.figure3_rows(tiny_split, result["outputs"], ["iarn"])
    assert rows and rows[0]["min_len"] == 3 and rows[0]["IARN"] == pytest.approx(row["rmse"])


@pytest.mark.slow
def test_figure4_plain_vs_encoders(tiny_split, tmp_path):
    """Figure 4's driver: each encoder trained with the same settings, the plain row is IARN without
    an encoder, the encoders add parameters, rows are cached and the table marks the best RMSE."""
    overrides = {"max_steps": 20, "eval_every": 10, "batch_size": 64, "log_every": 0, "prefetch": 0}
    rows = figures.run_figure4(tiny_split, ["plain", "flat:target", "flat:step"], workdir=tmp_path,
                                  train_overrides=overrides, verbose=False)
    assert [r["encoder"] for r in rows] == ["plain", "flat:target", "flat:step"]
    plain, target, step = rows
    assert all(r["rmse"] is not None and 0.3 < r["rmse"] < 3 and r["epochs"] > 0 for r in rows)
    # the encoders add per-feature factors; flat:step transforms the user side, flat:target the item side
    assert target["params"] > plain["params"] and step["params"] > plain["params"]
    assert len({r["rmse"] for r in rows}) == 3  # three different models
    again = figures.run_figure4(tiny_split, ["flat:target"], workdir=tmp_path, train_overrides=overrides,
                                   verbose=False)
    assert again[0] == target  # from the cache
    text = tables.figure4_markdown(rows)
    best = min(rows, key=lambda r: r["rmse"])
    assert f"**{best['rmse']:.4f}**" in text and text.count("**") == 2
