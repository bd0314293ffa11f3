"""Serving: save / load in a fresh process, recommend, new users without retraining, explain, quiet CLI."""
from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest

import iarn_jax
from iarn_jax.data.protocols import split_by_time
from iarn_jax.data.synthetic import make_synthetic
from iarn_jax.models.config import ModelConfig
from iarn_jax.serve import explain, predict, recommend, recommend_many
from iarn_jax.serve.new_users import with_unknown_user
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.loop import train

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(n_users=120, n_items=60, n_ratings=3000, seed=0)
N_CATEGORIES = 6
# Planted interests that ratings reveal: users often rate outside their interests (explore=0.5), per-user
# category affinities dominate item quality, little noise.
PLANTED = dict(n_users=300, n_items=120, n_ratings=8000, seed=0, n_categories=N_CATEGORIES, n_interests=2,
               explore=0.5, affinity_std=1.0, item_quality_std=0.1, noise_std=0.2, user_bias_std=0.1)
FAST_TRAIN = dict(eval_every=0, max_len=32, bucket_lengths=(16, 32), log_every=0, checkpoint_every_eval=False)


def _split(synthetic):
    dataset = synthetic.dataset
    cut = int(np.quantile(dataset.ratings["time"], 0.9))
    return split_by_time(dataset, cut, min_len=3, seed=123, name="synthetic")


@functools.lru_cache(maxsize=None)
def _trained(variant: str, encoder: tuple = ()):
    """A tiny model, one epoch on small synthetic data: enough to test the plumbing (not the quality).
    encoder: (field, value) pairs of the feature-encoder fields."""
    config = ModelConfig(variant=variant, embed_dim=8, hidden_size=8, attention_size=8, use_rating_input=True,
                         **dict(encoder))
    return train(_split(make_synthetic(**SMALL)), config, TrainConfig(max_epochs=1, batch_size=64, **FAST_TRAIN),
                 verbose=False)


@pytest.fixture(scope="module")
def result():
    """TAGM (gated, fast ranking path) for the fast tests; IARN's slower compile runs in the slow ones."""
    return _trained("tagm")


VARIANTS = ["tagm", pytest.param("iarn", marks=pytest.mark.slow)]


def _some_users(result, n=3):
    return [int(u) for u in result.data.split.test["user"].unique()[:n]]


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_save_load_in_fresh_process_gives_same_predictions_and_top_k(variant, tmp_path):
    result = _trained(variant)
    path = iarn_jax.save_model(result, tmp_path / "model")
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format_version"] == iarn_jax.serve.FORMAT_VERSION
    users = _some_users(result)
    items = [int(i) for i in result.data.split.test["item"].unique()[:20]]
    script = textwrap.dedent(f"""
        import json, sys
        import iarn_jax
        model = iarn_jax.load_model({str(path)!r})
        out = {{"pred": {{}}, "top": {{}}}}
        for user in {users!r}:
            out["pred"][str(user)] = model.predict(user, {items!r}).tolist()
            out["top"][str(user)] = model.recommend(user, k=10)["item"].tolist()
        json.dump(out, sys.stdout)
    """)
    # The subprocess gets only the saved folder (the data were generated in this process).
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = json.loads(proc.stdout.strip().splitlines()[-1])
    for user in users:
        np.testing.assert_allclose(loaded["pred"][str(user)], predict(result, user, items), atol=1e-6)
        assert loaded["top"][str(user)] == recommend(result, user, k=10)["item"].tolist()


@pytest.mark.slow  # trains a model end to end: ~20-45 s on this 2-core machine
def test_feature_encoder_model_saves_loads_and_serves(tmp_path):
    """A model with item-feature encoders on both sides: the loaded model rebuilds its feature tables
    from the saved features and predicts, ranks, serves a new user and explains as the trained one."""
    result = _trained("tagm", (("feature_encoder", "hier"), ("feature_inputs", "both"), ("feature_rank", 2)))
    assert "feature_encoder" in result.params["user_tower"] and "feature_encoder" in result.params["item_tower"]
    path = iarn_jax.save_model(result, tmp_path / "model")
    loaded = iarn_jax.load_model(path)
    assert loaded.model_config == result.model_config
    for name, table in result.constants["features"].items():
        np.testing.assert_array_equal(loaded.constants["features"][name], table)
    users = _some_users(result)
    items = [int(i) for i in result.data.split.test["item"].unique()[:20]]
    for user in users:
        np.testing.assert_allclose(loaded.predict(user, items), predict(result, user, items), atol=1e-6)
        assert loaded.recommend(user, k=10)["item"].tolist() == recommend(result, user, k=10)["item"].tolist()
    history = [(int(i), 4, 1_500_000_000 + k) for k, i in enumerate(items[:3])]
    np.testing.assert_allclose(loaded.predict(items=items[3:6], history=history),
                               predict(result, items=items[3:6], history=history), atol=1e-6)
    why = loaded.explain(users[0], items[0])
    assert why.model == "tagm+hier:both"
    np.testing.assert_allclose(why.prediction, predict(result, users[0], [items[0]])[0], atol=1e-5)
    # a manifest written before the typed fields (the encoder as one "KIND:INPUTS:rR" name) still loads
    manifest = json.loads((path / "manifest.json").read_text())
    legacy = {k: v for k, v in manifest["model_config"].items() if k not in ("feature_inputs", "feature_rank")}
    manifest["model_config"] = {**legacy, "feature_encoder": "hier:both:r2"}
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert iarn_jax.load_model(path).model_config == result.model_config


def test_loaded_model_keeps_ids_titles_histories_and_features(result, tmp_path):
    model = iarn_jax.load_model(iarn_jax.save_model(result, tmp_path / "m"))
    dataset = result.data.split.dataset
    np.testing.assert_array_equal(model.dataset.item_ids, dataset.item_ids)
    np.testing.assert_array_equal(model.dataset.item_titles, dataset.item_titles)
    assert model.dataset.item_features.paths == list(dataset.item_features.paths)
    for side in ("user_histories", "item_histories"):
        for name in ("offsets", "counterpart", "rating", "time"):
            np.testing.assert_array_equal(getattr(getattr(model.data, side), name),
                                          getattr(getattr(result.data, side), name))
    assert model.model_config == result.model_config and model.train_config == result.train_config


def test_recommend_returns_titles_scores_and_excludes_seen(result):
    user = _some_users(result, 1)[0]
    recs = recommend(result, user, k=10)
    assert list(recs.columns) == ["rank", "item", "title", "score"] and len(recs) == 10
    assert (np.diff(recs["score"].to_numpy()) <= 0).all()
    uh = result.data.user_histories
    seen = set(uh.counterpart[uh.events(user)].tolist())
    assert seen and not seen & set(recs["item"])
    everything = recommend(result, user, k=len(result.data.split.dataset.item_ids), exclude_seen=False)
    assert seen <= set(everything["item"])
    # scores are the model's predicted ratings
    np.testing.assert_allclose(recs["score"], predict(result, user, recs["item"].tolist()), atol=1e-4)


def test_recommend_many_matches_recommend(result):
    users = _some_users(result)
    many = recommend_many(result, users, k=5)
    assert len(many) == 5 * len(users)
    for user in users:
        assert many[many["user"] == user]["item"].tolist() == recommend(result, user, k=5)["item"].tolist()


@pytest.mark.parametrize("variant", VARIANTS)
def test_explain_returns_gates_per_step(variant):
    result = _trained(variant)
    user = _some_users(result, 1)[0]
    item = int(recommend(result, user, k=1)["item"].iloc[0])
    why = explain(result, user, item)
    length = min(int(result.data.user_histories.lengths[user]), result.train_config.max_len)
    assert len(why.user_steps) == length and len(why.item_steps) > 0
    assert all(0.0 <= s.gate <= 1.0 for s in why.user_steps + why.item_steps)
    np.testing.assert_allclose(why.prediction, predict(result, user, [item])[0], atol=1e-4)
    recs = recommend(result, user, k=3, explain=True, top_steps=2)
    for steps, raters in zip(recs["user_steps"], recs["item_steps"]):
        assert 1 <= len(steps) <= 2 and 1 <= len(raters) <= 2
        assert steps[0]["gate"] >= steps[-1]["gate"] and {"item", "title", "rating", "gate"} <= set(steps[0])
    assert all(isinstance(text, str) and text for text in recs["because"])


def test_new_user_row_is_neutral_and_leaves_known_users_unchanged(result):
    unknown = with_unknown_user(iarn_jax.serve.ServedModel.from_result(result))
    bias = np.asarray(unknown.params["user_tower"]["entity_bias"])
    assert bias.shape == (result.model_config.n_users + 1,)
    assert bias[-1] == pytest.approx(bias[:-1].mean(), abs=1e-6)
    assert not np.asarray(unknown.params["item_tower"]["step_embedding"])[-1].any()
    # recommend scores (the grown model) equal predict (the trained model) for a known user
    user = _some_users(result, 1)[0]
    recs = recommend(result, user, k=5)
    np.testing.assert_allclose(recs["score"], predict(result, user, recs["item"].tolist()), atol=1e-5)


def test_fresh_ratings_extend_an_existing_users_history(result):
    user = _some_users(result, 1)[0]
    uh = result.data.user_histories
    seen = set(uh.counterpart[uh.events(user)].tolist())
    new_item = int(recommend(result, user, k=1)["item"].iloc[0])
    recs = recommend(result, user, k=10, history=[(new_item, 1, None)])
    assert new_item not in set(recs["item"]) and not seen & set(recs["item"])
    why = explain(result, user, int(recs["item"].iloc[0]), history=[(new_item, 1, None)])
    assert why.user_history_length == len(seen) + 1 and why.user_steps[-1].id == new_item


def test_new_user_predict_and_bad_input(result):
    history = [(int(i), 4, 1_500_000_000 + k) for k, i in enumerate(result.data.split.test["item"].unique()[:3])]
    pred = predict(result, items=[1, 2, 3], history=history)
    assert pred.shape == (3,) and np.isfinite(pred).all()
    with pytest.raises(KeyError, match="unknown user"):
        recommend(result, "no-such-user")
    with pytest.raises(KeyError, match="unknown items"):
        recommend(result, history=[("no-such-item", 4, None)])
    with pytest.raises(ValueError, match="rating scale"):
        recommend(result, history=[(1, 9, None)])


@pytest.mark.slow
def test_new_user_with_one_planted_interest_gets_that_category():
    """A user unseen in training gives 5 stars to the 5 most-rated items of one planted category; no
    retraining. Over the 6 categories her top 10 hold on average >= 2x the chance count of that
    category (measured: 5.2 of 10 on average, [9, 9, 0, 3, 10, 0]; chance 10/6 = 1.7)."""
    planted = make_synthetic(**PLANTED)
    config = ModelConfig(variant="lstm", embed_dim=8, hidden_size=16, attention_size=8, use_rating_input=True)
    trained = train(_split(planted), config, TrainConfig(max_epochs=15, batch_size=32, learning_rate=3e-3,
                                                         decay_patience=100, stop_patience=100, **FAST_TRAIN),
                    verbose=False)
    category = planted.item_category
    counts = trained.data.item_histories.lengths
    hits = []
    for c in range(N_CATEGORIES):
        members = np.flatnonzero(category == c)
        liked = members[np.argsort(-counts[members], kind="stable")][:5]
        recs = recommend(trained, history=[(int(i), 5, None) for i in liked], k=10)
        assert not set(liked) & set(recs["item"])
        hits.append(int((category[recs["item"].to_numpy(np.int64)] == c).sum()))
    chance = 10 / N_CATEGORIES
    assert np.mean(hits) >= 2 * chance, hits


def _tiny_csv(tmp_path) -> tuple[str, str]:
    ratings = make_synthetic(n_users=80, n_items=40, n_ratings=1200, seed=1).dataset.ratings
    path = tmp_path / "ratings.csv"
    ratings[["user", "item", "rating", "time"]].to_csv(path, index=False)
    cut = pd.Timestamp(int(np.quantile(ratings["time"], 0.85)), unit="s").strftime("%Y-%m-%d")
    return f"csv:{path}", cut


@pytest.mark.slow  # a training subprocess: ~30 s alone, minutes on a loaded 2-core machine
def test_train_command_prints_no_absl_info_or_tpu_warning(tmp_path):
    data, cut = _tiny_csv(tmp_path)
    cmd = [sys.executable, "-m", "experiments.train", f"--data={data}", f"--cut={cut}", f"--workdir={tmp_path / 'run'}",
           "--set=train.max_epochs=1", "--set=model.hidden_size=8", "--set=model.attention_size=8",
           "--set=model.embed_dim=8", "--nocompilation_cache"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-3000:]
    assert "test RMSE" in output
    assert not re.search(r"^I\d{4} ", output, re.M), output[:3000]
    assert "libtpu" not in output and "backend 'tpu'" not in output
    assert (tmp_path / "run" / "checkpoints" / "best").exists()  # orbax did save, silently


def test_unknown_user_gets_zero_stationary_factors_and_mean_bias():
    """Per-user tables are found by shape (they grow with n_users): p_u of stationary factors -> 0."""
    import types

    import jax

    from iarn_jax.serve.model_io import ServedModel, abstract_params

    config = ModelConfig(variant="tagm", n_users=7, n_items=5, embed_dim=4, hidden_size=4, attention_size=4,
                         stationary_dim=3)
    served = ServedModel(config, TrainConfig(), None, types.SimpleNamespace(split=None))
    rng = np.random.default_rng(0)
    served.params = jax.tree_util.tree_map(lambda s: rng.normal(size=s.shape).astype(s.dtype),
                                           abstract_params(served.model))
    params = with_unknown_user(served).params
    np.testing.assert_array_equal(params["user_tower"]["stationary_factor"][-1], 0.0)
    np.testing.assert_array_equal(params["user_tower"]["stationary_factor"][:-1],
                                  served.params["user_tower"]["stationary_factor"])
    assert params["user_tower"]["entity_bias"][-1] == pytest.approx(served.params["user_tower"]["entity_bias"].mean())
    np.testing.assert_array_equal(params["item_tower"]["stationary_factor"], served.params["item_tower"]["stationary_factor"])


def test_recommend_cli_labels_a_ranking_models_scores_as_scores_not_predictions():
    from experiments.recommend import format_recommendations

    frame = pd.DataFrame({"rank": [1, 2], "item": ["50", "172"], "score": [4.25, 3.5]})
    rating_text = format_recommendations(frame, explain=False)
    ranking_text = format_recommendations(frame, explain=False, predicts_ratings=False)
    assert rating_text.splitlines() == ["  1. item 50  (item 50, predicted 4.25)", "  2. item 172  (item 172, predicted 3.50)"]
    assert ranking_text.splitlines() == ["  1. item 50  (item 50, score 4.25)", "  2. item 172  (item 172, score 3.50)"]


def test_explanation_of_a_ranking_model_labels_its_prediction_a_score(result):
    """A ranking model's output is a score, not a rating: the explanation says so (text and kind);
    a rating model's says "predicted rating". The objective comes from the training config."""
    user = _some_users(result, 1)[0]
    item = int(recommend(result, user, k=1)["item"].iloc[0])
    rating_view = explain(result, user, item)
    ranking_result = dataclasses.replace(
        result, train_config=dataclasses.replace(result.train_config, objective="ranking", history_mode="full_without_self"))
    ranking_view = explain(ranking_result, user, item)
    assert (rating_view.prediction_kind, ranking_view.prediction_kind) == ("rating", "score")
    assert ranking_view.prediction == pytest.approx(rating_view.prediction)
    assert "predicted rating" in rating_view.format() and "ranking score" not in rating_view.format()
    assert "ranking score" in ranking_view.format() and "predicted rating" not in ranking_view.format()
    served = iarn_jax.serve.ServedModel.from_result(ranking_result)
    assert explain(served, user, item).prediction_kind == "score"


def test_feature_bias_model_saves_loads_and_ranks_with_its_category_biases(tmp_path):
    """feature_bias: the loaded model rebuilds the feature tables and predicts / ranks as the trained
    one, and the full-ranking scorer includes the category biases (its scores = the pair path's)."""
    result = _trained("tagm", (("feature_bias", True),))
    biases = np.asarray(result.params["item_tower"]["feature_bias"])
    assert np.abs(biases).max() > 1e-3  # started at the hierarchical bias model, not at 0
    loaded = iarn_jax.load_model(iarn_jax.save_model(result, tmp_path / "model"))
    assert loaded.model_config.feature_bias
    user = _some_users(result, 1)[0]
    items = [int(i) for i in result.data.split.test["item"].unique()[:20]]
    np.testing.assert_allclose(loaded.predict(user, items), predict(result, user, items), atol=1e-6)
    top = recommend(result, user, k=5)
    assert loaded.recommend(user, k=5)["item"].tolist() == top["item"].tolist()
    np.testing.assert_allclose(top["score"].to_numpy(), predict(result, user, top["item"].tolist()), atol=1e-4)
