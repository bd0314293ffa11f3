"""Multi-host start-up: one call before any other JAX use, on every process.

    from iarn_jax import distributed
    distributed.initialize()          # flags / environment decide; no-op on a single process

Resolution order of the coordinator address, process count and process id:

1. explicit arguments (``experiments.train`` passes ``--coordinator_address``, ``--num_processes``,
   ``--process_id``);
2. the variables ``IARN_COORDINATOR`` (``host:port`` of process 0), ``IARN_NUM_PROCESSES``,
   ``IARN_PROCESS_ID``;
3. JAX's own cluster auto-detection (``jax.distributed.initialize()`` without arguments), used only
   when a multi-process cluster environment is recognised: SLURM with more than one task
   (``SLURM_NTASKS``), Open MPI (``OMPI_COMM_WORLD_SIZE``), a multi-host Cloud TPU slice
   (``TPU_WORKER_HOSTNAMES`` with several hosts), or a GKE / Kubernetes job that sets JAX's own
   variables (``JAX_COORDINATOR_ADDRESS``), or forced with ``IARN_DISTRIBUTED=auto``.

Nothing given and no cluster recognised: a single process, and nothing is initialised.

After initialisation ``jax.devices()`` lists every process's devices; ``training.step.make_mesh``
builds the data-parallel mesh over all of them, each process reads its own rows of every global
batch (``training.input_pipeline.local_rows``), parameters stay replicated, orbax writes checkpoints
collectively and JSON files are written by process 0 only.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

ENV_COORDINATOR = "IARN_COORDINATOR"
ENV_NUM_PROCESSES = "IARN_NUM_PROCESSES"
ENV_PROCESS_ID = "IARN_PROCESS_ID"

_initialized = False


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def detected_cluster() -> Optional[str]:
    """Name of a recognised multi-process cluster environment (for JAX auto-detection), or None.

    ``IARN_DISTRIBUTED=auto`` forces JAX's auto-detection (e.g. on a Cloud TPU pod slice whose
    workers do not export ``TPU_WORKER_HOSTNAMES``; JAX then asks the TPU metadata server).
    """
    env = os.environ
    if env.get("IARN_DISTRIBUTED", "").lower() == "auto":
        return "forced"
    if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in env:
        return "slurm"
    if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
        return "openmpi"
    if len([h for h in env.get("TPU_WORKER_HOSTNAMES", "").split(",") if h]) > 1:
        return "tpu"
    if env.get("JAX_COORDINATOR_ADDRESS"):
        return "jax-env"
    return None


def resolve(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
            process_id: Optional[int] = None) -> dict:
    """The settings ``initialize`` would use: {"mode": "explicit" | "auto:<cluster>" | "single", ...}."""
    coordinator_address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    num_processes = num_processes if num_processes is not None else _env_int(ENV_NUM_PROCESSES)
    process_id = process_id if process_id is not None else _env_int(ENV_PROCESS_ID)
    if coordinator_address is not None or num_processes is not None or process_id is not None:
        if num_processes is not None and num_processes == 1 and coordinator_address is None:
            return {"mode": "single"}
        missing = [name for name, value in (("coordinator_address", coordinator_address),
                                            ("num_processes", num_processes),
                                            ("process_id", process_id)) if value is None]
        if missing:
            raise ValueError(
                f"multi-process start needs all of coordinator_address, num_processes, process_id "
                f"(flags or {ENV_COORDINATOR} / {ENV_NUM_PROCESSES} / {ENV_PROCESS_ID}); missing {missing}")
        if not 0 <= process_id < num_processes:
            raise ValueError(f"process_id {process_id} outside [0, {num_processes})")
        return {"mode": "explicit", "coordinator_address": coordinator_address,
                "num_processes": int(num_processes), "process_id": int(process_id)}
    cluster = detected_cluster()
    return {"mode": f"auto:{cluster}"} if cluster else {"mode": "single"}


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, local_device_ids: Optional[Sequence[int]] = None,
               cpu_collectives: str = "gloo") -> bool:
    """Starts JAX's distributed runtime when several processes are configured (see module doc).

    Returns True when ``jax.distributed.initialize`` was called (now or earlier), False for a single
    process. ``cpu_collectives`` selects the CPU cross-process collectives ("gloo"; "mpi" needs an
    MPI library), which only matter on CPU-only multi-process runs (tests, CPU clusters).
    Must run before any JAX computation.
    """
    global _initialized
    if _initialized:
        return True
    import jax

    settings = resolve(coordinator_address, num_processes, process_id)
    if settings["mode"] == "single":
        return False
    if cpu_collectives:
        try:
            jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
        except Exception:  # older / newer JAX without this option: its default applies
            pass
    kwargs = {}
    if local_device_ids is not None:
        kwargs["local_device_ids"] = list(local_device_ids)
    if settings["mode"] == "explicit":
        jax.distributed.initialize(
            coordinator_address=settings["coordinator_address"],
            num_processes=settings["num_processes"],
            process_id=settings["process_id"],
            **kwargs,
        )
    else:
        jax.distributed.initialize(**kwargs)
    _initialized = True
    return True


def is_main_process() -> bool:
    """True on process 0 (the one that writes JSON files and prints)."""
    import jax

    return jax.process_index() == 0


__all__ = ["ENV_COORDINATOR", "ENV_NUM_PROCESSES", "ENV_PROCESS_ID", "detected_cluster", "initialize",
           "is_main_process", "resolve"]
