"""Feature encoders (eq. 11 flat sum, eq. 12 hierarchical product) against explicit NumPy maps on a
hand-worked item; the name grammar; the model with encoders; feature parsing on real files."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_data
from iarn_jax.data.types import ItemFeatures
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.features import (
    EncoderSpec,
    FeatureData,
    FeatureEncoder,
    encoder_param_count,
    parse_encoder_name,
)
from iarn_jax.models.iarn import IARN

D = 3
# Features: 0 "Women", 1 "Clothing", 2 "Dresses", 3 "Men". Item 0 has two paths
# (Women > Clothing > Dresses) and (Men > Clothing): "Clothing" under two parents is one feature in
# the flat view and keeps its position in each path. Item 1: one feature. Item 2: none.
FEATURES = ItemFeatures(
    feature_names=np.array(["Women", "Clothing", "Dresses", "Men"], dtype=object),
    paths=[((0, 1, 2), (3, 1)), ((2,),), ()],
    hierarchical=True,
)


def _maps(params):
    """Explicit D x D map of every feature from the encoder's parameters."""
    p = params["params"]
    if "maps" in p:
        return np.asarray(p["maps"], np.float64)
    u, v = np.asarray(p["map_out"], np.float64), np.asarray(p["map_in"], np.float64)
    return np.eye(D)[None] + np.einsum("fdr,fer->fde", u, v)


def _encoder(name):
    spec = parse_encoder_name(name)
    enc = FeatureEncoder(spec=spec, feature_data=FeatureData.from_item_features(FEATURES), dim=D)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, D)), jnp.float32)
    params = enc.init(jax.random.PRNGKey(0), x, target_item=jnp.array([0, 1, 2]))
    # non-trivial maps: random U (the initial U = 0 would make every map the identity)
    params = jax.tree_util.tree_map(
        lambda a: jnp.asarray(np.random.default_rng(a.size).normal(0, 0.5, a.shape), a.dtype), params)
    return enc, params, x


def test_feature_data_views():
    data = FeatureData.from_item_features(FEATURES)
    assert data.paths.shape == (3, 2, 3)
    np.testing.assert_array_equal(data.paths[0], [[0, 1, 2], [3, 1, -1]])
    np.testing.assert_array_equal(data.flat[0], [0, 1, 2, 3])  # "Clothing" once
    np.testing.assert_array_equal(data.flat[2], [-1, -1, -1, -1])
    assert data.names_of(0) == [["Women", "Clothing", "Dresses"], ["Men", "Clothing"]]
    assert data.names_of(0, "flat") == ["Women", "Clothing", "Dresses", "Men"]


@pytest.mark.parametrize("name", ["flat", "flat:dense", "flat:mean:r2"])
def test_flat_encoder_is_the_explicit_sum(name):
    enc, params, x = _encoder(name)
    y = np.asarray(enc.apply(params, x, target_item=jnp.array([0, 1, 2])), np.float64)
    m, xs = _maps(params), np.asarray(x, np.float64)
    scale = 4 if name.endswith("r2") else 1  # mean over the 4 distinct features
    expected0 = sum(xs[0] @ m[f].T for f in (0, 1, 2, 3)) / scale
    np.testing.assert_allclose(y[0], expected0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[1], xs[1] @ m[2].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[2], xs[2], rtol=1e-6)  # no features: unchanged


@pytest.mark.parametrize("name", ["hier", "hier:dense"])
def test_hierarchical_encoder_is_the_explicit_product(name):
    enc, params, x = _encoder(name)
    y = np.asarray(enc.apply(params, x, target_item=jnp.array([0, 1, 2])), np.float64)
    m, xs = _maps(params), np.asarray(x, np.float64)
    # root applied first, leaf last: M_Dresses M_Clothing M_Women x; mean with M_Clothing M_Men x
    path_a = m[2] @ m[1] @ m[0]
    path_b = m[1] @ m[3]
    np.testing.assert_allclose(y[0], xs[0] @ ((path_a + path_b) / 2).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[1], xs[1] @ m[2].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[2], xs[2], rtol=1e-6)
    # order matters: the reverse product differs
    assert not np.allclose(path_a, m[0] @ m[1] @ m[2])


def test_reference_variant_is_tanh_chain_in_ascending_ids():
    enc, params, x = _encoder("ref:dense")
    y = np.asarray(enc.apply(params, x, target_item=jnp.array([0, 1, 2])), np.float64)
    m, z = _maps(params), np.asarray(x[0], np.float64)
    for f in (0, 1, 2, 3):  # smallest id innermost
        z = np.tanh(z @ m[f].T)
    np.testing.assert_allclose(y[0], z, rtol=1e-5, atol=1e-5)


def test_step_mode_transforms_each_step_by_its_own_item():
    enc, params, x = _encoder("hier:step")
    steps = jnp.array([[0, 2], [1, 1], [2, 0]])
    y = np.asarray(enc.apply(params, x, step_items=steps))
    for i in range(3):
        for t in range(2):
            one = np.asarray(enc.apply(params, x[i:i + 1, t:t + 1], target_item=steps[i:i + 1, t]))
            np.testing.assert_allclose(y[i, t], one[0, 0], rtol=1e-5, atol=1e-6)


def test_encoder_name_grammar():
    assert parse_encoder_name("hier") == EncoderSpec("hier", "target", 8, "sum")
    assert parse_encoder_name("flat:step:r4:mean") == EncoderSpec("flat", "step", 4, "mean")
    assert parse_encoder_name("ref:both:dense").rank is None
    with pytest.raises(ValueError):
        parse_encoder_name("hier:sideways")
    with pytest.raises(ValueError):
        parse_encoder_name("tree")


@functools.lru_cache(maxsize=None)
def _batch():
    rng = np.random.default_rng(1)
    mask = np.arange(4)[None] < np.array([[4], [2]])
    return dict(
        user=np.array([0, 1], np.int32), item=np.array([0, 1], np.int32), rating=np.ones(2, np.float32),
        weight=np.ones(2, np.float32),
        user_history=(rng.integers(0, 3, (2, 4)) * mask).astype(np.int32),
        user_history_rating=(rng.integers(1, 6, (2, 4)) * mask).astype(np.float32), user_history_mask=mask,
        item_history=(rng.integers(0, 2, (2, 4)) * mask).astype(np.int32),
        item_history_rating=(rng.integers(1, 6, (2, 4)) * mask).astype(np.float32), item_history_mask=mask,
    )


@pytest.mark.parametrize("name,sides", [("flat", ("item_tower",)), ("hier:step", ("user_tower",)),
                                        ("hier:both:r2", ("user_tower", "item_tower"))])
def test_model_with_encoder(name, sides):
    cfg = ModelConfig(n_users=2, n_items=3, embed_dim=D, hidden_size=4, attention_size=2,
                      use_rating_input=True, feature_encoder=name)
    model = IARN(cfg, feature_data=FeatureData.from_item_features(FEATURES))
    params = model.init(jax.random.PRNGKey(0), _batch())["params"]
    for tower in ("user_tower", "item_tower"):
        assert ("feature_encoder" in params[tower]) == (tower in sides)
    rank = 2 if name.endswith("r2") else 8
    assert encoder_param_count(params) == len(sides) * 2 * 4 * D * rank
    pred, aux = model.apply({"params": params}, _batch())
    assert pred.shape == (2,) and np.isfinite(np.asarray(pred)).all()
    grads = jax.grad(lambda p: model.apply({"params": p}, _batch())[0].sum())(params)
    for tower in sides:
        assert float(jnp.abs(grads[tower]["feature_encoder"]["map_out"]).sum()) > 0


def test_model_without_feature_data_says_how():
    cfg = ModelConfig(n_users=2, n_items=3, embed_dim=D, feature_encoder="flat")
    with pytest.raises(ValueError, match="feature_data"):
        IARN(cfg).init(jax.random.PRNGKey(0), _batch())


def test_movielens_genres_parse_flat():
    from iarn_jax.data.loaders import load_by_format

    dataset = load_by_format("ml100k", require_data("movielens/ml-100k"))
    data = FeatureData.from_dataset(dataset)
    assert not data.hierarchical and data.paths.shape[2] == 1  # one length-1 path per genre
    titles = list(dataset.item_titles)
    toy = titles.index("Toy Story (1995)")
    assert sorted(data.names_of(toy, "flat")) == ["Animation", "Children's", "Comedy"]
    assert (data.flat >= 0).sum(axis=1).max() == data.paths.shape[1]


def test_clothing_paths_parse_hierarchical():
    from iarn_jax.data.loaders import load_by_format

    dataset = load_by_format("clothing", require_data("iarn-clothing"))
    data = FeatureData.from_dataset(dataset)
    assert data.hierarchical and data.n_features == 835 and data.n_items == 50_044
    n_paths = (data.paths[:, :, 0] >= 0).sum(axis=1)
    assert (n_paths == 2).sum() == 1_571 and data.paths.shape[1] == 2  # reference notes 6.4
    lengths = (data.paths >= 0).sum(axis=2)[data.paths[:, :, 0] >= 0]
    assert np.bincount(lengths)[1:7].tolist() == [25_122, 5_978, 7_687, 9_849, 1_415, 1_564]
    # a name under two parents: one flat feature, kept at its position in each path
    item = int(np.flatnonzero(n_paths == 2)[0])
    flat = set(data.flat[item][data.flat[item] >= 0].tolist())
    in_paths = {int(f) for f in data.paths[item].ravel() if f >= 0}
    assert flat == in_paths
