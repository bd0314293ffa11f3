"""Attention bi-RNN, summaries and gates against NumPy loops on natural-length sequences."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flax import linen as nn

from iarn_jax.models.attention import AttentionBiRNN, AttentionGate, TimeMajorDropout, attention_gates, last_valid

B, T, D, A = 3, 5, 4, 3
LENGTHS = np.array([0, 3, 5])


def _np_softplus(z, beta=5.0):
    return np.logaddexp(0.0, beta * z) / beta


def _tm(a):
    """Batch-major [b, t, ...] <-> time-major [t, b, ...] (the modules' per-step layout)."""
    return jnp.swapaxes(jnp.asarray(a), 0, 1)


def _birnn_batch_major(module, variables, x, mask, **kwargs):
    """The bi-RNN on batch-major x [b, t, d], mask [b, t] -> (context [b, t, 2A], summary [b, 2A])."""
    context, summary = module.apply(variables, _tm(x), _tm(mask), **kwargs)
    return _tm(context), summary


def _np_birnn(p, x):
    """Reference bi-RNN on one unpadded sequence x [L, D] -> (context [L, 2A], summary [2A])."""
    def run(prefix, seq):
        g, out = np.zeros(A), []
        for x_t in seq:
            g = _np_softplus(x_t @ p[f"{prefix}_input_kernel"] + p[f"{prefix}_input_bias"]
                             + g @ p[f"{prefix}_recurrent_kernel"] + p[f"{prefix}_recurrent_bias"])
            out.append(g)
        return np.array(out).reshape(len(seq), A)

    fwd = run("forward", x)
    bwd = run("backward", x[::-1])[::-1]
    context = np.concatenate([fwd, bwd], axis=1)
    summary = np.concatenate([fwd[-1], bwd[0]]) if len(x) else np.zeros(2 * A)
    return context, summary


@pytest.fixture(scope="module")
def birnn():
    rng = np.random.default_rng(0)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    x = np.where(mask[..., None], rng.normal(size=(B, T, D)), 0.0).astype(np.float32)
    module = AttentionBiRNN(input_dim=D, attention_size=A, dropout=0.5)
    variables = module.init(jax.random.key(0), _tm(x), _tm(mask))
    params = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    return module, variables, params, x, mask


def test_birnn_context_and_summary_match_numpy(birnn):
    module, variables, params, x, mask = birnn
    context, summary = _birnn_batch_major(module, variables, x, mask)
    for b, length in enumerate(LENGTHS):
        ctx_ref, sum_ref = _np_birnn(params, x[b, :length].astype(np.float64))
        np.testing.assert_allclose(np.asarray(context[b, :length]), ctx_ref, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(context[b, length:]), 0.0)
        np.testing.assert_allclose(np.asarray(summary[b]), sum_ref, rtol=1e-5, atol=1e-6)


def test_birnn_extra_padding_changes_nothing(birnn):
    module, variables, _, x, mask = birnn
    pad = 7
    x_pad = np.concatenate([x, np.random.default_rng(3).normal(size=(B, pad, D)).astype(np.float32)], 1)
    mask_pad = np.concatenate([mask, np.zeros((B, pad), bool)], 1)
    ctx_a, sum_a = _birnn_batch_major(module, variables, x, mask)
    ctx_b, sum_b = _birnn_batch_major(module, variables, x_pad, mask_pad)
    np.testing.assert_allclose(np.asarray(ctx_b[:, :T]), np.asarray(ctx_a), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(np.asarray(sum_b), np.asarray(sum_a), rtol=1e-6, atol=1e-7)


def test_birnn_dropout_only_on_outputs_and_summary_shares_mask(birnn):
    module, variables, params, x, mask = birnn
    ctx_det, _ = _birnn_batch_major(module, variables, x, mask)
    ctx, summary = _birnn_batch_major(module, variables, x, mask, deterministic=False,
                                      rngs={"dropout": jax.random.key(5)})
    ctx, ctx_det = np.asarray(ctx), np.asarray(ctx_det)
    valid = np.broadcast_to(mask[..., None], ctx.shape)
    kept = ctx[valid] != 0
    assert 0.2 < kept.mean() < 0.8  # rate 0.5, 2 * 8 * 3 = 48 units
    # inverted dropout; the recurrence itself uses the undropped state
    np.testing.assert_allclose(ctx[valid][kept], 2.0 * ctx_det[valid][kept], rtol=1e-6)
    # summary = [fwd at last valid step ; bwd at step 1] of the *dropped-out* outputs
    np.testing.assert_array_equal(np.asarray(summary[2]), np.concatenate([ctx[2, 4, :A], ctx[2, 0, A:]]))
    np.testing.assert_array_equal(np.asarray(summary[1]), np.concatenate([ctx[1, 2, :A], ctx[1, 0, A:]]))
    np.testing.assert_array_equal(np.asarray(summary[0]), 0.0)


def test_last_valid_picks_last_step():
    values = jnp.arange(B * T, dtype=jnp.float32).reshape(B, T, 1)  # values[b, t] = 5 b + t
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    np.testing.assert_array_equal(np.asarray(last_valid(_tm(values), _tm(mask)))[:, 0], [0.0, 7.0, 14.0])


@pytest.mark.parametrize("rate", [0.0, 0.3, 1.0])
def test_time_major_dropout_drops_the_units_batch_major_dropout_drops(rate):
    """The layout does not change which units a dropout key drops (so the model's numbers do not)."""
    x = jnp.asarray(np.random.default_rng(4).normal(size=(B, T, 6)), jnp.float32) + 10.0  # no zeros
    rngs = {"dropout": jax.random.key(9)}
    batch_major = nn.Dropout(rate).apply({}, x, deterministic=False, rngs=rngs)
    time_major = TimeMajorDropout(rate).apply({}, _tm(x), deterministic=False, rngs=rngs)
    np.testing.assert_array_equal(np.asarray(_tm(time_major)), np.asarray(batch_major))
    kept = np.asarray(time_major != 0.0).mean()
    assert kept == pytest.approx(1.0 - rate, abs=0.15)
    np.testing.assert_array_equal(np.asarray(TimeMajorDropout(rate).apply({}, x, deterministic=True)), np.asarray(x))


@pytest.mark.parametrize("interacting", [True, False])
def test_gate_matches_concatenated_mlp(interacting):
    """M1 s_t + s M2 S (split kernel) equals the reference Linear on [s_t ; 0.25 S]."""
    rng = np.random.default_rng(1)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    context = rng.normal(size=(B, T, 2 * A)).astype(np.float32)
    other = rng.normal(size=(B, 2 * A)).astype(np.float32)
    gate = AttentionGate(context_dim=2 * A, interacting=interacting)
    variables = gate.init(jax.random.key(1), _tm(context), method=AttentionGate.project_context)
    p = {k: np.asarray(v, np.float64) for k, v in variables["params"].items()}
    k = 4 * A if interacting else 2 * A
    assert p["fusion_kernel"].shape == (k, k) and p["score_kernel"].shape == (k, 1)
    assert np.all(np.abs(p["fusion_kernel"]) <= 1 / np.sqrt(k))

    def run(module, context, mask, other):
        ctx_proj = module.project_context(context)
        summary_proj = module.project_summary(other) if interacting else None
        return module(ctx_proj, mask, summary_proj)

    gates = np.asarray(gate.apply(variables, _tm(context), _tm(mask), jnp.asarray(other), method=run)).T  # [b, t]
    for b in range(B):
        for t in range(T):
            z = np.concatenate([context[b, t], 0.25 * other[b]]) if interacting else context[b, t]
            e = np.tanh(z @ p["fusion_kernel"] + p["fusion_bias"]) @ p["score_kernel"][:, 0] + p["score_bias"][0]
            expected = 1 / (1 + np.exp(-2.0 * e)) if mask[b, t] else 0.0
            assert gates[b, t] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert np.all(gates[~mask] == 0.0)


def test_gates_broadcast_one_user_against_candidates():
    rng = np.random.default_rng(2)
    k, c = 8, 4
    ctx_proj = rng.normal(size=(1, T, k)).astype(np.float32)
    summaries = rng.normal(size=(c, k)).astype(np.float32)
    mask = np.arange(T)[None, :] < 3
    v, bias = rng.normal(size=(k, 1)).astype(np.float32), np.array([0.1], np.float32)
    broadcast = attention_gates(_tm(ctx_proj), jnp.asarray(summaries), _tm(mask), v, bias, 2.0)
    tiled = attention_gates(_tm(np.repeat(ctx_proj, c, 0)), jnp.asarray(summaries),
                            _tm(np.repeat(mask, c, 0)), v, bias, 2.0)
    assert broadcast.shape == (T, c)
    np.testing.assert_allclose(np.asarray(broadcast), np.asarray(tiled), rtol=1e-6)
