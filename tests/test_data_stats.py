"""experiments/data_stats.py: in-process and as `python -m experiments.data_stats`."""
from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import DATA_ROOT, REPO_ROOT, require_data

from experiments import data_stats

KEYS = {"n_users", "n_items", "n_ratings", "n_features", "avg_user_len", "avg_item_len", "n_train", "n_val", "n_test"}


def test_compute_stats_ml100k_in_process():
    require_data("movielens/ml-100k/u.data")
    stats = data_stats.compute_stats("ml100k", DATA_ROOT)
    assert KEYS <= set(stats)
    assert (stats["n_train"], stats["n_val"], stats["n_test"]) == (77_685, 7_768, 3_651)
    assert (stats["n_users"], stats["n_items"], stats["n_ratings"]) == (735, 1_391, 77_685 + 3_651)
    text = data_stats.format_stats(stats)
    assert "77,685" in text and "3,651" in text and stats["data_sha256"] in text


def test_custom_data_flag_in_process():
    path = require_data("movielens/ml-100k")
    stats = data_stats.compute_stats("synthetic", data=f"ml100k:{path}", cut="1998-03-01")
    assert (stats["n_train"], stats["n_test"]) == (77_685, 3_651)


def _run(*args):
    env = dict(os.environ, IARN_DATA_ROOT=str(DATA_ROOT), JAX_PLATFORMS="cpu")
    return subprocess.run([sys.executable, "-m", "experiments.data_stats", *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_cli_json_ml100k():
    require_data("movielens/ml-100k/u.data")
    result = _run("--protocol=ml100k", f"--data_root={DATA_ROOT}", "--json")
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert KEYS <= set(stats)
    assert (stats["n_train"], stats["n_test"], stats["n_users_kept"], stats["n_items_kept"]) == (77_685, 3_651, 735, 1_391)


def test_cli_bad_cut_is_a_clear_error():
    path = require_data("movielens/ml-100k")
    result = _run(f"--data=ml100k:{path}", "--cut=1990-01-01")
    assert result.returncode == 2
    assert "empty training set" in result.stderr and "1997-09-20" in result.stderr
    assert "Traceback" not in result.stderr
