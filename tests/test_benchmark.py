"""Smoke test of experiments.benchmark at tiny sizes: the JSON keys, positive and consistent values."""
from __future__ import annotations

import json
import pathlib
import subprocess
import sys

import pytest

from experiments import benchmark
from iarn_jax.models.flops import flops_per_example

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS = ("train_examples_per_second_b64", "train_examples_per_second_b512", "flops_per_example",
        "matmul_gflops", "efficiency_b512", "score_pairs_per_second")
TINY = ["--batch_sizes=64,512", "--history_len=4", "--embed_dim=4", "--hidden_size=4", "--attention_size=4",
        "--n_users=30", "--n_items=30", "--steps=1", "--repeats=1", "--matmul_size=64", "--score_candidates=16"]


def test_benchmark_json_has_the_keys_and_consistent_values():
    proc = subprocess.run([sys.executable, "-m", "experiments.benchmark", "--json", *TINY], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for key in KEYS:
        assert result[key] > 0, key
    config = benchmark.model_config(4, 4, 4, 30, 30)
    assert result["flops_per_example"] == flops_per_example(config, 4, 4, training=True)
    for b in (64, 512):
        achieved = result[f"train_examples_per_second_b{b}"] * result["flops_per_example"]
        assert result[f"efficiency_b{b}"] == pytest.approx(achieved / (result["matmul_gflops"] * 1e9), rel=1e-6)


def test_random_batch_is_left_aligned_and_table_prints():
    import numpy as np

    batch = benchmark.random_batch(np.random.default_rng(0), 5, 6, 10, 10, full=False)
    mask = batch["user_history_mask"]
    lengths = mask.sum(1)
    assert (mask == (np.arange(6)[None] < lengths[:, None])).all()
    assert (batch["user_history"][~mask] == 0).all()
    text = benchmark.format_table({"a": 1.5, "pipeline": [{"ratings": 10, "total_s": 0.1}]})
    assert "a" in text and "ratings=10" in text
