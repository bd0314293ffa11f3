"""Attention of one tower: the masked bi-directional context RNN and the (interacting) attention gate.

Shapes: ``b`` batch, ``t`` time, ``d`` step-input size, ``A`` attention size per direction,
``K`` width of the gate's fusion layer (4A for IARN, 2A for TAGM). Per-step tensors are TIME-MAJOR
(``[t, b, ...]``), the layout of the scans, so nothing is transposed between the context RNN, the
gate and the gated scan (the towers' layout, ``iarn_jax.models.iarn``).

Context bi-RNN (reference notes 2.2): two vanilla RNNs with separate weights,
``g_t = softplus_beta(W x_t + b_W + U g_{t±1} + b_U)``, beta = 5 (option ``cell="tanh"``: a bounded
tanh instead, so the state stays in [-1, 1] on any history), initial state 0, masked so padded
steps never change the state. Each direction's outputs are dropped out (the recurrence uses the
state before dropout). Context ``s_t = [fwd_t ; bwd_t]`` [t, b, 2A]; summary
``S = [fwd_{T} ; bwd_1]`` [b, 2A], taken from the dropped-out outputs (same dropout mask as those
steps), T = the sequence's last valid step. Empty sequences have S = 0.

Gate (reference notes 2.3):
  IARN: a_t = sigmoid(w * (v^T tanh(M [s_t ; s S_other] + b) + c)),  M: Linear(4A -> 4A)
  TAGM: a_t = sigmoid(w * (v^T tanh(M s_t + b) + c)),                M: Linear(2A -> 2A)
with w = gate_logit_scale (2) and s = summary_scale (0.25). M is one kernel [K_in, K]; for IARN its
rows split into M1 (context part, first 2A rows) and M2 (summary part, last 2A rows), so that
``M1 s_t + b`` is one matmul for all steps (:meth:`AttentionGate.project_context`) and
``s * M2 S_other`` is computed once per example (:meth:`AttentionGate.project_summary`).
Gates are exactly 0 on padded steps.

Option (not in the paper, ``ModelConfig.gate_target_embedding``): the IARN gate also reads the
pair's other entity through this tower's own embedding of it, ``M [s_t ; s S_other ; s e_target]``
with M: Linear(4A + D -> 4A). ``e_target`` lives in the same table as the steps' inputs, so the
gate can compare each step with the target directly instead of through the other side's summary.
Option ``ModelConfig.gate_match``: a bilinear match of each step's embedding with the target's,
``x_t^T B e_target``, added to the logit (multiplicative attention; B starts at 0). An additive
tanh layer must learn "step and target agree" as a conjunction; the bilinear form states it.
"""
from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from iarn_jax.models.initializers import (
    bias_init,
    broadcast_over_time,
    kernel_init,
    matmul,
    resolve_dtype,
    rows_affine,
    rows_matmul,
)
from iarn_jax.models.recurrence import (
    bidirectional_rnn_scan,
    softplus_beta,
    softplus_beta_derivative_from_output,
    tanh_derivative_from_output,
)


def last_valid(values: jax.Array, mask: jax.Array) -> jax.Array:
    """TIME-MAJOR values [t, b, f] at each sequence's last valid step (mask [t, b], left-aligned) ->
    [b, f] (zeros for empty sequences). A gather of one row per sequence."""
    lengths = jnp.sum(mask, axis=0).astype(jnp.int32)  # [b]
    rows = values[jnp.maximum(lengths - 1, 0), jnp.arange(values.shape[1])]  # [b, f]
    return jnp.where((lengths > 0)[:, None], rows, 0.0)


def attention_gates(
    context_proj: jax.Array,  # [t, n, K] time-major: M1 s_t + b
    summary_proj: Optional[jax.Array],  # [m, K]: s * M2 S_other, or None (TAGM)
    mask: jax.Array,  # [t, n] bool
    score_kernel: jax.Array,  # [K, 1]: v
    score_bias: jax.Array,  # [1]: c
    logit_scale: float,
    compute_dtype=jnp.float32,
    match_logits: Optional[jax.Array] = None,  # [t, m]: x_t^T B e_target (gate_match option)
) -> jax.Array:
    """a_t = sigmoid(w * (v^T tanh(context_proj_t + summary_proj) + c [+ match_t])) [t, m], exactly 0
    on padding.

    The entity dims n and m broadcast (e.g. one user's context [t, 1, K] against C items' summaries
    [C, K] gives [t, C]).
    """
    fused = context_proj
    if summary_proj is not None:
        fused = fused + broadcast_over_time(summary_proj, context_proj.shape[0])
    logits = matmul(jnp.tanh(fused), score_kernel, compute_dtype)[..., 0] + score_bias[0]
    if match_logits is not None:
        logits = logits + match_logits
    gates = jax.nn.sigmoid(logit_scale * logits)
    return jnp.where(mask, gates, 0.0)


class TimeMajorDropout(nn.Module):
    """``nn.Dropout`` of a TIME-MAJOR input [t, b, ...] that drops the units ``nn.Dropout`` would drop
    in the batch-major [b, t, ...] layout (the same key and mask shape, the mask transposed), so the
    layout does not change which units a given dropout key drops."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        batch_major = (x.shape[1], x.shape[0]) + x.shape[2:]
        mask = jax.random.bernoulli(self.make_rng("dropout"), p=keep, shape=batch_major)
        return jax.lax.select(jnp.swapaxes(mask, 0, 1), x / keep, jnp.zeros_like(x))


class AttentionBiRNN(nn.Module):
    """Masked bi-directional softplus RNN giving per-step context and the sequence summary.

    Parameters per direction (``forward_*`` / ``backward_*``): ``input_kernel`` [d, A],
    ``input_bias`` [A], ``recurrent_kernel`` [A, A], ``recurrent_bias`` [A].
    """

    input_dim: int
    attention_size: int
    softplus_beta: float = 5.0
    dropout: float = 0.0
    torch_init: bool = True
    compute_dtype: str = "float32"
    unroll: Optional[int] = None  # lax.scan unroll of the bi-RNN scan (None: recurrence.SCAN_UNROLL)
    cell: str = "softplus"  # "softplus" (reference, unbounded) or "tanh" (bounded in [-1, 1])

    def setup(self):
        d, a = self.input_dim, self.attention_size
        params = {}
        for direction in ("forward", "backward"):
            params[direction] = (
                self.param(f"{direction}_input_kernel", kernel_init(d, self.torch_init), (d, a)),
                self.param(f"{direction}_input_bias", bias_init(d, self.torch_init), (a,)),
                self.param(f"{direction}_recurrent_kernel", kernel_init(a, self.torch_init), (a, a)),
                self.param(f"{direction}_recurrent_bias", bias_init(a, self.torch_init), (a,)),
            )
        self.direction_params = params
        self.output_dropout = TimeMajorDropout(self.dropout)

    def __call__(
        self, x: jax.Array, mask: jax.Array, *, deterministic: bool = True
    ) -> tuple[jax.Array, jax.Array]:
        """TIME-MAJOR x [t, b, d], mask [t, b] -> (context [t, b, 2A] time-major, summary [b, 2A])."""
        dtype = resolve_dtype(self.compute_dtype)
        beta = self.softplus_beta
        if self.cell == "tanh":
            activation, derivative = jnp.tanh, tanh_derivative_from_output
        elif self.cell == "softplus":
            activation = lambda z: softplus_beta(z, beta)  # noqa: E731
            derivative = lambda y: softplus_beta_derivative_from_output(y, beta)  # noqa: E731
        else:
            raise ValueError(f"unknown attention cell {self.cell!r}")
        a = self.attention_size
        (wf, bf, uf, rbf), (wb, bb, ub, rbb) = (self.direction_params[d] for d in ("forward", "backward"))
        # Input projections hoisted out of the scan; the backward direction's inputs are reversed
        # before projecting (x is d wide, cheaper to flip than the A-wide projection).
        proj_fwd = rows_affine(x, wf, bf + rbf, dtype)  # [t, b, A]
        proj_bwd_rev = rows_affine(x[::-1], wb, bb + rbb, dtype)  # [t, b, A], reversed time
        fwd, bwd_rev = bidirectional_rnn_scan(
            proj_fwd, proj_bwd_rev, mask, mask[::-1], uf, ub,
            activation=activation, compute_dtype=dtype, unroll=self.unroll, output_derivative=derivative,
        )
        context = jnp.concatenate([fwd, bwd_rev[::-1]], axis=-1)  # [t, b, 2A], zeros on padding
        # Dropout on the outputs only (per step, per unit, not variational), as the reference.
        context = self.output_dropout(context, deterministic=deterministic or self.dropout == 0.0)
        summary = jnp.concatenate(
            [last_valid(context[..., :a], mask), context[0, :, a:]], axis=-1
        )  # [fwd at last valid step ; bwd at step 1]
        return context, summary


class AttentionGate(nn.Module):
    """The attention MLP of one tower (IARN: interacting; TAGM: own context only).

    Parameters: ``fusion_kernel`` [K_in, K] (K_in = K = 4A for IARN, 2A for TAGM; Torch fan-in K_in),
    ``fusion_bias`` [K], ``score_kernel`` [K, 1], ``score_bias`` [1].
    """

    context_dim: int  # 2A
    interacting: bool = True
    target_dim: int = 0  # D when the gate also reads the target's embedding (IARN option), else 0
    step_dim: int = 0  # d when the gate also reads each step's own input x_t (option), else 0
    match_dim: int = 0  # D for the bilinear step/target match x_t^T B e_target (IARN option), else 0
    gate_logit_scale: float = 2.0
    summary_scale: float = 0.25
    torch_init: bool = True
    compute_dtype: str = "float32"

    @property
    def width(self) -> int:
        return self.context_dim * (2 if self.interacting else 1)

    def setup(self):
        k = self.width
        if self.target_dim and not self.interacting:
            raise ValueError("only the interacting gate reads the target's embedding")
        k_in = k + self.target_dim
        self.fusion_kernel = self.param("fusion_kernel", kernel_init(k_in, self.torch_init), (k_in, k))
        self.fusion_bias = self.param("fusion_bias", bias_init(k, self.torch_init), (k,))
        self.score_kernel = self.param("score_kernel", kernel_init(k, self.torch_init), (k, 1))
        self.score_bias = self.param("score_bias", bias_init(k, self.torch_init), (1,))
        if self.match_dim:
            if not self.interacting:
                raise ValueError("only the interacting gate matches steps against the target")
            # B starts at 0: the gate starts as the paper's and learns the match
            self.match_kernel = self.param("match_kernel", nn.initializers.zeros_init(),
                                           (self.match_dim, self.match_dim))
        if self.step_dim:
            self.step_kernel = self.param("step_kernel", kernel_init(k_in, self.torch_init), (self.step_dim, k))

    def project_context(self, context: jax.Array, step_inputs: Optional[jax.Array] = None) -> jax.Array:
        """context [t, n, 2A] (and, with ``step_dim``, the step inputs x [t, n, d]) ->
        M1 s_t (+ M0 x_t) + b [t, n, K] for all steps at once (row-wise: any leading layout)."""
        dtype = resolve_dtype(self.compute_dtype)
        m1 = self.fusion_kernel[: self.context_dim]
        projected = rows_affine(context, m1, self.fusion_bias, dtype)
        if self.step_dim:
            if step_inputs is None:
                raise ValueError("this gate was built to read the step inputs; pass them")
            projected = projected + rows_matmul(step_inputs, self.step_kernel, dtype)
        return projected

    def project_summary(self, other_summary: jax.Array, target_embedding: Optional[jax.Array] = None) -> jax.Array:
        """The other side's summary [..., 2A] (and, with ``target_dim``, the target's embedding
        [..., D]) -> s * (M2 S_other + M3 e_target) [..., K] (IARN only)."""
        if not self.interacting:
            raise ValueError("a non-interacting (TAGM) gate takes no summary")
        dtype = resolve_dtype(self.compute_dtype)
        m2 = self.fusion_kernel[self.context_dim : self.width]
        projected = matmul(other_summary, m2, dtype)
        if self.target_dim:
            if target_embedding is None:
                raise ValueError("this gate was built to read the target's embedding; pass it")
            projected = projected + matmul(target_embedding, self.fusion_kernel[self.width :], dtype)
        return self.summary_scale * projected

    def match_keys(self, step_embeddings: jax.Array) -> jax.Array:
        """Step embeddings [t, n, D] -> x_t^T B [t, n, D] (gate_match; once per history)."""
        return rows_matmul(step_embeddings, self.match_kernel, resolve_dtype(self.compute_dtype))

    def __call__(
        self, context_proj: jax.Array, mask: jax.Array, summary_proj: Optional[jax.Array] = None,
        match_keys: Optional[jax.Array] = None, match_query: Optional[jax.Array] = None,
    ) -> jax.Array:
        """Gates [t, m] from ``project_context`` output [t, n, K] and (IARN) ``project_summary`` output
        [m, K]; with ``match_dim``, plus the match logits ``<match_keys_t, match_query>`` (keys
        [t, n, D], query = the target's embedding [m, D]); n and m broadcast; mask [t, n]."""
        if self.interacting and summary_proj is None:
            raise ValueError("the interacting gate needs the other side's projected summary")
        match_logits = None
        if self.match_dim:
            if match_keys is None or match_query is None:
                raise ValueError("this gate was built with a step/target match; pass keys and query")
            match_logits = jnp.sum(match_keys * broadcast_over_time(match_query, match_keys.shape[0]), axis=-1)
        return attention_gates(
            context_proj, summary_proj, mask, self.score_kernel, self.score_bias,
            self.gate_logit_scale, resolve_dtype(self.compute_dtype), match_logits,
        )
