"""The full-ranking scorer equals the model's own predictions on the same pairs (every variant,
items and users in different padding buckets, with and without a history cap), and its AUC
evaluation equals the plain per-pair evaluation."""
from __future__ import annotations


import jax
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data import batching
from iarn_jax.data.histories import build_histories, make_pairs
from iarn_jax.data.protocols import load_protocol
from iarn_jax.evaluate import ranking
from iarn_jax.evaluate.scorer import RankingScorer
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN

BUCKETS = (32, 64)  # the synthetic item histories (10..82 steps) fall in buckets 32, 64 and 128
DIRECT_BUCKETS = (128,)  # the reference pads every pair to 128 steps: one compile, other padding


@pytest.fixture(scope="module")
def setup():
    split = load_protocol("synthetic", None, n_users=120, n_items=60, n_ratings=3000)
    uh, ih = build_histories(split.history, split.n_users, split.n_items)
    universe = ranking.kept_item_universe(split)
    users = ranking.eligible_test_users(split)[:6]
    return split, uh, ih, universe, users


def init_params(config, uh, ih, seed=0):
    model = IARN(config)
    pairs = make_pairs(pd.DataFrame({"user": [0], "item": [0], "rating": [3.0], "time": [0]}), uh, ih)
    batch = batching.materialize(np.array([0]), pairs, uh, ih)
    params = model.init(jax.random.PRNGKey(seed), batch)["params"]
    # non-zero biases (and match kernels, zero at init) so those paths are exercised too
    rng = np.random.default_rng(seed)
    params = jax.tree_util.tree_map_with_path(
        lambda path, x: x + 0.1 * rng.standard_normal(x.shape).astype(x.dtype)
        if any(k in jax.tree_util.keystr(path) for k in ("entity_bias", "match_kernel")) else x, params)
    return model, params


def direct_predictions(model, params, uh, ih, users, items, max_len):
    """model.__call__ on every (user, item) pair, batched the way training evaluates."""
    frame = pd.DataFrame({"user": np.repeat(users, items.size), "item": np.tile(items, users.size),
                          "rating": 0.0, "time": 0})
    pairs = make_pairs(frame, uh, ih, mode="full")
    plan = batching.make_batch_plan(pairs, 512, shuffle=False, bucket_lengths=DIRECT_BUCKETS, max_len=max_len)
    out = np.zeros(len(pairs), np.float32)
    apply = jax.jit(lambda p, b: model.apply({"params": p}, b)[0])
    for entry in plan:
        batch = batching.materialize(entry, pairs, uh, ih, max_len=max_len, bucket_lengths=DIRECT_BUCKETS)
        valid = entry.indices >= 0
        out[entry.indices[valid]] = np.asarray(apply(params, batch))[valid]
    return out.reshape(users.size, items.size)


# case -> max_len (history cap); "+options": every gate option (target embedding, step input, match)
CASES = {"iarn": None, "tagm": 40, "iarn+options": 40}
_cache: dict = {}


def scorer_case(setup, variant):
    """(model, params, scorer, direct predictions [users, universe]) of one variant, built once."""
    if variant not in _cache:
        split, uh, ih, universe, users = setup
        max_len = CASES[variant]
        options = variant.endswith("+options")
        config = ModelConfig(variant=variant.removesuffix("+options"), n_users=split.n_users,
                             n_items=split.n_items, embed_dim=8, hidden_size=12, attention_size=6,
                             use_rating_input=True, bias="global_user_item", global_mean=3.5,
                             gate_target_embedding=options, gate_step_input=options, gate_match=options)
        model, params = init_params(config, uh, ih)
        # chunk_size 8: several chunks per bucket (lax.map over them); encode_batch 4: several
        # encoding calls per bucket
        scorer = RankingScorer(model, params, uh, ih, universe, max_len=max_len, bucket_lengths=BUCKETS,
                               chunk_size=8, encode_batch=4)
        expected = direct_predictions(model, params, uh, ih, users, universe, max_len)
        _cache[variant] = (model, params, scorer, expected)
    return _cache[variant]


@pytest.mark.parametrize("variant", sorted(CASES))
def test_scorer_equals_direct_predictions(setup, variant):
    split, uh, ih, universe, users = setup
    max_len = CASES[variant]
    model, params, scorer, expected = scorer_case(setup, variant)
    # the items really do fall in several buckets
    lengths = batching.capped_lengths(ih.lengths[universe], max_len)
    assert np.unique(batching.bucket_length(lengths, BUCKETS, max_len)).size >= 2
    got = scorer.score_matrix(users, universe)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # per-user interface, shuffled candidate subset
    rng = np.random.default_rng(0)
    subset = rng.permutation(universe)[:17]
    column = np.searchsorted(universe, subset)
    np.testing.assert_allclose(scorer.score_items(int(users[1]), subset), expected[1, column], rtol=1e-5, atol=1e-5)
    if variant == "iarn":
        assert not scorer.fast and len(scorer.buckets) == 3
    if variant.startswith("iarn"):
        # scores depend on the pair: a user's score vector is not a shifted copy of another's
        assert np.std(np.diff(got[0] - got[1])) > 1e-6
    else:
        assert scorer.fast


def test_scorer_ranking_metrics_equal_per_pair_evaluation(setup):
    split, uh, ih, universe, users = setup
    model, params, scorer, direct = scorer_case(setup, "iarn")

    def reference(user, items):
        return direct[int(np.flatnonzero(users == user)[0]), np.searchsorted(universe, items)]

    got = ranking.evaluate_ranking(scorer.score_items, split, users, progress=False)
    want = ranking.evaluate_ranking(reference, split, users, progress=False)
    for name in ("auc", "ndcg10", "hr10", "n_users", "n_pairs"):
        assert got[name] == pytest.approx(want[name], abs=1e-9)


def test_from_result_uses_training_settings(setup):
    split, uh, ih, universe, users = setup
    from iarn_jax.training.config import TrainConfig
    from iarn_jax.training.loop import PreparedData, TrainResult

    config = ModelConfig(variant="lstm", n_users=split.n_users, n_items=split.n_items, embed_dim=4,
                         hidden_size=4, attention_size=2)
    model, params = init_params(config, uh, ih)
    data = PreparedData(split=split, user_histories=uh, item_histories=ih, train=None, val=None, test=None,
                        history_mode="full")
    result = TrainResult(config, TrainConfig(max_len=5, bucket_lengths=BUCKETS), params, {}, data)
    items = universe[1:]
    scorer = RankingScorer.from_result(result, items)
    assert scorer.max_len == 5 and scorer.bucket_lengths == BUCKETS
    np.testing.assert_array_equal(scorer.items, items)
    expected = direct_predictions(model, params, uh, ih, users[:2], items, 5)
    np.testing.assert_allclose(scorer.score_matrix(users[:2], items), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(KeyError):  # candidates must come from the cached item set
        scorer.score_items(int(users[0]), universe[:1])


@pytest.mark.parametrize("variant", ["iarn", "tagm"])
def test_interaction_score_drops_exactly_the_bias_terms(setup, variant):
    """score="interaction" (the authors' ranking score) = predicted rating - (mu + b_u + b_i)."""
    split, uh, ih, universe, users = setup
    model, params, _, _ = scorer_case(setup, variant)
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(np.asarray, params)
    b_user = rng.normal(size=params["user_tower"]["entity_bias"].shape).astype(np.float32)
    b_item = rng.normal(size=params["item_tower"]["entity_bias"].shape).astype(np.float32)
    params["user_tower"]["entity_bias"], params["item_tower"]["entity_bias"] = b_user, b_item
    kwargs = dict(max_len=CASES[variant], bucket_lengths=BUCKETS, chunk_size=8, encode_batch=4)
    rating = RankingScorer(model, params, uh, ih, universe, **kwargs).score_matrix(users, universe)
    interaction = RankingScorer(model, params, uh, ih, universe, score="interaction",
                                **kwargs).score_matrix(users, universe)
    bias = 3.5 + b_user[users][:, None] + b_item[universe][None, :]
    np.testing.assert_allclose(rating - interaction, bias, rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="score must be"):
        RankingScorer(model, params, uh, ih, universe, score="bias", **kwargs)
