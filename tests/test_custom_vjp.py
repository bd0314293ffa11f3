"""Hand-written backward passes (custom VJPs) against autodiff of the plain implementations.

Each custom-VJP scan in ``iarn_jax.models.recurrence`` keeps its plain implementation as the
reference (``custom_vjp=False``); ``initializers.rows_matmul``'s reference is ``matmul`` (``rows_affine``'s, ``matmul`` plus the bias). Checked here, on random inputs with padding (empty, partial and
full sequences, left-aligned):
  * the forward outputs are bitwise equal to the reference's;
  * every gradient equals ``jax.grad`` of the reference to ~1e-5 relative (float32);
  * in float64 (x64 enabled only inside a ``jax.enable_x64`` context), directional derivatives of
    the custom-VJP gradient match central finite differences.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iarn_jax.models.initializers import (
    broadcast_over_time,
    matmul,
    rows_affine,
    rows_matmul,
    sum_over_time,
    sum_rows,
)
from iarn_jax.models.recurrence import (
    bidirectional_rnn_scan,
    masked_rnn_scan,
    softplus_beta,
    softplus_beta_derivative_from_output,
    tanh_derivative_from_output,
)

B, T, A = 5, 7, 6
LENGTHS = np.array([0, 1, 4, 7, 3])  # empty, one step, partial, full, partial
BETA = 5.0

CELLS = {
    "softplus": (lambda z: softplus_beta(z, BETA), lambda y: softplus_beta_derivative_from_output(y, BETA)),
    "tanh": (jnp.tanh, tanh_derivative_from_output),
}


def _mask(t=T, lengths=LENGTHS):
    return np.arange(t)[None, :] < lengths[:, None]  # [b, t]


def _birnn_inputs(dtype, seed=0):
    rng = np.random.default_rng(seed)
    mask = _mask()
    mask_tm = mask.T
    proj_f = np.where(mask_tm[..., None], rng.normal(size=(T, B, A)), 0.3)  # padding inputs are ignored
    proj_b = rng.normal(size=(T, B, A))
    uf = rng.normal(size=(A, A)) * 0.5
    ub = rng.normal(size=(A, A)) * 0.5
    weights = rng.normal(size=(2, T, B, A))  # the loss's probe of the outputs
    cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    return (cast(proj_f), cast(proj_b), jnp.asarray(mask_tm), jnp.asarray(mask_tm[::-1]), cast(uf), cast(ub)), cast(weights)


def _birnn_loss(cell, custom):
    activation, derivative = CELLS[cell]

    def loss(pf, pb, m, mr, uf, ub, weights):
        fwd, bwd = bidirectional_rnn_scan(pf, pb, m, mr, uf, ub, activation=activation,
                                          output_derivative=derivative, custom_vjp=custom)
        return jnp.sum(jnp.sin(weights[0] * fwd)) + jnp.sum(weights[1] * bwd**2)

    return loss


def _assert_close_rel(got, want, rtol):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    scale = max(np.max(np.abs(want)), 1e-12)
    assert np.max(np.abs(got - want)) <= rtol * scale, (np.max(np.abs(got - want)), scale)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_birnn_custom_vjp_matches_autodiff(cell):
    args, weights = _birnn_inputs(jnp.float32)
    activation, derivative = CELLS[cell]
    outs = [bidirectional_rnn_scan(*args, activation=activation, output_derivative=derivative, custom_vjp=c)
            for c in (True, False)]
    for got, want in zip(*outs):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # same forward
    argnums = (0, 1, 4, 5)
    fast = jax.jit(jax.grad(_birnn_loss(cell, True), argnums=argnums))(*args, weights)
    ref = jax.jit(jax.grad(_birnn_loss(cell, False), argnums=argnums))(*args, weights)
    for got, want in zip(fast, ref):
        _assert_close_rel(got, want, 1e-5)
    mask_tm, mask_rev = np.asarray(args[2]), np.asarray(args[3])
    assert np.all(np.asarray(fast[0])[~mask_tm] == 0.0)  # padded inputs get no gradient
    assert np.all(np.asarray(fast[1])[~mask_rev] == 0.0)
    assert np.abs(np.asarray(fast[2])).max() > 1e-3 and np.abs(np.asarray(fast[3])).max() > 1e-3


def _finite_difference_check(loss, args, argnums, seed):
    """Directional derivative <grad, d> vs the central difference along d, for random d per arg."""
    rng = np.random.default_rng(seed)
    grads = jax.jit(jax.grad(loss, argnums=argnums))(*args)
    loss_jit = jax.jit(loss)
    eps = 1e-6
    for i, g in zip(argnums, grads):
        direction = jnp.asarray(rng.normal(size=args[i].shape), jnp.float64)
        plus = list(args)
        minus = list(args)
        plus[i] = args[i] + eps * direction
        minus[i] = args[i] - eps * direction
        numeric = float((loss_jit(*plus) - loss_jit(*minus)) / (2 * eps))
        analytic = float(jnp.sum(g * direction))
        assert abs(analytic - numeric) <= 1e-7 * max(1.0, abs(numeric)), (i, analytic, numeric)
        assert abs(analytic) > 1e-6, (i, analytic)


@pytest.mark.parametrize("cell", sorted(CELLS))
def test_birnn_custom_vjp_finite_differences_float64(cell):
    with jax.enable_x64(True):
        args, weights = _birnn_inputs(jnp.float64, seed=1)
        assert args[0].dtype == jnp.float64
        _finite_difference_check(_birnn_loss(cell, True), (*args, weights), (0, 1, 4, 5), seed=2)
    assert jnp.ones(1).dtype == jnp.float32  # x64 did not leak


def test_derivatives_from_output_match_autodiff():
    z = jnp.linspace(-6.0, 6.0, 241)
    np.testing.assert_allclose(
        np.asarray(softplus_beta_derivative_from_output(softplus_beta(z, BETA), BETA)),
        np.asarray(jax.vmap(jax.grad(lambda v: softplus_beta(v, BETA)))(z)), rtol=2e-6, atol=1e-30)
    np.testing.assert_allclose(
        np.asarray(tanh_derivative_from_output(jnp.tanh(z))),
        np.asarray(jax.vmap(jax.grad(jnp.tanh))(z)), rtol=2e-5, atol=1e-7)


@pytest.mark.parametrize("shape", [(B, T, 4), (T, B, 4), (2, B, T, 4), (7, 4)])
def test_rows_matmul_matches_matmul(shape):
    rng = np.random.default_rng(4)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=shape[:-1] + (9,)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(rows_matmul(x, kernel)), np.asarray(matmul(x, kernel)))

    def loss(fn):
        return lambda x, k: jnp.sum(jnp.sin(weights * fn(x, k)))

    fast = jax.jit(jax.grad(loss(rows_matmul), argnums=(0, 1)))(x, kernel)
    ref = jax.jit(jax.grad(loss(matmul), argnums=(0, 1)))(x, kernel)
    for got, want in zip(fast, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        _assert_close_rel(got, want, 1e-5)


def test_rows_matmul_bfloat16_compute_close_to_float32():
    rng = np.random.default_rng(5)
    x = jnp.asarray(rng.normal(size=(B, T, 4)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    low = jax.grad(lambda x, k: jnp.sum(jnp.sin(rows_matmul(x, k, jnp.bfloat16))), argnums=(0, 1))(x, kernel)
    ref = jax.grad(lambda x, k: jnp.sum(jnp.sin(matmul(x, k))), argnums=(0, 1))(x, kernel)
    for got, want in zip(low, ref):
        assert got.dtype == jnp.float32
        _assert_close_rel(got, want, 3e-2)


def test_rows_matmul_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(6)
        x = jnp.asarray(rng.normal(size=(B, T, 4)))
        kernel = jnp.asarray(rng.normal(size=(4, 9)))
        weights = jnp.asarray(rng.normal(size=(B, T, 9)))
        assert x.dtype == jnp.float64
        _finite_difference_check(lambda x, k, w: jnp.sum(jnp.sin(w * rows_matmul(x, k))),
                                 (x, kernel, weights), (0, 1), seed=7)
    assert jnp.ones(1).dtype == jnp.float32


@pytest.mark.parametrize("shape", [(T, B, 4), (2, B, T, 4), (7, 4)])
def test_rows_affine_matches_matmul_plus_bias(shape):
    rng = np.random.default_rng(10)
    x = jnp.asarray(rng.normal(size=shape), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(4, 9)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(9,)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=shape[:-1] + (9,)), jnp.float32)
    plain = lambda x, k, b: matmul(x, k) + b  # noqa: E731
    np.testing.assert_array_equal(np.asarray(rows_affine(x, kernel, bias)), np.asarray(plain(x, kernel, bias)))

    def loss(fn):
        return lambda x, k, b: jnp.sum(jnp.sin(weights * fn(x, k, b)))

    fast = jax.jit(jax.grad(loss(rows_affine), argnums=(0, 1, 2)))(x, kernel, bias)
    ref = jax.jit(jax.grad(loss(plain), argnums=(0, 1, 2)))(x, kernel, bias)
    for got, want in zip(fast, ref):
        assert got.shape == want.shape and got.dtype == want.dtype
        _assert_close_rel(got, want, 1e-5)
    # the bias gradient is the cotangent summed over every row (hand-worked: a plain NumPy sum)
    cotangent = np.asarray(weights) * np.cos(np.asarray(weights) * np.asarray(plain(x, kernel, bias)))
    np.testing.assert_allclose(np.asarray(fast[2]), cotangent.reshape(-1, 9).sum(0), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(sum_rows(weights)), np.asarray(weights).reshape(-1, 9).sum(0),
                               rtol=1e-5, atol=1e-5)


def test_rows_affine_finite_differences_float64():
    with jax.enable_x64(True):
        rng = np.random.default_rng(11)
        x = jnp.asarray(rng.normal(size=(T, B, 4)))
        kernel = jnp.asarray(rng.normal(size=(4, 9)))
        bias = jnp.asarray(rng.normal(size=(9,)))
        weights = jnp.asarray(rng.normal(size=(T, B, 9)))
        _finite_difference_check(lambda x, k, b, w: jnp.sum(jnp.sin(w * rows_affine(x, k, b))),
                                 (x, kernel, bias, weights), (0, 1, 2), seed=12)
    assert jnp.ones(1).dtype == jnp.float32


def _rnn_inputs(dtype, seed=0, holes=False):
    rng = np.random.default_rng(seed)
    mask = _mask()
    if holes:  # masked_rnn_scan holds the state on any padded step, not only trailing ones
        mask = mask & (rng.uniform(size=mask.shape) < 0.7)
    proj = rng.normal(size=(B, T, A))
    kernel = rng.normal(size=(A, A)) * 0.5
    weights = rng.normal(size=(2, B, T, A))
    cast = lambda v: jnp.asarray(v, dtype)  # noqa: E731
    return (cast(proj), jnp.asarray(mask), cast(kernel)), cast(weights)


def _rnn_loss(cell, custom, reverse):
    activation, derivative = CELLS[cell]

    def loss(proj, mask, kernel, weights):
        outputs, final = masked_rnn_scan(proj, mask, kernel, activation=activation, reverse=reverse,
                                         output_derivative=derivative, custom_vjp=custom)
        return jnp.sum(jnp.sin(weights[0] * outputs)) + jnp.sum(weights[1, :, 0] * final**2)

    return loss


@pytest.mark.parametrize("holes", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", sorted(CELLS))
def test_masked_rnn_custom_vjp_matches_autodiff(cell, reverse, holes):
    args, weights = _rnn_inputs(jnp.float32, holes=holes)
    activation, derivative = CELLS[cell]
    outs = [masked_rnn_scan(*args, activation=activation, reverse=reverse, output_derivative=derivative,
                            custom_vjp=c) for c in (True, False)]
    for got, want in zip(*outs):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))  # same outputs and final state
    argnums = (0, 2)
    fast = jax.jit(jax.grad(_rnn_loss(cell, True, reverse), argnums=argnums))(*args, weights)
    ref = jax.jit(jax.grad(_rnn_loss(cell, False, reverse), argnums=argnums))(*args, weights)
    for got, want in zip(fast, ref):
        _assert_close_rel(got, want, 1e-5)
    assert np.all(np.asarray(fast[0])[~np.asarray(args[1])] == 0.0)  # padded steps: no input gradient


@pytest.mark.parametrize("reverse", [False, True])
def test_masked_rnn_custom_vjp_finite_differences_float64(reverse):
    with jax.enable_x64(True):
        args, weights = _rnn_inputs(jnp.float64, seed=1, holes=True)
        assert args[0].dtype == jnp.float64
        _finite_difference_check(_rnn_loss("softplus", True, reverse), (*args, weights), (0, 2), seed=2)
    assert jnp.ones(1).dtype == jnp.float32


def test_broadcast_over_time_gradient_is_the_time_sum():
    """broadcast_over_time's hand-written VJP (a ones-vector matmul) equals autodiff of broadcast_to,
    and in float64 matches finite differences."""
    rng = np.random.default_rng(8)
    x = jnp.asarray(rng.normal(size=(B, 4)), jnp.float32)
    weights = jnp.asarray(rng.normal(size=(T, B, 4)), jnp.float32)
    np.testing.assert_array_equal(np.asarray(broadcast_over_time(x, T)),
                                  np.broadcast_to(np.asarray(x), (T, B, 4)))
    fast = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(weights * broadcast_over_time(x, T)))))(x)
    ref = jax.jit(jax.grad(lambda x: jnp.sum(jnp.sin(weights * jnp.broadcast_to(x, (T, B, 4))))))(x)
    _assert_close_rel(fast, ref, 1e-6)
    np.testing.assert_allclose(np.asarray(sum_over_time(weights)), np.asarray(weights).sum(0), rtol=1e-5, atol=1e-6)
    with jax.enable_x64(True):
        x64 = jnp.asarray(rng.normal(size=(B, 4)))
        w64 = jnp.asarray(rng.normal(size=(T, B, 4)))
        _finite_difference_check(lambda x, w: jnp.sum(jnp.sin(w * broadcast_over_time(x, T))), (x64, w64), (0,), seed=9)
