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
import pandas as pd
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
    """A short IARN run (20 steps, one padded shape) on small synthetic data saved as a CSV, written
    like ``python -m experiments.train --data=csv:PATH --cut=T --workdir=DIR`` does."""
    from iarn_jax.data.synthetic import make_synthetic
    from iarn_jax.training.experiment import run_experiment

    folder = tmp_path_factory.mktemp("run")
    ratings = make_synthetic(**SMALL).dataset.ratings
    ratings.to_csv(folder / "ratings.csv", index=False)
    cut = int(np.quantile(ratings["time"], 0.9))
    _, result = run_experiment(
        data=f"csv:{folder / 'ratings.csv'}", cut=cut, model="iarn", workdir=folder / "work", verbose=False,
        model_overrides=TINY, train_overrides=dict(max_steps=20, eval_every=10, max_len=8, bucket_lengths=(8,),
                                                   batch_size=32, eval_batch_size=64))
    return folder / "work", result


@pytest.mark.slow
def test_explanation_lists_both_histories_with_gates(run):
    _, result = run
    test = result.data.split.test
    user, item = int(test["user"].iloc[0]), int(test["item"].iloc[0])
    e = iarn_jax.explain(result, user, item)
    uh, ih = result.data.user_histories, result.data.item_histories
    assert e.user_history_length == uh.lengths[user] and len(e.user_steps) == min(8, uh.lengths[user])  # max_len
    assert [s.id for s in e.user_steps] == uh.counterpart[uh.events(user)][-8:].tolist()  # most recent
    assert [s.time for s in e.item_steps] == ih.time[ih.events(item)][-8:].tolist()
    assert all(0.0 <= s.gate <= 1.0 for s in e.user_steps + e.item_steps)
    assert e.rating == pytest.approx(float(test["rating"].iloc[0])) and e.pair_set == "test"
    # the prediction is the model's prediction for the pair
    assert e.prediction == pytest.approx(float(iarn_jax.predict(result, test.iloc[:1])[0]), rel=1e-5, abs=1e-5)
    assert e.user_steps[0].original_id == int(result.data.split.dataset.item_ids[e.user_steps[0].id])
    text = e.format()
    assert "predicted rating" in text and "user history (items)" in text and "item history (users)" in text
    payload = json.loads(e.to_json())
    assert len(payload["user_steps"]) == len(e.user_steps)


@pytest.mark.slow
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
    uh = result.data.user_histories
    train_rows = result.data.split.train
    u, i = next((int(u), int(i)) for u, i in zip(train_rows["user"], train_rows["item"])
                if i in uh.counterpart[uh.events(int(u))][-8:])  # own step among the shown (max_len 8)
    own = [s for s in explain(result, u, i).user_steps if s.rating is None]
    assert len(own) == 1 and own[0].id == i


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


@pytest.mark.slow
def test_real_movielens_pair_with_titles_and_genres():
    require_data("movielens/ml-100k")
    split = load_protocol("ml100k", require_data(".").resolve())
    data = prepare_data(split)
    cfg = ModelConfig(variant="iarn", n_users=split.n_users, n_items=split.n_items, feature_encoder="flat", **TINY)
    model = build_model(cfg, split)
    from iarn_jax.data import batching

    from iarn_jax.models.iarn import initialize
    from iarn_jax.training.loop import model_constants

    first = batching.materialize(np.array([0]), data.test, data.user_histories, data.item_histories)
    params = initialize(model, jax.random.PRNGKey(0), first, model_constants(cfg, split))  # + genre tables
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


@pytest.mark.slow
def test_load_run_without_run_json_needs_a_built_in_protocol(run, tmp_path):
    """Runs trained through the library (no run.json) reload from config.json's protocol; data given
    by --data=csv:PATH cannot be found that way, and the error says so."""
    import shutil

    workdir, _ = run
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    (copy / "run.json").unlink()
    with pytest.raises(FileNotFoundError, match="run.json is missing"):
        load_run(copy)


@pytest.mark.slow
def test_load_run_reloads_the_validation_split_recorded_in_run_json(run, tmp_path):
    """A run recorded with val_mode "temporal" reloads with the latest training-period pairs as its
    validation pairs; without the key, the random pairs it was trained with."""
    import shutil

    workdir, result = run
    pd.testing.assert_frame_equal(load_run(workdir).data.split.val, result.data.split.val)
    copy = tmp_path / "copy"
    shutil.copytree(workdir, copy)
    info = json.loads((copy / "run.json").read_text())
    (copy / "run.json").write_text(json.dumps({**info, "val_mode": "temporal"}))
    split = load_run(copy).data.split
    assert split.val["time"].min() >= split.train["time"].max()
    assert split.val["time"].min() > result.data.split.val["time"].min()


@pytest.mark.slow
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


PLANTED = dict(n_users=600, n_items=200, n_ratings=12000)
# The gate-recovery setting (BUILD_NOTES, issue 5): a small state (8) so that the history must be
# read selectively, gate logit scale 0.25 (the reference's 2 saturates the gates closed before they
# learn anything), and for IARN the gate options that let it compare each step with the target.
GATE_MODEL = dict(embed_dim=16, hidden_size=8, attention_size=16, use_rating_input=True, gate_logit_scale=0.25,
                  gate_step_input=True)
IARN_GATE_OPTIONS = dict(gate_target_embedding=True, gate_match=True)


def _gate_aucs(variant):
    """Gate-recovery AUC after training on small synthetic data (the protocol in BUILD_NOTES)."""
    from iarn_jax.data.synthetic import make_synthetic

    split = load_protocol("synthetic", None, **PLANTED)
    options = IARN_GATE_OPTIONS if variant == "iarn" else {}
    model = ModelConfig(variant=variant, **GATE_MODEL, **options)
    config = TrainConfig(max_len=32, eval_every=0, max_epochs=40, decay_patience=2, stop_patience=3, log_every=0,
                         learning_rate=3e-3)
    return gate_relevance_auc(train(split, model, config, verbose=False), make_synthetic(**PLANTED))


@pytest.mark.slow
def test_planted_relevance_iarn_finds_relevant_steps_and_beats_tagm():
    """Measured (BUILD_NOTES): IARN per-history AUC 0.825, TAGM about 0.5 (it cannot see the target)."""
    iarn, tagm = _gate_aucs("iarn"), _gate_aucs("tagm")
    assert iarn["user"]["per_pair"] >= 0.8
    assert iarn["user"]["per_pair"] > tagm["user"]["per_pair"] + 0.05


def test_gate_relevance_auc_scores_oracle_gates_as_perfect():
    """The measurement itself: gates equal to the planted user-side relevance give AUC 1, random
    gates about 0.5 (fast stand-in for the slow training check below)."""
    import types

    import jax.numpy as jnp

    from iarn_jax.data.synthetic import make_synthetic

    synthetic = make_synthetic(**SMALL)
    split = load_protocol("synthetic", None, **SMALL)
    category = jnp.asarray(synthetic.item_category)
    interests = jnp.asarray(synthetic.user_interests)

    class Oracle:
        def apply(self, variables, batch):
            target = category[batch["item"]][:, None]
            user_gates = (category[batch["user_history"]] == target).astype(jnp.float32)
            item_gates = (interests[batch["item_history"]] == target[..., None]).any(-1).astype(jnp.float32)
            noise = jax.random.uniform(jax.random.PRNGKey(0), batch["user_history"].shape)
            return None, {"user_gates": user_gates + 0.01 * noise, "item_gates": item_gates,
                          "random": noise}

    result = types.SimpleNamespace(data=prepare_data(split), model=Oracle(), params=None, constants={},
                                   train_config=TrainConfig())
    out = gate_relevance_auc(result, synthetic)
    assert out["user"]["per_pair"] == pytest.approx(1.0) and out["user"]["pooled"] == pytest.approx(1.0)
    assert out["item"]["pooled"] > 0.6  # interest membership, without the time-dependent main weight
    assert 0 < out["user"]["relevant_fraction"] < 1 and out["user"]["pairs"] > 10
