"""Recurrent cells and masked scans of the IARN towers.

Shapes (jaxtyping-style): ``b`` batch, ``t`` time (padded length), ``d`` step-input size, ``h``
hidden size. Sequences are left-aligned: ``mask[b, t]`` is True on the first ``len_b`` steps.

Everything that does not depend on the previous state is computed *before* the scan: the input
projection ``x_t W + b_W + b_U`` of all steps is one matmul (:meth:`RecurrentLayer.project_inputs`),
so a scan body only does ``h_{t-1} @ U`` plus elementwise work. The scans run time-major
(``[t, b, ...]``) and accumulate in float32; ``compute_dtype`` only casts the matmul inputs.

Padding never changes a state:
  * ungated cells (softplus RNN, LSTM) use ``jnp.where(mask_t, new, old)``;
  * the attention-gated cell relies on ``a_t = 0`` on padded steps, which makes
    ``h_t = (1 - a_t) h_{t-1} + a_t h'_t`` an exact copy of ``h_{t-1}``.
So the final carry is the state at the last valid step (zeros for an empty sequence), and a reverse
scan over a padded sequence holds its zero initial state until the valid region begins, i.e. it
starts at each sequence's last valid step.
"""
from __future__ import annotations

from typing import Callable, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from iarn_jax.models.initializers import (
    bias_init,
    cast_for_matmul,
    kernel_init,
    matmul,
    resolve_dtype,
    rows_affine,
)

CELLS = ("gated", "rnn", "lstm")

# lax.scan unroll factor used when a scan's ``unroll`` is None (speed only, never the numbers).
SCAN_UNROLL = 1

# Whether the context bi-RNN scan uses its hand-written backward pass (custom VJP, below) when its
# ``custom_vjp`` is None. Speed only: the forward is the same scan; gradients agree with autodiff
# of the plain scan to float rounding (tests/test_custom_vjp.py). False gives the plain autodiff
# reference.
CUSTOM_VJP = True


def _use_custom_vjp(custom_vjp: Optional[bool]) -> bool:
    return CUSTOM_VJP if custom_vjp is None else bool(custom_vjp)


def _unroll(unroll: Optional[int]) -> int:
    return SCAN_UNROLL if unroll is None else int(unroll)


def softplus_beta(z: jax.Array, beta: float) -> jax.Array:
    """log(1 + exp(beta z)) / beta, the reference's "smooth ReLU" (Torch ``nn.SoftPlus(beta)``).

    Torch switches to the identity where ``beta z > 20``; the stable ``jax.nn.softplus`` differs from
    that by at most exp(-20)/beta there, and stays smooth.
    """
    return jax.nn.softplus(beta * z) / beta


def softplus_beta_derivative_from_output(y: jax.Array, beta: float) -> jax.Array:
    """d softplus_beta(z) / dz = sigmoid(beta z), written with the output y = softplus_beta(z):
    sigmoid(beta z) = 1 - exp(-beta y) (exact; ``-expm1`` keeps it accurate for small y)."""
    return -jnp.expm1(-beta * y)


def tanh_derivative_from_output(y: jax.Array) -> jax.Array:
    """d tanh(z) / dz = 1 - y^2 with y = tanh(z)."""
    return (1.0 + y) * (1.0 - y)


def _time_major(x: jax.Array) -> jax.Array:
    return jnp.swapaxes(x, 0, 1)


def masked_rnn_scan(
    input_proj: jax.Array,  # [b, t, h]: x_t W + b_W + b_U
    mask: jax.Array,  # [b, t] bool
    recurrent_kernel: jax.Array,  # [h, h]
    *,
    activation: Callable[[jax.Array], jax.Array],
    reverse: bool = False,
    compute_dtype=jnp.float32,
    output_derivative: Optional[Callable[[jax.Array], jax.Array]] = None,
    custom_vjp: Optional[bool] = None,
) -> tuple[jax.Array, jax.Array]:
    """Vanilla RNN ``g_t = act(input_proj_t + g_{t-1} U)``, state frozen on padded steps.

    ``reverse=True`` runs from the last padded step to the first; with left-aligned padding the state
    stays 0 on the trailing padding, so the backward pass starts at each sequence's last valid step.

    ``output_derivative(y)`` = act'(z) written with y = act(z); when given (and ``custom_vjp`` /
    :data:`CUSTOM_VJP` is on) the gradient is the hand-written backward of :func:`_rnn_bwd`. The
    forward values are the same either way.

    Returns (outputs [b, t, h] with zeros on padded steps, final carry [b, h]). The final carry of
    the forward pass is the state at the last valid step; of the backward pass, the state at step 1.
    Any mask works (padding need not be trailing).
    """
    proj_tm, mask_tm = _time_major(input_proj), _time_major(mask)
    if reverse:  # the same steps in iteration order
        proj_tm, mask_tm = proj_tm[::-1], mask_tm[::-1]
    run = _rnn_custom if output_derivative is not None and _use_custom_vjp(custom_vjp) else _rnn_primal
    outputs, final = run(proj_tm, mask_tm, recurrent_kernel, activation, output_derivative, compute_dtype)
    if reverse:
        outputs = outputs[::-1]
    return _time_major(outputs), final


def _rnn_states(proj_tm, mask_tm, recurrent_kernel, activation, compute_dtype):
    """Time-major states s_1..s_T (held on padding) of :func:`masked_rnn_scan`, in iteration order."""
    kernel = cast_for_matmul(recurrent_kernel, compute_dtype)
    carry0 = jnp.zeros(proj_tm.shape[1:], proj_tm.dtype)

    def step(state, inputs):
        proj_t, mask_t = inputs
        new = activation(proj_t + matmul(state, kernel, compute_dtype))
        state = jnp.where(mask_t[:, None], new, state)
        return state, state

    final, states = jax.lax.scan(step, carry0, (proj_tm, mask_tm))
    return final, states


def _rnn_fwd(proj_tm, mask_tm, recurrent_kernel, activation, output_derivative, compute_dtype):
    final, states = _rnn_states(proj_tm, mask_tm, recurrent_kernel, activation, compute_dtype)
    outputs = jnp.where(mask_tm[..., None], states, 0.0)
    return (outputs, final), (states, mask_tm, recurrent_kernel)


def _rnn_primal(proj_tm, mask_tm, recurrent_kernel, activation, output_derivative, compute_dtype):
    """(time-major outputs, zeros on padding, final state) of :func:`masked_rnn_scan` in iteration
    order: the plain scan (autodiff's reference) and the custom VJP's forward."""
    return _rnn_fwd(proj_tm, mask_tm, recurrent_kernel, activation, output_derivative, compute_dtype)[0]


def _rnn_bwd(activation, output_derivative, compute_dtype, residuals, cotangents):
    """Backward of s_t = m_t ? act(p_t + s_{t-1} U) : s_{t-1}, out_t = m_t s_t, final = s_T:

        G_t = g_t + m_t dout_t  (g_T = dfinal),  dpre_t = m_t act'(s_t) G_t,
        g_{t-1} = (1 - m_t) G_t + dpre_t U^T,  dp_t = dpre_t,  dU = sum_t s_{t-1}^T dpre_t.
    """
    del activation
    states, mask_tm, recurrent_kernel = residuals
    d_outputs, d_final = cotangents
    keep = mask_tm[..., None]
    d_act = jnp.where(keep, output_derivative(states), 0.0)
    d_outputs = jnp.where(keep, d_outputs, 0.0)
    kernel_t = cast_for_matmul(recurrent_kernel, compute_dtype).T

    def step(g, inputs):
        dout_t, dact_t, keep_t = inputs
        total = g + dout_t
        dpre = total * dact_t
        return jnp.where(keep_t, matmul(dpre, kernel_t, compute_dtype), total), dpre

    _, dpre = jax.lax.scan(step, d_final, (d_outputs, d_act, keep), reverse=True)
    d_kernel = _time_contract(_shift_in_time(states), dpre, compute_dtype).astype(recurrent_kernel.dtype)
    return dpre, None, d_kernel


def bidirectional_rnn_scan(
    proj_forward: jax.Array,  # [t, b, A] time-major: x_t W_f + b, natural time order
    proj_backward_reversed: jax.Array,  # [t, b, A] time-major: x_t W_b + b, REVERSED time order
    mask: jax.Array,  # [t, b] bool, left-aligned (valid steps first), natural order
    mask_reversed: jax.Array,  # [t, b] bool: mask[::-1]
    kernel_forward: jax.Array,  # [A, A]
    kernel_backward: jax.Array,  # [A, A]
    *,
    activation: Callable[[jax.Array], jax.Array],
    compute_dtype=jnp.float32,
    unroll: Optional[int] = None,
    output_derivative: Optional[Callable[[jax.Array], jax.Array]] = None,
    custom_vjp: Optional[bool] = None,
) -> tuple[jax.Array, jax.Array]:
    """Both directions of a masked bi-directional vanilla RNN in ONE time-major scan.

    Iteration k advances the forward RNN at step k and the backward RNN at step t-1-k (its inputs
    come time-reversed). With left-aligned padding:
      * the backward state is still 0 when its valid region begins (every step it passed was padding),
      * the forward outputs on trailing padding are never read,
    so both directions can use ``state = mask_t * act(proj_t + state U)`` (the state is reset to 0 on
    padding instead of being held); outputs on valid steps are exactly those of two separate
    masked scans. One loop instead of two halves the per-step loop overhead.

    ``output_derivative(y)`` = act'(z) written with the output y = act(z) (e.g.
    :func:`tanh_derivative_from_output`); when given (and ``custom_vjp`` / :data:`CUSTOM_VJP` is on)
    the gradient is the hand-written backward of :func:`_birnn_bwd` (a reverse scan of the
    pre-activation cotangents only; dU as one [t*b]-deep matmul after it) instead of autodiff of the
    scan. Same forward either way.

    Returns (forward outputs [t, b, A] in natural order, backward outputs [t, b, A] in REVERSED order;
    ``[::-1]`` them), time-major, zeros on padded steps. Only for left-aligned masks (the layout of
    every batch in this project).
    """
    if output_derivative is not None and _use_custom_vjp(custom_vjp):
        return _birnn_custom(
            proj_forward, proj_backward_reversed, mask, mask_reversed, kernel_forward, kernel_backward,
            activation, output_derivative, compute_dtype, _unroll(unroll),
        )
    return _birnn_scan(
        proj_forward, proj_backward_reversed, mask, mask_reversed, kernel_forward, kernel_backward,
        activation, compute_dtype, _unroll(unroll),
    )


def _birnn_scan(pf_all, pb_all, mask, mask_reversed, kernel_forward, kernel_backward, activation,
                compute_dtype, unroll):
    """The plain forward scan of :func:`bidirectional_rnn_scan` (also the autodiff reference)."""
    _, batch, size = pf_all.shape
    kf = cast_for_matmul(kernel_forward, compute_dtype)
    kb = cast_for_matmul(kernel_backward, compute_dtype)
    zeros = jnp.zeros((batch, size), pf_all.dtype)

    def step(carry, inputs):
        hf, hb = carry
        pf, pb, mf, mb = inputs
        of = jnp.where(mf[:, None], activation(pf + matmul(hf, kf, compute_dtype)), 0.0)
        ob = jnp.where(mb[:, None], activation(pb + matmul(hb, kb, compute_dtype)), 0.0)
        return (of, ob), (of, ob)

    _, (fwd, bwd_reversed) = jax.lax.scan(
        step, (zeros, zeros), (pf_all, pb_all, mask, mask_reversed), unroll=unroll,
    )
    return fwd, bwd_reversed


def _shift_in_time(outputs: jax.Array) -> jax.Array:
    """[t, b, ...] -> the previous step's values (zeros at step 0)."""
    return jnp.concatenate([jnp.zeros_like(outputs[:1]), outputs[:-1]], axis=0)


def _shift_back_in_time(values: jax.Array) -> jax.Array:
    """[t, b, ...] -> the next step's values (zeros at the last step)."""
    return jnp.concatenate([values[1:], jnp.zeros_like(values[:1])], axis=0)


def _time_contract(a: jax.Array, b: jax.Array, compute_dtype) -> jax.Array:
    """sum_t a_t^T b_t for a [t, n, p], b [t, n, q] -> [p, q].

    As t batched [p, n] x [n, q] matmuls summed by a ones-vector matmul: on XLA CPU this is ~2x
    faster than one [t*n]-deep ``a.T @ b`` (whose contraction over the major dimension makes XLA
    transpose an operand first) and than a sum over the leading axis.
    """
    per_step = jnp.einsum("tni,tnj->tij", cast_for_matmul(a, compute_dtype), cast_for_matmul(b, compute_dtype),
                          preferred_element_type=jnp.float32 if compute_dtype != jnp.float32 else None)
    steps = per_step.shape[0]
    return matmul(jnp.ones((steps,), per_step.dtype), per_step.reshape(steps, -1)).reshape(per_step.shape[1:])


def _birnn_primal(pf_all, pb_all, mask, mask_reversed, kernel_forward, kernel_backward, activation,
                  output_derivative, compute_dtype, unroll):
    return _birnn_scan(pf_all, pb_all, mask, mask_reversed, kernel_forward, kernel_backward, activation,
                       compute_dtype, unroll)


def _birnn_fwd(pf_all, pb_all, mask, mask_reversed, kernel_forward, kernel_backward, activation,
               output_derivative, compute_dtype, unroll):
    outputs = _birnn_scan(pf_all, pb_all, mask, mask_reversed, kernel_forward, kernel_backward,
                          activation, compute_dtype, unroll)
    return outputs, (outputs, mask, mask_reversed, kernel_forward, kernel_backward)


def _birnn_bwd(activation, output_derivative, compute_dtype, unroll, residuals, cotangents):
    """Backward of o_t = m_t act(p_t + o_{t-1} U) (each direction, in its iteration order):

        dpre_t = m_t act'(pre_t) (dout_t + dpre_{t+1} U^T),  dp_t = dpre_t,
        dU = sum_t o_{t-1}^T dpre_t,

    with act'(pre_t) = output_derivative(o_t), read off each step's output inside the reverse scan,
    which carries only dpre_{t+1} U^T; dU = sum_t o_t^T dpre_{t+1} is one contraction after it.
    """
    del activation
    (out_f, out_b), mask, mask_reversed, kernel_forward, kernel_backward = residuals
    dout_f, dout_b = cotangents
    kf_t = cast_for_matmul(kernel_forward, compute_dtype).T
    kb_t = cast_for_matmul(kernel_backward, compute_dtype).T

    # act' is taken from each step's output inside the loop, and dU pairs o_t with dpre_{t+1}
    # (dpre shifted after the loop), so nothing [t, b, A] is derived from the forward outputs alone:
    # XLA would schedule such arrays into the forward pass and keep them live across it.
    def step(carry, inputs):
        cf, cb = carry  # dpre_{t+1} U^T of each direction
        gf, gb, of, ob, mf, mb = inputs
        df = (gf + cf) * jnp.where(mf[:, None], output_derivative(of), 0.0)
        db = (gb + cb) * jnp.where(mb[:, None], output_derivative(ob), 0.0)
        return (matmul(df, kf_t, compute_dtype), matmul(db, kb_t, compute_dtype)), (df, db)

    zeros = jnp.zeros(out_f.shape[1:], out_f.dtype)
    _, (dpre_f, dpre_b) = jax.lax.scan(
        step, (zeros, zeros), (dout_f, dout_b, out_f, out_b, mask, mask_reversed), reverse=True, unroll=unroll,
    )
    du_f = _time_contract(out_f, _shift_back_in_time(dpre_f), compute_dtype).astype(kernel_forward.dtype)
    du_b = _time_contract(out_b, _shift_back_in_time(dpre_b), compute_dtype).astype(kernel_backward.dtype)
    return dpre_f, dpre_b, None, None, du_f, du_b


_birnn_custom = jax.custom_vjp(_birnn_primal, nondiff_argnums=(6, 7, 8, 9))
_birnn_custom.defvjp(_birnn_fwd, _birnn_bwd)

_rnn_custom = jax.custom_vjp(_rnn_primal, nondiff_argnums=(3, 4, 5))
_rnn_custom.defvjp(_rnn_fwd, _rnn_bwd)


def gated_scan(
    input_proj: jax.Array,  # [t, b, h] time-major: x_t W + b_W + b_U
    gates: jax.Array,  # [t, b]: attention gates, exactly 0 on padded steps
    recurrent_kernel: jax.Array,  # [h, h]
    *,
    compute_dtype=jnp.float32,
    unroll: Optional[int] = None,
) -> jax.Array:
    """Attention-gated recurrence (TAGM cell, reference notes 2.4), h_0 = 0, over TIME-MAJOR inputs
    (the towers' layout: no transpose before the scan):

        h'_t = relu(input_proj_t + h_{t-1} U)
        h_t  = (1 - a_t) h_{t-1} + a_t h'_t

    Returns the final state h_T [b, h]; with a_t = 0 on padding it is the last valid state.
    """
    _, batch, hidden = input_proj.shape
    kernel = cast_for_matmul(recurrent_kernel, compute_dtype)
    carry0 = jnp.zeros((batch, hidden), input_proj.dtype)

    def step(state, inputs):
        proj_t, gate_t = inputs
        candidate = jax.nn.relu(proj_t + matmul(state, kernel, compute_dtype))
        gate_t = gate_t[:, None]
        return (1.0 - gate_t) * state + gate_t * candidate, None

    final, _ = jax.lax.scan(step, carry0, (input_proj, gates), unroll=_unroll(unroll))
    return final


def masked_lstm_scan(
    input_proj: jax.Array,  # [b, t, 4h]: x_t W + b_W + b_U, gate blocks in order (i, f, o, g)
    mask: jax.Array,  # [b, t] bool
    recurrent_kernel: jax.Array,  # [h, 4h]
    *,
    compute_dtype=jnp.float32,
) -> jax.Array:
    """Standard LSTM (gates i, f, o, g as in the reference / char-rnn), (h, c) frozen on padding.

    Returns the final hidden state h_T [b, h] (the state at the last valid step).
    """
    batch, _, four_hidden = input_proj.shape
    hidden = four_hidden // 4
    kernel = cast_for_matmul(recurrent_kernel, compute_dtype)
    zeros = jnp.zeros((batch, hidden), input_proj.dtype)

    def step(carry, inputs):
        h, c = carry
        proj_t, mask_t = inputs
        z = proj_t + matmul(h, kernel, compute_dtype)
        i, f, o, g = jnp.split(z, 4, axis=-1)
        c_new = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        h_new = jax.nn.sigmoid(o) * jnp.tanh(c_new)
        keep = mask_t[:, None]
        return (jnp.where(keep, h_new, h), jnp.where(keep, c_new, c)), None

    (h_final, _), _ = jax.lax.scan(step, (zeros, zeros), (_time_major(input_proj), _time_major(mask)))
    return h_final


def _lstm_input_bias_init(hidden: int, fan_in: int, torch_init: bool):
    """Input-projection bias of the LSTM: the usual init with the forget block (2nd of i, f, o, g)
    set to 1, as the reference's forget-gate initialisation does on the input-to-hidden Linear."""
    base = bias_init(fan_in, torch_init)

    def init(key, shape, dtype=jnp.float32):
        return base(key, shape, dtype).at[hidden : 2 * hidden].set(1.0)

    return init


class RecurrentLayer(nn.Module):
    """The recurrent layer of one tower: input Linear W (d -> G h) and recurrent Linear U (h -> G h).

    cell: "gated" (TAGM/IARN attention-gated ReLU cell), "rnn" (softplus(beta) vanilla RNN, the
      reference's rnn backbone) or "lstm" (G = 4).
    Parameters: ``input_kernel`` [d, G h], ``input_bias`` [G h], ``recurrent_kernel`` [h, G h],
    ``recurrent_bias`` [G h] (both biases exist, as in the two Torch Linears).
    """

    input_dim: int
    hidden_size: int
    cell: str = "gated"
    softplus_beta: float = 5.0
    torch_init: bool = True
    compute_dtype: str = "float32"

    def setup(self):
        if self.cell not in CELLS:
            raise ValueError(f"unknown recurrent cell {self.cell!r}; choose one of {CELLS}")
        width = self.hidden_size * (4 if self.cell == "lstm" else 1)
        d, h = self.input_dim, self.hidden_size
        self.input_kernel = self.param("input_kernel", kernel_init(d, self.torch_init), (d, width))
        if self.cell == "lstm":
            in_bias = _lstm_input_bias_init(h, d, self.torch_init)
        else:
            in_bias = bias_init(d, self.torch_init)
        self.input_bias = self.param("input_bias", in_bias, (width,))
        self.recurrent_kernel = self.param("recurrent_kernel", kernel_init(h, self.torch_init), (h, width))
        self.recurrent_bias = self.param("recurrent_bias", bias_init(h, self.torch_init), (width,))

    def project_inputs(self, x: jax.Array) -> jax.Array:
        """x [..., t, d] -> x W + b_W + b_U [..., t, G h], all steps in one matmul (outside the scan)."""
        dtype = resolve_dtype(self.compute_dtype)
        return rows_affine(x, self.input_kernel, self.input_bias + self.recurrent_bias, dtype)

    def run(
        self, input_proj: jax.Array, mask: Optional[jax.Array], gates: Optional[jax.Array] = None
    ) -> jax.Array:
        """Final state [b, h] from the TIME-MAJOR projected inputs [t, b, G h] (``project_inputs`` of
        time-major step inputs), ``mask`` [t, b] (rnn / lstm) and ``gates`` [t, b] ("gated")."""
        dtype = resolve_dtype(self.compute_dtype)
        if self.cell == "gated":
            if gates is None:
                raise ValueError("the gated cell needs attention gates")
            return gated_scan(input_proj, gates, self.recurrent_kernel, compute_dtype=dtype)
        # masked_rnn_scan / masked_lstm_scan take batch-major inputs and transpose them back to
        # time-major: XLA folds the two transposes into none
        input_proj, mask = jnp.swapaxes(input_proj, 0, 1), jnp.swapaxes(mask, 0, 1)
        if self.cell == "rnn":
            beta = self.softplus_beta
            activation = lambda z: softplus_beta(z, beta)  # noqa: E731
            derivative = lambda y: softplus_beta_derivative_from_output(y, beta)  # noqa: E731
            _, final = masked_rnn_scan(
                input_proj, mask, self.recurrent_kernel, activation=activation, compute_dtype=dtype,
                output_derivative=derivative,
            )
            return final
        return masked_lstm_scan(input_proj, mask, self.recurrent_kernel, compute_dtype=dtype)


__all__ = [
    "CELLS",
    "RecurrentLayer",
    "bidirectional_rnn_scan",
    "gated_scan",
    "masked_lstm_scan",
    "masked_rnn_scan",
    "softplus_beta",
]
