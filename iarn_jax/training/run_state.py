"""What a run continues from on ``--resume``, and its checkpoints.

A :class:`RunState` is the train state, the best parameters so far, the schedule and the loop
position. :func:`save` writes the first two as an orbax checkpoint and the other two as the
progress record (``training.checkpoint``); :func:`restore` reads them back, so a resumed run
continues exactly where the checkpoint left off. :func:`open_workdir` does the workdir checks of
``training.run_records`` before anything is written.
"""
from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Optional

from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.training import checkpoint, run_records, schedule as schedule_lib
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.schedule import Position, Schedule


@dataclasses.dataclass
class RunState:
    """The resumable state of a run. state: a TrainState; best_params: the parameters of best_step."""

    state: Any
    best_params: Any
    schedule: Schedule = Schedule()
    position: Position = dataclasses.field(default_factory=Position)

    def trees(self) -> dict:
        """The checkpointed arrays: {"state", "best_params"}."""
        return {"state": self.state, "best_params": self.best_params}


def open_workdir(workdir: Optional[pathlib.Path], split: ProtocolSplit, model_config: ModelConfig,
                 cfg: TrainConfig, *, resume: bool, overwrite: bool) -> Optional[pathlib.Path]:
    """Checks ``workdir`` (resume / overwrite, see run_records), writes config.json and returns the
    checkpoint folder (None without a workdir)."""
    if workdir is None:
        return None
    ckpt_dir = workdir / "checkpoints"
    payload = {"protocol": split.name, "model": dataclasses.asdict(model_config), "train": dataclasses.asdict(cfg),
               "min_len": split.min_len, "split_seed": split.seed}
    run_records.prepare_workdir(workdir, payload, resume=resume, overwrite=overwrite, ckpt_dir=ckpt_dir)
    return ckpt_dir


def save(ckpt_dir: Optional[pathlib.Path], step: int, run: RunState) -> None:
    """Checkpoints ``run`` at ``step`` (nothing without a checkpoint folder)."""
    if ckpt_dir is None:
        return
    checkpoint.save_progress(ckpt_dir, step, run.trees(),
                             {"schedule": schedule_lib.to_record(run.schedule, run.position)})


def restore(ckpt_dir: Optional[pathlib.Path], like: RunState) -> Optional[tuple[RunState, int]]:
    """(the checkpointed run, its step), restored with the structure and shardings of ``like``; None
    when there is no checkpoint."""
    progress = checkpoint.load_progress(ckpt_dir) if ckpt_dir is not None else None
    if progress is None:
        return None
    trees = checkpoint.restore_tree(ckpt_dir / progress["checkpoint"], like.trees())
    schedule, position = schedule_lib.from_record(progress["schedule"])
    return RunState(trees["state"], trees["best_params"], schedule, position), int(progress["step"])
