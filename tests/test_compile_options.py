"""The steps' per-platform XLA compile options (``iarn_jax.training.compile_options``)."""
from __future__ import annotations

import types

import jax
import numpy as np
import pytest

from experiments import benchmark
from iarn_jax.models.iarn import IARN
from iarn_jax.training import compile_options
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.loop import make_apply_fn, make_loss_fn
from iarn_jax.training.optimizer import make_optimizer
from iarn_jax.training.step import create_train_state, make_mesh, make_train_step, put_batch


def _stub_mesh(platform: str):
    return types.SimpleNamespace(devices=np.array([types.SimpleNamespace(platform=platform)], dtype=object))


def test_cpu_steps_get_the_cpu_options(monkeypatch):
    monkeypatch.delenv(compile_options.OPT_OUT_VARIABLE, raising=False)
    mesh = make_mesh(jax.devices("cpu")[:1])
    assert compile_options.options_supported(jax.devices("cpu")[0], tuple(sorted(compile_options.CPU_OPTIONS.items()))), (
        "this jaxlib's XLA rejects the CPU step options; update compile_options.CPU_OPTIONS")
    assert compile_options.step_compiler_options(mesh) == compile_options.CPU_OPTIONS
    if jax.default_backend() == "cpu":  # the scorer's programs: JAX's first device
        assert compile_options.compiler_options_for() == compile_options.CPU_OPTIONS


@pytest.mark.parametrize("value", ["1", "yes"])
def test_opt_out_keeps_xla_defaults(monkeypatch, value):
    monkeypatch.setenv(compile_options.OPT_OUT_VARIABLE, value)
    assert compile_options.step_compiler_options(make_mesh(jax.devices("cpu")[:1])) is None


def test_accelerators_get_no_options(monkeypatch):
    monkeypatch.delenv(compile_options.OPT_OUT_VARIABLE, raising=False)
    for platform in ("gpu", "cuda", "tpu"):
        assert compile_options.step_compiler_options(_stub_mesh(platform)) is None


def test_unknown_option_is_reported_unsupported_not_raised():
    device = jax.devices("cpu")[0]
    assert not compile_options.options_supported(device, (("xla_cpu_no_such_option_iarn", "1"),))
    assert compile_options.options_supported(device, ())


def _train_step_hlo_and_loss():
    config = benchmark.model_config()
    mesh = make_mesh(jax.devices("cpu")[:1])
    model = IARN(config)
    train_config = TrainConfig(objective="rating", history_mode="full")
    tx = make_optimizer(train_config)
    host = benchmark.random_batch(np.random.default_rng(0), 16, 6, config.n_users, config.n_items)
    params = jax.jit(lambda r, b: model.init(r, b)["params"])(jax.random.PRNGKey(0), host)
    state = create_train_state(params, tx, jax.random.PRNGKey(1), mesh)
    step = make_train_step(make_apply_fn(model), tx, mesh, loss_fn=make_loss_fn(model, config, train_config))
    batch = put_batch(host, mesh)
    cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))
    hlo = cells["compiled"].lower(state, batch, cells["constants"]).compile().as_text()
    _, metrics = step(state, batch)
    return hlo, float(metrics["loss"])


def test_train_step_is_compiled_with_the_options_and_keeps_its_numbers(monkeypatch):
    """The jit train step really compiles without YNNPACK fusions (XLA's default has them), and its
    loss equals the default-compiled step's to float rounding."""
    monkeypatch.delenv(compile_options.OPT_OUT_VARIABLE, raising=False)
    hlo, loss = _train_step_hlo_and_loss()
    monkeypatch.setenv(compile_options.OPT_OUT_VARIABLE, "1")
    default_hlo, default_loss = _train_step_hlo_and_loss()
    assert "ynn_fusion" in default_hlo  # what the option removes (if this fails, XLA changed its default)
    assert "ynn_fusion" not in hlo
    np.testing.assert_allclose(loss, default_loss, rtol=1e-5)
