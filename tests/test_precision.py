"""bfloat16 compute (float32 parameters, float32 accumulation) agrees with float32 on CPU.

Stated tolerance (bfloat16 keeps 8 mantissa bits, relative rounding 2^-9 per matmul input):
  predictions: max |pred_bf16 - pred_fp32| <= 0.01 * (1 + max |pred_fp32|);
  gradients:   relative L2 error of the flattened gradient <= 0.03 and cosine >= 0.999.
Measured (jax 0.10.2 CPU): prediction error 3e-4..1.6e-3, gradient relative error 0.003..0.006.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.benchmark import model_config, random_batch
from iarn_jax.models.iarn import IARN


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["iarn", "tagm", "lstm"])
def test_bfloat16_predictions_and_gradients_close_to_float32(variant):
    fp32 = model_config(8, 16, 16, 40, 40, variant=variant)
    bf16 = dataclasses.replace(fp32, compute_dtype="bfloat16")
    batch = random_batch(np.random.default_rng(0), 32, 12, 40, 40, full=False)
    params = IARN(fp32).init(jax.random.PRNGKey(0), batch)["params"]

    def loss(params, config):
        pred, _ = IARN(config).apply({"params": params}, batch)
        return jnp.mean((pred - batch["rating"]) ** 2), pred

    (l32, p32), g32 = jax.jit(jax.value_and_grad(lambda p: loss(p, fp32), has_aux=True))(params)
    (l16, p16), g16 = jax.jit(jax.value_and_grad(lambda p: loss(p, bf16), has_aux=True))(params)
    assert p16.dtype == jnp.float32 and all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(g16))
    p32, p16 = np.asarray(p32), np.asarray(p16)
    assert np.max(np.abs(p16 - p32)) <= 0.01 * (1 + np.max(np.abs(p32)))
    v32 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g32)])
    v16 = np.concatenate([np.ravel(x) for x in jax.tree_util.tree_leaves(g16)])
    assert np.linalg.norm(v16 - v32) <= 0.03 * np.linalg.norm(v32)
    assert v16 @ v32 / (np.linalg.norm(v16) * np.linalg.norm(v32)) >= 0.999
    assert float(l16) == pytest.approx(float(l32), rel=0.02)
