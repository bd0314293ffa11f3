"""The reference schedule: learning-rate decay and early stopping on a validation metric.

After each validation :func:`after_validation` maps (schedule, metric, learning rate) to the next
:class:`Schedule` and a :class:`Decision`: keep the parameters as the best, or decay the learning
rate and go back to the best parameters. :func:`after_budget` stops a run that has used its step or
time budget. Both are pure. :class:`Position` is where the loop is in its epochs.

The selection metric (``TrainConfig.selection_metric``) is "rmse" (lower is better) or "auc"
(higher is better); the schedule stores it lower-is-better (RMSE, or -AUC), as progress.json does.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Optional

from iarn_jax.training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Schedule:
    """What early stopping has seen. best_val, last_val: lower is better (RMSE, or -AUC)."""

    best_val: float = math.inf
    best_step: int = 0
    bad: int = 0  # evaluations since the last improvement (stop at cfg.stop_patience)
    decay_bad: int = 0  # ... since the last improvement or decay (decay at cfg.decay_patience)
    evals: int = 0
    done: bool = False
    reason: str = ""  # patience | min_learning_rate | max_steps | max_seconds | max_epochs
    last_val: Optional[float] = None
    recoveries: int = 0  # divergences the run went back from (cfg.divergence_retries)

    def stopped(self, reason: str) -> "Schedule":
        return dataclasses.replace(self, done=True, reason=reason)


@dataclasses.dataclass
class Position:
    """Where the loop is; advanced in place by the step runner."""

    epoch: int = 0
    batch: int = 0  # batches of this epoch already trained on
    examples: int = 0  # real training examples seen, all processes, all sessions
    elapsed: float = 0.0  # wall seconds of the run at its last evaluation, all sessions
    train_seconds: float = 0.0  # seconds spent in train steps, all sessions

    def next_epoch(self) -> None:
        self.epoch, self.batch = self.epoch + 1, 0


@dataclasses.dataclass(frozen=True)
class Decision:
    """What the loop does after a validation."""

    improved: bool  # the current parameters become the best
    decayed: bool  # restore the best parameters and continue at learning_rate
    learning_rate: float


def lower_is_better(metric: str, value: float) -> float:
    """The schedule's value of a selection metric: the RMSE itself, or -AUC."""
    return value if metric == "rmse" else -value


def after_validation(schedule: Schedule, value: float, step: int, cfg: TrainConfig,
                     learning_rate: float) -> tuple[Schedule, Decision]:
    """The reference rule after one validation of ``cfg.selection_metric`` = ``value`` at ``step``.

    An improvement resets both patience counters. Otherwise, after ``stop_patience`` evaluations
    without improvement the run stops ("patience"); else after ``decay_patience`` the learning rate
    is multiplied by ``lr_decay`` (the loop restores the best parameters) and the run stops
    ("min_learning_rate") once it falls below ``min_learning_rate``.
    """
    value = lower_is_better(cfg.selection_metric, value)
    seen = dataclasses.replace(schedule, evals=schedule.evals + 1, last_val=value)
    if value < schedule.best_val:
        best = dataclasses.replace(seen, best_val=value, best_step=step, bad=0, decay_bad=0)
        return best, Decision(improved=True, decayed=False, learning_rate=learning_rate)
    worse = dataclasses.replace(seen, bad=seen.bad + 1, decay_bad=seen.decay_bad + 1)
    if worse.bad >= cfg.stop_patience:
        return worse.stopped("patience"), Decision(improved=False, decayed=False, learning_rate=learning_rate)
    if worse.decay_bad < cfg.decay_patience:
        return worse, Decision(improved=False, decayed=False, learning_rate=learning_rate)
    learning_rate = learning_rate * cfg.lr_decay
    worse = dataclasses.replace(worse, decay_bad=0)
    if learning_rate < cfg.min_learning_rate:
        worse = worse.stopped("min_learning_rate")
    return worse, Decision(improved=False, decayed=True, learning_rate=learning_rate)


def after_budget(schedule: Schedule, step: int, elapsed: float, cfg: TrainConfig) -> Schedule:
    """Stops at ``cfg.max_steps`` steps or after ``cfg.max_seconds`` of wall time (checked at evaluations)."""
    if step >= cfg.max_steps:
        schedule = schedule.stopped("max_steps")
    if cfg.max_seconds and elapsed > cfg.max_seconds:
        schedule = schedule.stopped("max_seconds")
    return schedule


def to_record(schedule: Schedule, position: Position) -> dict:
    """The flat "schedule" record of progress.json."""
    return {**dataclasses.asdict(position), **dataclasses.asdict(schedule)}


def from_record(record: dict) -> tuple[Schedule, Position]:
    """(Schedule, Position) of a progress.json "schedule" record; missing fields take their defaults."""
    def pick(cls):
        return cls(**{f.name: record[f.name] for f in dataclasses.fields(cls) if f.name in record})

    return pick(Schedule), pick(Position)
