"""The training loop: the reference schedule, checkpoints, resume, progress and logs.

Typical use (also what ``python -m experiments.train`` does)::

    split = iarn_jax.data.protocols.load_protocol("ml100k", data_root)
    result = train(split, ModelConfig(variant="iarn"), TrainConfig(), workdir="runs/ml100k")
    preds = predict(result, split.test)
"""
from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import queue
import threading
import time
from typing import Any, Callable, Iterable, Iterator, Optional

import jax
import numpy as np
import pandas as pd

from iarn_jax.data import batching, histories
from iarn_jax.data.negatives import NegativeSampler, materialize_negatives, negative_rng
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN
from iarn_jax.progress import Progress, bars_enabled, format_seconds
from iarn_jax.training import checkpoint, run_records
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.optimizer import get_learning_rate, make_optimizer, set_learning_rate
from iarn_jax.training.objectives import objective_loss, sampled_auc
from iarn_jax.training.step import (create_train_state, make_eval_step, make_gate_stats_step, make_mesh,
                                    make_negative_eval_step, make_train_step, put_batch)


@dataclasses.dataclass
class PreparedData:
    """Histories and pair sets of one split, ready for batching."""

    split: ProtocolSplit
    user_histories: Any
    item_histories: Any
    train: Any
    val: Any
    test: Any
    history_mode: str


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


def build_model(model_config: ModelConfig, split: ProtocolSplit) -> IARN:
    """IARN with the split's item features when the config names a feature encoder."""
    if model_config.feature_encoder is None:
        return IARN(model_config)
    from iarn_jax.models.features import feature_data_for

    return IARN(model_config, feature_data=feature_data_for(model_config, split.dataset))


def prepare_data(split: ProtocolSplit, history_mode: str = "full") -> PreparedData:
    """Builds CSR histories from the split's training-period interactions and the pair sets.

    Training pairs see their history in `history_mode`; validation pairs too (they
    are training-period interactions); test pairs always see the whole training
    history.
    """
    uh, ih = histories.build_histories(split.history, split.n_users, split.n_items)
    # "full_without_self" pairs record their own step like "full"; the batcher then drops it
    pair_mode = "full" if history_mode == "full_without_self" else history_mode
    return PreparedData(
        split=split,
        user_histories=uh,
        item_histories=ih,
        train=histories.make_pairs(split.train, uh, ih, mode=pair_mode),
        val=histories.make_pairs(split.val, uh, ih, mode=pair_mode),
        test=histories.make_pairs(split.test, uh, ih, mode="full"),
        history_mode=history_mode,
    )


def complete_model_config(model_config: ModelConfig, split: ProtocolSplit) -> ModelConfig:
    """Fills the data-dependent fields (table sizes, global mean) from the split."""
    return dataclasses.replace(
        model_config,
        n_users=split.n_users,
        n_items=split.n_items,
        global_mean=float(split.train["rating"].mean()),
    )


def init_biases_from_baseline(params: Any, split: ProtocolSplit, model_config: ModelConfig) -> Any:
    """Sets the per-user / per-item bias parameters to the BaselineOnly ALS solution.

    The ALS fit uses split.train only (validation stays unseen). With a
    "global_user_item" model the global mean is the config's global_mean (the
    train mean), which is also the ALS mu, so the model starts at the bias-only
    predictor plus the towers' inner product.
    """
    from iarn_jax.models.baselines.bias import BiasBaseline

    train = split.train
    base = BiasBaseline().fit_arrays(train["user"].to_numpy(), train["item"].to_numpy(),
                                     train["rating"].to_numpy(np.float64), split.n_users, split.n_items)
    # Without a global term ("user_item"), each side carries half of mu, as the
    # reference code initialises each bias to half the entity's mean rating.
    half_mu = 0.0 if model_config.bias == "global_user_item" else base.mu / 2
    params = dict(params)
    for tower, values in (("user_tower", base.b_user + half_mu), ("item_tower", base.b_item + half_mu)):
        side = dict(params[tower])
        side["entity_bias"] = jax.numpy.asarray(values, side["entity_bias"].dtype)
        params[tower] = side
    return params


def make_apply_fn(model: IARN) -> Callable:
    def apply_fn(params, batch, deterministic, rngs):
        return model.apply({"params": params}, batch, deterministic=deterministic, rngs=rngs)

    return apply_fn


def prefetch(iterator: Iterable, size: int) -> Iterator:
    """Runs `iterator` in a background thread, `size` items ahead (0 = inline)."""
    if size <= 0:
        yield from iterator
        return
    buffer: queue.Queue = queue.Queue(maxsize=size)
    done = object()

    def worker():
        try:
            for item in iterator:
                buffer.put(item)
        except BaseException as exc:  # surfaced in the consumer
            buffer.put(exc)
        buffer.put(done)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    while True:
        item = buffer.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


def _local_rows(batch: dict) -> dict:
    """This process's rows of a global host batch (all rows with one process)."""
    count, index = jax.process_count(), jax.process_index()
    if count == 1:
        return batch
    # per array: the negatives' arrays have k rows per positive, contiguous, so they split the same way
    return {k: v[index * (len(v) // count) : (index + 1) * (len(v) // count)] for k, v in batch.items()}


def eval_batches(pairs: Any, data: PreparedData, config: TrainConfig, batch_size: Optional[int] = None):
    """(pair indices [B] with -1 for padding, host batch) of every batch of ``pairs`` in a fixed order,
    histories as training sees them (``drop_self`` for "full_without_self")."""
    plan = batching.make_batch_plan(pairs, batch_size or config.eval_batch_size, shuffle=False,
                                    bucket_lengths=config.bucket_lengths, max_len=config.max_len)
    for entry in plan:
        yield np.asarray(entry.indices), batching.materialize(
            entry, pairs, data.user_histories, data.item_histories, max_len=config.max_len,
            drop_self=config.history_mode == "full_without_self")


def predict_pairs(
    eval_step: Callable, params: Any, pairs: Any, data: PreparedData, config: TrainConfig, mesh
) -> np.ndarray:
    """Predictions [N] for every pair of a PairSet, in the PairSet's order."""
    out = np.zeros(len(pairs.user), np.float32)
    for idx, batch in eval_batches(pairs, data, config):
        pred = np.asarray(jax.device_get(eval_step(params, put_batch(_local_rows(batch), mesh))))
        valid = idx >= 0
        out[idx[valid]] = pred[valid]
    return out


def rating_metrics(pred: np.ndarray, target: np.ndarray, rating_scale) -> dict:
    """RMSE and MAE of predictions clipped to the rating scale."""
    clipped = np.clip(pred, *rating_scale)
    err = clipped - np.asarray(target, np.float32)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


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
    """loss(params, batch, dropout_rng) of ``cfg.objective`` (+ the stationary factors' L2)."""
    offset = model_config.global_mean if model_config.bias == "global_user_item" else 0.0

    def loss_fn(params, batch, dropout_rng):
        rngs = {"dropout": dropout_rng}
        if cfg.uses_negatives:
            positive, negative, _ = model.apply({"params": params}, batch, deterministic=False, rngs=rngs,
                                                method=IARN.score_with_negatives)
        else:
            (positive, _), negative = model.apply({"params": params}, batch, deterministic=False, rngs=rngs), None
        loss = objective_loss(cfg.objective, positive, negative, batch, loss=cfg.ranking_loss,
                              joint_weight=cfg.joint_weight, offset=offset)
        if model_config.stationary_dim and cfg.factor_l2:
            loss = loss + cfg.factor_l2 * factor_penalty(params, batch)
        return loss

    return loss_fn


def make_negative_sampler(data: PreparedData, cfg: TrainConfig) -> NegativeSampler:
    """Negatives among the items of the training and validation pairs that the user never rated in the
    training period (uniform or popularity ** alpha, counts = training-period events)."""
    pool = np.union1d(data.train.item, data.val.item)
    return NegativeSampler(data.user_histories, data.split.n_items, data.item_histories.lengths, pool=pool,
                           distribution=cfg.negative_distribution, alpha=cfg.negative_alpha)


def with_negatives(batch: dict, negatives: np.ndarray, times: np.ndarray, data: PreparedData,
                   cfg: TrainConfig) -> dict:
    """batch + the padded histories of its negatives [B, k] (drawn for positives at ``times`` [B])."""
    return {**batch, **materialize_negatives(negatives, times, data.item_histories, history_mode=cfg.history_mode,
                                             max_len=cfg.max_len, bucket_lengths=cfg.bucket_lengths)}


def validation_negatives(sampler: NegativeSampler, pairs: Any, count: int) -> np.ndarray:
    """[N, count] fixed negatives of the validation pairs (the same for every training seed)."""
    return sampler.sample(pairs.user, count, np.random.default_rng([0, 0x56414C]))


def score_pairs_with_negatives(neg_eval_step: Callable, params: Any, pairs: Any, negatives: np.ndarray,
                               data: PreparedData, cfg: TrainConfig, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(positive [N], negative [N, k]) scores of every pair of ``pairs`` and its negatives [N, k]."""
    n, k = negatives.shape
    n_dev = mesh.devices.size
    batch_size = max(n_dev, (cfg.eval_batch_size // (1 + k)) // n_dev * n_dev)
    positive, negative = np.zeros(n, np.float32), np.zeros((n, k), np.float32)
    for idx, batch in eval_batches(pairs, data, cfg, batch_size):
        valid, safe = idx >= 0, np.where(idx >= 0, idx, 0)
        batch = with_negatives(batch, negatives[safe], pairs.time[safe], data, cfg)
        pos, neg = jax.device_get(neg_eval_step(params, put_batch(_local_rows(batch), mesh)))
        positive[idx[valid]] = np.asarray(pos)[valid]
        negative[idx[valid]] = np.asarray(neg)[valid]
    return positive, negative


def gate_saturation(stats_step: Callable, params: Any, pairs: Any, data: PreparedData, cfg: TrainConfig,
                    mesh) -> dict:
    """Share of valid history steps whose gate is < 0.01 or > 0.99, per side, over ``pairs``."""
    totals = np.zeros((2, 2))
    for _, batch in eval_batches(pairs, data, cfg):
        totals += np.asarray(jax.device_get(stats_step(params, put_batch(_local_rows(batch), mesh))))
    return {f"{side}_gates_saturated": float(totals[i, 0] / max(totals[i, 1], 1.0))
            for i, side in enumerate(("user", "item"))}


def _set_factors(params: Any, user_factors, item_factors, user_bias=None, item_bias=None) -> Any:
    params = dict(params)
    for tower, factors, bias in (("user_tower", user_factors, user_bias), ("item_tower", item_factors, item_bias)):
        side = dict(params[tower])
        side["stationary_factor"] = jax.numpy.asarray(factors, side["stationary_factor"].dtype)
        if bias is not None and "entity_bias" in side:
            side["entity_bias"] = jax.numpy.asarray(bias, side["entity_bias"].dtype)
        params[tower] = side
    return params


def init_from_factor_baseline(params: Any, split: ProtocolSplit, model_config: ModelConfig, objective: str,
                              seed: int = 0) -> tuple[Any, dict]:
    """Starts the model *at* the project's tuned factor baseline for the objective: MF (``rating``,
    ``joint``: b_u, b_i, p_u, q_i) or BPR (``ranking``: b_i, p_u, q_i), each with S factors, its own
    validation grid and early stopping. The item tower's head starts at 0, so <u~, v~> = 0 and the
    first prediction is the baseline's exactly; the recurrent towers learn the residual.
    Returns (params, {"factor_init": "mf" | "bpr", "factor_init_val_rmse" (MF)})."""
    from iarn_jax.models.baselines.bpr import BPR
    from iarn_jax.models.baselines.mf import MF

    ranking = objective == "ranking"
    baseline = (BPR if ranking else MF)(factors=model_config.stationary_dim).fit(split, seed=seed, verbose=False)
    weights = {k: np.asarray(v) for k, v in baseline.params.items()}
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
    info = {"factor_init": "bpr" if ranking else "mf"}
    if not ranking:
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
    stop_after_steps: Optional[int] = None,
    overwrite: bool = False,
) -> TrainResult:
    """Trains a model on split.train with early stopping on split.val; scores split.test.

    workdir: where checkpoints (orbax), log.jsonl and results.json go (None = in
      memory only, no resume).
    resume: continue from workdir's latest checkpoint; with the same seed and
      configs the result equals an uninterrupted run.
    stop_after_steps: simulate an interruption (testing): return right after the
      checkpoint at or after this many steps.
    overwrite: replace a run already in workdir (without it, or resume, a workdir
      holding a run is refused; see iarn_jax.training.run_records).
    """
    start_wall = time.time()
    cfg = train_config
    model_config = complete_model_config(model_config, split)
    data = data if data is not None else prepare_data(split, cfg.history_mode)
    if len(data.train.user) == 0 or len(data.val.user) == 0:
        raise ValueError(f"protocol {split.name!r}: empty training or validation split")
    workdir = pathlib.Path(workdir) if workdir is not None else None
    ckpt_dir = workdir / "checkpoints" if workdir is not None else None
    if workdir is not None:  # checks the workdir (resume / overwrite) before config.json is written
        run_records.prepare_workdir(
            workdir,
            {
                "protocol": split.name,
                "model": dataclasses.asdict(model_config),
                "train": dataclasses.asdict(cfg),
                "min_len": split.min_len,
                "split_seed": split.seed,
            },
            resume=resume, overwrite=overwrite, ckpt_dir=ckpt_dir,
        )
    log = _Logger(workdir, verbose)

    mesh = make_mesh(devices)
    n_dev = mesh.devices.size
    if cfg.batch_size % n_dev or cfg.eval_batch_size % n_dev:
        raise ValueError(f"batch sizes ({cfg.batch_size}, {cfg.eval_batch_size}) must divide over {n_dev} devices")
    model = build_model(model_config, split)
    apply_fn = make_apply_fn(model)
    tx = make_optimizer(cfg)

    root = jax.random.PRNGKey(cfg.seed)
    init_rng, dropout_rng = jax.random.split(root)
    first = batching.materialize(
        batching.make_batch_plan(data.train, cfg.batch_size, seed=cfg.seed, epoch=0,
                                 bucket_lengths=cfg.bucket_lengths, max_len=cfg.max_len)[0],
        data.train, data.user_histories, data.item_histories, max_len=cfg.max_len,
    )
    params = jax.jit(lambda r, b: model.init(r, b, deterministic=True)["params"])(init_rng, first)
    if model_config.bias != "none" and cfg.bias_init == "baseline":
        params = init_biases_from_baseline(params, split, model_config)
    factor_info: dict = {}
    start_at_baseline = ((cfg.factor_init == "baseline" and cfg.objective in ("rating", "joint"))
                         or (cfg.factor_init == "bpr" and cfg.objective == "ranking"))
    if model_config.stationary_dim and start_at_baseline:
        params, factor_info = init_from_factor_baseline(params, split, model_config, cfg.objective, seed=cfg.seed)
    elif model_config.stationary_dim and cfg.factor_init == "als":
        params, factor_info = init_factors_from_mf(params, split, model_config, seed=cfg.seed)
    state = create_train_state(params, tx, dropout_rng, mesh)
    train_step = make_train_step(apply_fn, tx, mesh, make_loss_fn(model, model_config, cfg))
    eval_step = make_eval_step(apply_fn, mesh)
    metric_name = cfg.selection_metric  # "rmse" (lower is better) or "auc" (higher)
    rates = cfg.objective != "ranking"  # objectives whose predictions are ratings
    sampler = make_negative_sampler(data, cfg) if (cfg.uses_negatives or metric_name == "auc") else None
    neg_eval_step = val_negatives = None
    if sampler is not None:
        neg_eval_step = make_negative_eval_step(
            lambda params, batch: model.apply({"params": params}, batch, deterministic=True,
                                              method=IARN.score_with_negatives)[:2], mesh)
        val_negatives = validation_negatives(sampler, data.val, cfg.val_negatives)
    drop_self = cfg.history_mode == "full_without_self"

    # Schedule state (plain Python; checkpointed in progress.json).
    sched = {"epoch": 0, "batch": 0, "best_val": math.inf, "best_step": 0, "bad": 0, "decay_bad": 0,
             "evals": 0, "done": False, "reason": "", "elapsed": 0.0, "examples": 0, "train_seconds": 0.0}
    best_params = _copy(state.params)
    if resume and ckpt_dir is not None:
        progress = checkpoint.load_progress(ckpt_dir)
        if progress is not None:
            tree = checkpoint.restore_tree(ckpt_dir / progress["checkpoint"],
                                           {"state": state, "best_params": best_params})
            state, best_params = tree["state"], tree["best_params"]
            sched.update(progress["schedule"])
            log({"event": "resume", "step": int(progress["step"])},
                f"resumed from step {progress['step']} (epoch {sched['epoch']}, batch {sched['batch']})")

    def validation_metrics(params) -> dict:
        """{"rmse": val RMSE (rating objectives), "auc": sampled val AUC (with negatives)}."""
        out = {}
        if rates:
            pred = predict_pairs(eval_step, params, data.val, data, cfg, mesh)
            out["rmse"] = rating_metrics(pred, data.val.rating, split.rating_scale)["rmse"]
        if sampler is not None:
            positive, negative = score_pairs_with_negatives(neg_eval_step, params, data.val, val_negatives, data,
                                                            cfg, mesh)
            out["auc"] = sampled_auc(positive, negative)
        return out

    def evaluate_val() -> float:
        """The schedule's value (lower is better: val RMSE, or -AUC); stops on a non-finite metric."""
        nonlocal last_metrics
        last_metrics = validation_metrics(state.params)
        value = last_metrics[metric_name]
        value = run_records.check_finite_metric(value, step, ckpt_dir)  # NaN/inf: stop, name the checkpoint
        return value if metric_name == "rmse" else -value

    last_metrics: dict = {}

    def save(step: int):
        if ckpt_dir is None:
            return
        checkpoint.save_progress(ckpt_dir, step, {"state": state, "best_params": best_params},
                                 {"schedule": dict(sched)})

    n_train = len(data.train.user)
    steps_per_epoch = -(-n_train // cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    log({"event": "start", "n_train": n_train, "n_val": len(data.val.user), "n_test": len(data.test.user),
         "devices": n_dev, "model": model_config.variant, "steps_per_epoch": steps_per_epoch,
         "total_steps": min(cfg.max_steps, cfg.max_epochs * steps_per_epoch)},
        f"training {model_config.variant} on {split.name}: {n_train} train / {len(data.val.user)} val / "
        f"{len(data.test.user)} test pairs, batch {cfg.batch_size}, {steps_per_epoch} steps/epoch, "
        f"{n_dev} device(s), history={cfg.history_mode}")

    run_loss, run_n, window_start, window_examples = 0.0, 0, time.time(), 0
    session_start = time.time() - sched["elapsed"]
    step = int(state.step)  # host-side step counter: no device sync per step
    if factor_info and sched["evals"] == 0:  # the MF start is a candidate: never end worse than it
        _schedule_after_eval(sched, evaluate_val(), 0, cfg)
        log({"event": "eval", "step": 0, **{f"val_{k}": v for k, v in last_metrics.items()}, **factor_info},
            f"  eval step 0 (started at {factor_info['factor_init'].upper()}): "
            + "  ".join(f"val {k.upper()} {v:.4f}" for k, v in last_metrics.items()))
    # Losses stay on the device until a log / eval / epoch end needs them, so the host never waits
    # for step k before dispatching step k+1 (the device stays busy while the next batch is placed).
    pending: list = []  # (step, device loss)
    mark = time.time()  # start of the current span of train-step time

    def drain() -> list:
        """Fetches the pending losses (one transfer), checks them, adds the span to train_seconds."""
        nonlocal mark
        if not pending:
            return []
        values = np.asarray(jax.device_get(jax.numpy.stack([loss for _, loss in pending])), np.float64)
        steps = [k for k, _ in pending]
        pending.clear()
        sched["train_seconds"] += time.time() - mark
        mark = time.time()
        for k, value in zip(steps, values):
            if not math.isfinite(value) or value > 1e4:
                raise FloatingPointError(f"training diverged at step {k}: loss {value}")
        return list(values)

    while not sched["done"]:
        epoch = sched["epoch"]
        if epoch >= cfg.max_epochs:
            sched.update(done=True, reason="max_epochs")
            break
        plan = batching.make_batch_plan(data.train, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                                        bucket_lengths=cfg.bucket_lengths, max_len=cfg.max_len)

        def host_batch(k: int, plan=plan, epoch=epoch) -> dict:
            batch = batching.materialize(plan[k], data.train, data.user_histories, data.item_histories,
                                         max_len=cfg.max_len, drop_self=drop_self)
            if cfg.uses_negatives:  # drawn from (seed, epoch, batch): a resumed run draws the same
                safe = np.maximum(plan.indices[k], 0)
                negatives = sampler.sample(batch["user"], cfg.n_negatives, negative_rng(cfg.seed, epoch, k))
                batch = with_negatives(batch, negatives, data.train.time[safe], data, cfg)
            return _local_rows(batch)

        host_batches = (host_batch(k) for k in range(sched["batch"], len(plan)))
        mark = time.time()
        for batch in prefetch(host_batches, cfg.prefetch):
            state, metrics = train_step(state, put_batch(batch, mesh))
            sched["batch"] += 1
            step += 1
            pending.append((step, metrics["loss"]))
            n_real = int(batch["weight"].sum()) * jax.process_count()
            sched["examples"] += n_real
            window_examples += n_real
            logging_now = bool(cfg.log_every and step % cfg.log_every == 0)
            if logging_now or len(pending) >= 256:
                values = drain()
                run_loss, run_n = run_loss + sum(values), run_n + len(values)
            if logging_now:
                rate = window_examples / max(time.time() - window_start, 1e-9)
                lr = get_learning_rate(state.opt_state)
                log({"event": "train", "epoch": epoch, "step": step, "loss": run_loss / run_n,
                     "examples_per_second": rate, "learning_rate": lr},
                    f"epoch {epoch} step {step} loss {run_loss / run_n:.4f} {rate:,.0f} ex/s lr {lr:.2e}")
                run_loss, run_n, window_start, window_examples = 0.0, 0, time.time(), 0
            if step % eval_every == 0 or step >= cfg.max_steps:
                values = drain()
                run_loss, run_n = run_loss + sum(values), run_n + len(values)
                _schedule_after_eval(sched, evaluate_val(), step, cfg)
                lr = get_learning_rate(state.opt_state)
                if sched["best_step"] == step:
                    best_params = _copy(state.params)  # state buffers are donated next step
                elif sched.pop("decay_now", False):
                    lr = lr * cfg.lr_decay
                    state = state.replace(params=_copy(best_params),
                                          opt_state=set_learning_rate(state.opt_state, lr))
                    if lr < cfg.min_learning_rate:
                        sched.update(done=True, reason="min_learning_rate")
                sched["elapsed"] = time.time() - session_start
                shown = "  ".join(f"val {k.upper()} {v:.4f}" for k, v in last_metrics.items())
                best_shown = abs(sched["best_val"])
                log({"event": "eval", "epoch": epoch, "step": step,
                     **{f"val_{k}": v for k, v in last_metrics.items()},
                     f"best_val_{metric_name}": best_shown, "learning_rate": lr},
                    f"  eval step {step}: {shown} (best {metric_name.upper()} {best_shown:.4f}"
                    f" @ {sched['best_step']}), lr {lr:.2e}")
                if step >= cfg.max_steps:
                    sched.update(done=True, reason="max_steps")
                if cfg.max_seconds and sched["elapsed"] > cfg.max_seconds:
                    sched.update(done=True, reason="max_seconds")
                if cfg.checkpoint_every_eval:
                    save(step)
                if stop_after_steps is not None and step >= stop_after_steps:
                    return TrainResult(model_config, cfg, best_params, {"interrupted_at": step}, data, workdir)
                mark = time.time()  # evaluation and checkpoints are not train-step time
            if sched["done"]:
                break
        else:
            sched["epoch"] += 1
            sched["batch"] = 0
    drain()
    # Final evaluation with the best parameters.
    if sched["evals"] == 0:  # never evaluated (tiny runs): evaluate now
        best_params = _copy(state.params)
        sched["best_val"] = evaluate_val()
    final_val = validation_metrics(best_params)
    val_pred = predict_pairs(eval_step, best_params, data.val, data, cfg, mesh)
    test_pred = predict_pairs(eval_step, best_params, data.test, data, cfg, mesh)
    val_m = rating_metrics(val_pred, data.val.rating, split.rating_scale)
    test_m = rating_metrics(test_pred, data.test.rating, split.rating_scale)
    wall = time.time() - start_wall
    metrics = {
        "protocol": split.name,
        "model": model_config.variant,
        "seed": cfg.seed,
        "history_mode": cfg.history_mode,
        "test_rmse": test_m["rmse"],
        "test_mae": test_m["mae"],
        "val_rmse": val_m["rmse"],
        "n_train": n_train,
        "n_val": len(data.val.user),
        "n_test": len(data.test.user),
        "steps": int(state.step),
        "epochs": sched["examples"] / n_train,
        "stop_reason": sched["reason"],
        "wall_seconds": wall,
        "train_examples_per_second": sched["examples"] / max(sched["train_seconds"], 1e-9),
        "devices": n_dev,
        "params": int(sum(leaf.size for leaf in jax.tree.leaves(best_params))),
        "objective": cfg.objective,
        "selection_metric": metric_name,
        **({"val_auc_sampled": final_val["auc"]} if "auc" in final_val else {}),
        **factor_info,
    }
    if model_config.gated:  # a tower whose gates all sit at 0 or 1 is visible at once
        metrics.update(gate_saturation(make_gate_stats_step(apply_fn, mesh), best_params, data.test, data, cfg, mesh))
    if ckpt_dir is not None:
        checkpoint.save_params(ckpt_dir / "best", best_params)
        checkpoint.write_json_atomic(workdir / "results.json", metrics)
    summary = (f"test RMSE {test_m['rmse']:.4f} MAE {test_m['mae']:.4f}, val RMSE {val_m['rmse']:.4f}" if rates
               else f"val AUC (sampled) {final_val['auc']:.4f}")
    if model_config.gated:
        summary += (f", saturated gates user {metrics['user_gates_saturated']:.0%} "
                    f"item {metrics['item_gates_saturated']:.0%}")
    log({"event": "done", **metrics}, f"done ({sched['reason']}): {summary}, {wall:.0f}s")
    return TrainResult(model_config, cfg, best_params, metrics, data, workdir)


def _copy(tree: Any) -> Any:
    """A copy of a pytree of arrays that survives donation of the original."""
    return jax.tree_util.tree_map(lambda x: x.copy(), tree)


def _schedule_after_eval(sched: dict, val_rmse: float, step: int, cfg: TrainConfig) -> None:
    """The reference schedule: improvement resets counters; patience decays / stops."""
    sched["evals"] += 1
    sched["last_val"] = val_rmse
    if val_rmse < sched["best_val"]:
        sched.update(best_val=val_rmse, best_step=step, bad=0, decay_bad=0)
        return
    sched["bad"] += 1
    sched["decay_bad"] += 1
    if sched["bad"] >= cfg.stop_patience:
        sched.update(done=True, reason="patience")
    elif sched["decay_bad"] >= cfg.decay_patience:
        sched["decay_bad"] = 0
        sched["decay_now"] = True


def predict(result: TrainResult, pairs_df: pd.DataFrame, *, history_mode: str = "full") -> np.ndarray:
    """Unclipped predicted ratings [N] for the (user, item) rows of pairs_df.

    Histories are the training-period histories of result.data; pairs see the
    whole training history (history_mode="full"), as test pairs do.
    """
    data = result.data
    pairs = histories.make_pairs(pairs_df, data.user_histories, data.item_histories, mode=history_mode)
    mesh = make_mesh()
    eval_step = make_eval_step(make_apply_fn(result.model), mesh)
    return predict_pairs(eval_step, result.params, pairs, data, result.train_config, mesh)
