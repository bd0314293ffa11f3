"""The full two-tower model (all variants) against a NumPy reference that processes each example at
its natural length (as the authors' code does), plus padding invariance, finite-difference
gradients, the interacting property, dropout, biases, the factored scorer path and the FLOP count."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from iarn_jax.models.config import ModelConfig
from iarn_jax.models.flops import flops_per_example
from iarn_jax.models.iarn import IARN, STEP_FIELDS, concatenate_encodings

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
N_USERS, N_ITEMS = 5, 7
B, TU, TI = 3, 5, 4
USER_LENGTHS = np.array([0, 3, 5])  # empty, partial, full
ITEM_LENGTHS = np.array([4, 1, 2])


def make_config(variant="iarn", **kw):
    base = dict(variant=variant, n_users=N_USERS, n_items=N_ITEMS, embed_dim=4, hidden_size=6,
                attention_size=3, use_rating_input=True)
    base.update(kw)
    return ModelConfig(**base)


def make_batch(seed=0, pad=0, item=None):
    rng = np.random.default_rng(seed)
    mu = np.arange(TU)[None] < USER_LENGTHS[:, None]
    mi = np.arange(TI)[None] < ITEM_LENGTHS[:, None]
    batch = dict(
        user=np.array([0, 1, 4], np.int32),
        item=np.array([1, 0, 6], np.int32) if item is None else np.asarray(item, np.int32),
        rating=np.array([4, 2, 5], np.float32),
        weight=np.ones(B, np.float32),
        user_history=(rng.integers(1, N_ITEMS, (B, TU)) * mu).astype(np.int32),
        user_history_rating=(rng.integers(1, 6, (B, TU)) * mu).astype(np.float32),
        user_history_mask=mu,
        item_history=(rng.integers(1, N_USERS, (B, TI)) * mi).astype(np.int32),
        item_history_rating=(rng.integers(1, 6, (B, TI)) * mi).astype(np.float32),
        item_history_mask=mi,
    )
    batch["user_history_rating"][1, 1] = 0.0  # a masked-out target step inside the valid region
    if pad:
        for side in ("user", "item"):
            for key, fill in ((f"{side}_history", 3), (f"{side}_history_rating", 2.0), (f"{side}_history_mask", False)):
                arr = batch[key]
                batch[key] = np.concatenate([arr, np.full((B, pad), fill, arr.dtype)], axis=1)
    return batch


# ---------------------------------------------------------------------------------------------------
# NumPy reference (float64, one example at a time, natural lengths, no padding anywhere)


def _softplus(z):
    return np.logaddexp(0.0, 5.0 * z) / 5.0


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def _np_side_inputs(p, ids, ratings, cfg):
    x = p["step_embedding"][ids]
    if cfg.use_rating_input:
        x = np.concatenate([x, np.where(ratings != 0, ratings - cfg.rating_center, 0.0)[:, None]], axis=1)
    return x


def _np_vanilla(x, w, bw, u, bu, act):
    g, out = np.zeros(u.shape[0]), []
    for x_t in x:
        g = act(x_t @ w + bw + g @ u + bu)
        out.append(g)
    return np.array(out).reshape(len(x), u.shape[0]), g


def _np_attention(p, x, act=_softplus):
    a = p["forward_recurrent_kernel"].shape[0]
    fwd, _ = _np_vanilla(x, p["forward_input_kernel"], p["forward_input_bias"],
                         p["forward_recurrent_kernel"], p["forward_recurrent_bias"], act)
    bwd, _ = _np_vanilla(x[::-1], p["backward_input_kernel"], p["backward_input_bias"],
                         p["backward_recurrent_kernel"], p["backward_recurrent_bias"], act)
    bwd = bwd[::-1]
    summary = np.concatenate([fwd[-1], bwd[0]]) if len(x) else np.zeros(2 * a)
    return np.concatenate([fwd, bwd], axis=1), summary


def _np_gates(p, context, other_summary, interacting, target=None, x=None, target_embedding=None):
    gates = []
    for t, s_t in enumerate(context):
        z = np.concatenate([s_t, 0.25 * other_summary]) if interacting else s_t
        if target is not None:  # gate_target_embedding: [s_t ; s S_other ; s e_target]
            z = np.concatenate([z, 0.25 * target])
        pre = z @ p["fusion_kernel"] + p["fusion_bias"]
        if "step_kernel" in p:  # gate_step_input: + M0 x_t
            pre = pre + x[t] @ p["step_kernel"]
        e = np.tanh(pre) @ p["score_kernel"][:, 0] + p["score_bias"][0]
        if "match_kernel" in p:  # gate_match: + x_t^T B e_target (embedding part of x_t)
            d = p["match_kernel"].shape[0]
            e = e + x[t][:d] @ p["match_kernel"] @ target_embedding
        gates.append(_sigmoid(2.0 * e))
    return np.array(gates)


def _np_recurrent(p, x, gates, cell):
    w, bw, u, bu = p["input_kernel"], p["input_bias"], p["recurrent_kernel"], p["recurrent_bias"]
    h_size = u.shape[0]
    h, c = np.zeros(h_size), np.zeros(h_size)
    for t, x_t in enumerate(x):
        z = x_t @ w + bw + h @ u + bu
        if cell == "gated":
            h = (1 - gates[t]) * h + gates[t] * np.maximum(z, 0.0)
        elif cell == "rnn":
            h = _softplus(z)
        else:
            i, f, o, g = np.split(z, 4)
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
    return h


def _np_head(p, h):
    z = h @ p["head_kernel"] + p["head_bias"]
    return np.where(z >= 0, z, p["prelu_slope"] * z)


def numpy_forward(params, cfg, batch):
    params = jax.tree.map(lambda v: np.asarray(v, np.float64), params)
    pu, pi = params["user_tower"], params["item_tower"]
    preds, user_gates, item_gates, summaries = [], np.zeros((B, TU)), np.zeros((B, TI)), []
    for b in range(B):
        lu, li = USER_LENGTHS[b], ITEM_LENGTHS[b]
        xu = _np_side_inputs(pu, batch["user_history"][b, :lu], batch["user_history_rating"][b, :lu], cfg)
        xi = _np_side_inputs(pi, batch["item_history"][b, :li], batch["item_history_rating"][b, :li], cfg)
        if cfg.gated:
            act = np.tanh if cfg.attention_cell == "tanh" else _softplus
            ctx_u, sum_u = _np_attention(pu["attention"], xu, act)
            ctx_i, sum_i = _np_attention(pi["attention"], xi, act)
            # with gate_target_embedding each tower also reads the pair's other entity through its
            # own step table: the user tower's embedding of the item, the item tower's of the user
            emb_u, emb_i = pu["step_embedding"][batch["item"][b]], pi["step_embedding"][batch["user"][b]]
            target_u = emb_u if cfg.gate_target_embedding else None
            target_i = emb_i if cfg.gate_target_embedding else None
            gu = _np_gates(pu["gate"], ctx_u, sum_i, cfg.interacting, target_u, xu, emb_u)
            gi = _np_gates(pi["gate"], ctx_i, sum_u, cfg.interacting, target_i, xi, emb_i)
            summaries.append((sum_u, sum_i))
        else:
            gu, gi = np.ones(lu), np.ones(li)
        user_gates[b, :lu], item_gates[b, :li] = gu, gi
        cell = "gated" if cfg.gated else cfg.variant
        ru = _np_head(pu, _np_recurrent(pu["recurrent"], xu, gu, cell))
        ri = _np_head(pi, _np_recurrent(pi["recurrent"], xi, gi, cell))
        pred = ru @ ri
        if cfg.stationary_dim:  # stationary factors: + <p_u, q_i>
            pred += pu["stationary_factor"][batch["user"][b]] @ pi["stationary_factor"][batch["item"][b]]
        if cfg.bias != "none":
            pred += pu["entity_bias"][batch["user"][b]] + pi["entity_bias"][batch["item"][b]]
        if cfg.bias == "global_user_item":
            pred += cfg.global_mean
        preds.append(pred)
    return np.array(preds), user_gates, item_gates, summaries


def init_model(cfg, batch, seed=0):
    """Model and random parameters U(-0.6, 0.6) of the right structure (eval_shape, no init compile:
    keeps the tests fast; the real initialisers are checked in test_init_follows_torch_conventions)."""
    model = IARN(cfg)
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)
    rng = np.random.default_rng(seed)
    variables = jax.tree.map(lambda leaf: rng.uniform(-0.6, 0.6, leaf.shape).astype(np.float32), shapes)
    return model, variables


def test_init_follows_torch_conventions():
    cfg = make_config("iarn", bias="user_item")
    batch = make_batch()
    model = IARN(cfg)
    params = jax.tree.map(np.asarray, jax.jit(model.init)(jax.random.key(0), batch)["params"])
    d, a, h = cfg.embed_dim + 1, cfg.attention_size, cfg.hidden_size
    fan_in = {"input_kernel": d, "input_bias": d, "recurrent_kernel": h, "recurrent_bias": h,
              "head_kernel": h, "head_bias": h}
    for side, n_steps, n_entities in (("user_tower", N_ITEMS, N_USERS), ("item_tower", N_USERS, N_ITEMS)):
        p = params[side]
        assert p["step_embedding"].shape == (n_steps, cfg.embed_dim)  # user tower embeds items
        assert 0.4 < p["step_embedding"].std() < 1.8  # N(0, 1)
        np.testing.assert_array_equal(p["entity_bias"], np.zeros(n_entities))
        assert p["prelu_slope"] == np.float32(0.25)
        for name, value in {**p["recurrent"], "head_kernel": p["head_kernel"], "head_bias": p["head_bias"]}.items():
            assert np.all(np.abs(value) <= 1 / np.sqrt(fan_in[name])), (side, name)
        for name, value in p["attention"].items():
            assert np.all(np.abs(value) <= 1 / np.sqrt(d if "input" in name else a)), (side, name)
        for name, value in p["gate"].items():
            assert np.all(np.abs(value) <= 1 / np.sqrt(4 * a)), (side, name)


# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["iarn", "iarn+target", "iarn+target+step", "iarn+match", "iarn+tanh+stationary",
                                     "tagm", "tagm+step", "tagm+tanh", "rnn", "lstm+stationary"])
def test_matches_numpy_reference(variant):
    name, *options = variant.split("+")
    target = "target" in options
    cfg = make_config(name, bias="global_user_item", global_mean=3.5, gate_target_embedding=target,
                      gate_step_input="step" in options, gate_match="match" in options,
                      attention_cell="tanh" if "tanh" in options else "softplus",
                      stationary_dim=3 if "stationary" in options else 0)
    batch = make_batch()
    model, variables = init_model(cfg, batch)
    params = jax.tree.map(np.asarray, variables["params"])
    if target:  # M = [M1; M2; M3]: the target embedding adds D rows to the fusion kernel
        k = 4 * cfg.attention_size
        assert params["user_tower"]["gate"]["fusion_kernel"].shape == (k + cfg.embed_dim, k)
    assert ("step_kernel" in params["user_tower"].get("gate", {})) == cfg.gate_step_input
    rng = np.random.default_rng(7)  # non-zero biases so the bias terms are checked
    params["user_tower"]["entity_bias"] = rng.normal(size=N_USERS).astype(np.float32)
    params["item_tower"]["entity_bias"] = rng.normal(size=N_ITEMS).astype(np.float32)
    pred, aux = model.apply({"params": params}, batch)
    ref_pred, ref_ug, ref_ig, _ = numpy_forward(params, cfg, batch)
    assert pred.shape == (B,) and np.all(np.isfinite(pred))
    np.testing.assert_allclose(np.asarray(pred), ref_pred, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(aux["user_gates"]), ref_ug, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(aux["item_gates"]), ref_ig, rtol=1e-5, atol=1e-6)
    if not cfg.gated:  # no gates: aux reports the mask
        np.testing.assert_array_equal(np.asarray(aux["user_gates"]), batch["user_history_mask"].astype(np.float32))
    np.testing.assert_allclose(
        np.asarray(aux["bias"]),
        3.5 + params["user_tower"]["entity_bias"][batch["user"]] + params["item_tower"]["entity_bias"][batch["item"]],
        rtol=1e-6,
    )


@pytest.mark.parametrize("bias", ["none", "user_item"])
def test_bias_options_add_the_right_terms(bias):
    cfg = make_config("iarn", bias=bias, global_mean=3.5)  # global_mean unused unless global_user_item
    batch = make_batch()
    model, variables = init_model(cfg, batch)
    params = jax.tree.map(np.asarray, variables["params"])
    assert ("entity_bias" in params["user_tower"]) == (bias != "none")
    if bias == "none":
        ref, *_ = numpy_forward(params, cfg, batch)
    else:
        params["user_tower"]["entity_bias"] = np.arange(N_USERS, dtype=np.float32)
        params["item_tower"]["entity_bias"] = 10 * np.arange(N_ITEMS, dtype=np.float32)
        ref, *_ = numpy_forward(params, cfg, batch)
    pred, _ = model.apply({"params": params}, batch)
    np.testing.assert_allclose(np.asarray(pred), ref, rtol=1e-5, atol=1e-5)


def test_extra_padding_changes_no_output():
    cfg = make_config("iarn")
    batch, padded = make_batch(), make_batch(pad=7)
    model, variables = init_model(cfg, batch)
    pred_a, aux_a = model.apply(variables, batch)
    pred_b, aux_b = model.apply(variables, padded)
    np.testing.assert_allclose(np.asarray(pred_b), np.asarray(pred_a), rtol=1e-6, atol=1e-6)
    for side, t in (("user", TU), ("item", TI)):
        np.testing.assert_allclose(
            np.asarray(aux_b[f"{side}_gates"][:, :t]), np.asarray(aux_a[f"{side}_gates"]), rtol=1e-6, atol=1e-7
        )
    np.testing.assert_array_equal(np.asarray(aux_b["user_gates"][:, TU:]), 0.0)
    def enc(m, bt):
        return m.encode_user(bt["user"], bt["user_history"], bt["user_history_rating"], bt["user_history_mask"])

    s_a = model.apply(variables, batch, method=enc).summary
    s_b = model.apply(variables, padded, method=enc).summary
    np.testing.assert_allclose(np.asarray(s_b), np.asarray(s_a), rtol=1e-6, atol=1e-7)


def test_interacting_property():
    batch = make_batch()
    other_items = make_batch(seed=1, item=[3, 3, 3])  # same users, different paired items
    for name in ("user_history", "user_history_rating", "user_history_mask", "user"):
        other_items[name] = batch[name]
    for variant, interacting in (("iarn", True), ("tagm", False)):
        model, variables = init_model(make_config(variant), batch)
        _, aux_a = model.apply(variables, batch)
        _, aux_b = model.apply(variables, other_items)
        diff = np.abs(np.asarray(aux_a["user_gates"]) - np.asarray(aux_b["user_gates"]))[USER_LENGTHS > 0]
        if interacting:
            assert diff.max() > 1e-4
        else:
            np.testing.assert_array_equal(diff, 0.0)


def test_factored_path_equals_call_and_ranks_candidates():
    cfg = make_config("iarn", bias="user_item")
    batch = make_batch()
    model, variables = init_model(cfg, batch)
    pred, aux = model.apply(variables, batch)

    def factored(m, bt):
        u = m.encode_user(bt["user"], bt["user_history"], bt["user_history_rating"], bt["user_history_mask"])
        i = m.encode_item(bt["item"], bt["item_history"], bt["item_history_rating"], bt["item_history_mask"])
        return m.pair(u, i)

    pred_f, aux_f = model.apply(variables, batch, method=factored)
    np.testing.assert_array_equal(np.asarray(pred_f), np.asarray(pred))
    np.testing.assert_array_equal(np.asarray(aux_f["user_gates"]), np.asarray(aux["user_gates"]))

    # full-ranking use: one user's encoding [1, ...] against all three items' encodings [3, ...]
    u = model.apply(variables, batch["user"][2:], batch["user_history"][2:], batch["user_history_rating"][2:],
                    batch["user_history_mask"][2:], method=IARN.encode_user)
    i = model.apply(variables, batch["item"], batch["item_history"], batch["item_history_rating"],
                    batch["item_history_mask"], method=IARN.encode_item)
    scores, score_aux = model.apply(variables, u, i, method=IARN.pair)
    repeated = dict(batch)
    for name in ("user", "user_history", "user_history_rating", "user_history_mask"):
        repeated[name] = np.repeat(batch[name][2:], B, axis=0)
    pred_r, aux_r = model.apply(variables, repeated)
    assert scores.shape == (B,) and score_aux["user_gates"].shape == (B, TU)
    np.testing.assert_allclose(np.asarray(scores), np.asarray(pred_r), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.asarray(score_aux["user_gates"]), np.asarray(aux_r["user_gates"]), rtol=1e-5, atol=1e-6)

    # gates are also sown for explanation code
    _, state = model.apply(variables, batch, mutable=["intermediates"])
    np.testing.assert_array_equal(np.asarray(state["intermediates"]["item_gates"][0]), np.asarray(aux["item_gates"]))


@pytest.mark.parametrize("variant", ["iarn", "tagm", "lstm"])
def test_encodings_split_select_and_join_along_each_fields_entity_axis(variant):
    """Per-step fields are time-major [t, n, ...], the rest [n, ...]: selecting entities with
    map_entities, or joining encodings, equals encoding those entities directly."""
    batch = make_batch()
    model, variables = init_model(make_config(variant), batch)
    names = ("item", "item_history", "item_history_rating", "item_history_mask")

    def encode(rows):
        return model.apply(variables, *(batch[n][rows] for n in names), method=IARN.encode_item)

    whole = encode(slice(None))
    assert whole.steps == TI and whole.mask.shape == (TI, B)
    present = [name for name, value in zip(whole._fields, whole) if value is not None]
    assert {"entity", "mask"} <= set(present)
    for name in present:
        value = getattr(whole, name)
        assert value.shape[1 if name in STEP_FIELDS else 0] == B, name
    picked = whole.map_entities(lambda x, axis: np.take(x, [2, 0], axis=axis))
    joined = concatenate_encodings([encode(slice(0, 1)), encode(slice(1, B))])
    for name in present:
        np.testing.assert_allclose(np.asarray(getattr(picked, name)), np.asarray(getattr(encode([2, 0]), name)),
                                   rtol=1e-6, atol=1e-7, err_msg=name)
        np.testing.assert_allclose(np.asarray(getattr(joined, name)), np.asarray(getattr(whole, name)),
                                   rtol=1e-6, atol=1e-7, err_msg=name)


def test_dropout_only_when_not_deterministic():
    batch = make_batch()
    model, variables = init_model(make_config("iarn", dropout=0.5), batch)
    det_a, _ = model.apply(variables, batch)
    det_b, _ = model.apply(variables, batch, deterministic=True)
    np.testing.assert_array_equal(np.asarray(det_a), np.asarray(det_b))
    drop_a, _ = model.apply(variables, batch, deterministic=False, rngs={"dropout": jax.random.key(1)})
    drop_b, _ = model.apply(variables, batch, deterministic=False, rngs={"dropout": jax.random.key(2)})
    assert np.abs(np.asarray(drop_a) - np.asarray(det_a)).max() > 1e-4
    assert np.abs(np.asarray(drop_a) - np.asarray(drop_b)).max() > 1e-4
    # rate 0: training mode is the evaluation function (no rng needed)
    model0 = IARN(make_config("iarn", dropout=0.0))
    variables0 = variables
    np.testing.assert_array_equal(
        np.asarray(model0.apply(variables0, batch, deterministic=False)[0]), np.asarray(model0.apply(variables0, batch)[0])
    )


def test_feature_encoder_seam():
    """The item tower's step inputs go through the encoder with the target item's features (the
    "features" collection, passed next to the parameters). With every item in exactly two features
    and identity maps (U = 0), the flat sum doubles the item side's steps: the plain model with the
    item tower's step embeddings doubled."""
    from iarn_jax.data.types import ItemFeatures
    from iarn_jax.models.features import FeatureData, feature_variables

    features = ItemFeatures(feature_names=np.array(["a", "b", "c"]), hierarchical=False,
                            paths=[((j % 3,), ((j + 1) % 3,)) for j in range(N_ITEMS)])
    data = FeatureData.from_item_features(features)
    batch = make_batch()
    model, variables = init_model(make_config("iarn"), batch)
    enc_model = IARN(make_config("iarn", feature_encoder="flat", feature_inputs="target"), n_features=3)
    params = jax.tree.map(np.asarray, variables["params"])
    item_tower = dict(params["item_tower"])
    item_tower["feature_encoder"] = {"map_out": np.zeros((3, 4, 8), np.float32),
                                     "map_in": np.ones((3, 4, 8), np.float32)}
    pred_enc, _ = enc_model.apply({"params": {**params, "item_tower": item_tower}, **feature_variables(data)}, batch)
    params["item_tower"] = dict(params["item_tower"], step_embedding=2.0 * params["item_tower"]["step_embedding"])
    pred_ref, _ = model.apply({"params": params}, batch)
    np.testing.assert_allclose(np.asarray(pred_enc), np.asarray(pred_ref), rtol=1e-6, atol=1e-6)


_FD_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    sys.path.insert(0, {tests!r})
    from test_iarn import make_batch, make_config
    from iarn_jax.models.iarn import IARN

    cfg = make_config("iarn")
    batch = make_batch()
    model = IARN(cfg)
    # parameter structure without running init (op-by-op init in x64 is slow); values U(-0.6, 0.6)
    shapes = jax.eval_shape(model.init, jax.random.key(0), batch)["params"]
    leaves, treedef = jax.tree.flatten(shapes)
    init_rng = np.random.default_rng(2)
    params = jax.tree.unflatten(treedef, [jnp.asarray(init_rng.uniform(-0.6, 0.6, leaf.shape)) for leaf in leaves])
    batch = {{k: (jnp.asarray(v, jnp.float64) if v.dtype == np.float32 else jnp.asarray(v)) for k, v in batch.items()}}
    flat, unravel = jax.flatten_util.ravel_pytree(params)
    probe = jnp.asarray(np.random.default_rng(0).normal(size=(B := 3, 5)))

    @jax.jit
    def loss(vec):
        pred, aux = model.apply({{"params": unravel(vec)}}, batch)
        # squared error + a term on the user gates (exercises every gate's gradient)
        return jnp.sum((pred - batch["rating"]) ** 2) + jnp.sum(probe * aux["user_gates"])

    grad = jax.jit(jax.grad(loss))(flat)
    eps = 1e-5
    errors = {{}}
    rng = np.random.default_rng(1)
    directions = [rng.normal(size=flat.shape) for _ in range(3)]
    names = ["item_tower/attention/forward_input_kernel", "user_tower/gate/fusion_kernel",
             "user_tower/recurrent/recurrent_kernel", "item_tower/prelu_slope",
             "user_tower/step_embedding", "item_tower/attention/backward_recurrent_kernel"]
    for name in names:
        leaf = params
        for part in name.split("/"):
            leaf = leaf[part]
        one_hot = jax.tree.map(jnp.zeros_like, params)
        node = one_hot
        parts = name.split("/")
        for part in parts[:-1]:
            node = node[part]
        grad_leaf = unravel(grad)
        for part in parts:
            grad_leaf = grad_leaf[part]
        # the entry with the largest gradient (so that the check is not vacuous)
        idx = np.unravel_index(np.argmax(np.abs(np.asarray(grad_leaf))), leaf.shape) if leaf.ndim else ()
        if name == "user_tower/gate/fusion_kernel":
            idx = (leaf.shape[0] - 1, 0)  # the M2 (other side's summary) block
        if name == "user_tower/step_embedding":
            idx = (int(batch["user_history"][2, 1]), 0)  # an item inside a history
        node[parts[-1]] = node[parts[-1]].at[idx].set(1.0)
        directions.append(np.asarray(jax.flatten_util.ravel_pytree(one_hot)[0]))
    for k, d in enumerate(directions):
        d = jnp.asarray(d)
        fd = (loss(flat + eps * d) - loss(flat - eps * d)) / (2 * eps)
        an = jnp.dot(grad, d)
        key = names[k - 3] if k >= 3 else f"random_{{k}}"
        errors[key] = [float(an), float(fd)]
    print(json.dumps(errors))
    """
)


def test_gradients_match_finite_differences_float64():
    script = "import jax.flatten_util\n" + _FD_SCRIPT.format(tests=str(REPO_ROOT / "tests"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
               JAX_PLATFORMS="cpu")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    errors = json.loads(result.stdout.strip().splitlines()[-1])
    for name, (analytic, numeric) in errors.items():
        assert abs(analytic - numeric) <= 1e-6 * max(1.0, abs(numeric)), (name, analytic, numeric)
        assert abs(analytic) > 1e-8, (name, analytic)  # the parameter actually influences the loss


def test_flops_hand_count():
    # D=2, A=1, H=3, Tu=2, Ti=1, IARN, no rating input; multiply-adds:
    # user: bi-RNN 2*2*(2*1+1*1)=12, M1 2*2*4=16, M2 2*4=8, scores 2*4=8, gated 2*(2*3+3*3)=30, head 9 -> 83
    # item: bi-RNN 2*1*3=6, M1 1*2*4=8, M2 8, scores 4, gated 15, head 9 -> 50;  dot product 3
    cfg = ModelConfig(variant="iarn", embed_dim=2, attention_size=1, hidden_size=3)
    assert flops_per_example(cfg, 2, 1, training=False) == 2 * 136
    assert flops_per_example(cfg, 2, 1) == 3 * 2 * 136
    # TAGM (K = 2A = 2, no M2): user 12 + 2*2*2 + 2*2 + 30 + 9 = 63; item 6 + 4 + 2 + 15 + 9 = 36; dot 3
    assert flops_per_example(ModelConfig(variant="tagm", embed_dim=2, attention_size=1, hidden_size=3), 2, 1,
                             training=False) == 2 * 102
    # LSTM with rating input (d = 3): user 2*4*(3*3+9)=144 + 9; item 72 + 9; dot 3
    cfg = ModelConfig(variant="lstm", embed_dim=2, hidden_size=3, use_rating_input=True)
    assert flops_per_example(cfg, 2, 1, training=False) == 2 * (153 + 81 + 3)


@pytest.mark.parametrize("cell", ["tanh", "softplus"])
@pytest.mark.parametrize("options", ["paper", "target+step+match"])
def test_long_history_with_large_inputs_stays_finite(cell, options):
    """1,000 steps of inputs of size ~30: the bounded tanh context stays finite for every gate option;
    the reference softplus cell is unbounded (its state grows with the history) and overflows."""
    extra = {} if options == "paper" else dict(gate_target_embedding=True, gate_step_input=True, gate_match=True)
    cfg = ModelConfig(variant="iarn", n_users=4, n_items=4, embed_dim=4, hidden_size=4, attention_size=4,
                      use_rating_input=True, attention_cell=cell, gate_logit_scale=0.25, **extra)
    T = 1000
    batch = dict(user=np.array([1], np.int32), item=np.array([2], np.int32), rating=np.ones(1, np.float32),
                 weight=np.ones(1, np.float32),
                 user_history=np.full((1, T), 3, np.int32), user_history_rating=np.full((1, T), 5.0, np.float32),
                 user_history_mask=np.ones((1, T), bool),
                 item_history=np.full((1, T), 1, np.int32), item_history_rating=np.full((1, T), 5.0, np.float32),
                 item_history_mask=np.ones((1, T), bool))
    model = IARN(cfg)
    params = jax.tree.map(np.array, model.init(jax.random.key(0), batch)["params"])
    for tower in ("user_tower", "item_tower"):
        params[tower]["step_embedding"] *= 30.0  # large inputs
        for direction in ("forward", "backward"):  # a context RNN whose state can grow (radius 1.5)
            params[tower]["attention"][f"{direction}_recurrent_kernel"] = 1.5 * np.eye(4, dtype=np.float32)
        params[tower]["recurrent"]["recurrent_kernel"] = 0.5 * np.eye(4, dtype=np.float32)
    pred, aux = model.apply({"params": params}, batch)
    finite = bool(np.isfinite(np.asarray(pred)).all() and np.isfinite(np.asarray(aux["user_gates"])).all())
    assert finite == (cell == "tanh")


N_TABLE_FEATURES = 4


def _model_with_feature_tables(cfg):
    """(model, its initial params as NumPy, the "features" constants, a batch of items 1, 0, 6) for a
    config that reads item features; item 0 has no feature, item 1 {0, 2}, item 6 {3}."""
    from iarn_jax.models.features import COLLECTION
    from iarn_jax.models.iarn import initialize

    flat = np.full((N_ITEMS, 3), -1, np.int32)
    flat[1, :2], flat[6, 0] = (0, 2), 3
    constants = {COLLECTION: {"flat": flat, "paths": flat[:, None, :]}}
    batch = make_batch()
    model = IARN(cfg, n_features=N_TABLE_FEATURES)
    params = jax.tree.map(np.asarray, initialize(model, jax.random.key(0), batch, constants))
    return model, params, constants, batch


def test_feature_factors_add_the_mean_feature_factor_to_q_i():
    """feature_factors: q_i -> q_i + mean_f c_f over the item's distinct features (none: q_i), against
    the NumPy reference run with those factors; the user side and scorer path see the same."""
    n_features, s = N_TABLE_FEATURES, 3
    cfg = make_config("iarn", bias="none", attention_cell="tanh", stationary_dim=s, feature_factors=True)
    model, params, constants, batch = _model_with_feature_tables(cfg)
    np.testing.assert_array_equal(params["item_tower"]["feature_factor"], np.zeros((n_features, s)))  # starts as plain
    assert "feature_factor" not in params["user_tower"]
    c = np.random.default_rng(3).normal(size=(n_features, s)).astype(np.float32)
    params["item_tower"]["feature_factor"] = c
    pred, aux = model.apply({"params": params, **constants}, batch)
    reference_params = jax.tree.map(np.copy, params)
    q = reference_params["item_tower"]["stationary_factor"]
    q[1] += (c[0] + c[2]) / 2
    q[6] += c[3]
    ref_pred, *_ = numpy_forward(reference_params, cfg, batch)
    np.testing.assert_allclose(np.asarray(pred), ref_pred, rtol=1e-5, atol=1e-5)
    assert np.abs(np.asarray(pred) - numpy_forward(params, cfg, batch)[0])[[0, 2]].min() > 1e-3  # the term matters
    with pytest.raises(ValueError, match="feature_factors"):
        model.apply({"params": params}, batch)  # without the feature tables
    with pytest.raises(ValueError, match="stationary_dim"):
        make_config("iarn", feature_factors=True)


def test_feature_bias_adds_the_mean_feature_bias_to_b_i():
    """feature_bias: b_i -> b_i + mean_f c_f over the item's distinct features (none: b_i), against
    the NumPy reference run with those biases (the scorer path: tests/test_serve.py)."""
    n_features = N_TABLE_FEATURES
    cfg = make_config("iarn", attention_cell="tanh", feature_bias=True)
    model, params, constants, batch = _model_with_feature_tables(cfg)
    np.testing.assert_array_equal(params["item_tower"]["feature_bias"], np.zeros(n_features))  # starts as plain
    assert "feature_bias" not in params["user_tower"]
    c = np.random.default_rng(4).normal(size=n_features).astype(np.float32)
    params["item_tower"]["feature_bias"] = c
    pred, aux = model.apply({"params": params, **constants}, batch)
    reference_params = jax.tree.map(np.copy, params)
    b = reference_params["item_tower"]["entity_bias"]
    b[1] += (c[0] + c[2]) / 2
    b[6] += c[3]
    ref_pred, *_ = numpy_forward(reference_params, cfg, batch)
    np.testing.assert_allclose(np.asarray(pred), ref_pred, rtol=1e-5, atol=1e-5)
    shift = np.asarray(pred) - numpy_forward(params, cfg, batch)[0]
    np.testing.assert_allclose(shift, [(c[0] + c[2]) / 2, 0.0, c[3]], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="feature_bias"):
        model.apply({"params": params}, batch)  # without the feature tables
    with pytest.raises(ValueError, match="feature_bias"):
        make_config("iarn", bias="none", feature_bias=True)
