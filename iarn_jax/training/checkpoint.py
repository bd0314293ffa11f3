"""Orbax checkpoints: the latest train state (for --resume) and the best parameters.

Layout of ``workdir/checkpoints``:
  state_<step>/   orbax pytree {"state": TrainState, "best_params": params}
  best/           orbax pytree of the best parameters (for prediction / explain)
  progress.json   loop position and schedule, naming the state_<step> it belongs to
  progress_<step>.json  the same record, kept beside each state_<step> (written after it is
                  complete), so a corrupt or empty progress.json falls back to the newest
                  complete checkpoint still on disk

progress.json is replaced atomically (write + rename) only after orbax has
finished writing, so an interrupted save never leaves a progress file pointing
at a half-written checkpoint.
"""
from __future__ import annotations

import json
import pathlib
import re
import shutil
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp

from iarn_jax import jsonio

PROGRESS = "progress.json"


def _checkpointer() -> ocp.StandardCheckpointer:
    return ocp.StandardCheckpointer()


def write_json_atomic(path: pathlib.Path, payload: dict) -> None:
    """Writes JSON to path via a temporary file and os.replace (process 0 only)."""
    if jax.process_index() == 0:
        jsonio.write_json_atomic(path, payload, sort_keys=True, default=None)


def save_progress(ckpt_dir: pathlib.Path, step: int, tree: Any, progress: dict, keep: int = 2) -> None:
    """Saves the resumable train state at `step`, then its progress record."""
    ckpt_dir = ckpt_dir.absolute()
    target = ckpt_dir / f"state_{step:09d}"
    ckptr = _checkpointer()
    ckptr.save(target, tree, force=True)
    ckptr.wait_until_finished()
    record = {**progress, "checkpoint": target.name, "step": step}
    write_json_atomic(ckpt_dir / f"progress_{step:09d}.json", record)  # marks state_<step> complete
    write_json_atomic(ckpt_dir / PROGRESS, record)
    if jax.process_index() == 0:
        old = sorted(p for p in ckpt_dir.glob("state_*") if p.name != target.name)
        for stale in old[: max(0, len(old) - (keep - 1))]:
            shutil.rmtree(stale, ignore_errors=True)
            match = _STATE.match(stale.name)
            if match:
                (ckpt_dir / f"progress_{match.group(1)}.json").unlink(missing_ok=True)


_STATE = re.compile(r"^state_(\d{9})$")


def _read_record(path: pathlib.Path, ckpt_dir: pathlib.Path) -> Optional[dict]:
    """A progress record whose checkpoint folder exists, or None (unreadable / incomplete)."""
    try:
        record = json.loads(path.read_text())
        name = record["checkpoint"]
        int(record["step"])
        record["schedule"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if isinstance(name, str) and _STATE.match(name) and (ckpt_dir / name).is_dir() else None


def _newest_complete(ckpt_dir: pathlib.Path) -> Optional[dict]:
    """The record of the newest state_<step> that has a readable progress_<step>.json."""
    steps = sorted((m.group(1) for m in map(_STATE.match, (p.name for p in ckpt_dir.glob("state_*"))) if m),
                   reverse=True)
    for step in steps:
        record = _read_record(ckpt_dir / f"progress_{step}.json", ckpt_dir)
        if record is not None:
            return record
    return None


def find_checkpoint(ckpt_dir: pathlib.Path) -> Optional[tuple[int, str]]:
    """(step, folder name) of the checkpoint a resume would use, or None."""
    ckpt_dir = pathlib.Path(ckpt_dir).absolute()
    if not ckpt_dir.is_dir():
        return None
    record = _read_record(ckpt_dir / PROGRESS, ckpt_dir) or _newest_complete(ckpt_dir)
    return (int(record["step"]), record["checkpoint"]) if record else None


def load_progress(ckpt_dir: pathlib.Path) -> Optional[dict]:
    """The last complete progress record, or None when there is none.

    A corrupt, empty or dangling progress.json falls back (and says so) to the newest complete
    checkpoint still on disk; without one, a RunStateError says what is wrong.
    """
    from iarn_jax.training.run_records import RunStateError, say

    ckpt_dir = ckpt_dir.absolute()
    path = ckpt_dir / PROGRESS
    if not path.exists():
        return None
    record = _read_record(path, ckpt_dir)
    if record is not None:
        return record
    fallback = _newest_complete(ckpt_dir)
    if fallback is None:
        raise RunStateError(f"{path}: corrupt, empty or names a missing checkpoint, and no complete "
                            f"checkpoint (state_<step> with progress_<step>.json) is left in {ckpt_dir}; "
                            f"pass --overwrite to start again")
    say(f"{path} is corrupt, empty or names a missing checkpoint; falling back to the newest complete "
        f"checkpoint {fallback['checkpoint']} (step {fallback['step']})")
    return fallback


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
