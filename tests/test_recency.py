"""The time-aware item bias (``ModelConfig.recency_windows``): the recency features against a plain
loop, their batching (pairs, negatives, padding), the bias term in the prediction, and the ranking
scorer (items as of the end of the training period) against the model's own predictions."""
from __future__ import annotations

import jax
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data import batching
from iarn_jax.data.histories import build_histories, make_pairs
from iarn_jax.data.negatives import materialize_negatives
from iarn_jax.data.protocols import load_protocol
from iarn_jax.data.recency import ItemRecency
from iarn_jax.evaluate import ranking
from iarn_jax.evaluate.scorer import RankingScorer
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN

FRACTIONS = (0.05, 0.3)


def random_history(seed=0, n_users=30, n_items=12, n_events=400):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user": rng.integers(0, n_users, n_events), "item": rng.integers(0, n_items, n_events),
                          "rating": rng.integers(1, 6, n_events).astype(np.float32),
                          "time": rng.integers(1000, 2000, n_events)})  # many ties in time
    return frame, build_histories(frame, n_users, n_items)


def loop_features(frame, fractions, items, times):
    """The definition, one query at a time: log1p(#events of the item in [t - w, t)) per window and
    log1p(#events before t), with t = min(time, latest event + 1) and w = round(f * span)."""
    t0, t1 = frame["time"].min(), frame["time"].max()
    windows = [max(1, int(round(f * (t1 + 1 - t0)))) for f in fractions]
    out = []
    for item, time in zip(items, times):
        t = min(time, t1 + 1)
        own = frame["time"][frame["item"] == item].to_numpy()
        row = [np.sum((own >= t - w) & (own < t)) for w in windows] + [np.sum(own < t)]
        out.append(np.log1p(np.asarray(row, np.float64)))
    return np.asarray(out)


def test_features_equal_the_definition():
    frame, (_, ih) = random_history()
    recency = ItemRecency.from_histories(ih, FRACTIONS)
    rng = np.random.default_rng(1)
    items = rng.integers(0, 12, 300)
    times = np.concatenate([rng.integers(900, 2100, 290), frame["time"].to_numpy()[:10]])  # some exact ties
    got = recency(items, times)
    assert got.shape == (300, 3) and got.dtype == np.float32
    np.testing.assert_allclose(got, loop_features(frame, FRACTIONS, items, times), rtol=1e-6)
    # after the training period every query sees the same thing: the state at its end
    np.testing.assert_array_equal(recency(items, np.full(300, 10**9)), recency.at_end(items))
    # nothing is counted at or before the first event, everything at the end
    assert np.all(recency(items, np.full(300, frame["time"].min())) == 0.0)
    np.testing.assert_allclose(np.expm1(recency.at_end(np.arange(12))[:, -1]), np.bincount(frame["item"], minlength=12),
                               rtol=1e-5)


def test_window_fractions_are_checked():
    _, (_, ih) = random_history()
    with pytest.raises(ValueError, match="fractions"):
        ItemRecency.from_histories(ih, (0.0, 0.5))
    with pytest.raises(ValueError, match="recency_windows"):
        ModelConfig(recency_windows=(1.5,))


def test_batches_carry_the_features_at_each_pairs_time():
    frame, (uh, ih) = random_history()
    recency = ItemRecency.from_histories(ih, FRACTIONS)
    pairs = make_pairs(frame.iloc[:40], uh, ih, mode="full")
    batch = batching.materialize(np.r_[np.arange(40), -1, -1], pairs, uh, ih, recency=recency)
    np.testing.assert_array_equal(batch["item_recency"][:40], recency(pairs.item, pairs.time))
    assert np.all(batch["item_recency"][40:] == 0.0)  # padding examples
    assert "item_recency" not in batching.materialize(np.arange(4), pairs, uh, ih)
    negatives = np.arange(12).reshape(4, 3) % 12
    neg = materialize_negatives(negatives, pairs.time[:4], ih, recency=recency)
    np.testing.assert_array_equal(neg["neg_item_recency"], recency(negatives.reshape(-1), np.repeat(pairs.time[:4], 3)))


@pytest.fixture(scope="module")
def synthetic():
    split = load_protocol("synthetic", None, n_users=120, n_items=60, n_ratings=3000)
    uh, ih = build_histories(split.history, split.n_users, split.n_items)
    return split, uh, ih


def _model(split, uh, ih, recency, variant="iarn", weight=(0.3, -0.2, 0.5)):
    config = ModelConfig(variant=variant, n_users=split.n_users, n_items=split.n_items, embed_dim=8, hidden_size=8,
                         attention_size=6, use_rating_input=True, global_mean=3.5, recency_windows=FRACTIONS,
                         stationary_dim=4)
    model = IARN(config)
    pairs = make_pairs(split.train.iloc[:8], uh, ih, mode="full")
    batch = batching.materialize(np.arange(8), pairs, uh, ih, recency=recency)
    params = model.init(jax.random.PRNGKey(0), batch)["params"]
    assert np.all(np.asarray(params["item_tower"]["recency_weight"]) == 0.0)  # starts as the model without it
    params = jax.tree_util.tree_map(lambda x: x, params)
    params["item_tower"]["recency_weight"] = np.asarray(weight, np.float32)
    return model, params, pairs, batch


def test_the_bias_adds_w_dot_features_to_the_prediction(synthetic):
    split, uh, ih = synthetic
    recency = ItemRecency.from_histories(ih, FRACTIONS)
    model, params, pairs, batch = _model(split, uh, ih, recency)
    with_term, aux = model.apply({"params": params}, batch)
    zero = jax.tree_util.tree_map(lambda x: x, params)
    zero["item_tower"]["recency_weight"] = np.zeros(3, np.float32)
    without, _ = model.apply({"params": zero}, batch)
    expected = np.asarray(without) + batch["item_recency"] @ np.asarray([0.3, -0.2, 0.5], np.float32)
    np.testing.assert_allclose(np.asarray(with_term), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["bias"]) - np.asarray(model.apply({"params": zero}, batch)[1]["bias"]),
                               batch["item_recency"] @ np.asarray([0.3, -0.2, 0.5], np.float32), rtol=1e-5, atol=1e-6)
    missing = {k: v for k, v in batch.items() if k != "item_recency"}
    with pytest.raises(ValueError, match="item_recency"):
        model.apply({"params": params}, missing)


@pytest.mark.parametrize("variant", ["iarn", "tagm"])
def test_scorer_scores_items_as_of_the_end_of_training(synthetic, variant):
    split, uh, ih = synthetic
    recency = ItemRecency.from_histories(ih, FRACTIONS)
    model, params, _, _ = _model(split, uh, ih, recency, variant=variant)
    universe = ranking.kept_item_universe(split)
    user = int(ranking.eligible_test_users(split)[0])
    scorer = RankingScorer(model, params, uh, ih, universe, chunk_size=8, encode_batch=8)
    frame = pd.DataFrame({"user": user, "item": universe, "rating": 0.0, "time": 10**12})  # after the cut
    pairs = make_pairs(frame, uh, ih, mode="full")
    batch = batching.materialize(np.arange(universe.size), pairs, uh, ih, recency=recency)
    np.testing.assert_array_equal(batch["item_recency"], recency.at_end(universe))
    expected, _ = model.apply({"params": params}, batch)
    np.testing.assert_allclose(scorer.score_items(user, universe), np.asarray(expected), rtol=1e-5, atol=1e-5)


def test_saved_model_structure_includes_the_bias_weights(synthetic):
    """Loading a saved model builds its parameter tree from a dummy batch: with recency_windows that
    batch must carry the features, and the tree holds the bias weights [K + 1]."""
    from iarn_jax.serve.model_io import abstract_params

    split, uh, ih = synthetic
    model, params, _, _ = _model(split, uh, ih, ItemRecency.from_histories(ih, FRACTIONS))
    tree = abstract_params(model)
    assert tree["item_tower"]["recency_weight"].shape == (len(FRACTIONS) + 1,)
    assert jax.tree_util.tree_structure(tree) == jax.tree_util.tree_structure(params)
