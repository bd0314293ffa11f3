"""Multi-host: flag / environment resolution, and two processes on 127.0.0.1 (CPU collectives)
training to the same parameters as one process on the same data."""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from iarn_jax import distributed

REPO = pathlib.Path(__file__).resolve().parents[1]

WORKER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from iarn_jax import distributed
    coordinator, n, pid, out, workdir = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if n > 1:
        assert distributed.initialize(coordinator, n, pid)
    import jax
    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training import loop
    from iarn_jax.training.config import TrainConfig
    split = load_protocol("synthetic", None, n_users=80, n_items=40, n_ratings=1500, seed=0)
    model = ModelConfig(variant="iarn", embed_dim=8, hidden_size=8, attention_size=8, dropout=0.1)
    # One padded shape (8, 8): one compilation of the train and eval steps.
    cfg = TrainConfig(batch_size=16, eval_batch_size=32, eval_every=4, max_steps=8, log_every=0,
                      max_len=8, bucket_lengths=(8,), prefetch=2)
    res = loop.train(split, model, cfg, verbose=False, workdir=None if workdir == "-" else workdir)
    leaves = {"/".join(str(k) for k in path): np.asarray(v)
              for path, v in jax.tree_util.tree_leaves_with_path(res.params)}
    np.savez(out, **leaves)
    print("RESULT", json.dumps({"process": jax.process_index(), "processes": jax.process_count(),
                                "devices": jax.device_count(), "test_rmse": res.metrics["test_rmse"]}),
          flush=True)
    """
)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _result(stdout: str) -> dict:
    return json.loads([l for l in stdout.splitlines() if l.startswith("RESULT")][-1][len("RESULT "):])


def test_resolve_from_arguments_environment_and_cluster(monkeypatch):
    for name in ("IARN_COORDINATOR", "IARN_NUM_PROCESSES", "IARN_PROCESS_ID", "SLURM_NTASKS", "SLURM_JOB_ID",
                 "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "JAX_COORDINATOR_ADDRESS", "IARN_DISTRIBUTED"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.resolve() == {"mode": "single"}
    assert distributed.resolve("h:1", 2, 1) == {"mode": "explicit", "coordinator_address": "h:1",
                                                 "num_processes": 2, "process_id": 1}
    monkeypatch.setenv("IARN_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("IARN_NUM_PROCESSES", "4")
    monkeypatch.setenv("IARN_PROCESS_ID", "3")
    assert distributed.resolve()["process_id"] == 3
    assert distributed.resolve(process_id=2)["process_id"] == 2  # flags win over the environment
    monkeypatch.delenv("IARN_PROCESS_ID")
    with pytest.raises(ValueError, match="process_id"):
        distributed.resolve()
    monkeypatch.delenv("IARN_COORDINATOR")
    monkeypatch.delenv("IARN_NUM_PROCESSES")
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "8")
    assert distributed.resolve() == {"mode": "auto:slurm"}
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert distributed.resolve() == {"mode": "single"}
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0,t1,t2,t3")
    assert distributed.resolve() == {"mode": "auto:tpu"}
    monkeypatch.delenv("TPU_WORKER_HOSTNAMES")
    monkeypatch.setenv("IARN_DISTRIBUTED", "auto")
    assert distributed.resolve() == {"mode": "auto:forced"}
    monkeypatch.delenv("IARN_DISTRIBUTED")
    monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t0")
    monkeypatch.delenv("SLURM_JOB_ID")
    assert distributed.initialize(num_processes=1) is False  # a single process: nothing to start


@pytest.mark.slow
def test_two_processes_train_to_the_same_parameters_as_one(tmp_path):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
    for name in ("IARN_COORDINATOR", "IARN_NUM_PROCESSES", "IARN_PROCESS_ID"):
        env.pop(name, None)
    coordinator = f"127.0.0.1:{_free_port()}"
    workdir = tmp_path / "run"

    def start(n, pid, out, wd):
        return subprocess.Popen([sys.executable, "-c", WORKER, coordinator, str(n), str(pid), str(out), str(wd)],
                                cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    procs = [start(2, 0, tmp_path / "p0.npz", workdir), start(2, 1, tmp_path / "p1.npz", workdir),
             start(1, 0, tmp_path / "single.npz", "-")]
    outputs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=300)
            assert p.returncode == 0, stderr[-3000:]
            outputs.append(_result(stdout))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [o["process"] for o in outputs[:2]] == [0, 1]
    assert all(o["processes"] == 2 and o["devices"] == 2 for o in outputs[:2])
    assert outputs[2]["processes"] == 1
    single = np.load(tmp_path / "single.npz")
    for name in ("p0.npz", "p1.npz"):
        multi = np.load(tmp_path / name)
        assert sorted(multi.files) == sorted(single.files)
        for key in single.files:  # same up to float reduction order (gradient all-reduce)
            np.testing.assert_allclose(multi[key], single[key], rtol=1e-4, atol=1e-5, err_msg=key)
    assert outputs[0]["test_rmse"] == pytest.approx(outputs[2]["test_rmse"], abs=1e-4)
    # Checkpoints and JSON written once, by the collective save / process 0.
    assert (workdir / "results.json").exists() and (workdir / "checkpoints" / "progress.json").exists()
    events = [json.loads(line)["event"] for line in (workdir / "log.jsonl").read_text().splitlines()]
    assert events.count("done") == 1 and events.count("start") == 1
