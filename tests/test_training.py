"""Training loop: optimiser semantics, one step, schedule, sharding, resume."""
from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from iarn_jax.data import batching
from iarn_jax.data.protocols import load_protocol
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN
from iarn_jax.training import loop
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.optimizer import get_learning_rate, make_optimizer, set_learning_rate
from iarn_jax.training.step import create_train_state, make_mesh, make_train_step, put_batch

REPO = pathlib.Path(__file__).resolve().parents[1]
SMALL = dict(n_users=120, n_items=60, n_ratings=3000, seed=0)
TINY_MODEL = ModelConfig(variant="iarn", embed_dim=8, hidden_size=8, attention_size=8)


@pytest.fixture(scope="module")
def small_split():
    return load_protocol("synthetic", None, **SMALL)


def test_optimizer_matches_torch_rmsprop_with_elementwise_clip():
    """clip(+-10) then m = .95 m + .05 g^2, theta -= lr g / (sqrt(m) + 1e-8), m0 = 0."""
    cfg = TrainConfig(learning_rate=1e-3)
    tx = make_optimizer(cfg)
    params = {"w": jnp.array([1.0, 2.0, 3.0])}
    state = tx.init(params)
    m = np.zeros(3)
    theta = np.array([1.0, 2.0, 3.0])
    for g in ([30.0, -0.5, 0.0], [-4.0, 12.0, 1e-3], [0.1, 0.2, -25.0]):
        updates, state = tx.update({"w": jnp.array(g)}, state, params)
        params = jax.tree_util.tree_map(lambda p, u: p + u, params, updates)
        gc = np.clip(np.array(g), -10, 10)
        m = 0.95 * m + 0.05 * gc**2
        theta = theta - 1e-3 * gc / (np.sqrt(m) + 1e-8)
        np.testing.assert_allclose(np.asarray(params["w"]), theta, rtol=1e-5, atol=1e-7)
    state = set_learning_rate(state, 4e-4)
    assert get_learning_rate(state) == pytest.approx(4e-4)


def _fixed_batch(split, batch_size=32):
    data = loop.prepare_data(split)
    plan = batching.make_batch_plan(data.train, batch_size, seed=0, epoch=0)
    return data, batching.materialize(plan[0], data.train, data.user_histories, data.item_histories)


def test_one_train_step_changes_params_and_lowers_loss(small_split):
    model_config = loop.complete_model_config(TINY_MODEL, small_split)
    data, batch = _fixed_batch(small_split)
    model = IARN(model_config)
    params = model.init(jax.random.PRNGKey(0), batch)["params"]
    tx = make_optimizer(TrainConfig())
    mesh = make_mesh(jax.devices()[:1])
    step = make_train_step(loop.make_apply_fn(model), tx, mesh)
    state = create_train_state(params, tx, jax.random.PRNGKey(1), mesh)
    before = jax.tree_util.tree_map(np.asarray, params)
    losses = []
    for _ in range(5):
        state, metrics = step(state, put_batch(batch, mesh))
        losses.append(float(metrics["loss"]))
    after = jax.tree_util.tree_map(np.asarray, state.params)
    changed = jax.tree_util.tree_map(lambda a, b: not np.array_equal(a, b), before, after)
    assert all(jax.tree_util.tree_leaves(changed)), "every parameter should move"
    assert losses[-1] < losses[0]
    assert int(state.step) == 5


def _tiny_train_config(**kw):
    # One bucket shape (every history fits 128) keeps compilation to one train and one eval step.
    base = dict(batch_size=32, eval_batch_size=64, eval_every=10, max_steps=40, max_epochs=5, log_every=0,
                decay_patience=1, stop_patience=100, seed=3, prefetch=0, bucket_lengths=(128,), max_len=128)
    return TrainConfig(**{**base, **kw})


@pytest.mark.slow
def test_resume_after_interruption_matches_uninterrupted(small_split, tmp_path, monkeypatch):
    cfg = _tiny_train_config()
    full = loop.train(small_split, TINY_MODEL, cfg, workdir=tmp_path / "full", verbose=False)
    with monkeypatch.context() as patch:  # interrupted right after the step-20 checkpoint
        patch.setattr(loop, "_STOP_AFTER_STEPS", 20)
        part = loop.train(small_split, TINY_MODEL, cfg, workdir=tmp_path / "resumed", verbose=False)
    assert part.metrics == {"interrupted_at": 20}
    resumed = loop.train(small_split, TINY_MODEL, cfg, workdir=tmp_path / "resumed", verbose=False, resume=True)
    for a, b in zip(jax.tree_util.tree_leaves(full.params), jax.tree_util.tree_leaves(resumed.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.metrics["test_rmse"] == full.metrics["test_rmse"]
    assert resumed.metrics["val_rmse"] == full.metrics["val_rmse"]
    log = [json.loads(line) for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert any(r["event"] == "resume" for r in log)
    results = json.loads((tmp_path / "full" / "results.json").read_text())
    for key in ("test_rmse", "test_mae", "val_rmse", "n_train", "n_test", "epochs", "wall_seconds",
                "train_examples_per_second"):
        assert key in results


def test_same_seed_same_numbers_and_predict(small_split):
    cfg = _tiny_train_config(max_steps=20)
    a = loop.train(small_split, TINY_MODEL, cfg, verbose=False)
    b = loop.train(small_split, TINY_MODEL, cfg, verbose=False)
    assert a.metrics["test_rmse"] == b.metrics["test_rmse"]
    pred = loop.predict(a, small_split.test)
    assert pred.shape == (len(small_split.test),)
    clipped = np.clip(pred, *small_split.rating_scale)
    rmse = float(np.sqrt(np.mean((clipped - small_split.test["rating"].to_numpy()) ** 2)))
    assert rmse == pytest.approx(a.metrics["test_rmse"], rel=1e-5)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training import loop
    from iarn_jax.training.config import TrainConfig
    assert len(jax.devices()) == 4, jax.devices()
    split = load_protocol("synthetic", None, n_users=120, n_items=60, n_ratings=3000, seed=0)
    model = ModelConfig(variant="iarn", embed_dim=8, hidden_size=8, attention_size=8)
    cfg = TrainConfig(batch_size=32, eval_batch_size=64, eval_every=10, max_steps=20, log_every=0, prefetch=0,
                      bucket_lengths=(128,), max_len=128)
    one = loop.train(split, model, cfg, verbose=False, devices=jax.devices()[:1])
    four = loop.train(split, model, cfg, verbose=False, devices=jax.devices())
    diffs = [float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
             for a, b in zip(jax.tree_util.tree_leaves(one.params), jax.tree_util.tree_leaves(four.params))]
    print("MAXDIFF", max(diffs), one.metrics["test_rmse"], four.metrics["test_rmse"], four.metrics["devices"])
    """
)


@pytest.mark.slow
def test_sharded_step_on_four_host_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SHARDED_SCRIPT], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [l for l in proc.stdout.splitlines() if l.startswith("MAXDIFF")][0]
    maxdiff, rmse1, rmse4, devices = line.split()[1:]
    assert int(devices) == 4
    assert float(maxdiff) < 1e-4  # same parameters up to float reduction order
    assert float(rmse1) == pytest.approx(float(rmse4), abs=1e-4)


def test_bias_init_starts_at_the_bias_only_model(small_split):
    """With biases initialised from BaselineOnly, prediction = ALS baseline + towers' inner product."""
    from iarn_jax.models.baselines.bias import BiasBaseline

    config = loop.complete_model_config(dataclasses.replace(TINY_MODEL, bias="global_user_item"), small_split)
    data, batch = _fixed_batch(small_split)
    model = IARN(config)
    params = loop.init_biases_from_baseline(model.init(jax.random.PRNGKey(0), batch)["params"], small_split, config)
    pred, aux = model.apply({"params": params}, batch)
    train = small_split.train
    base = BiasBaseline().fit_arrays(train["user"].to_numpy(), train["item"].to_numpy(),
                                     train["rating"].to_numpy(np.float64), small_split.n_users, small_split.n_items)
    expected_bias = base.predict(batch["user"], batch["item"])
    np.testing.assert_allclose(np.asarray(aux["bias"]), expected_bias, rtol=1e-5, atol=1e-5)
    dot = np.sum(np.asarray(aux["user_representation"]) * np.asarray(aux["item_representation"]), -1)
    np.testing.assert_allclose(np.asarray(pred), expected_bias + dot, rtol=1e-5, atol=1e-4)


def test_tuned_feature_bias_start_is_the_validation_chosen_hierarchical_bias_model(small_split):
    """bias_init="tuned" with feature_bias: the model's bias terms start at BiasBaseline(features=True)
    fitted on the training pairs with the grid's (reg_user, reg_item) of lowest validation RMSE, which
    is checked here against every grid point refitted by hand."""
    from iarn_jax.evaluate import metrics
    from iarn_jax.models.baselines.bias import REG_GRID, BiasBaseline
    from iarn_jax.models.features import COLLECTION

    config = loop.complete_model_config(
        dataclasses.replace(TINY_MODEL, bias="global_user_item", feature_bias=True), small_split)
    data, batch = _fixed_batch(small_split)
    model = loop.build_model(config, small_split)
    constants = loop.model_constants(config, small_split)
    params = loop.initialize(model, jax.random.PRNGKey(0), batch, constants)
    params = loop.init_biases_from_baseline(params, small_split, config, tuned=True)
    _, aux = model.apply({"params": params, **constants}, batch)

    train, val = small_split.train, small_split.val
    flat = constants[COLLECTION]["flat"]
    scores = {}
    for reg_user, reg_item in REG_GRID:
        fitted = BiasBaseline(reg_user, reg_item, features=True).fit_arrays(
            train["user"].to_numpy(), train["item"].to_numpy(), train["rating"].to_numpy(np.float64),
            small_split.n_users, small_split.n_items, item_features=flat)
        scores[reg_user, reg_item] = (metrics.rmse(fitted.predict(val["user"].to_numpy(), val["item"].to_numpy()),
                                                   val["rating"].to_numpy(), small_split.rating_scale), fitted)
    chosen = min(scores, key=lambda k: scores[k][0])
    assert len({round(v[0], 6) for v in scores.values()}) > 1  # the grid matters on this data
    best = scores[chosen][1]
    np.testing.assert_allclose(np.asarray(aux["bias"]), best.predict(batch["user"], batch["item"]), rtol=1e-5, atol=1e-5)
    assert np.abs(best.feature_bias).max() > 1e-3  # the feature biases take part


def test_trimmed_rows_hand_worked():
    from iarn_jax.training.input_pipeline import trimmed_rows

    assert trimmed_rows(5, 512) == 32  # at least min_rows
    assert trimmed_rows(33, 512) == 64  # next power of two
    assert trimmed_rows(64, 512) == 64
    assert trimmed_rows(300, 512) == 512
    assert trimmed_rows(300, 384) == 384  # never above the batch size
    assert trimmed_rows(0, 512) == 32
    assert trimmed_rows(5, 512, n_devices=3) == 33  # a multiple of the device count


def test_eval_batches_trim_padding_and_score_every_pair_as_a_full_batch_does(small_split):
    """Every pair exactly once; a trimmed batch is the first rows of the full-size batch, and the
    model's predictions on it equal those on the untrimmed batch."""
    from iarn_jax.training.input_pipeline import eval_batches

    data = loop.prepare_data(small_split)
    cfg = TrainConfig(eval_batch_size=256, bucket_lengths=(16, 128))
    plan = batching.make_batch_plan(data.test, 256, shuffle=False, bucket_lengths=cfg.bucket_lengths)
    model = IARN(dataclasses.replace(TINY_MODEL, n_users=small_split.n_users, n_items=small_split.n_items))
    params, apply = None, jax.jit(model.apply)
    seen, trimmed = [], 0
    for k, (idx, batch) in enumerate(eval_batches(data.test, data, cfg)):
        full = batching.materialize(plan[k], data.test, data.user_histories, data.item_histories)
        assert len(idx) <= 256 and (idx >= 0).sum() == (plan.indices[k] >= 0).sum()
        trimmed += len(idx) < 256
        for key, value in batch.items():
            np.testing.assert_array_equal(value, full[key][: len(idx)], err_msg=key)
        if params is None:
            params = model.init(jax.random.key(0), full)["params"]
        small = np.asarray(apply({"params": params}, batch)[0])
        large = np.asarray(apply({"params": params}, full)[0])[: len(idx)]
        np.testing.assert_allclose(small, large, rtol=1e-5, atol=1e-6)
        seen.extend(idx[idx >= 0].tolist())
    assert sorted(seen) == list(range(len(data.test)))
    assert trimmed > 0  # the test set does not fill its buckets' last batches
