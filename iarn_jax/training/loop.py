"""The training loop: the reference schedule, checkpoints, resume, progress and logs.

Typical use (also what ``python -m experiments.train`` does)::

    split = iarn_jax.data.protocols.load_protocol("ml100k", data_root)
    result = train(split, ModelConfig(variant="iarn"), TrainConfig(), workdir="runs/ml100k")
    preds = predict(result, split.test)

:func:`train` composes the pieces of ``iarn_jax.training``: ``input_pipeline`` (pair sets, batches,
negatives), ``runner`` (train steps over an epoch), ``evaluation`` (validation and final metrics),
``schedule`` (lr decay / early stopping) and ``run_state`` (checkpoints and resume). This module
also holds the model's initialisation (bias / factor starts), the loss and the log.
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
from typing import Any, Callable, Optional

import jax
import numpy as np
import pandas as pd

from iarn_jax.data import batching, histories
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.features import feature_data_for, feature_variables
from iarn_jax.models.iarn import IARN, initialize, model_variables
from iarn_jax.progress import Progress, bars_enabled, format_seconds
from iarn_jax.training import checkpoint, run_records, run_state, schedule as schedule_lib
from iarn_jax.training.config import TrainConfig
# Re-exported: other modules, launchers and tests import these names from loop.
from iarn_jax.training.evaluation import (Validator, gate_saturation, make_validator,  # noqa: F401
                                          predict_pairs, rating_metrics, score_pairs_with_negatives,
                                          validation_negatives)
from iarn_jax.training.input_pipeline import (PreparedData, eval_batches, make_negative_sampler,  # noqa: F401
                                              prefetch, prepare_data, with_negatives)
from iarn_jax.training.input_pipeline import local_rows as _local_rows  # noqa: F401
from iarn_jax.training.objectives import objective_loss
from iarn_jax.training.optimizer import get_learning_rate, make_optimizer, set_learning_rate
from iarn_jax.training.run_state import RunState
from iarn_jax.training.runner import StepRunner
from iarn_jax.training.step import create_train_state, make_apply_fn, make_eval_step, make_mesh, make_train_step

# Test hook: train() returns right after the checkpoint at or after this many steps, as an interrupted
# run would stop (tests set it with monkeypatch, then resume).
_STOP_AFTER_STEPS: Optional[int] = None


@dataclasses.dataclass
class TrainResult:
    """A trained model: its config, best parameters and measured metrics."""

    model_config: ModelConfig
    train_config: TrainConfig
    params: Any
    metrics: dict
    data: PreparedData
    workdir: Optional[pathlib.Path] = None

    @property
    def model(self) -> IARN:
        return build_model(self.model_config, self.data.split)

    @property
    def constants(self) -> dict:
        """The model's non-trainable variables (its feature tables; {} without an encoder)."""
        return model_constants(self.model_config, self.data.split)


def build_model(model_config: ModelConfig, split: ProtocolSplit) -> IARN:
    """IARN sized for the split's item features when the config reads them (a feature encoder or
    feature factors; the tables themselves are :func:`model_constants`)."""
    if not model_config.reads_item_features:
        return IARN(model_config)
    return IARN(model_config, n_features=feature_data_for(model_config, split.dataset).n_features)


def model_constants(model_config: ModelConfig, split: ProtocolSplit) -> dict:
    """The non-trainable variables ``IARN.apply`` reads next to the parameters: {} when the config
    reads no item features, else {"features": {"flat": [n_items, K], "paths": [n_items, P, L]}} (int32)."""
    if not model_config.reads_item_features:
        return {}
    return feature_variables(feature_data_for(model_config, split.dataset))


def complete_model_config(model_config: ModelConfig, split: ProtocolSplit) -> ModelConfig:
    """Fills the data-dependent fields (table sizes, global mean) from the split."""
    return dataclasses.replace(
        model_config,
        n_users=split.n_users,
        n_items=split.n_items,
        global_mean=float(split.train["rating"].mean()),
    )


def init_biases_from_baseline(params: Any, split: ProtocolSplit, model_config: ModelConfig, *,
                              tuned: bool = False) -> Any:
    """Sets the per-user / per-item bias parameters to the BaselineOnly ALS solution.

    The ALS fit uses split.train only (validation stays unseen). With a
    "global_user_item" model the global mean is the config's global_mean (the
    train mean), which is also the ALS mu, so the model starts at the bias-only
    predictor plus the towers' inner product.

    ``tuned``: its (reg_user, reg_item) chosen on the validation pairs (``BiasBaseline.select``,
    fitted on the training pairs). With ``feature_bias`` the fit has the same feature biases
    (``BiasBaseline(features=True)``), and the model's start is that hierarchical bias model.
    """
    from iarn_jax.models.baselines.bias import BiasBaseline

    train = split.train
    features = feature_data_for(model_config, split.dataset) if model_config.feature_bias else None
    base = BiasBaseline(features=features is not None, tuned=tuned)
    if tuned:
        base.select(split, item_features=None if features is None else features.flat)
    else:
        base.fit_arrays(train["user"].to_numpy(), train["item"].to_numpy(), train["rating"].to_numpy(np.float64),
                        split.n_users, split.n_items, item_features=None if features is None else features.flat)
    # Without a global term ("user_item"), each side carries half of mu, as the
    # reference code initialises each bias to half the entity's mean rating.
    half_mu = 0.0 if model_config.bias == "global_user_item" else base.mu / 2
    params = dict(params)
    for tower, values in (("user_tower", base.b_user + half_mu), ("item_tower", base.b_item + half_mu)):
        side = dict(params[tower])
        side["entity_bias"] = jax.numpy.asarray(values, side["entity_bias"].dtype)
        if tower == "item_tower" and features is not None:  # ids beyond the data's largest: 0
            feature_bias = np.zeros(side["feature_bias"].shape)
            feature_bias[: base.feature_bias.size] = base.feature_bias
            side["feature_bias"] = jax.numpy.asarray(feature_bias, side["feature_bias"].dtype)
        params[tower] = side
    return params


def factor_penalty(params: Any, batch: dict) -> jax.Array:
    """Weighted mean over the batch's positives of ||p_u||^2 + ||q_i||^2 (+ the mean ||q_j||^2 of its
    sampled negatives): the per-example L2 of SGD matrix factorisation."""
    jnp = jax.numpy
    p = jnp.take(params["user_tower"]["stationary_factor"], batch["user"], axis=0)
    q = jnp.take(params["item_tower"]["stationary_factor"], batch["item"], axis=0)
    per = jnp.sum(p**2, -1) + jnp.sum(q**2, -1)
    if "neg_item" in batch:
        b = batch["user"].shape[0]
        qn = jnp.take(params["item_tower"]["stationary_factor"], batch["neg_item"], axis=0)
        per = per + jnp.mean(jnp.sum(qn**2, -1).reshape(b, -1), axis=1)
    weight = batch["weight"]
    return jnp.sum(weight * per) / jnp.maximum(jnp.sum(weight), 1.0)


def make_loss_fn(model: IARN, model_config: ModelConfig, cfg: TrainConfig) -> Callable:
    """loss(params, batch, dropout_rng, constants=None) of ``cfg.objective`` (+ the stationary factors'
    L2); ``constants``: the model's feature tables (see :func:`model_constants`)."""
    offset = model_config.global_mean if model_config.bias == "global_user_item" else 0.0

    def loss_fn(params, batch, dropout_rng, constants=None):
        rngs, variables = {"dropout": dropout_rng}, model_variables(params, constants)
        if cfg.uses_negatives:
            positive, negative, _ = model.apply(variables, batch, deterministic=False, rngs=rngs,
                                                method=IARN.score_with_negatives)
        else:
            (positive, _), negative = model.apply(variables, batch, deterministic=False, rngs=rngs), None
        loss = objective_loss(cfg.objective, positive, negative, batch, loss=cfg.ranking_loss,
                              joint_weight=cfg.joint_weight, offset=offset)
        if model_config.stationary_dim and cfg.factor_l2:
            loss = loss + cfg.factor_l2 * factor_penalty(params, batch)
        return loss

    return loss_fn


def _set_factors(params: Any, user_factors, item_factors, user_bias=None, item_bias=None) -> Any:
    params = dict(params)
    for tower, factors, bias in (("user_tower", user_factors, user_bias), ("item_tower", item_factors, item_bias)):
        side = dict(params[tower])
        side["stationary_factor"] = jax.numpy.asarray(factors, side["stationary_factor"].dtype)
        if bias is not None and "entity_bias" in side:
            side["entity_bias"] = jax.numpy.asarray(bias, side["entity_bias"].dtype)
            if "feature_bias" in side:  # the baseline's biases alone: start exactly at its predictions
                side["feature_bias"] = jax.numpy.zeros_like(side["feature_bias"])
        params[tower] = side
    return params


def _fit_factor_baseline(name: str, split: ProtocolSplit, dim: int, seed: int):
    """The tuned factor baseline ``name`` ("mf", "bpr", "hievh") with ``dim`` factors, trained on the
    training pairs only (selected on validation, no refit on train + validation), and its weights
    {"user_factors", "item_factors", "user_bias" (not BPR), "item_bias"} as NumPy arrays."""
    from iarn_jax.models.baselines.bpr import BPR
    from iarn_jax.models.baselines.hievh import HieVH
    from iarn_jax.models.baselines.mf import MF

    if name == "hievh":  # r = mu + b_u + (b_i + cb_i) + p_u . (v_i + h_i): exported with q_i = v_i + h_i
        baseline = HieVH(dim=dim, refit=False).fit(split, seed=seed, verbose=False)
        exported = baseline.params_
        weights = {"user_factors": exported["user"], "item_factors": exported["item"],
                   "user_bias": exported["user_bias"], "item_bias": exported["item_bias"]}
    else:
        baseline = (BPR if name == "bpr" else MF)(factors=dim).fit(split, seed=seed, verbose=False)
        weights = baseline.params
    return baseline, {k: np.asarray(v) for k, v in weights.items()}


def init_from_factor_baseline(params: Any, split: ProtocolSplit, model_config: ModelConfig, objective: str,
                              seed: int = 0, baseline_name: Optional[str] = None) -> tuple[Any, dict]:
    """Starts the model *at* one of the project's tuned factor baselines: by default the objective's,
    MF (``rating``, ``joint``: b_u, b_i, p_u, q_i) or BPR (``ranking``: b_i, p_u, q_i); or
    ``baseline_name`` = "hievh" (HieVH's item factors and biases with its category parts folded in).
    Each has S factors, its own validation grid and early stopping. The item tower's head starts at 0,
    so <u~, v~> = 0 and the first prediction is the baseline's exactly; the recurrent towers learn
    the residual. Returns (params, {"factor_init": "mf" | "bpr" | "hievh", "factor_init_val_rmse"
    (rating baselines)})."""
    ranking = objective == "ranking"
    name = baseline_name or ("bpr" if ranking else "mf")
    baseline, weights = _fit_factor_baseline(name, split, model_config.stationary_dim, seed)
    with_bias = model_config.bias != "none"
    user_bias = None if ranking or not with_bias else weights["user_bias"]
    if ranking and with_bias:  # BPR has no user bias (it cancels in a user's ranking)
        user_bias = np.zeros(split.n_users, np.float32)
    params = _set_factors(params, weights["user_factors"], weights["item_factors"], user_bias,
                          weights["item_bias"] if with_bias else None)
    item = dict(params["item_tower"])
    item["head_kernel"] = jax.numpy.zeros_like(item["head_kernel"])
    item["head_bias"] = jax.numpy.zeros_like(item["head_bias"])
    params["item_tower"] = item
    info = {"factor_init": name}
    if name != "bpr":
        val = split.val
        pred = baseline.predict(val["user"].to_numpy(np.int64), val["item"].to_numpy(np.int64))
        info["factor_init_val_rmse"] = rating_metrics(np.asarray(pred), val["rating"].to_numpy(),
                                                      split.rating_scale)["rmse"]
    return params, info


def init_factors_from_mf(params: Any, split: ProtocolSplit, model_config: ModelConfig, regs=(0.03, 0.1, 0.3, 1.0),
                         iterations: int = 12, seed: int = 0) -> tuple[Any, dict]:
    """Sets the stationary factors p_u, q_i to an ALS factorisation of the training residuals
    r - mu - b_u - b_i (the BaselineOnly biases), with the ALS-WR ridge ``reg * n_ratings`` chosen on the
    validation split. Returns (params, {"factor_init_reg", "factor_init_val_rmse"})."""
    from iarn_jax.models.baselines.bias import BiasBaseline

    train, val = split.train, split.val
    users, items = train["user"].to_numpy(np.int64), train["item"].to_numpy(np.int64)
    ratings = train["rating"].to_numpy(np.float64)
    base = BiasBaseline().fit_arrays(users, items, ratings, split.n_users, split.n_items)
    residual = ratings - (base.mu + base.b_user[users] + base.b_item[items])
    vu, vi = val["user"].to_numpy(np.int64), val["item"].to_numpy(np.int64)
    val_base = base.mu + base.b_user[vu] + base.b_item[vi]
    lo, hi = split.rating_scale
    S = model_config.stationary_dim

    from scipy import sparse

    def solve(rows, cols, n_rows, fixed, reg):
        # per row: (F^T F + reg * n * I) x = F^T r over the row's ratings. With the indicator matrix M
        # [n_rows, n_cols] and each column's outer product f f^T flattened [n_cols, S*S], the Gram
        # matrices are one sparse product M @ outer (n_ratings * S^2 multiply-adds).
        n_cols = fixed.shape[0]
        indicator = sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_rows, n_cols))
        weighted = sparse.csr_matrix((residual, (rows, cols)), shape=(n_rows, n_cols))
        A = (indicator @ (fixed[:, :, None] * fixed[:, None, :]).reshape(n_cols, S * S)).reshape(n_rows, S, S)
        b = weighted @ fixed
        counts = np.bincount(rows, minlength=n_rows)
        A += (reg * np.maximum(counts, 1))[:, None, None] * np.eye(S)[None]
        return np.linalg.solve(A, b[..., None])[..., 0]

    best = (math.inf, None, None, None)
    for reg in regs:
        rng = np.random.default_rng(seed)
        q = rng.normal(0, 0.1, (split.n_items, S))
        for _ in range(iterations):
            p = solve(users, items, split.n_users, q, reg)
            q = solve(items, users, split.n_items, p, reg)
        pred = np.clip(val_base + np.sum(p[vu] * q[vi], axis=1), lo, hi)
        rmse = float(np.sqrt(np.mean((pred - val["rating"].to_numpy(np.float64)) ** 2)))
        if rmse < best[0]:
            best = (rmse, reg, p, q)
    rmse, reg, p, q = best
    return _set_factors(params, p, q), {"factor_init": "als", "factor_init_reg": reg, "factor_init_val_rmse": rmse}


class _Logger:
    """Prints progress and appends the same records to workdir/log.jsonl.

    On a terminal (see :mod:`iarn_jax.progress`) a bar over the run's step budget shows the epoch,
    the loss and an ETA (an upper bound: early stopping may end the run sooner); the periodic
    "train" lines then go into the bar and the other lines are printed above it.
    """

    def __init__(self, workdir: Optional[pathlib.Path], verbose: bool):
        self.path = workdir / "log.jsonl" if workdir is not None else None
        self.verbose = verbose and jax.process_index() == 0
        self.bar: Optional[Progress] = None
        self.resumed_step, self.total_steps, self.started = 0, 0, time.time()

    def __call__(self, record: dict, text: str) -> None:
        if self.verbose:
            self._show(record, text)
        if self.path is not None and jax.process_index() == 0:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")

    def _show(self, record: dict, text: str) -> None:
        event = record.get("event")
        if event == "resume":
            self.resumed_step = int(record["step"])
        if event == "start":
            self.total_steps, self.started = int(record.get("total_steps") or 0), time.time()
            if bars_enabled() and self.total_steps:
                self.bar = Progress(self.total_steps, label="train", unit="steps")
                self.bar.update(self.resumed_step)
        if self.bar is None:
            if event == "train" and self.total_steps:  # plain line + the step budget's ETA
                done = int(record["step"]) - self.resumed_step
                left = max(self.total_steps - int(record["step"]), 0)
                eta = (time.time() - self.started) / max(done, 1) * left
                text += f" | {record['step']}/{self.total_steps} steps, ETA <= {format_seconds(eta)}"
            print(text, flush=True)
            return
        if event in ("train", "eval"):
            self.bar.set_description(f"epoch {record['epoch']}")
            value = [f"{key} {record[key]:.4f}" for key in ("loss", "val_rmse") if key in record]
            self.bar.update(int(record["step"]), postfix=value[0] if value else None)
        if event != "train":
            self.bar.write(text)
        if event == "done":
            self.bar.close()
            self.bar = None



def init_params(model: IARN, split: ProtocolSplit, data: PreparedData, cfg: TrainConfig,
                rng: jax.Array, constants: Optional[dict] = None) -> tuple[Any, dict]:
    """Initial parameters: Flax init on the first training batch (reading the feature tables
    ``constants``), then the configured bias and factor starts (``cfg.bias_init``,
    ``cfg.factor_init``). Returns (params, factor_info: {} or the factor start's record, e.g.
    {"factor_init": "mf", "factor_init_val_rmse": ...})."""
    model_config = model.config
    first = batching.materialize(
        batching.make_batch_plan(data.train, cfg.batch_size, seed=cfg.seed, epoch=0,
                                 bucket_lengths=cfg.bucket_lengths, max_len=cfg.max_len)[0],
        data.train, data.user_histories, data.item_histories, max_len=cfg.max_len, recency=data.recency,
    )
    params = jax.jit(lambda r, b, c: initialize(model, r, b, c, deterministic=True))(rng, first, constants or {})
    if model_config.bias != "none" and cfg.bias_init in ("baseline", "tuned"):
        params = init_biases_from_baseline(params, split, model_config, tuned=cfg.bias_init == "tuned")
    baseline = {"baseline": "mf" if cfg.objective in ("rating", "joint") else None,
                "hievh": "hievh" if cfg.objective != "ranking" else None,
                "bpr": "bpr" if cfg.objective == "ranking" else None}.get(cfg.factor_init)
    if model_config.stationary_dim and baseline:
        return init_from_factor_baseline(params, split, model_config, cfg.objective, seed=cfg.seed,
                                         baseline_name=baseline)
    if model_config.stationary_dim and cfg.factor_init == "als":
        return init_factors_from_mf(params, split, model_config, seed=cfg.seed)
    return params, {}


def train(
    split: ProtocolSplit,
    model_config: ModelConfig = ModelConfig(),
    train_config: TrainConfig = TrainConfig(),
    *,
    workdir: Optional[str | pathlib.Path] = None,
    resume: bool = False,
    verbose: bool = True,
    data: Optional[PreparedData] = None,
    devices: Optional[list] = None,
    overwrite: bool = False,
) -> TrainResult:
    """Trains a model on split.train with early stopping on split.val; scores split.test.

    workdir: where checkpoints (orbax), log.jsonl and results.json go (None = in
      memory only, no resume).
    resume: continue from workdir's latest checkpoint; with the same seed and
      configs the result equals an uninterrupted run.
    overwrite: replace a run already in workdir (without it, or resume, a workdir
      holding a run is refused; see iarn_jax.training.run_records).
    """
    start_wall = time.time()
    cfg = train_config
    model_config = complete_model_config(model_config, split)
    data = (data if data is not None else prepare_data(split, cfg.history_mode)).with_recency(
        model_config.recency_windows)
    if len(data.train.user) == 0 or len(data.val.user) == 0:
        raise ValueError(f"protocol {split.name!r}: empty training or validation split")
    workdir = pathlib.Path(workdir) if workdir is not None else None
    ckpt_dir = run_state.open_workdir(workdir, split, model_config, cfg, resume=resume, overwrite=overwrite)
    log = _Logger(workdir, verbose)

    mesh = make_mesh(devices)
    if cfg.batch_size % mesh.devices.size or cfg.eval_batch_size % mesh.devices.size:
        raise ValueError(f"batch sizes ({cfg.batch_size}, {cfg.eval_batch_size}) must divide over "
                         f"{mesh.devices.size} devices")
    model, constants = build_model(model_config, split), model_constants(model_config, split)
    tx = make_optimizer(cfg)
    init_rng, dropout_rng = jax.random.split(jax.random.PRNGKey(cfg.seed))
    params, factor_info = init_params(model, split, data, cfg, init_rng, constants)
    state = create_train_state(params, tx, dropout_rng, mesh)
    sampler = make_negative_sampler(data, cfg) if (cfg.uses_negatives or cfg.selection_metric == "auc") else None
    validator = make_validator(model, data, cfg, mesh, sampler, constants)
    run = RunState(state, _copy(state.params))
    restored = run_state.restore(ckpt_dir, run) if resume else None
    if restored is not None:
        run, step = restored
        log({"event": "resume", "step": step},
            f"resumed from step {step} (epoch {run.position.epoch}, batch {run.position.batch})")
    train_step = make_train_step(make_apply_fn(model), tx, mesh, make_loss_fn(model, model_config, cfg), constants)
    runner = StepRunner(train_step, data, cfg, mesh, log, sampler, step=int(run.state.step))
    eval_every = cfg.eval_every or _steps_per_epoch(data, cfg)
    _log_start(log, data, cfg, model_config, mesh)
    session_start = time.time() - run.position.elapsed

    if factor_info and run.schedule.evals == 0:  # the MF start is a candidate: never end worse than it
        metrics, _ = _validate(run, validator, 0, cfg, ckpt_dir)
        log({"event": "eval", "step": 0, **{f"val_{k}": v for k, v in metrics.items()}, **factor_info},
            f"  eval step 0 (started at {factor_info['factor_init'].upper()}): "
            + "  ".join(f"val {k.upper()} {v:.4f}" for k, v in metrics.items()))
    while not run.schedule.done:
        if run.position.epoch >= cfg.max_epochs:
            run.schedule = run.schedule.stopped("max_epochs")
            break
        try:
            for step in runner.run_epoch(run):
                if step % eval_every == 0 or step >= cfg.max_steps:
                    with runner.paused(run.position):  # evaluation and checkpoints are not train-step time
                        metrics, lr = _validate(run, validator, step, cfg, ckpt_dir)
                        run.position.elapsed = time.time() - session_start
                        _log_eval(log, run, metrics, step, lr, cfg.selection_metric)
                        run.schedule = schedule_lib.after_budget(run.schedule, step, run.position.elapsed, cfg)
                        if cfg.checkpoint_every_eval:
                            run_state.save(ckpt_dir, step, run)
                        if _STOP_AFTER_STEPS is not None and step >= _STOP_AFTER_STEPS:
                            return TrainResult(model_config, cfg, run.best_params, {"interrupted_at": step}, data,
                                               workdir)
                if run.schedule.done:
                    break
            else:
                run.position.next_epoch()
        except FloatingPointError as error:  # a diverged loss or validation metric
            _recover_from_divergence(run, error, tx, mesh, cfg, log, runner.step)
    runner.drain(run.position)
    if run.schedule.evals == 0:  # never evaluated (tiny runs): the last parameters are the best
        _validate(run, validator, runner.step, cfg, ckpt_dir)

    metrics = _final_metrics(run, validator, split, cfg, factor_info, wall=time.time() - start_wall)
    if ckpt_dir is not None:
        checkpoint.save_params(ckpt_dir / "best", run.best_params)
        checkpoint.write_json_atomic(workdir / "results.json", metrics)
    _log_done(log, metrics, validator.rates, model_config.gated)
    return TrainResult(model_config, cfg, run.best_params, metrics, data, workdir)


def _validate(run: RunState, validator: Validator, step: int, cfg: TrainConfig,
              ckpt_dir: Optional[pathlib.Path]) -> tuple[dict, float]:
    """Validates ``run.state.params`` at ``step`` and applies the schedule to ``run``: the best
    parameters are kept, or the learning rate decays and the state goes back to them.
    Returns (validation metrics, the learning rate to continue at)."""
    metrics = validator.metrics(run.state.params)
    value = run_records.check_finite_metric(metrics[cfg.selection_metric], step, ckpt_dir)  # NaN/inf: stop
    run.schedule, decision = schedule_lib.after_validation(run.schedule, value, step, cfg,
                                                           get_learning_rate(run.state.opt_state))
    if decision.improved:
        run.best_params = _copy(run.state.params)  # state buffers are donated next step
    elif decision.decayed:
        run.state = run.state.replace(params=_copy(run.best_params),
                                      opt_state=set_learning_rate(run.state.opt_state, decision.learning_rate))
    return metrics, decision.learning_rate


def _recover_from_divergence(run: RunState, error: FloatingPointError, tx, mesh, cfg: TrainConfig,
                             log: "_Logger", step: int) -> None:
    """Sends a diverged run back to its best parameters with a fresh optimiser state (the moments may
    hold the overflow) at the learning rate times ``cfg.lr_decay``; the run then continues with the
    next batch. Re-raises ``error`` once ``cfg.divergence_retries`` recoveries are used up or the
    learning rate would fall below ``cfg.min_learning_rate``."""
    learning_rate = get_learning_rate(run.state.opt_state) * cfg.lr_decay
    if run.schedule.recoveries >= cfg.divergence_retries or learning_rate < cfg.min_learning_rate:
        if cfg.divergence_retries:
            raise type(error)(f"{error} (after {run.schedule.recoveries} of {cfg.divergence_retries} "
                              "divergence retries)") from error
        raise error
    fresh = create_train_state(run.best_params, tx, run.state.rng, mesh)
    run.state = fresh.replace(step=run.state.step, opt_state=set_learning_rate(fresh.opt_state, learning_rate))
    run.schedule = dataclasses.replace(run.schedule, recoveries=run.schedule.recoveries + 1, decay_bad=0)
    log({"event": "recover", "step": step, "error": str(error), "learning_rate": learning_rate,
         "best_step": run.schedule.best_step, "recoveries": run.schedule.recoveries},
        f"  {error}: back to the best parameters (step {run.schedule.best_step}) with a fresh optimiser state, "
        f"lr {learning_rate:.2e} (recovery {run.schedule.recoveries} of {cfg.divergence_retries})")


def _final_metrics(run: RunState, validator: Validator, split: ProtocolSplit, cfg: TrainConfig,
                   factor_info: dict, wall: float) -> dict:
    """results.json: the best parameters' test / val numbers and the run's record."""
    final = validator.final_metrics(run.best_params)
    n_train, position = len(validator.data.train.user), run.position
    metrics = {
        "protocol": split.name,
        "model": validator.model.config.variant,
        "seed": cfg.seed,
        "history_mode": cfg.history_mode,
        "test_rmse": final["test_rmse"],
        "test_mae": final["test_mae"],
        "val_rmse": final["val_rmse"],
        "n_train": n_train,
        "n_val": len(validator.data.val.user),
        "n_test": len(validator.data.test.user),
        "steps": int(run.state.step),
        "epochs": position.examples / n_train,
        "stop_reason": run.schedule.reason,
        "divergence_recoveries": run.schedule.recoveries,
        "wall_seconds": wall,
        "train_examples_per_second": position.examples / max(position.train_seconds, 1e-9),
        "devices": validator.mesh.devices.size,
        "params": int(sum(leaf.size for leaf in jax.tree.leaves(run.best_params))),
        "objective": cfg.objective,
        "selection_metric": cfg.selection_metric,
        **({"val_auc_sampled": final["val_auc_sampled"]} if "val_auc_sampled" in final else {}),
        **factor_info,
    }
    return {**metrics, **{k: v for k, v in final.items() if k.endswith("_gates_saturated")}}


def _steps_per_epoch(data: PreparedData, cfg: TrainConfig) -> int:
    return -(-len(data.train.user) // cfg.batch_size)


def _log_start(log: "_Logger", data: PreparedData, cfg: TrainConfig, model_config: ModelConfig, mesh) -> None:
    n_train, n_val, n_test, n_dev = len(data.train.user), len(data.val.user), len(data.test.user), mesh.devices.size
    per_epoch = _steps_per_epoch(data, cfg)
    log({"event": "start", "n_train": n_train, "n_val": n_val, "n_test": n_test, "devices": n_dev,
         "model": model_config.variant, "steps_per_epoch": per_epoch,
         "total_steps": min(cfg.max_steps, cfg.max_epochs * per_epoch)},
        f"training {model_config.variant} on {data.split.name}: {n_train} train / {n_val} val / {n_test} test pairs, "
        f"batch {cfg.batch_size}, {per_epoch} steps/epoch, {n_dev} device(s), history={cfg.history_mode}")


def _log_eval(log: "_Logger", run: RunState, metrics: dict, step: int, lr: float, metric: str) -> None:
    shown = "  ".join(f"val {k.upper()} {v:.4f}" for k, v in metrics.items())
    best = abs(run.schedule.best_val)
    log({"event": "eval", "epoch": run.position.epoch, "step": step, **{f"val_{k}": v for k, v in metrics.items()},
         f"best_val_{metric}": best, "learning_rate": lr},
        f"  eval step {step}: {shown} (best {metric.upper()} {best:.4f} @ {run.schedule.best_step}), lr {lr:.2e}")


def _log_done(log: "_Logger", metrics: dict, rates: bool, gated: bool) -> None:
    summary = (f"test RMSE {metrics['test_rmse']:.4f} MAE {metrics['test_mae']:.4f}, val RMSE {metrics['val_rmse']:.4f}"
               if rates else f"val AUC (sampled) {metrics['val_auc_sampled']:.4f}")
    if gated:
        summary += (f", saturated gates user {metrics['user_gates_saturated']:.0%} "
                    f"item {metrics['item_gates_saturated']:.0%}")
    log({"event": "done", **metrics}, f"done ({metrics['stop_reason']}): {summary}, {metrics['wall_seconds']:.0f}s")


def _copy(tree: Any) -> Any:
    """A copy of a pytree of arrays that survives donation of the original."""
    return jax.tree_util.tree_map(lambda x: x.copy(), tree)


def predict(result: TrainResult, pairs_df: pd.DataFrame, *, history_mode: str = "full") -> np.ndarray:
    """Unclipped predicted ratings [N] for the (user, item) rows of pairs_df.

    Histories are the training-period histories of result.data; pairs see the
    whole training history (history_mode="full"), as test pairs do.
    """
    data = result.data
    pairs = histories.make_pairs(pairs_df, data.user_histories, data.item_histories, mode=history_mode)
    mesh = make_mesh()
    eval_step = make_eval_step(make_apply_fn(result.model), mesh, result.constants)
    return predict_pairs(eval_step, result.params, pairs, data, result.train_config, mesh)
