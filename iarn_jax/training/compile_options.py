"""XLA compile options of the jit train and eval steps, chosen per platform.

CPU (each option kept where this XLA knows it):
* ``xla_cpu_experimental_ynn_fusion_type = ""`` (no YNNPACK fusions). XLA CPU (jaxlib 0.10) hands
  every dot to a YNNPACK fusion by default. Inside the IARN train step each of those ran on one core
  while the other waited: the gate's context projections, 4 x [t*b, 2A] x [2A, 4A] per step, took
  79 ms of a ~290 ms batch-512 step. With the option XLA's own (Eigen) dots run them on both cores:
  the batch-512 step ~13-17 % faster together with ``initializers.rows_affine`` (BUILD_NOTES, issue
  12, session 19). Numbers equal the default's to float rounding.
* ``xla_cpu_scheduler_type = CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED``. XLA CPU allocates a step's
  temporaries afresh on every execution, and the kernel faults them in every step. The default
  schedule creates the zero-initialised output buffers of later scans early, live across the
  forward pass's peak; the memory-optimised one does not: temporaries of the default IARN step
  34.6 -> 26.4 MiB at batch 64 (under glibc's 32 MiB mmap ceiling, so they are reused from the heap:
  0 page faults and ~3 instead of ~17 ms of system time per step) and 266 -> 207 MiB at batch 512
  (BUILD_NOTES, issue 12, session 20). Only the order of execution changes: the numbers are identical.

``IARN_JAX_XLA_DEFAULTS=1`` (or the older ``IARN_JAX_CPU_YNN=1``) keeps XLA's defaults. An option this
XLA does not know is left out (each checked once per device by compiling a trivial function), so a
jaxlib upgrade cannot break the steps. GPU / TPU steps get no options. The scorer
(``evaluate.scorer``) compiles with the same options.
"""
from __future__ import annotations

import functools
import os
from typing import Optional

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, SingleDeviceSharding

CPU_OPTIONS = {
    "xla_cpu_experimental_ynn_fusion_type": "",
    "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED",
}
OPT_OUT_VARIABLE = "IARN_JAX_XLA_DEFAULTS"
OPT_OUT_VARIABLES = (OPT_OUT_VARIABLE, "IARN_JAX_CPU_YNN")  # the second: session 19's name, still honoured


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
    if device.platform != "cpu" or any(os.environ.get(name, "0") not in ("0", "") for name in OPT_OUT_VARIABLES):
        return None
    options = {name: value for name, value in CPU_OPTIONS.items() if options_supported(device, ((name, value),))}
    return options or None


def step_compiler_options(mesh: Mesh) -> Optional[dict]:
    """The compile options for a step jit-compiled on ``mesh`` (None: XLA's defaults)."""
    return compiler_options_for(mesh.devices.flat[0])
