"""The reference schedule alone: hand-worked validation sequences -> lr decays and stop step."""
from __future__ import annotations

import math

import pytest

from iarn_jax.training.config import TrainConfig
from iarn_jax.training.schedule import (Position, Schedule, after_budget, after_validation, from_record,
                                        to_record)


def _replay(values, cfg, lr=1e-3):
    """Feeds values at steps 10, 20, ... until the schedule stops; returns (schedule, per-eval rows)."""
    schedule, rows = Schedule(), []
    for k, value in enumerate(values, start=1):
        schedule, decision = after_validation(schedule, value, 10 * k, cfg, lr)
        lr = decision.learning_rate
        rows.append((decision.improved, decision.decayed, lr))
        if schedule.done:
            break
    return schedule, rows


def test_rmse_decays_after_decay_patience_and_stops_after_stop_patience():
    cfg = TrainConfig(decay_patience=2, stop_patience=5, lr_decay=0.4, learning_rate=1e-3)
    # best 0.9 at step 20; then five worse evaluations: decay at the 2nd and 4th, stop at the 5th
    schedule, rows = _replay([1.0, 0.9, 0.95, 0.96, 0.97, 0.98, 0.99, 0.5], cfg)
    assert [r[0] for r in rows] == [True, True, False, False, False, False, False]
    assert [r[1] for r in rows] == [False, False, False, True, False, True, False]
    assert [r[2] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-3, 4e-4, 4e-4, 1.6e-4, 1.6e-4])
    assert schedule.done and schedule.reason == "patience" and schedule.evals == 7  # never sees 0.5
    assert (schedule.best_val, schedule.best_step, schedule.bad, schedule.last_val) == (0.9, 20, 5, 0.99)


def test_auc_is_higher_is_better_ties_are_not_improvements_and_min_lr_stops():
    cfg = TrainConfig(val_metric="auc", decay_patience=1, stop_patience=4, lr_decay=0.1, min_learning_rate=5e-6)
    # 0.70 again (a tie) and 0.65 are bad: two decays; 0.72 improves (counters reset); 0.71 is bad: the
    # third decay takes lr to 1e-6 < 5e-6 and stops the run at step 60
    schedule, rows = _replay([0.60, 0.70, 0.70, 0.65, 0.72, 0.71, 0.9], cfg)
    assert [r[0] for r in rows] == [True, True, False, False, True, False]
    assert [r[1] for r in rows] == [False, False, True, True, False, True]
    assert [r[2] for r in rows] == pytest.approx([1e-3, 1e-3, 1e-4, 1e-5, 1e-5, 1e-6])
    assert schedule.done and schedule.reason == "min_learning_rate"
    assert (schedule.best_val, schedule.best_step, schedule.bad) == (-0.72, 50, 1)  # stored as -AUC


def test_the_same_values_read_as_rmse_select_the_lowest():
    cfg = TrainConfig(val_metric="rmse", decay_patience=10, stop_patience=30)
    schedule, rows = _replay([0.60, 0.70, 0.70, 0.65], cfg)
    assert [r[0] for r in rows] == [True, False, False, False]
    assert (schedule.best_val, schedule.best_step, schedule.bad, schedule.done) == (0.60, 10, 3, False)


def test_transition_is_pure():
    cfg = TrainConfig(decay_patience=1, stop_patience=2)
    before = Schedule(best_val=0.5, best_step=10, evals=3)
    after, decision = after_validation(before, 0.6, 20, cfg, 1e-3)
    assert before == Schedule(best_val=0.5, best_step=10, evals=3)
    assert decision.decayed and (after.bad, after.decay_bad, after.evals) == (1, 0, 4)


def test_budget_stops_at_max_steps_or_max_seconds():
    cfg = TrainConfig(max_steps=100, max_seconds=60.0)
    assert not after_budget(Schedule(), 99, 59.0, cfg).done
    assert after_budget(Schedule(), 100, 0.0, cfg).reason == "max_steps"
    assert after_budget(Schedule(), 50, 61.0, cfg).reason == "max_seconds"
    # a run that also ran out of patience at its last step reports the budget (the reference order)
    assert after_budget(Schedule().stopped("patience"), 100, 0.0, cfg).reason == "max_steps"
    assert not after_budget(Schedule(), 50, 1e9, TrainConfig(max_seconds=None)).done


def test_progress_record_keeps_its_flat_format():
    schedule = Schedule(best_val=-0.7, best_step=20, bad=1, decay_bad=1, evals=3, last_val=-0.6, recoveries=1)
    position = Position(epoch=1, batch=4, examples=320, elapsed=12.5, train_seconds=9.0)
    record = to_record(schedule, position)
    assert set(record) == {"epoch", "batch", "best_val", "best_step", "bad", "decay_bad", "evals", "done", "reason",
                           "elapsed", "examples", "train_seconds", "last_val", "recoveries"}
    assert from_record(record) == (schedule, position)
    # records of older runs: unknown keys are ignored, missing ones take their defaults
    old = {"epoch": 2, "batch": 0, "best_val": math.inf, "decay_now": True}
    assert from_record(old) == (Schedule(), Position(epoch=2))
