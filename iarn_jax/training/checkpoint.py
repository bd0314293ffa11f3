"""Orbax checkpoints: the latest train state (for --resume) and the best parameters.

Layout of ``workdir/checkpoints``:
  state_<step>/   orbax pytree {"state": TrainState, "best_params": params}
  best/           orbax pytree of the best parameters (for prediction / explain)
  progress.json   loop position and schedule, naming the state_<step> it belongs to

progress.json is replaced atomically (write + rename) only after orbax has
finished writing, so an interrupted save never leaves a progress file pointing
at a half-written checkpoint.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

PROGRESS = "progress.json"


def _checkpointer() -> ocp.StandardCheckpointer:
    return ocp.StandardCheckpointer()


def write_json_atomic(path: pathlib.Path, payload: dict) -> None:
    """Writes JSON to path via a temporary file and os.replace (process 0 only)."""
    if jax.process_index() != 0:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True))
    os.replace(tmp, path)


def save_progress(ckpt_dir: pathlib.Path, step: int, tree: Any, progress: dict, keep: int = 2) -> None:
    """Saves the resumable train state at `step`, then its progress record."""
    ckpt_dir = ckpt_dir.absolute()
    target = ckpt_dir / f"state_{step:09d}"
    ckptr = _checkpointer()
    ckptr.save(target, tree, force=True)
    ckptr.wait_until_finished()
    write_json_atomic(ckpt_dir / PROGRESS, {**progress, "checkpoint": target.name, "step": step})
    if jax.process_index() == 0:
        old = sorted(p for p in ckpt_dir.glob("state_*") if p.name != target.name)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)


def load_progress(ckpt_dir: pathlib.Path) -> Optional[dict]:
    """The last complete progress record, or None when there is none."""
    path = ckpt_dir.absolute() / PROGRESS
    if not path.exists():
        return None
    progress = json.loads(path.read_text())
    if not (ckpt_dir.absolute() / progress["checkpoint"]).exists():
        raise FileNotFoundError(f"{path} names {progress['checkpoint']}, which is missing")
    return progress


def restore_tree(path: pathlib.Path, like: Any) -> Any:
    """Restores an orbax pytree with the structure, shapes and shardings of `like`."""
    abstract = jax.tree_util.tree_map(ocp.utils.to_shape_dtype_struct, like)
    return _checkpointer().restore(pathlib.Path(path).absolute(), abstract)


def save_params(path: pathlib.Path, params: Any) -> None:
    """Saves a parameter pytree (overwrites)."""
    ckptr = _checkpointer()
    ckptr.save(pathlib.Path(path).absolute(), params, force=True)
    ckptr.wait_until_finished()


def load_params(path: pathlib.Path, like: Optional[Any] = None) -> Any:
    """Loads a parameter pytree; with `like`, restores its exact structure and dtypes."""
    path = pathlib.Path(path).absolute()
    if like is None:
        return _checkpointer().restore(path)
    return restore_tree(path, like)
