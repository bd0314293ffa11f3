"""Feature encoders (eq. 11 flat sum, eq. 12 hierarchical product) against explicit NumPy maps on a
hand-worked item; the typed config fields and the legacy name converter; the model with encoders (the
feature tables an input, not a compiled constant); feature parsing on real files."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import require_data
from iarn_jax.data.types import ItemFeatures
from iarn_jax.models.config import ModelConfig, encoder_fields
from iarn_jax.models.features import (
    FeatureData,
    FeatureEncoder,
    build_feature_encoder,
    encoder_param_count,
    feature_variables,
)
from iarn_jax.models.iarn import IARN, initialize, model_variables

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


TABLES = FeatureData.from_item_features(FEATURES).tables()


def _encoder(**fields):
    cfg = ModelConfig(embed_dim=D, **fields)
    enc = FeatureEncoder(kind=cfg.feature_encoder, n_features=4, dim=D, rank=cfg.feature_rank,
                         reduce=cfg.feature_reduce)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(3, 2, D)), jnp.float32)
    params = enc.init(jax.random.PRNGKey(0), x, TABLES, target_item=jnp.array([0, 1, 2]))
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


@pytest.mark.parametrize("fields", [{}, {"feature_rank": 0}, {"feature_reduce": "mean", "feature_rank": 2}])
def test_flat_encoder_is_the_explicit_sum(fields):
    enc, params, x = _encoder(feature_encoder="flat", **fields)
    y = np.asarray(enc.apply(params, x, TABLES, target_item=jnp.array([0, 1, 2])), np.float64)
    m, xs = _maps(params), np.asarray(x, np.float64)
    scale = 4 if fields.get("feature_reduce") == "mean" else 1  # mean over the 4 distinct features
    expected0 = sum(xs[0] @ m[f].T for f in (0, 1, 2, 3)) / scale
    np.testing.assert_allclose(y[0], expected0, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[1], xs[1] @ m[2].T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y[2], xs[2], rtol=1e-6)  # no features: unchanged


@pytest.mark.parametrize("rank", [8, 0])
def test_hierarchical_encoder_is_the_explicit_product(rank):
    enc, params, x = _encoder(feature_encoder="hier", feature_rank=rank)
    y = np.asarray(enc.apply(params, x, TABLES, target_item=jnp.array([0, 1, 2])), np.float64)
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
    enc, params, x = _encoder(feature_encoder="ref", feature_rank=0)
    y = np.asarray(enc.apply(params, x, TABLES, target_item=jnp.array([0, 1, 2])), np.float64)
    m, z = _maps(params), np.asarray(x[0], np.float64)
    for f in (0, 1, 2, 3):  # smallest id innermost
        z = np.tanh(z @ m[f].T)
    np.testing.assert_allclose(y[0], z, rtol=1e-5, atol=1e-5)


def test_step_mode_transforms_each_step_by_its_own_item():
    enc, params, x = _encoder(feature_encoder="hier", feature_inputs="step")
    steps = jnp.array([[0, 2], [1, 1], [2, 0]])
    y = np.asarray(enc.apply(params, x, TABLES, step_items=steps))
    for i in range(3):
        for t in range(2):
            one = np.asarray(enc.apply(params, x[i:i + 1, t:t + 1], TABLES, target_item=steps[i:i + 1, t]))
            np.testing.assert_allclose(y[i, t], one[0, 0], rtol=1e-5, atol=1e-6)


def _encoder_fields(cfg):
    return (cfg.feature_encoder, cfg.feature_inputs, cfg.feature_rank, cfg.feature_reduce)


def test_typed_encoder_fields_are_validated_by_name():
    assert _encoder_fields(ModelConfig(feature_encoder="hier")) == ("hier", "target", 8, "sum")
    for field, value in [("feature_encoder", "tree"), ("feature_inputs", "sideways"), ("feature_rank", -1),
                         ("feature_rank", 2.5), ("feature_reduce", "max")]:
        with pytest.raises(ValueError, match=field):
            ModelConfig(**{field: value})


def test_legacy_encoder_names_become_typed_fields():
    """The old "KIND[:INPUTS][:rR|:dense][:sum|:mean]" form (saved manifests, config.json, cached
    reports) is read once, into the typed fields; the config then holds only the kind."""
    assert encoder_fields("flat:step:r4:mean") == {"feature_encoder": "flat", "feature_inputs": "step",
                                                   "feature_rank": 4, "feature_reduce": "mean"}
    assert _encoder_fields(ModelConfig(feature_encoder="hier:step:r8")) == ("hier", "step", 8, "sum")
    assert _encoder_fields(ModelConfig(feature_encoder="ref:both:dense")) == ("ref", "both", 0, "sum")
    assert ModelConfig(feature_encoder="flat:target") == ModelConfig(feature_encoder="flat", feature_inputs="target")
    assert ModelConfig(feature_encoder="hier:step", feature_rank=4).feature_rank == 4  # not named: kept
    with pytest.raises(ValueError, match="contradicts"):
        ModelConfig(feature_encoder="hier:step", feature_inputs="both")
    with pytest.raises(ValueError, match="feature_encoder"):
        ModelConfig(feature_encoder="hier:sideways")
    with pytest.raises(ValueError, match="feature_encoder"):
        ModelConfig(feature_encoder="tree:step")


def test_encoder_per_side_from_the_config():
    cfg = ModelConfig(embed_dim=D, feature_encoder="hier", feature_inputs="step", feature_rank=2)
    assert build_feature_encoder(cfg, "item", 4) is None
    enc = build_feature_encoder(cfg, "user", 4)
    assert (enc.kind, enc.n_features, enc.dim, enc.rank, enc.reduce) == ("hier", 4, D, 2, "sum")
    assert build_feature_encoder(ModelConfig(), "user", 4) is None
    with pytest.raises(ValueError, match="n_features"):
        build_feature_encoder(cfg, "user", 0)


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


@pytest.mark.parametrize("fields,sides", [
    ({"feature_encoder": "flat"}, ("item_tower",)),
    ({"feature_encoder": "hier", "feature_inputs": "step"}, ("user_tower",)),
    ({"feature_encoder": "hier", "feature_inputs": "both", "feature_rank": 2}, ("user_tower", "item_tower"))])
def test_model_with_encoder(fields, sides):
    cfg = ModelConfig(n_users=2, n_items=3, embed_dim=D, hidden_size=4, attention_size=2,
                      use_rating_input=True, **fields)
    data = FeatureData.from_item_features(FEATURES)
    model, constants = IARN(cfg, n_features=data.n_features), feature_variables(data)
    params = initialize(model, jax.random.PRNGKey(0), _batch(), constants)
    for tower in ("user_tower", "item_tower"):
        assert ("feature_encoder" in params[tower]) == (tower in sides)
    assert encoder_param_count(params) == len(sides) * 2 * 4 * D * cfg.feature_rank
    pred, aux = model.apply(model_variables(params, constants), _batch())
    assert pred.shape == (2,) and np.isfinite(np.asarray(pred)).all()
    grads = jax.grad(lambda p: model.apply(model_variables(p, constants), _batch())[0].sum())(params)
    for tower in sides:
        assert float(jnp.abs(grads[tower]["feature_encoder"]["map_out"]).sum()) > 0


def test_feature_tables_are_an_input_not_a_compiled_constant():
    """The tables reach the model as the "features" collection: a traced argument (no constant in the
    compiled function), and other tables change the prediction of the same parameters."""
    cfg = ModelConfig(n_users=2, n_items=3, embed_dim=D, hidden_size=4, attention_size=2,
                      feature_encoder="hier", feature_inputs="both", feature_rank=2)
    data = FeatureData.from_item_features(FEATURES)
    model, constants = IARN(cfg, n_features=data.n_features), feature_variables(data)
    params = initialize(model, jax.random.PRNGKey(0), _batch(), constants)
    params = jax.tree_util.tree_map(lambda a: a + 0.3, params)  # U != 0: the maps are not the identity
    apply = lambda variables, batch: model.apply(variables, batch)[0]  # noqa: E731
    jaxpr = jax.make_jaxpr(apply)(model_variables(params, constants), _batch())
    assert not [c for c in jaxpr.consts if np.ndim(c) >= 2 and np.asarray(c).dtype == np.int32]
    compiled = jax.jit(apply)
    base = np.asarray(compiled(model_variables(params, constants), _batch()))
    swapped = {"features": {name: table[::-1].copy() for name, table in constants["features"].items()}}
    other = np.asarray(compiled(model_variables(params, swapped), _batch()))
    assert not np.allclose(base, other)


def test_model_without_feature_tables_says_how():
    cfg = ModelConfig(n_users=2, n_items=3, embed_dim=D, feature_encoder="flat")
    with pytest.raises(ValueError, match="'features' collection"):
        IARN(cfg, n_features=4).init(jax.random.PRNGKey(0), _batch())
    constants = feature_variables(FeatureData.from_item_features(FEATURES))
    with pytest.raises(ValueError, match="n_features"):
        initialize(IARN(cfg), jax.random.PRNGKey(0), _batch(), constants)


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
