"""Explanations: structure and ids, the interacting property, a real MovieLens pair, the command
line on a finished run, and gate recovery of the planted relevance of synthetic data."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import iarn_jax
from conftest import require_data
from iarn_jax.data.protocols import load_protocol
from iarn_jax.interpret.explain import explain, gate_relevance_auc, load_run
from iarn_jax.models.config import ModelConfig
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.loop import build_model, prepare_data, train

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(n_users=120, n_items=60, n_ratings=3000, seed=0)
TINY = dict(embed_dim=8, hidden_size=8, attention_size=8)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A short IARN run on small synthetic data, written like experiments.train does."""
    from iarn_jax.training.experiment import run_experiment

    workdir = tmp_path_factory.mktemp("run")
    import iarn_jax.training.experiment as experiment

    saved = dict(experiment.PROTOCOL_DATA_DEFAULTS.get("synthetic", {}))
    experiment.PROTOCOL_DATA_DEFAULTS["synthetic"] = {"n_users": 120, "n_items": 60, "n_ratings": 3000}
    try:
        _, result = run_experiment("synthetic", model="iarn", workdir=workdir, verbose=False,
                                   model_overrides=TINY, train_overrides=dict(max_steps=30, eval_every=15))
    finally:
        experiment.PROTOCOL_DATA_DEFAULTS["synthetic"] = saved
    return workdir, result


def test_explanation_lists_both_histories_with_gates(run):
    _, result = run
    test = result.data.split.test
    user, item = int(test["user"].iloc[0]), int(test["item"].iloc[0])
    e = iarn_jax.explain(result, user, item)
    uh, ih = result.data.user_histories, result.data.item_histories
    assert len(e.user_steps) == uh.lengths[user] and len(e.item_steps) == ih.lengths[item]
    assert [s.id for s in e.user_steps] == uh.counterpart[uh.events(user)].tolist()
    assert [s.time for s in e.item_steps] == ih.time[ih.events(item)].tolist()
    assert all(0.0 <= s.gate <= 1.0 for s in e.user_steps + e.item_steps)
    assert e.rating == pytest.approx(float(test["rating"].iloc[0])) and e.pair_set == "test"
    # the prediction is the model's prediction for the pair
    assert e.prediction == pytest.approx(float(iarn_jax.predict(result, test.iloc[:1])[0]), rel=1e-5, abs=1e-5)
    # names / titles: synthetic item titles, features = the item's category
    assert e.user_steps[0].name.startswith("c") and e.user_steps[0].features
    text = e.format()
    assert "predicted rating" in text and "user history (items)" in text and "item history (users)" in text
    payload = json.loads(e.to_json())
    assert len(payload["user_steps"]) == len(e.user_steps)


def test_same_user_different_items_get_different_gates(run):
    """The interacting property: IARN's user gates depend on the target item."""
    _, result = run
    test = result.data.split.test
    user = int(test["user"].value_counts().index[0])
    items = test.loc[test["user"] == user, "item"].unique()[:2].tolist()
    if len(items) < 2:
        items = [items[0], (items[0] + 1) % result.data.split.n_items]
    a, b = (np.array([s.gate for s in explain(result, user, i).user_steps]) for i in items)
    assert len(a) == len(b) > 1
    assert np.abs(a - b).max() > 1e-4
    # a training pair: its own step is shown with its rating hidden from the model
    train_row = result.data.split.train.iloc[0]
    e = explain(result, int(train_row["user"]), int(train_row["item"]))
    own = [s for s in e.user_steps if s.rating is None]
    assert len(own) == 1 and own[0].id == int(train_row["item"])


def test_tagm_gates_do_not_depend_on_the_item():
    split = load_protocol("synthetic", None, **SMALL)
    data = prepare_data(split)
    cfg = ModelConfig(variant="tagm", n_users=split.n_users, n_items=split.n_items, **TINY)
    model = build_model(cfg, split)
    from iarn_jax.data import batching

    first = batching.materialize(np.array([0]), data.test, data.user_histories, data.item_histories)
    params = model.init(jax.random.PRNGKey(0), first)["params"]
    user = int(split.test["user"].iloc[0])
    a, b = (np.array([s.gate for s in explain((model, params, data), user, i).user_steps]) for i in (0, 1))
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_real_movielens_pair_with_titles_and_genres():
    require_data("movielens/ml-100k")
    split = load_protocol("ml100k", require_data(".").resolve())
    data = prepare_data(split)
    cfg = ModelConfig(variant="iarn", n_users=split.n_users, n_items=split.n_items, feature_encoder="flat", **TINY)
    model = build_model(cfg, split)
    from iarn_jax.data import batching

    first = batching.materialize(np.array([0]), data.test, data.user_histories, data.item_histories)
    params = model.init(jax.random.PRNGKey(0), first)["params"]
    row = split.test.iloc[0]
    ds = split.dataset
    e = explain((model, params, data), ds.user_ids[int(row["user"])], ds.item_ids[int(row["item"])],
                original_ids=True)
    assert e.user == int(row["user"]) and e.item == int(row["item"])
    assert e.item_title == str(ds.item_titles[e.item]) and "(19" in e.item_title  # "Title (year)"
    step = e.user_steps[0]
    assert step.original_id == int(ds.item_ids[step.id]) and step.name == str(ds.item_titles[step.id])
    assert step.features and all(isinstance(g, str) for g in step.features)  # genres
    assert step.time_text.startswith("199")
    assert e.item_steps[0].original_id == int(ds.user_ids[e.item_steps[0].id])
    with pytest.raises(KeyError):
        explain((model, params, data), "no-such-user", ds.item_ids[0], original_ids=True)


def test_command_line_on_a_finished_run(run, tmp_path):
    workdir, result = run
    reloaded = load_run(workdir)
    test = result.data.split.test
    user, item = int(test["user"].iloc[0]), int(test["item"].iloc[0])
    assert explain(reloaded, user, item).prediction == pytest.approx(explain(result, user, item).prediction, rel=1e-5)
    png = tmp_path / "explain.png"
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-m", "experiments.explain", f"--workdir={workdir}", "--json",
                          f"--png={png}"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    payload = json.loads(out.stdout)
    assert payload["user"] == user and payload["item"] == item  # the first test pair
    assert png.exists() and png.stat().st_size > 10_000


def _gate_aucs(variant, **train_overrides):
    """Gate-recovery AUC of a model trained on the default synthetic data (see BUILD_NOTES)."""
    from iarn_jax.data.synthetic import make_synthetic
    from iarn_jax.training.experiment import PROTOCOL_DATA_DEFAULTS, run_experiment

    kw = PROTOCOL_DATA_DEFAULTS["synthetic"]
    _, result = run_experiment("synthetic", model=variant, verbose=False,
                               model_overrides=dict(embed_dim=16, hidden_size=32, attention_size=16),
                               train_overrides=train_overrides)
    return gate_relevance_auc(result, make_synthetic(seed=0, **kw))


@pytest.mark.slow
def test_planted_relevance_iarn_finds_relevant_steps_and_beats_tagm():
    iarn, tagm = _gate_aucs("iarn"), _gate_aucs("tagm")
    assert iarn["user"]["per_pair"] >= 0.8
    assert iarn["user"]["per_pair"] > tagm["user"]["per_pair"] + 0.05
