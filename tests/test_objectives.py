"""Ranking objectives: the losses against NumPy, the negative sampler, drop-self histories, the train
step with negatives (shared user encoding), resume with negatives, and a planted-preference ranking run."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data import batching, histories
from iarn_jax.data.negatives import NegativeSampler, materialize_negatives, negative_rng
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN
from iarn_jax.training import objectives
from iarn_jax.training.objectives import objective_loss, sampled_auc


def _np_log_sigmoid(z):
    return -np.logaddexp(0.0, -z)


POS = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
NEG = np.array([[1.0, 2.5], [0.0, -3.0], [0.5, 0.5], [-1.0, 4.0]], np.float32)
W = np.array([1.0, 1.0, 0.0, 1.0], np.float32)  # the third positive is a padding example
RATING = np.array([4.0, 2.0, 3.0, 5.0], np.float32)


def test_bpr_loss_matches_numpy():
    per = np.mean(-_np_log_sigmoid(POS[:, None] - NEG), axis=1)
    expected = np.sum(W * per) / W.sum()
    np.testing.assert_allclose(objectives.bpr_loss(POS, NEG, W), expected, rtol=1e-6)


def test_bce_and_softmax_losses_match_numpy():
    offset = 0.7
    per = -_np_log_sigmoid(POS - offset) - np.sum(_np_log_sigmoid(-(NEG - offset)), axis=1)
    np.testing.assert_allclose(objectives.bce_loss(POS, NEG, W, offset), np.sum(W * per) / W.sum(), rtol=1e-6)
    logits = np.concatenate([POS[:, None], NEG], axis=1).astype(np.float64)
    per = np.log(np.exp(logits).sum(1)) - logits[:, 0]
    np.testing.assert_allclose(objectives.sampled_softmax_loss(POS, NEG, W), np.sum(W * per) / W.sum(), rtol=1e-6)


def test_joint_and_negatives_as_zero_match_numpy():
    batch = {"weight": W, "rating": RATING}
    mse = np.sum(W * (POS - RATING) ** 2) / W.sum()
    bpr = np.sum(W * np.mean(-_np_log_sigmoid(POS[:, None] - NEG), axis=1)) / W.sum()
    np.testing.assert_allclose(objective_loss("joint", POS, NEG, batch, joint_weight=0.3), mse + 0.3 * bpr, rtol=1e-6)
    zero = np.sum(W * ((POS - RATING) ** 2 + np.sum(NEG**2, axis=1))) / (W.sum() * 3)
    np.testing.assert_allclose(objective_loss("negatives_as_zero", POS, NEG, batch), zero, rtol=1e-6)
    np.testing.assert_allclose(objective_loss("rating", POS, None, batch), mse, rtol=1e-6)


def test_sampled_auc_counts_ties_half():
    assert sampled_auc(np.array([1.0, 0.0]), np.array([[0.0, 2.0], [0.0, -1.0]])) == pytest.approx((0.5 + 0.75) / 2)


# -- sampler ----------------------------------------------------------------------------------------
def _histories(n_users=30, n_items=25, n=300, seed=0):
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"user": rng.integers(0, n_users, n), "item": rng.integers(0, n_items, n),
                          "rating": rng.integers(1, 6, n).astype(np.float32), "time": rng.integers(0, 1000, n)})
    frame = frame.drop_duplicates(["user", "item"]).reset_index(drop=True)
    return frame, histories.build_histories(frame, n_users, n_items)


@pytest.mark.parametrize("distribution", ["uniform", "popularity"])
def test_sampler_never_returns_a_training_item_and_is_deterministic(distribution):
    frame, (uh, ih) = _histories()
    sampler = NegativeSampler(uh, 25, ih.lengths, distribution=distribution, alpha=1.0)
    users = np.repeat(np.arange(30), 10)
    a = sampler.sample(users, 7, negative_rng(3, 1, 5))
    b = sampler.sample(users, 7, negative_rng(3, 1, 5))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, sampler.sample(users, 7, negative_rng(3, 1, 6)))
    seen = set(zip(frame["user"], frame["item"]))
    assert not any((u, i) in seen for u, row in zip(users, a) for i in row)
    assert set(np.unique(a)) <= set(np.flatnonzero(ih.lengths > 0))  # the pool: items with events
    if distribution == "popularity":  # draws follow the counts: popular items are drawn more often
        counts = np.bincount(sampler.sample(np.zeros(20000, np.int64), 1, np.random.default_rng(0))[:, 0], minlength=25)
        pool = np.flatnonzero((ih.lengths > 0) & ~np.isin(np.arange(25), frame.loc[frame.user == 0, "item"]))
        r = np.corrcoef(counts[pool], ih.lengths[pool])[0, 1]
        assert r > 0.8


def test_materialize_drop_self_removes_the_own_step():
    frame = pd.DataFrame({"user": [0, 0, 0, 1], "item": [1, 2, 3, 2], "rating": [5.0, 4.0, 3.0, 1.0],
                          "time": [1, 2, 3, 4]})
    uh, ih = histories.build_histories(frame, 2, 4)
    pairs = histories.make_pairs(frame.iloc[[1]], uh, ih, mode="full")  # (user 0, item 2) at time 2
    kept = batching.materialize(np.array([0]), pairs, uh, ih, drop_self=False)
    dropped = batching.materialize(np.array([0]), pairs, uh, ih, drop_self=True)
    assert kept["user_history"][0, :3].tolist() == [1, 2, 3] and kept["user_history_rating"][0, 1] == 0
    assert dropped["user_history_mask"][0].sum() == 2
    assert dropped["user_history"][0, :2].tolist() == [1, 3]
    assert dropped["user_history_rating"][0, :2].tolist() == [5.0, 3.0]
    assert dropped["item_history"][0, :1].tolist() == [1]  # item 2 without user 0: only user 1


def test_negative_histories_follow_the_history_mode():
    frame, (uh, ih) = _histories()
    negs = np.array([[3, 4], [5, 6]])
    times = np.array([500, 0])
    full = materialize_negatives(negs, times, ih, history_mode="full")
    causal = materialize_negatives(negs, times, ih, history_mode="causal")
    np.testing.assert_array_equal(full["neg_item_history_mask"].sum(1), ih.lengths[negs.reshape(-1)])
    before = [(ih.time[ih.events(i)] < t).sum() for i, t in zip(negs.reshape(-1), np.repeat(times, 2))]
    np.testing.assert_array_equal(causal["neg_item_history_mask"].sum(1), before)
    assert causal["neg_item_history_mask"][2:].sum() == 0  # time 0: nothing before it


# -- the model path ---------------------------------------------------------------------------------
def test_score_with_negatives_equals_scoring_each_pair_alone():
    """The shared user encoding gives exactly the predictions of the positive and each negative scored
    as ordinary pairs (the negative's item history in place of the positive's)."""
    rng = np.random.default_rng(0)
    n_users, n_items, b, k, T = 6, 9, 3, 2, 5
    cfg = ModelConfig(variant="iarn", n_users=n_users, n_items=n_items, embed_dim=4, hidden_size=5,
                      attention_size=3, use_rating_input=True, gate_match=True, stationary_dim=2, attention_cell="tanh")

    def side(n, n_ids):
        mask = np.arange(T)[None] < rng.integers(1, T + 1, n)[:, None]
        return (rng.integers(0, n_ids, (n, T)) * mask).astype(np.int32), (rng.integers(1, 6, (n, T)) * mask).astype(
            np.float32), mask

    uh, uhr, um = side(b, n_items)
    ih_, ihr, im = side(b, n_users)
    nh, nhr, nm = side(b * k, n_users)
    batch = dict(user=np.arange(b, dtype=np.int32), item=np.array([1, 2, 3], np.int32), rating=np.ones(b, np.float32),
                 weight=np.ones(b, np.float32), user_history=uh, user_history_rating=uhr, user_history_mask=um,
                 item_history=ih_, item_history_rating=ihr, item_history_mask=im,
                 neg_item=np.array([4, 5, 6, 7, 8, 0], np.int32), neg_item_history=nh, neg_item_history_rating=nhr,
                 neg_item_history_mask=nm)
    model = IARN(cfg)
    variables = model.init(jax.random.key(1), batch)
    pos, neg, _ = model.apply(variables, batch, method=IARN.score_with_negatives)
    plain, _ = model.apply(variables, batch)
    np.testing.assert_allclose(np.asarray(pos), np.asarray(plain), rtol=1e-6)
    rows = np.repeat(np.arange(b), k)
    single = dict(batch, user=batch["user"][rows], user_history=uh[rows], user_history_rating=uhr[rows],
                  user_history_mask=um[rows], item=batch["neg_item"], item_history=nh, item_history_rating=nhr,
                  item_history_mask=nm)
    expected, _ = model.apply(variables, single)
    np.testing.assert_allclose(np.asarray(neg).reshape(-1), np.asarray(expected), rtol=1e-5, atol=1e-6)


# -- training ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_split():
    from iarn_jax.data.protocols import load_protocol

    return load_protocol("synthetic", None, n_users=80, n_items=40, n_ratings=1600, seed=0)


TINY = ModelConfig(variant="iarn", embed_dim=6, hidden_size=6, attention_size=6, use_rating_input=True,
                   attention_cell="tanh", stationary_dim=4)


def _ranking_config(**kw):
    from iarn_jax.training.config import TrainConfig

    base = dict(objective="ranking", n_negatives=2, history_mode="full_without_self", batch_size=32,
                eval_batch_size=64, eval_every=10, max_steps=30, max_len=16, bucket_lengths=(8, 16), log_every=0,
                val_negatives=5, prefetch=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow  # ~50 s: three short training runs
def test_resume_with_negatives_equals_uninterrupted_run(tiny_split, tmp_path, monkeypatch):
    from iarn_jax.training import loop

    cfg = _ranking_config()
    full = loop.train(tiny_split, TINY, cfg, workdir=tmp_path / "full", verbose=False)
    with monkeypatch.context() as patch:  # interrupted right after the step-10 checkpoint
        patch.setattr(loop, "_STOP_AFTER_STEPS", 10)
        loop.train(tiny_split, TINY, cfg, workdir=tmp_path / "part", verbose=False)
    resumed = loop.train(tiny_split, TINY, cfg, workdir=tmp_path / "part", verbose=False, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert full.metrics["val_auc_sampled"] == resumed.metrics["val_auc_sampled"]
    assert 0.0 <= full.metrics["user_gates_saturated"] <= 1.0


def test_ranking_objective_needs_a_history_without_the_target():
    from iarn_jax.training.config import TrainConfig

    with pytest.raises(ValueError, match="full_without_self"):
        TrainConfig(objective="ranking", history_mode="full")


@pytest.mark.slow
def test_planted_preferences_are_ranked_first(tmp_path):
    """Users prefer one of 4 item groups (their training items all come from it); a ranking-trained IARN
    must rank held-out items of the user's group above the other groups' items (AUC >= 0.9)."""
    from iarn_jax.data.types import Dataset, ProtocolSplit
    from iarn_jax.training import loop

    rng = np.random.default_rng(0)
    n_users, n_items, groups = 120, 40, 4
    group_of_user = rng.integers(0, groups, n_users)
    rows = []
    for u in range(n_users):
        mine = np.flatnonzero(np.arange(n_items) % groups == group_of_user[u])
        for t, i in enumerate(rng.choice(mine, 6, replace=False)):
            rows.append((u, int(i), float(rng.integers(3, 6)), u * 100 + t))
    frame = pd.DataFrame(rows, columns=["user", "item", "rating", "time"])
    last = frame.groupby("user").tail(1)
    train_frame = frame.drop(last.index)
    val = train_frame.groupby("user").tail(1)
    dataset = Dataset("planted", frame, np.arange(n_users), np.arange(n_items), (1.0, 5.0))
    split = ProtocolSplit("planted", dataset, train_frame.reset_index(drop=True),
                          train_frame.drop(val.index).reset_index(drop=True), val.reset_index(drop=True),
                          last.reset_index(drop=True), min_len=1)
    model = ModelConfig(variant="iarn", embed_dim=8, hidden_size=8, attention_size=8, attention_cell="tanh",
                        gate_logit_scale=0.25, gate_match=True)
    cfg = _ranking_config(max_steps=600, eval_every=60, n_negatives=4, learning_rate=3e-3, batch_size=32)
    result = loop.train(split, model, cfg, verbose=False)
    from iarn_jax.evaluate.ranking import evaluate_ranking, kept_item_universe
    from iarn_jax.evaluate.scorer import RankingScorer

    scorer = RankingScorer.from_result(result, kept_item_universe(split))
    metrics = evaluate_ranking(scorer.score_items, split, np.arange(n_users), progress=False)
    assert metrics["auc"] >= 0.9, metrics


def _tiny_model_on_test_pairs(tiny_split):
    """(ModelConfig, IARN, a batch of every test pair, freshly initialised parameters)."""
    from iarn_jax.training import loop

    cfg = loop.complete_model_config(TINY, tiny_split)
    model = IARN(cfg)
    data = loop.prepare_data(tiny_split, "full_without_self")
    batch = batching.materialize(np.arange(len(data.test)), data.test, data.user_histories, data.item_histories,
                                 max_len=16)
    return cfg, model, batch, model.init(jax.random.key(0), batch)["params"]


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["rating", "ranking"])
def test_factor_baseline_start_predicts_exactly_the_baseline(tiny_split, objective):
    """factor_init="baseline": the model starts at our MF (rating) / BPR (ranking): same scores."""
    from iarn_jax.models.baselines.bpr import BPR
    from iarn_jax.models.baselines.mf import MF
    from iarn_jax.training import loop

    cfg, model, batch, params = _tiny_model_on_test_pairs(tiny_split)
    params, info = loop.init_from_factor_baseline(params, tiny_split, cfg, objective, seed=3)
    pred, _ = model.apply({"params": params}, batch)
    users, items = batch["user"].astype(np.int64), batch["item"].astype(np.int64)
    if objective == "rating":
        baseline = MF(factors=cfg.stationary_dim).fit(tiny_split, seed=3, verbose=False)
        expected = baseline.predict(users, items)
        assert info["factor_init"] == "mf"
    else:  # BPR scores b_i + p_u . q_i; the model adds the constant mu (and b_u = 0)
        baseline = BPR(factors=cfg.stationary_dim).fit(tiny_split, seed=3, verbose=False)
        w = {k: np.asarray(v) for k, v in baseline.params.items()}
        expected = w["item_bias"][items] + np.sum(w["user_factors"][users] * w["item_factors"][items], -1) + cfg.global_mean
    np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.slow  # trains a model end to end: ~20-45 s on this 2-core machine
def test_hievh_start_predicts_exactly_hievh(tiny_split):
    """factor_init="hievh": the model starts at HieVH trained on the training pairs (no refit), its
    category factors and biases folded into q_i and b_i: the same predictions."""
    from iarn_jax.models.baselines.hievh import HieVH
    from iarn_jax.training import loop

    cfg, model, batch, params = _tiny_model_on_test_pairs(tiny_split)
    params, info = loop.init_from_factor_baseline(params, tiny_split, cfg, "rating", seed=3, baseline_name="hievh")
    pred, _ = model.apply({"params": params}, batch)
    baseline = HieVH(dim=cfg.stationary_dim, refit=False).fit(tiny_split, seed=3, verbose=False)
    expected = baseline.predict(batch["user"].astype(np.int64), batch["item"].astype(np.int64))
    assert info["factor_init"] == "hievh" and np.isfinite(info["factor_init_val_rmse"])
    np.testing.assert_allclose(np.asarray(pred), expected, rtol=1e-5, atol=1e-5)


def test_gate_saturation_statistic_on_a_hand_made_case():
    """Share of valid steps (of real examples) whose gate is < 0.01 or > 0.99, per side."""
    from iarn_jax.training.step import make_gate_stats_step, make_mesh

    gates = {"user": np.array([[0.005, 0.5, 0.995, 0.001], [0.2, 0.999, 0.0, 0.0]], np.float32),
             "item": np.array([[0.3, 0.3, 0.3, 0.3], [0.001, 0.001, 0.001, 0.001]], np.float32)}
    batch = {"weight": np.array([1.0, 1.0], np.float32),
             "user_history_mask": np.array([[1, 1, 1, 0], [1, 1, 0, 0]], bool),  # step 4 of row 1: padding
             "item_history_mask": np.array([[1, 1, 1, 1], [1, 1, 1, 1]], bool),
             "user_g": gates["user"], "item_g": gates["item"]}
    apply_fn = lambda params, b, deterministic, rngs, constants: (None, {"user_gates": b["user_g"], "item_gates": b["item_g"]})  # noqa: E731
    stats = np.asarray(make_gate_stats_step(apply_fn, make_mesh(jax.devices()[:1]))({}, batch))
    # user: valid steps 0.005, 0.5, 0.995 | 0.2, 0.999 -> saturated 0.005, 0.995, 0.999 = 3 of 5
    np.testing.assert_array_equal(stats, [[3, 5], [4, 8]])
    batch["weight"] = np.array([1.0, 0.0], np.float32)  # a padding example counts for nothing
    stats = np.asarray(make_gate_stats_step(apply_fn, make_mesh(jax.devices()[:1]))({}, batch))
    np.testing.assert_array_equal(stats, [[2, 3], [0, 4]])


def test_eval_with_gate_stats_returns_the_eval_predictions_and_the_stats_steps_counts():
    """The final test pass's one-program step: predictions as the eval step, counts as the stats step."""
    from iarn_jax.training.step import make_eval_step, make_eval_with_gate_stats_step, make_gate_stats_step, make_mesh

    rng = np.random.default_rng(0)
    batch = {"weight": np.array([1.0, 1.0, 0.0], np.float32), "rating": rng.normal(size=3).astype(np.float32),
             "user_history_mask": rng.uniform(size=(3, 5)) < 0.7, "item_history_mask": rng.uniform(size=(3, 4)) < 0.7,
             "user_g": rng.uniform(size=(3, 5)).astype(np.float32) ** 3, "item_g": rng.uniform(size=(3, 4)).astype(np.float32)}
    batch["user_g"][0, :2] = 0.999

    def apply_fn(params, b, deterministic, rngs, constants):
        return b["rating"] * params["scale"], {"user_gates": b["user_g"], "item_gates": b["item_g"]}

    mesh, params = make_mesh(jax.devices()[:1]), {"scale": np.float32(3.0)}
    pred, stats = make_eval_with_gate_stats_step(apply_fn, mesh)(params, batch)
    np.testing.assert_array_equal(np.asarray(pred), np.asarray(make_eval_step(apply_fn, mesh)(params, batch)))
    np.testing.assert_array_equal(np.asarray(stats), np.asarray(make_gate_stats_step(apply_fn, mesh)(params, batch)))
    valid_user = batch["user_history_mask"][:2]
    assert np.asarray(stats)[0, 1] == valid_user.sum() > 0
