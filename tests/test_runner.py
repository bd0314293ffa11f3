"""The step runner alone, with a stand-in train step: batches, resume position, bulk losses, logs."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iarn_jax.data.protocols import load_protocol
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.input_pipeline import make_negative_sampler, prepare_data
from iarn_jax.training.optimizer import make_optimizer
from iarn_jax.training.run_state import RunState
from iarn_jax.training.runner import StepRunner
from iarn_jax.training.schedule import Position
from iarn_jax.training.step import TrainState, make_mesh


@pytest.fixture(scope="module")
def split():
    return load_protocol("synthetic", None, n_users=60, n_items=30, n_ratings=800, seed=0)


class FakeStep:
    """train_step(state, batch) -> (state, {"loss"}): loss = 1 + step; records the batches it sees."""

    def __init__(self, nan_at=None):
        self.seen, self.nan_at = [], nan_at

    def __call__(self, state, batch):
        self.seen.append({k: np.asarray(v) for k, v in batch.items()})
        step = int(state.step) + 1
        loss = jnp.float32(np.nan if step == self.nan_at else 1.0 + step)
        return state.replace(step=state.step + 1), {"loss": loss}


def _run(cfg, data, step_fn, position=None, sampler=None):
    tx = make_optimizer(cfg)
    params = {"w": jnp.zeros(2)}
    start = 0 if position is None else position.batch
    state = TrainState(step=jnp.asarray(start, jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.PRNGKey(0))
    run = RunState(state, params, position=position or Position())
    records = []
    runner = StepRunner(step_fn, data, cfg, make_mesh(jax.devices()[:1]), lambda r, text: records.append(r),
                        sampler, step=start)
    steps = list(runner.run_epoch(run))
    runner.drain(run.position)
    return run, steps, records


def test_one_epoch_counts_examples_and_logs_mean_losses(split):
    cfg = TrainConfig(batch_size=64, log_every=2, prefetch=2, bucket_lengths=(128,), max_len=128)
    data = prepare_data(split)
    fake = FakeStep()
    run, steps, records = _run(cfg, data, fake)
    n_batches = -(-len(data.train.user) // 64)
    assert steps == list(range(1, n_batches + 1)) and run.position.batch == n_batches
    assert run.position.examples == len(data.train.user)  # padding rows have weight 0
    assert sum(int(b["weight"].sum()) for b in fake.seen) == len(data.train.user)
    train = [r for r in records if r["event"] == "train"]
    assert [r["step"] for r in train] == list(range(2, n_batches + 1, 2))
    assert [r["loss"] for r in train] == [k + 0.5 for k in range(2, n_batches + 1, 2)]  # mean of 1+k-1, 1+k
    assert all(r["learning_rate"] == pytest.approx(cfg.learning_rate) for r in train)


def test_a_resumed_epoch_sees_the_same_batches_and_negatives(split):
    cfg = TrainConfig(objective="ranking", history_mode="full_without_self", n_negatives=3, batch_size=32,
                      log_every=0, prefetch=0, bucket_lengths=(64,), max_len=64, seed=5)
    data = prepare_data(split, cfg.history_mode)
    sampler = make_negative_sampler(data, cfg)
    full, part = FakeStep(), FakeStep()
    _run(cfg, data, full, Position(epoch=1), sampler)
    run, steps, _ = _run(cfg, data, part, Position(epoch=1, batch=4), sampler)
    assert steps[0] == 5 and run.position.batch == len(full.seen)
    assert len(part.seen) == len(full.seen) - 4
    for a, b in zip(full.seen[4:], part.seen):
        assert a["neg_item"].shape == (3 * len(a["user"]),)
        assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_a_non_finite_loss_names_its_step(split):
    cfg = TrainConfig(batch_size=64, log_every=0, prefetch=0, bucket_lengths=(128,), max_len=128)
    with pytest.raises(FloatingPointError, match="diverged at step 3: loss nan"):
        _run(cfg, prepare_data(split), FakeStep(nan_at=3))
