"""Parameter initialisers and the small linear-algebra helpers shared by the IARN modules.

Torch7's ``nn.Linear`` draws weights *and* biases from U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (reference
notes 2.8); Flax's defaults (lecun_normal kernels, zero biases) differ, so the modules pick their
initialisers through :func:`kernel_init` / :func:`bias_init`.

Kernels are stored Flax-style as ``[in, out]``, so ``fan_in = shape[0]``; a bias does not know its
fan-in, so :func:`bias_init` takes it explicitly.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import linen as nn

Initializer = nn.initializers.Initializer


def torch_uniform(fan_in: int) -> Initializer:
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), the Torch7 ``nn.Linear`` default."""
    bound = 1.0 / math.sqrt(max(int(fan_in), 1))

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, minval=-bound, maxval=bound)

    return init


def kernel_init(fan_in: int, torch_init: bool) -> Initializer:
    """Initialiser of an ``[in, out]`` kernel: Torch-style uniform or Flax's lecun_normal."""
    return torch_uniform(fan_in) if torch_init else nn.initializers.lecun_normal()


def bias_init(fan_in: int, torch_init: bool) -> Initializer:
    """Initialiser of a bias: Torch-style uniform (same bound as the kernel) or zeros."""
    return torch_uniform(fan_in) if torch_init else nn.initializers.zeros_init()


def embedding_init(torch_init: bool) -> Initializer:
    """Embedding tables: N(0, 1) (Torch ``nn.LookupTable`` / ``nn.Embedding`` default) or Flax's
    ``nn.Embed`` default (variance scaling, std = 1/sqrt(embed_dim))."""
    if torch_init:
        return nn.initializers.normal(stddev=1.0)
    return nn.initializers.variance_scaling(1.0, "fan_in", "normal", out_axis=0)


def resolve_dtype(compute_dtype: str):
    """The matmul input dtype named by ``ModelConfig.compute_dtype``."""
    if compute_dtype in ("float32", "fp32"):
        return jnp.float32
    if compute_dtype in ("bfloat16", "bf16"):
        return jnp.bfloat16
    raise ValueError(f"unknown compute_dtype {compute_dtype!r}; use 'float32' or 'bfloat16'")


def cast_for_matmul(x: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """``x`` cast to a reduced matmul dtype (bfloat16); unchanged for float32 compute."""
    return x if compute_dtype == jnp.float32 else x.astype(compute_dtype)


def matmul(x: jax.Array, kernel: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """``x @ kernel`` with inputs cast to ``compute_dtype`` and float32 accumulation/output.

    With ``compute_dtype=float32`` this is a plain float32 matmul (float64 when x64 is on and the
    operands are float64, which the finite-difference tests use).
    """
    if compute_dtype == jnp.float32:
        return jnp.matmul(x, kernel)
    return jnp.matmul(
        x.astype(compute_dtype), kernel.astype(compute_dtype), preferred_element_type=jnp.float32
    )


def rows_matmul(x: jax.Array, kernel: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """``matmul(x, kernel, compute_dtype)`` for x [..., k] with many rows (a projection of every
    step), same forward; its custom VJP writes the kernel gradient as ONE 2-D matmul
    ``x_flat^T @ dy_flat`` (or ``(dy_flat^T @ x_flat)^T``), transposing the narrower of x [rows, k]
    and dy [rows, n] explicitly.

    Autodiff's kernel gradient contracts over all leading dims, for which XLA CPU lays out an
    operand transposed first, often the wider one; this form is ~2x faster on the gate's context
    projection and on the hoisted input projections (issue 12). Gradients equal autodiff's to
    float rounding.
    """
    return _rows_matmul(x, kernel, compute_dtype)


def _rows_matmul_primal(x, kernel, compute_dtype):
    return matmul(x, kernel, compute_dtype)


def _rows_matmul_fwd(x, kernel, compute_dtype):
    return matmul(x, kernel, compute_dtype), (x, kernel)


def _rows_matmul_bwd(compute_dtype, residuals, dy):
    x, kernel = residuals
    dx = matmul(dy, kernel.T, compute_dtype).astype(x.dtype)
    x2 = x.reshape(-1, x.shape[-1])  # [rows, k]
    dy2 = dy.reshape(-1, dy.shape[-1])  # [rows, n]
    if dy2.shape[1] < x2.shape[1]:  # transpose the narrower operand (for n = 1 a free reshape)
        dkernel = matmul(jnp.transpose(dy2), x2, compute_dtype).T
    else:
        dkernel = matmul(jnp.transpose(x2), dy2, compute_dtype)
    return dx, dkernel.astype(kernel.dtype)


_rows_matmul = jax.custom_vjp(_rows_matmul_primal, nondiff_argnums=(2,))
_rows_matmul.defvjp(_rows_matmul_fwd, _rows_matmul_bwd)


def sum_rows(x: jax.Array) -> jax.Array:
    """x [..., n] summed over every leading dim -> [n], as ONE [1, rows] x [rows, n] matmul.

    A bias gradient over all steps of a batch; XLA CPU lowers the reduction ``jnp.sum(x, axis=(0, 1))``
    as a tree of reduce-windows that runs 2-5x slower than this matmul on [50, 512, 256].
    """
    rows = x.reshape(-1, x.shape[-1])  # [rows, n]
    return jnp.matmul(jnp.ones((1, rows.shape[0]), x.dtype), rows)[0]


def rows_affine(x: jax.Array, kernel: jax.Array, bias: jax.Array, compute_dtype=jnp.float32) -> jax.Array:
    """``rows_matmul(x, kernel, compute_dtype) + bias`` (x [..., k], kernel [k, n], bias [n]): the
    same forward and input/kernel gradients, and the bias gradient as :func:`sum_rows` of the
    cotangent instead of autodiff's reduction over all leading dims."""
    return _rows_affine(x, kernel, bias, compute_dtype)


def _rows_affine_primal(x, kernel, bias, compute_dtype):
    return matmul(x, kernel, compute_dtype) + bias


def _rows_affine_fwd(x, kernel, bias, compute_dtype):
    return _rows_affine_primal(x, kernel, bias, compute_dtype), (x, kernel, bias)


def _rows_affine_bwd(compute_dtype, residuals, dy):
    x, kernel, bias = residuals
    dx, dkernel = _rows_matmul_bwd(compute_dtype, (x, kernel), dy)
    return dx, dkernel, sum_rows(dy).astype(bias.dtype)


_rows_affine = jax.custom_vjp(_rows_affine_primal, nondiff_argnums=(3,))
_rows_affine.defvjp(_rows_affine_fwd, _rows_affine_bwd)


def sum_over_time(x: jax.Array) -> jax.Array:
    """x [t, ...] summed over the leading (time) axis -> [...], as a ones-vector matmul: XLA CPU runs a
    reduction over the leading axis of a large array ~70x slower (41 vs 0.6 ms for [50, 512, 256])."""
    steps = x.shape[0]
    return jnp.matmul(jnp.ones((steps,), x.dtype), x.reshape(steps, -1)).reshape(x.shape[1:])


def broadcast_over_time(x: jax.Array, steps: int) -> jax.Array:
    """x [...] -> [steps, ...], the same values at every step (a time-major per-entity term such as
    the other side's projected summary). Its gradient is :func:`sum_over_time` of the cotangent;
    autodiff's would be the slow leading-axis reduction."""
    return _broadcast_over_time(x, steps)


def _broadcast_over_time_primal(x, steps):
    return jnp.broadcast_to(x[None], (steps,) + x.shape)


def _broadcast_over_time_fwd(x, steps):
    return _broadcast_over_time_primal(x, steps), None


def _broadcast_over_time_bwd(steps, residuals, dy):
    del steps, residuals
    return (sum_over_time(dy),)


_broadcast_over_time = jax.custom_vjp(_broadcast_over_time_primal, nondiff_argnums=(1,))
_broadcast_over_time.defvjp(_broadcast_over_time_fwd, _broadcast_over_time_bwd)
