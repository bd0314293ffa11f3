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


def _no_opt_out(monkeypatch):
    for name in compile_options.OPT_OUT_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_cpu_steps_get_the_cpu_options(monkeypatch):
    _no_opt_out(monkeypatch)
    mesh = make_mesh(jax.devices("cpu")[:1])
    for option in compile_options.CPU_OPTIONS.items():
        assert compile_options.options_supported(jax.devices("cpu")[0], (option,)), (
            f"this jaxlib's XLA rejects the CPU step option {option}; update compile_options.CPU_OPTIONS")
    assert compile_options.step_compiler_options(mesh) == compile_options.CPU_OPTIONS
    if jax.default_backend() == "cpu":  # the scorer's programs: JAX's first device
        assert compile_options.compiler_options_for() == compile_options.CPU_OPTIONS


def test_an_option_this_xla_does_not_know_is_left_out_and_the_others_kept(monkeypatch):
    _no_opt_out(monkeypatch)
    known = dict(compile_options.CPU_OPTIONS)
    monkeypatch.setattr(compile_options, "CPU_OPTIONS", {**known, "xla_cpu_no_such_option_iarn": "1"})
    assert compile_options.compiler_options_for(jax.devices("cpu")[0]) == known
    monkeypatch.setattr(compile_options, "CPU_OPTIONS", {"xla_cpu_no_such_option_iarn": "1"})
    assert compile_options.compiler_options_for(jax.devices("cpu")[0]) is None


@pytest.mark.parametrize("variable", compile_options.OPT_OUT_VARIABLES)
@pytest.mark.parametrize("value", ["1", "yes"])
def test_opt_out_keeps_xla_defaults(monkeypatch, variable, value):
    _no_opt_out(monkeypatch)
    monkeypatch.setenv(variable, value)
    assert compile_options.step_compiler_options(make_mesh(jax.devices("cpu")[:1])) is None


def test_accelerators_get_no_options(monkeypatch):
    _no_opt_out(monkeypatch)
    for platform in ("gpu", "cuda", "tpu"):
        assert compile_options.step_compiler_options(_stub_mesh(platform)) is None


def test_unknown_option_is_reported_unsupported_not_raised():
    device = jax.devices("cpu")[0]
    assert not compile_options.options_supported(device, (("xla_cpu_no_such_option_iarn", "1"),))
    assert compile_options.options_supported(device, ())


def _train_step_run(history_len: int = 6, steps: int = 1):
    """(compiled train step, loss of the last of ``steps`` steps, parameters after them) on a batch of
    16 with histories of ``history_len``."""
    config = benchmark.model_config()
    mesh = make_mesh(jax.devices("cpu")[:1])
    model = IARN(config)
    train_config = TrainConfig(objective="rating", history_mode="full")
    tx = make_optimizer(train_config)
    host = benchmark.random_batch(np.random.default_rng(0), 16, history_len, config.n_users, config.n_items)
    params = jax.jit(lambda r, b: model.init(r, b)["params"])(jax.random.PRNGKey(0), host)
    state = create_train_state(params, tx, jax.random.PRNGKey(1), mesh)
    step = make_train_step(make_apply_fn(model), tx, mesh, loss_fn=make_loss_fn(model, config, train_config))
    batch = put_batch(host, mesh)
    cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__)))
    compiled = cells["compiled"].lower(state, batch, cells["constants"]).compile()
    for _ in range(steps):
        state, metrics = step(state, batch)
    return compiled, float(metrics["loss"]), jax.tree.map(np.asarray, state.params)


def test_train_step_is_compiled_with_the_options_and_keeps_its_numbers(monkeypatch):
    """The jit train step really compiles without YNNPACK fusions (XLA's default has them), and its
    loss equals the default-compiled step's to float rounding."""
    _no_opt_out(monkeypatch)
    compiled, loss, _ = _train_step_run()
    monkeypatch.setenv(compile_options.OPT_OUT_VARIABLE, "1")
    default_compiled, default_loss, _ = _train_step_run()
    assert "ynn_fusion" in default_compiled.as_text()  # what the option removes (if this fails, XLA changed its default)
    assert "ynn_fusion" not in compiled.as_text()
    np.testing.assert_allclose(loss, default_loss, rtol=1e-5)


def test_memory_optimised_schedule_needs_fewer_temporaries_and_gives_identical_numbers(monkeypatch):
    """The scheduler option only reorders the step: fewer temporary bytes (the default schedule
    creates later scans' zero-initialised buffers early), bitwise the same parameters after 3 steps."""
    _no_opt_out(monkeypatch)
    option = "xla_cpu_scheduler_type"
    assert compile_options.CPU_OPTIONS[option] == "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"
    compiled, loss, params = _train_step_run(history_len=12, steps=3)
    monkeypatch.setitem(compile_options.CPU_OPTIONS, option, "CPU_SCHEDULER_TYPE_DEFAULT")
    default_compiled, default_loss, default_params = _train_step_run(history_len=12, steps=3)
    temp, default_temp = (c.memory_analysis().temp_size_in_bytes for c in (compiled, default_compiled))
    assert temp < 0.9 * default_temp, (temp, default_temp)  # 2.6 vs 3.6 MiB with jaxlib 0.10.2
    assert loss == default_loss
    jax.tree.map(np.testing.assert_array_equal, params, default_params)
