"""The step runner: train steps over an epoch's batches, losses fetched in bulk, "train" log lines.

Host batches are built (and their negatives drawn, for objectives that use them) in a prefetch
thread while the device steps. Losses stay on the device until a log line, an evaluation or 256
pending steps need them, so the host never waits for step k before dispatching step k+1.
"""
from __future__ import annotations

import contextlib
import math
import time
from typing import Callable, Iterator, Optional

import jax
import numpy as np

from iarn_jax.data.negatives import NegativeSampler
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.input_pipeline import PreparedData, prefetch, train_batches
from iarn_jax.training.optimizer import get_learning_rate
from iarn_jax.training.run_state import RunState
from iarn_jax.training.schedule import Position
from iarn_jax.training.step import put_batch

MAX_PENDING = 256  # losses kept on the device before a bulk fetch


class StepRunner:
    """Runs ``train_step`` on the batches of an epoch.

    train_step(state, batch) -> (state, {"loss": scalar}) (see training.step.make_train_step).
    log(record, text): receives a "train" record every ``cfg.log_every`` steps (mean loss since the
      last one, examples per second, learning rate).
    step: the host-side step counter (the state's step, without a device sync per step).
    """

    def __init__(self, train_step: Callable, data: PreparedData, cfg: TrainConfig, mesh, log: Callable,
                 sampler: Optional[NegativeSampler] = None, step: int = 0):
        self.train_step, self.data, self.cfg, self.mesh, self.log, self.sampler = (
            train_step, data, cfg, mesh, log, sampler)
        self.step = step
        self.pending: list = []  # (step, device loss [])
        self.loss_sum, self.loss_count = 0.0, 0  # losses since the last "train" record
        self.window_start, self.window_examples = time.time(), 0
        self.mark = time.time()  # start of the current span of train-step time

    def run_epoch(self, run: RunState) -> Iterator[int]:
        """Trains on the batches of ``run.position.epoch`` from ``run.position.batch`` on, updating
        ``run.state`` and ``run.position``; yields the step count after each step (the caller may
        evaluate then, and replace ``run.state``)."""
        position = run.position
        batches = train_batches(self.data, self.cfg, position.epoch, position.batch, self.sampler)
        self.mark = time.time()
        for batch in prefetch(batches, self.cfg.prefetch):
            run.state, metrics = self.train_step(run.state, put_batch(batch, self.mesh))
            position.batch += 1
            self.step += 1
            self.pending.append((self.step, metrics["loss"]))
            n_real = int(batch["weight"].sum()) * jax.process_count()
            position.examples += n_real
            self.window_examples += n_real
            logging_now = bool(self.cfg.log_every and self.step % self.cfg.log_every == 0)
            if logging_now or len(self.pending) >= MAX_PENDING:
                self.drain(position)
            if logging_now:
                self._log_train(run)
            yield self.step

    def drain(self, position: Position) -> None:
        """Fetches the pending losses (one transfer), checks them, adds the span to train_seconds.

        Raises FloatingPointError on a non-finite or exploding (> 1e4) loss, naming its step."""
        if not self.pending:
            return
        values = np.asarray(jax.device_get(jax.numpy.stack([loss for _, loss in self.pending])), np.float64)
        steps = [k for k, _ in self.pending]
        self.pending.clear()
        position.train_seconds += time.time() - self.mark
        self.mark = time.time()
        for k, value in zip(steps, values):
            if not math.isfinite(value) or value > 1e4:
                raise FloatingPointError(f"training diverged at step {k}: loss {value}")
        self.loss_sum, self.loss_count = self.loss_sum + sum(values), self.loss_count + len(values)

    @contextlib.contextmanager
    def paused(self, position: Position):
        """Drains the pending losses; the time inside (evaluation, checkpoints) is not train-step time."""
        self.drain(position)
        yield
        self.mark = time.time()

    def _log_train(self, run: RunState) -> None:
        rate = self.window_examples / max(time.time() - self.window_start, 1e-9)
        lr = get_learning_rate(run.state.opt_state)
        loss = self.loss_sum / self.loss_count
        self.log({"event": "train", "epoch": run.position.epoch, "step": self.step, "loss": loss,
                  "examples_per_second": rate, "learning_rate": lr},
                 f"epoch {run.position.epoch} step {self.step} loss {loss:.4f} {rate:,.0f} ex/s lr {lr:.2e}")
        self.loss_sum, self.loss_count, self.window_start, self.window_examples = 0.0, 0, time.time(), 0
