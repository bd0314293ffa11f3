"""NCF, Item2Vec, MP2Vec and the shared sparse trainer, on tiny planted data."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from iarn_jax.data.types import Dataset, ItemFeatures, ProtocolSplit
from iarn_jax.models.baselines import _neural_common as nc
from iarn_jax.models.baselines.item2vec import Item2Vec, MP2Vec, SkipGramRecommender, sample_context_pairs
from iarn_jax.models.baselines.ncf import NCF


def planted_split(n_users=60, n_items=40, per_user=12, seed=0, n_cold=0):
    """Two user groups: group g interacts only with items i where i % 2 == g.

    Per user (time order): the last 2 interactions are test, the one before val.
    Item features: one genre per item = its group. n_cold extra items never interacted with.
    """
    rng = np.random.default_rng(seed)
    rows, t = [], 0
    for u in range(n_users):
        for i in rng.choice(np.arange(u % 2, n_items, 2), size=per_user, replace=False):
            rows.append((u, int(i), float(rng.integers(3, 6)), t))
            t += 1
    df = pd.DataFrame(rows, columns=["user", "item", "rating", "time"])
    rank = df.groupby("user").cumcount(ascending=False)
    test, val, train = df[rank < 2], df[rank == 2], df[rank > 2]
    total = n_items + n_cold
    features = ItemFeatures(feature_names=np.array(["g0", "g1"]), paths=[((i % 2,),) for i in range(total)],
                            hierarchical=False)
    dataset = Dataset(name="planted", ratings=df, user_ids=np.arange(n_users), item_ids=np.arange(total),
                      rating_scale=(1.0, 5.0), item_features=features)
    return ProtocolSplit(name="planted", dataset=dataset, history=pd.concat([train, val]), train=train, val=val,
                         test=test, min_len=3)


def own_group_auc(model, split) -> float:
    """Mean over users of AUC(own-group items not yet seen > other-group items)."""
    known = pd.concat([split.train, split.val])
    n_items = split.n_items
    aucs = []
    for u in range(split.n_users):
        seen = set(known.item[known.user == u])
        own = [i for i in range(u % 2, n_items, 2) if i not in seen]
        other = list(range(1 - u % 2, n_items, 2))
        scores = model.score_items(u, np.array(own + other))
        pos, neg = scores[: len(own)], scores[len(own):]
        aucs.append((pos[:, None] > neg).mean() + 0.5 * (pos[:, None] == neg).mean())
    return float(np.mean(aucs))


@pytest.fixture(scope="module")
def split():
    return planted_split()


# ------------------------------------------------------------------ common helpers


def test_user_item_index_membership_and_order():
    frame = pd.DataFrame({"user": [1, 0, 1, 1], "item": [5, 2, 3, 5], "rating": 1.0, "time": [3, 0, 1, 2]})
    index = nc.UserItemIndex.from_frame(frame, n_users=3, n_items=6)
    assert index.items_of(0).tolist() == [2]
    assert index.items_of(1).tolist() == [3, 5]  # time order, duplicates dropped
    assert index.items_of(2).tolist() == []
    assert index.contains(np.array([1, 1, 0, 2]), np.array([5, 2, 2, 0])).tolist() == [True, False, True, False]


def test_sample_negatives_excludes_known_items():
    frame = pd.DataFrame({"user": [0] * 8, "item": np.arange(8), "rating": 1.0, "time": np.arange(8)})
    index = nc.UserItemIndex.from_frame(frame, n_users=2, n_items=10)
    neg = nc.sample_negatives(np.random.default_rng(0), np.array([0, 0, 1]), 20, index, np.arange(10))
    assert neg.shape == (3, 20)
    assert set(neg[:2].ravel()) <= {8, 9}
    assert len(set(neg[2])) > 2  # user 1 knows nothing


def test_sampled_auc_hand_worked():
    frame = pd.DataFrame({"user": [0], "item": [0], "rating": 1.0, "time": [0]})
    index = nc.UserItemIndex.from_frame(frame, n_users=1, n_items=4)
    score = lambda u, i: np.asarray(i, float)  # item id is the score
    # positive item 3 beats every negative in {1, 2}; positive 1 beats none of {2, 3}... ties half
    assert nc.sampled_auc(score, np.array([0]), np.array([3]), index, np.array([1, 2]), n_neg=10) == 1.0
    assert nc.sampled_auc(score, np.array([0]), np.array([1]), index, np.array([1]), n_neg=4) == 0.5


def test_rank_unseen_last():
    scores = nc.rank_unseen_last(np.array([0.3, 5.0, -1.0]), np.array([True, False, True]))
    assert scores.tolist() == [0.3, -2.0, -1.0]


def test_path_and_flat_feature_matrices():
    features = ItemFeatures(feature_names=np.array(list("abcd")), paths=[((0, 1), (0, 2, 3)), ((3,),), ()],
                            hierarchical=True)
    ids, mask = nc.path_matrix(features, 3)
    assert ids.shape == (3, 2, 3)
    assert ids[0, 1].tolist() == [0, 2, 3] and mask[0, 0].tolist() == [True, True, False]
    assert not mask[2].any()
    flat, flat_mask = nc.flat_feature_matrix(features, 3)
    assert flat[0][flat_mask[0]].tolist() == [0, 1, 2, 3]
    assert flat[1][flat_mask[1]].tolist() == [3]


def test_sparse_trainer_updates_only_touched_rows_and_lowers_loss():
    target = np.array([[1.0, -1.0], [0.5, 0.5]], np.float32)

    def loss_fn(rows, dense, batch, rng):
        err = rows["x"] * dense["scale"] - jnp.asarray(target)[batch["row"]]
        return jnp.mean(batch["weight"] * jnp.sum(err**2, -1))

    trainer = nc.SparseTrainer(loss_fn, {"x": nc.Lookup("table", "row")}, table_lr=0.1)
    state = trainer.init({"table": jnp.zeros((3, 2))}, {"scale": jnp.ones(())})
    batches = {"row": np.array([[0, 1], [1, 0]], np.int32), "weight": np.ones((2, 2), np.float32)}
    losses = []
    for epoch in range(30):
        state, loss = trainer.epoch(state, batches, jax.random.PRNGKey(epoch))
        losses.append(loss)
    assert losses[-1] < 0.1 * losses[0]
    assert np.all(np.asarray(state["tables"]["table"][2]) == 0.0)  # never looked up


def test_context_pairs_stay_within_sequence_and_window():
    indptr = np.array([0, 5, 6, 9])  # lengths 5, 1 (no pairs), 3
    rng = np.random.default_rng(0)
    for window in (None, 1):
        target, context = sample_context_pairs(indptr, 20, window, rng)
        assert len(target) == (5 + 3) * 20
        seq = np.searchsorted(indptr, target, side="right") - 1
        assert np.all(seq == np.searchsorted(indptr, context, side="right") - 1)
        assert np.all(target != context)
        if window is not None:
            assert np.all(np.abs(target - context) <= window)
    _, context = sample_context_pairs(indptr, 200, None, rng)
    assert set(context[:1000]) == {0, 1, 2, 3, 4}  # whole history reachable


# ------------------------------------------------------------------ models


def test_ncf_ranks_planted_group_items_first(split):
    model = NCF(dim=8, batch_size=128, max_epochs=12, patience=12, grid=None, refit=False).fit(split, seed=0, verbose=False)
    assert not model.rates
    assert own_group_auc(model, split) > 0.9
    with pytest.raises(NotImplementedError):
        model.predict(np.array([0]), np.array([0]))


@pytest.mark.slow
def test_ncf_grid_selection_uses_validation(split):
    model = NCF(dim=4, batch_size=256, max_epochs=2, patience=2, grid=({"l2": 0.0}, {"l2": 1e-3}), refit=False)
    model.fit(split, seed=1, verbose=False)
    assert len(model.selection_["grid"]) == 2
    assert model.selection_["config"] in ({"l2": 0.0}, {"l2": 1e-3})
    assert 0.0 <= model.selection_["val_auc"] <= 1.0


def test_ncf_is_seeded(split):
    a = NCF(dim=4, batch_size=256, max_epochs=2, grid=None, refit=False).fit(split, seed=3, verbose=False)
    b = NCF(dim=4, batch_size=256, max_epochs=2, grid=None, refit=False).fit(split, seed=3, verbose=False)
    np.testing.assert_allclose(a.score_items(0, np.arange(10)), b.score_items(0, np.arange(10)), rtol=1e-5)


@pytest.mark.parametrize("ctor", [Item2Vec, MP2Vec])
def test_skipgram_ranks_planted_group_items_first(split, ctor):
    model = ctor(dim=8, batch_size=256, max_epochs=8, patience=8, grid=None, refit=False).fit(split, seed=0, verbose=False)
    assert not model.rates
    assert own_group_auc(model, split) > 0.9


def _log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def test_mp2vec_uses_features_and_item2vec_does_not(split):
    item2vec, mp2vec = Item2Vec(), MP2Vec()
    assert not item2vec.use_metadata and item2vec.alpha == 0.0
    assert mp2vec.use_metadata and mp2vec.alpha == 0.1
    # the features MP2Vec reads (flat view): the planted genre of item i is feature i % 2, one per item
    ids, mask = nc.flat_feature_matrix(split.dataset.item_features, split.n_items)
    assert ids.shape == (split.n_items, 1) and mask.all()
    np.testing.assert_array_equal(ids[:, 0], np.arange(split.n_items) % 2)
    assert nc.flat_feature_matrix(None, 3)[1].sum() == 0  # Item2Vec: no features


def test_mp2vec_objective_matches_a_numpy_reference():
    """L = L_{J|I} + alpha (m_j L_{M|I} + m_i L_{J|M} + m_i m_j L_{M|M} + m_i L_{I|M}), weighted mean;
    each L = -log s(v . u_pos) - sum_k log s(-v . u_k), written out in NumPy."""
    from iarn_jax.models.baselines.item2vec import skipgram_loss

    rng = np.random.default_rng(0)
    B, K, d = 4, 3, 5
    rows = {name: rng.normal(size=(B, d)) for name in ("in_i", "out_j", "out_i", "in_mi", "out_mj")}
    rows.update(neg_items=rng.normal(size=(B, K, d)), neg_feats=rng.normal(size=(B, K, d)))
    batch = {"weight": np.array([1.0, 2.0, 0.5, 0.0]), "has_mi": np.array([1.0, 0.0, 1.0, 1.0]),
             "has_mj": np.array([1.0, 1.0, 0.0, 1.0])}

    def term(b, v, u, negatives):
        return -_log_sigmoid(rows[v][b] @ rows[u][b]) - sum(_log_sigmoid(-rows[v][b] @ n) for n in rows[negatives][b])

    def reference(alpha):
        per = []
        for b in range(B):
            mi, mj = batch["has_mi"][b], batch["has_mj"][b]
            side = (mj * term(b, "in_i", "out_mj", "neg_feats") + mi * term(b, "in_mi", "out_j", "neg_items")
                    + mi * mj * term(b, "in_mi", "out_mj", "neg_feats") + mi * term(b, "in_mi", "out_i", "neg_items"))
            per.append(term(b, "in_i", "out_j", "neg_items") + (alpha or 0.0) * side)
        return np.sum(batch["weight"] * np.array(per)) / batch["weight"].sum()

    as_jax = lambda tree: {k: jnp.asarray(v, jnp.float32) for k, v in tree.items()}  # noqa: E731
    for alpha in (None, 0.1, 1.0):  # None: Item2Vec (no metadata terms)
        got = float(skipgram_loss(as_jax(rows), as_jax(batch), alpha))
        assert got == pytest.approx(reference(alpha), rel=1e-5)
    assert float(skipgram_loss(as_jax(rows), as_jax(batch), 1.0)) > float(skipgram_loss(as_jax(rows), as_jax(batch), None))
    # a fitted MP2Vec: its feature terms train the item vectors (finite, one row per item)
    model = MP2Vec(dim=4, batch_size=256, max_epochs=2, grid=None, refit=False, alpha=1.0)
    model.fit(planted_split(), seed=0, verbose=False)
    assert model.vectors_.shape == (planted_split().n_items, 4) and np.isfinite(model.vectors_).all()


def test_skipgram_unseen_items_rank_last():
    split = planted_split(n_cold=4)
    model = Item2Vec(dim=4, batch_size=256, max_epochs=2, grid=None, refit=False).fit(split, seed=0, verbose=False)
    cold = np.arange(40, 44)
    assert np.all(model.vectors_[cold] == 0.0)
    scores = model.score_items(0, np.arange(44))
    assert scores[cold].max() < scores[:40].min()


def test_skipgram_loss_decreases(split, capsys):
    model = SkipGramRecommender(dim=8, batch_size=256, max_epochs=5, grid=None, refit=False, name="i2v")
    model.fit(split, seed=0, verbose=True)
    losses = [float(line.split("loss")[1].split()[0]) for line in capsys.readouterr().out.splitlines() if "loss" in line]
    assert losses[-1] < losses[0]


@pytest.mark.slow
def test_neural_baselines_on_ml100k(data_root):
    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.evaluate import ranking

    split = load_protocol("ml100k", data_root)
    users = ranking.sample_eval_users(split, seed=0)
    # floors a little under the recorded Table 2 values (BUILD_NOTES: NCF 0.7807, Item2Vec 0.6401,
    # MP2Vec 0.6411 on these 119 users); NCF must beat MostPop on the peers' protocol (0.747)
    for model, floor in ((NCF(), 0.75), (Item2Vec(), 0.62), (MP2Vec(), 0.62)):
        model.fit(split, seed=0, verbose=True)
        result = ranking.evaluate_ranking(model.score_items, split, users, progress=False)
        print(model.name, result["auc"], result["ndcg10"], result["hr10"])
        assert result["auc"] > floor, model.name
