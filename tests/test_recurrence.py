"""Masked scans and recurrent cells against plain NumPy loops over each sequence's valid steps."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iarn_jax.models.recurrence import (
    RecurrentLayer,
    gated_scan,
    masked_lstm_scan,
    masked_rnn_scan,
    softplus_beta,
)

B, T, H = 3, 5, 4
LENGTHS = np.array([0, 3, 5])  # empty, partial, full


def _np_softplus(z, beta=5.0):
    return np.logaddexp(0.0, beta * z) / beta


def _sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    mask = np.arange(T)[None, :] < LENGTHS[:, None]
    return dict(
        mask=mask,
        proj=rng.normal(size=(B, T, H)).astype(np.float32),
        proj4=rng.normal(size=(B, T, 4 * H)).astype(np.float32),
        kernel=(rng.normal(size=(H, H)) * 0.5).astype(np.float32),
        kernel4=(rng.normal(size=(H, 4 * H)) * 0.5).astype(np.float32),
        gates=np.where(mask, rng.uniform(size=(B, T)), 0.0).astype(np.float32),
    )


def _gated_scan_batch_major(proj, gates, kernel, **kwargs):
    """gated_scan (time-major inputs) on batch-major proj [b, t, h], gates [b, t]."""
    return gated_scan(jnp.swapaxes(jnp.asarray(proj), 0, 1), jnp.asarray(gates).T, jnp.asarray(kernel), **kwargs)


def test_softplus_beta_matches_torch_formula():
    z = np.array([-3.0, -0.2, 0.0, 0.3, 2.0, 4.5, 10.0], np.float32)
    expected = np.where(5 * z > 20, z, np.log1p(np.exp(5 * z.astype(np.float64))) / 5)
    np.testing.assert_allclose(np.asarray(softplus_beta(jnp.asarray(z), 5.0)), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("reverse", [False, True])
def test_masked_rnn_scan_matches_numpy(data, reverse):
    outputs, final = masked_rnn_scan(
        jnp.asarray(data["proj"]), jnp.asarray(data["mask"]), jnp.asarray(data["kernel"]),
        activation=lambda z: softplus_beta(z, 5.0), reverse=reverse,
    )
    for b, length in enumerate(LENGTHS):
        expected = np.zeros((T, H))
        state = np.zeros(H)
        steps = range(length - 1, -1, -1) if reverse else range(length)  # natural-length sequence
        for t in steps:
            state = _np_softplus(data["proj"][b, t] + state @ data["kernel"])
            expected[t] = state
        np.testing.assert_allclose(np.asarray(outputs[b]), expected, rtol=1e-5, atol=1e-6)
        # forward: state at the last valid step; backward: state at step 1; zeros when empty
        np.testing.assert_allclose(np.asarray(final[b]), state, rtol=1e-5, atol=1e-6)


def test_gated_scan_matches_numpy(data):
    final = _gated_scan_batch_major(jnp.asarray(data["proj"]), jnp.asarray(data["gates"]), jnp.asarray(data["kernel"]))
    for b, length in enumerate(LENGTHS):
        h = np.zeros(H)
        for t in range(length):
            cand = np.maximum(data["proj"][b, t] + h @ data["kernel"], 0.0)
            a = data["gates"][b, t]
            h = (1 - a) * h + a * cand
        np.testing.assert_allclose(np.asarray(final[b]), h, rtol=1e-5, atol=1e-6)


def test_lstm_scan_matches_numpy(data):
    final = masked_lstm_scan(jnp.asarray(data["proj4"]), jnp.asarray(data["mask"]), jnp.asarray(data["kernel4"]))
    for b, length in enumerate(LENGTHS):
        h, c = np.zeros(H), np.zeros(H)
        for t in range(length):
            z = data["proj4"][b, t] + h @ data["kernel4"]
            i, f, o, g = z[:H], z[H : 2 * H], z[2 * H : 3 * H], z[3 * H :]
            c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
            h = _sigmoid(o) * np.tanh(c)
        np.testing.assert_allclose(np.asarray(final[b]), h, rtol=1e-5, atol=1e-6)


def test_extra_padding_changes_nothing(data):
    pad = 7
    proj = np.concatenate([data["proj"], np.random.default_rng(1).normal(size=(B, pad, H))], 1).astype(np.float32)
    mask = np.concatenate([data["mask"], np.zeros((B, pad), bool)], 1)
    gates = np.concatenate([data["gates"], np.zeros((B, pad), np.float32)], 1)
    kernel = jnp.asarray(data["kernel"])
    act = lambda z: softplus_beta(z, 5.0)  # noqa: E731
    for reverse in (False, True):
        out_a, fin_a = masked_rnn_scan(
            jnp.asarray(data["proj"]), jnp.asarray(data["mask"]), kernel, activation=act, reverse=reverse
        )
        out_b, fin_b = masked_rnn_scan(jnp.asarray(proj), jnp.asarray(mask), kernel, activation=act, reverse=reverse)
        np.testing.assert_allclose(np.asarray(out_b[:, :T]), np.asarray(out_a), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(np.asarray(out_b[:, T:]), 0.0)
        np.testing.assert_allclose(np.asarray(fin_b), np.asarray(fin_a), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(
        np.asarray(_gated_scan_batch_major(jnp.asarray(proj), jnp.asarray(gates), kernel)),
        np.asarray(_gated_scan_batch_major(jnp.asarray(data["proj"]), jnp.asarray(data["gates"]), kernel)), rtol=1e-6, atol=1e-7,
    )


def test_recurrent_layer_params_and_projection():
    d, h = 6, 4
    layer = RecurrentLayer(input_dim=d, hidden_size=h, cell="lstm")
    x = np.random.default_rng(2).normal(size=(2, 3, d)).astype(np.float32)
    params = layer.init(jax.random.key(0), jnp.asarray(x), method=RecurrentLayer.project_inputs)["params"]
    assert params["input_kernel"].shape == (d, 4 * h) and params["recurrent_kernel"].shape == (h, 4 * h)
    # forget block (i, f, o, g order) of the input bias starts at 1; everything else Torch-uniform
    np.testing.assert_array_equal(np.asarray(params["input_bias"][h : 2 * h]), 1.0)
    assert np.all(np.abs(params["input_kernel"]) <= 1 / np.sqrt(d))
    assert np.all(np.abs(params["recurrent_kernel"]) <= 1 / np.sqrt(h))
    assert np.all(np.abs(params["recurrent_bias"]) <= 1 / np.sqrt(h))
    assert np.abs(params["input_kernel"]).max() > 0.5 / np.sqrt(d)  # uniform over the full range
    proj = layer.apply({"params": params}, jnp.asarray(x), method=RecurrentLayer.project_inputs)
    p = {k: np.asarray(v) for k, v in params.items()}
    expected = x @ p["input_kernel"] + p["input_bias"] + p["recurrent_bias"]
    np.testing.assert_allclose(np.asarray(proj), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_compute_close_to_float32(data):
    ref = _gated_scan_batch_major(jnp.asarray(data["proj"]), jnp.asarray(data["gates"]), jnp.asarray(data["kernel"]))
    low = _gated_scan_batch_major(
        jnp.asarray(data["proj"]), jnp.asarray(data["gates"]), jnp.asarray(data["kernel"]), compute_dtype=jnp.bfloat16
    )
    assert low.dtype == jnp.float32  # accumulation and carry stay float32
    np.testing.assert_allclose(np.asarray(low), np.asarray(ref), rtol=3e-2, atol=3e-2)
