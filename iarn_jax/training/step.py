"""Train state and the jit-compiled, sharding-ready train and eval steps.

One 1-D device mesh with axis "data": batches are sharded on their leading
axis, parameters and optimiser state are replicated, and the train state buffers
are donated. The same code runs on one CPU, one GPU or many devices (and hosts).

``constants``: the model's non-trainable variable collections ({} or the ``"features"`` tables of
``iarn_jax.models.features.feature_variables``). Each step builder takes them once; they enter the
compiled step as a (replicated) argument at every call, never as constants baked into the code.

Every step is compiled with ``compile_options.step_compiler_options(mesh)`` (on CPU: XLA's own dots
instead of YNNPACK fusions and the memory-optimised scheduler; none elsewhere).
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from iarn_jax.training.compile_options import step_compiler_options
from iarn_jax.training.objectives import weighted_mse  # noqa: F401  (re-exported)

DATA_AXIS = "data"
Batch = Mapping[str, Any]
Constants = Mapping[str, Any]


@flax.struct.dataclass
class TrainState:
    """Everything a train step updates. step: int32 scalar; rng: base PRNG key."""

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array


def create_train_state(params: Any, tx: optax.GradientTransformation, rng: jax.Array,
                       mesh: Optional[Mesh] = None) -> TrainState:
    """A fresh train state with every leaf in its own buffer (safe to donate), replicated on `mesh`.

    optax may initialise several state leaves from one shared constant buffer;
    donating the state would then donate that buffer twice, so each leaf is copied.
    """
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
    state = jax.tree_util.tree_map(lambda x: jnp.array(x, copy=True), state)
    if mesh is not None:
        state = jax.device_put(state, replicated(mesh))
    return state


def make_mesh(devices: Optional[list] = None) -> Mesh:
    """A 1-D data-parallel mesh over the given (default: all global) devices."""
    devices = list(jax.devices()) if devices is None else list(devices)
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def make_apply_fn(model) -> Callable:
    """apply_fn(params, batch, deterministic, rngs, constants=None) -> (pred [B], aux) of a Flax model
    (the steps' form); ``constants`` are the model's non-trainable collections."""
    def apply_fn(params, batch, deterministic, rngs, constants=None):
        return model.apply({"params": params, **(constants or {})}, batch, deterministic=deterministic, rngs=rngs)

    return apply_fn


def _with_constants(compiled: Callable, constants: Optional[Constants], mesh: Mesh) -> Callable:
    """fn(a, batch) -> compiled(a, batch, constants): the constants, placed once (replicated), are an
    argument of every call."""
    constants = jax.device_put(dict(constants or {}), replicated(mesh))

    def call(first, batch):
        return compiled(first, batch, constants)

    return call


def make_train_step(apply_fn: Callable, tx: optax.GradientTransformation, mesh: Mesh,
                    loss_fn: Optional[Callable] = None, constants: Optional[Constants] = None):
    """Builds the jit-compiled train step.

    apply_fn(params, batch, deterministic, rngs, constants) -> (pred [B], aux).
    loss_fn(params, batch, dropout_rng, constants) -> scalar loss; default: the weighted MSE of
      apply_fn's predictions against batch["rating"] (the rating objective).
    constants: the model's non-trainable collections (see the module doc); default none.
    Returns step(state, batch) -> (state, metrics) with metrics {"loss", "n"}.
    The RNG for dropout is fold_in(state.rng, state.step), so a resumed run draws
    the same masks as an uninterrupted one.
    """
    if loss_fn is None:
        def loss_fn(params, batch, dropout_rng, constants):
            pred, _ = apply_fn(params, batch, False, {"dropout": dropout_rng}, constants)
            return weighted_mse(pred, batch["rating"], batch["weight"])

    def train_step(state: TrainState, batch: Batch, constants: Constants):
        dropout_rng = jax.random.fold_in(state.rng, state.step)
        loss, grads = jax.value_and_grad(loss_fn)(state.params, batch, dropout_rng, constants)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
        return new_state, {"loss": loss, "n": jnp.sum(batch["weight"])}

    rep, shard = replicated(mesh), data_sharded(mesh)
    compiled = jax.jit(
        train_step,
        in_shardings=(rep, shard, rep),
        out_shardings=(rep, rep),
        donate_argnums=(0,),
        compiler_options=step_compiler_options(mesh),
    )
    return _with_constants(compiled, constants, mesh)


def make_eval_step(apply_fn: Callable, mesh: Mesh, constants: Optional[Constants] = None):
    """jit-compiled prediction step: (params, batch) -> pred [B] (dropout off)."""

    def eval_step(params, batch: Batch, constants: Constants):
        pred, _ = apply_fn(params, batch, True, None, constants)
        return pred.astype(jnp.float32)

    rep = replicated(mesh)
    compiled = jax.jit(eval_step, in_shardings=(rep, data_sharded(mesh), rep), out_shardings=rep,
                       compiler_options=step_compiler_options(mesh))
    return _with_constants(compiled, constants, mesh)


def gate_statistics(batch: Batch, aux: dict, low: float = 0.01, high: float = 0.99) -> jax.Array:
    """[2, 2] float32: per side (user, item), the number of valid history steps of real examples whose
    gate is saturated (< low or > high), and the number of valid steps of real examples."""
    rows = []
    for side in ("user", "item"):
        valid = batch[f"{side}_history_mask"] & (batch["weight"][:, None] > 0)
        gates = aux[f"{side}_gates"]
        saturated = valid & ((gates < low) | (gates > high))
        rows.append(jnp.stack([jnp.sum(saturated), jnp.sum(valid)]).astype(jnp.float32))
    return jnp.stack(rows)


def make_gate_stats_step(apply_fn: Callable, mesh: Mesh, low: float = 0.01, high: float = 0.99,
                         constants: Optional[Constants] = None):
    """jit-compiled (params, batch) -> :func:`gate_statistics` [2, 2] of the batch (dropout off)."""

    def stats(params, batch: Batch, constants: Constants):
        _, aux = apply_fn(params, batch, True, None, constants)
        return gate_statistics(batch, aux, low, high)

    rep = replicated(mesh)
    compiled = jax.jit(stats, in_shardings=(rep, data_sharded(mesh), rep), out_shardings=rep,
                       compiler_options=step_compiler_options(mesh))
    return _with_constants(compiled, constants, mesh)


def make_eval_with_gate_stats_step(apply_fn: Callable, mesh: Mesh, low: float = 0.01, high: float = 0.99,
                                   constants: Optional[Constants] = None):
    """jit-compiled (params, batch) -> (pred [B], :func:`gate_statistics` [2, 2]) from ONE forward pass
    (dropout off): the final test pass compiles one program per batch shape instead of two."""

    def eval_step(params, batch: Batch, constants: Constants):
        pred, aux = apply_fn(params, batch, True, None, constants)
        return pred.astype(jnp.float32), gate_statistics(batch, aux, low, high)

    rep = replicated(mesh)
    compiled = jax.jit(eval_step, in_shardings=(rep, data_sharded(mesh), rep), out_shardings=(rep, rep),
                       compiler_options=step_compiler_options(mesh))
    return _with_constants(compiled, constants, mesh)


def make_negative_eval_step(score_fn: Callable, mesh: Mesh, constants: Optional[Constants] = None):
    """jit-compiled (params, batch with negatives) -> (positive [B], negative [B, k]) scores, dropout off.

    score_fn(params, batch, constants) -> (positive, negative)."""

    def eval_step(params, batch: Batch, constants: Constants):
        positive, negative = score_fn(params, batch, constants)
        return positive.astype(jnp.float32), negative.astype(jnp.float32)

    rep = replicated(mesh)
    compiled = jax.jit(eval_step, in_shardings=(rep, data_sharded(mesh), rep), out_shardings=rep,
                       compiler_options=step_compiler_options(mesh))
    return _with_constants(compiled, constants, mesh)


def put_batch(batch: Batch, mesh: Mesh) -> dict:
    """Places a host batch on the mesh, sharded on the leading axis.

    With several processes each process passes its own shard of the global batch
    (rows process_index::process_count of the plan); the global array is assembled
    with jax.make_array_from_process_local_data.
    """
    sharding = data_sharded(mesh)
    if jax.process_count() == 1:
        return {k: jax.device_put(v, sharding) for k, v in batch.items()}
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}
