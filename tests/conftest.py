"""Shared pytest fixtures.

Real datasets are read from ``../shared/data`` (relative to the repository root),
or from the directory in the ``IARN_DATA_ROOT`` environment variable. Tests that
need them skip with a clear message when the folder is absent.
"""
from __future__ import annotations

import os
import pathlib

import pytest

# Launchers run in subprocesses would re-execute themselves once for glibc's malloc tunables
# (experiments/_host_memory.py): a second JAX import per launch, no speed a test needs. Off here;
# tests/test_host_memory.py turns it back on where it checks it.
os.environ.setdefault("IARN_HOST_MALLOC", "default")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA_ROOT = pathlib.Path(os.environ.get("IARN_DATA_ROOT", REPO_ROOT.parent / "shared" / "data"))


def require_data(relative: str) -> pathlib.Path:
    """Path of a shared dataset file/folder, or skip the test when it is absent."""
    path = DATA_ROOT / relative
    if not path.exists():
        pytest.skip(f"shared dataset not found: {path} (set IARN_DATA_ROOT to the shared/data folder)")
    return path


@pytest.fixture
def data_root() -> pathlib.Path:
    if not DATA_ROOT.exists():
        pytest.skip(f"shared data folder not found: {DATA_ROOT} (set IARN_DATA_ROOT)")
    return DATA_ROOT
