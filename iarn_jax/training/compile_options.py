"""XLA compile options of the jit train and eval steps, chosen per platform.

CPU: ``xla_cpu_experimental_ynn_fusion_type = ""`` (no YNNPACK fusions). XLA CPU (jaxlib 0.10) hands
every dot to a YNNPACK fusion by default. Inside the IARN train step each of those ran on one core
while the other waited: the gate's context projections, 4 x [t*b, 2A] x [2A, 4A] per step, took
79 ms of a ~290 ms batch-512 step. With the option XLA's own (Eigen) dots run them on both cores.
Measured on this project's 2-core host (BUILD_NOTES, issue 12, session 19): the batch-512 step
~13-17 % faster together with ``initializers.rows_affine``, and the batch-64 step unchanged within
noise. Numbers equal the default's to float rounding.

``IARN_JAX_CPU_YNN=1`` keeps XLA's default. An XLA that no longer knows the option gets none
(checked once per device by compiling a trivial function), so a jaxlib upgrade cannot break the
steps. GPU / TPU steps get no options. The scorer (``evaluate.scorer``) compiles with the same options.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, SingleDeviceSharding

CPU_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}
OPT_OUT_VARIABLE = "IARN_JAX_CPU_YNN"


@functools.lru_cache(maxsize=None)
def options_supported(device: jax.Device, options: tuple) -> bool:
    """Whether XLA on ``device`` accepts the compile ``options`` (sorted (name, value) pairs)."""
    probe = jax.jit(lambda x: x + 1, in_shardings=SingleDeviceSharding(device))
    try:
        probe.lower(jax.ShapeDtypeStruct((1,), jnp.float32)).compile(compiler_options=dict(options))
    except Exception:  # noqa: BLE001 - XLA raises JaxRuntimeError (INVALID_ARGUMENT) for unknown options
        return False
    return True


def compiler_options_for(device: Optional[jax.Device] = None) -> Optional[dict]:
    """The compile options for a program jit-compiled for ``device`` (default: JAX's first device);
    None: XLA's defaults."""
    device = jax.devices()[0] if device is None else device
    if device.platform != "cpu" or os.environ.get(OPT_OUT_VARIABLE, "0") not in ("0", ""):
        return None
    if not options_supported(device, tuple(sorted(CPU_OPTIONS.items()))):
        return None
    return dict(CPU_OPTIONS)


def step_compiler_options(mesh: Mesh) -> Optional[dict]:
    """The compile options for a step jit-compiled on ``mesh`` (None: XLA's defaults)."""
    return compiler_options_for(mesh.devices.flat[0])
