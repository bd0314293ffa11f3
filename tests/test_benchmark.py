"""Smoke test of experiments.benchmark at tiny sizes: the JSON keys, positive and consistent values."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
import types

import pytest

from experiments import benchmark

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("train_examples_per_second_b64", "train_examples_per_second_b512", "flops_per_example",
        "matmul_gflops", "efficiency_b512", "score_pairs_per_second", "ranking_positives_per_second_b8")
TINY = ["--batch_sizes=64,512", "--history_len=4", "--embed_dim=4", "--hidden_size=4", "--attention_size=4",
        "--n_users=30", "--n_items=30", "--steps=1", "--repeats=1", "--matmul_size=64", "--score_candidates=16", "--ranking_batch_sizes=8", "--n_negatives=3"]


@pytest.mark.slow
def test_benchmark_json_has_the_keys_and_consistent_values():
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--json", *TINY], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert result[key] > 0, key
    # hand count, one side (d = 4 + rating = 5, A = H = 4, K = 4A = 16, t = 4): bi-RNN 2*4*(5*4 + 4*4) = 288,
    # M1 4*8*16 = 512, M2 8*16 = 128, score 4*16 = 64, gated layer 4*(5*4 + 4*4) = 144, head 16 -> 1152;
    # two sides + the inner product (4) = 2308 multiply-adds, x 2 FLOPs x 3 (training) = 13848
    assert result["flops_per_example"] == 13848
    assert result["matmul_size"] == 64 and result["n_negatives"] == 3
    assert result["ranking_pairs_per_second_b8"] == pytest.approx(4 * result["ranking_positives_per_second_b8"])
    for b in (64, 512):
        achieved = result[f"train_examples_per_second_b{b}"] * result["flops_per_example"]
        assert result[f"efficiency_b{b}"] == pytest.approx(achieved / (result["matmul_gflops"] * 1e9), rel=1e-6)
        if sys.platform != "win32":  # CPU time per step from getrusage
            assert result[f"train_cpu_user_ms_per_step_b{b}"] > 0
            assert result[f"train_cpu_system_ms_per_step_b{b}"] >= 0


def test_timed_runs_report_each_runs_rate_and_cpu_seconds(monkeypatch):
    clock = {"wall": 0.0, "user": 10.0, "system": 1.0}
    monkeypatch.setattr(benchmark, "time", types.SimpleNamespace(perf_counter=lambda: clock["wall"]))
    monkeypatch.setattr(benchmark, "_process_cpu_seconds", lambda: (clock["user"], clock["system"]))
    costs = iter([(0.5, 0.75, 0.0), (0.25, 0.25, 0.125)])  # (wall, user, system) seconds of each run

    def run():
        wall, user, system = next(costs)
        clock["wall"] += wall
        clock["user"] += user
        clock["system"] += system

    assert benchmark._timed_runs(run, 10, 2) == [(20.0, 0.75, 0.0), (40.0, 0.25, 0.125)]
    monkeypatch.setattr(benchmark, "_process_cpu_seconds", lambda: None)
    costs = iter([(0.5, 0.0, 0.0)])
    assert benchmark._timed_runs(run, 10, 1) == [(20.0, None, None)]


def test_process_cpu_seconds_count_this_process_work():
    if sys.platform == "win32":
        assert benchmark._process_cpu_seconds() is None
        return
    user0, system0 = benchmark._process_cpu_seconds()
    end = time.process_time() + 0.2
    while time.process_time() < end:  # 0.2 s of this process's CPU
        pass
    user1, system1 = benchmark._process_cpu_seconds()
    assert (user1 - user0) + (system1 - system0) >= 0.15


def test_ranking_benchmark_batch_follows_the_negative_spec():
    import numpy as np

    from iarn_jax.data.negatives import NEGATIVE_SPEC

    rng = np.random.default_rng(0)
    batch = benchmark.with_random_negatives(rng, benchmark.random_batch(rng, 6, 5, 20, 30), 4, 5, 20, 30)
    assert set(NEGATIVE_SPEC) <= set(batch)
    assert batch["neg_item"].shape == (24,) and batch["neg_item_history"].shape == (24, 5)
    assert batch["neg_item"].max() < 30 and batch["neg_item_history"].max() < 20  # items, then their users
    assert batch["neg_item_history_mask"].all()  # full-length histories: the padded workload


def test_random_batch_is_left_aligned_and_table_prints():
    import numpy as np

    batch = benchmark.random_batch(np.random.default_rng(0), 5, 6, 10, 10, full=False)
    mask = batch["user_history_mask"]
    lengths = mask.sum(1)
    assert (mask == (np.arange(6)[None] < lengths[:, None])).all()
    assert (batch["user_history"][~mask] == 0).all()
    text = benchmark.format_table({"a": 1.5, "pipeline": [{"ratings": 10, "total_s": 0.1}]})
    assert "a" in text and "ratings=10" in text
