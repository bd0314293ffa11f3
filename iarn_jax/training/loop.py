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
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import IARN
from iarn_jax.training import checkpoint
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.optimizer import get_learning_rate, make_optimizer, set_learning_rate
from iarn_jax.training.step import create_train_state, make_eval_step, make_mesh, make_train_step, put_batch


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
    return PreparedData(
        split=split,
        user_histories=uh,
        item_histories=ih,
        train=histories.make_pairs(split.train, uh, ih, mode=history_mode),
        val=histories.make_pairs(split.val, uh, ih, mode=history_mode),
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
    rows = next(iter(batch.values())).shape[0]
    per = rows // count
    return {k: v[index * per : (index + 1) * per] for k, v in batch.items()}


def predict_pairs(
    eval_step: Callable, params: Any, pairs: Any, data: PreparedData, config: TrainConfig, mesh
) -> np.ndarray:
    """Predictions [N] for every pair of a PairSet, in the PairSet's order."""
    n = len(pairs.user)
    out = np.zeros(n, np.float32)
    plan = batching.make_batch_plan(
        pairs,
        config.eval_batch_size,
        seed=0,
        epoch=0,
        shuffle=False,
        bucket_lengths=config.bucket_lengths,
        max_len=config.max_len,
    )
    for entry in plan:
        batch = batching.materialize(
            entry, pairs, data.user_histories, data.item_histories, max_len=config.max_len
        )
        pred = np.asarray(jax.device_get(eval_step(params, put_batch(_local_rows(batch), mesh))))
        idx = np.asarray(entry.indices)
        valid = idx >= 0
        out[idx[valid]] = pred[valid]
    return out


def rating_metrics(pred: np.ndarray, target: np.ndarray, rating_scale) -> dict:
    """RMSE and MAE of predictions clipped to the rating scale."""
    clipped = np.clip(pred, *rating_scale)
    err = clipped - np.asarray(target, np.float32)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


class _Logger:
    """Prints progress and appends the same records to workdir/log.jsonl."""

    def __init__(self, workdir: Optional[pathlib.Path], verbose: bool):
        self.path = workdir / "log.jsonl" if workdir is not None else None
        self.verbose = verbose and jax.process_index() == 0

    def __call__(self, record: dict, text: str) -> None:
        if self.verbose:
            print(text, flush=True)
        if self.path is not None and jax.process_index() == 0:
            with self.path.open("a") as fh:
                fh.write(json.dumps(record) + "\n")


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
) -> TrainResult:
    """Trains a model on split.train with early stopping on split.val; scores split.test.

    workdir: where checkpoints (orbax), log.jsonl and results.json go (None = in
      memory only, no resume).
    resume: continue from workdir's latest checkpoint; with the same seed and
      configs the result equals an uninterrupted run.
    stop_after_steps: simulate an interruption (testing): return right after the
      checkpoint at or after this many steps.
    """
    start_wall = time.time()
    cfg = train_config
    model_config = complete_model_config(model_config, split)
    data = data if data is not None else prepare_data(split, cfg.history_mode)
    if len(data.train.user) == 0 or len(data.val.user) == 0:
        raise ValueError(f"protocol {split.name!r}: empty training or validation split")
    workdir = pathlib.Path(workdir) if workdir is not None else None
    ckpt_dir = workdir / "checkpoints" if workdir is not None else None
    if workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        checkpoint.write_json_atomic(
            workdir / "config.json",
            {
                "protocol": split.name,
                "model": dataclasses.asdict(model_config),
                "train": dataclasses.asdict(cfg),
                "min_len": split.min_len,
                "split_seed": split.seed,
            },
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
    state = create_train_state(params, tx, dropout_rng, mesh)
    train_step = make_train_step(apply_fn, tx, mesh)
    eval_step = make_eval_step(apply_fn, mesh)

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

    def evaluate_val() -> float:
        pred = predict_pairs(eval_step, state.params, data.val, data, cfg, mesh)
        return rating_metrics(pred, data.val.rating, split.rating_scale)["rmse"]

    def save(step: int):
        if ckpt_dir is None:
            return
        checkpoint.save_progress(ckpt_dir, step, {"state": state, "best_params": best_params},
                                 {"schedule": dict(sched)})

    n_train = len(data.train.user)
    steps_per_epoch = -(-n_train // cfg.batch_size)
    eval_every = cfg.eval_every or steps_per_epoch
    log({"event": "start", "n_train": n_train, "n_val": len(data.val.user), "n_test": len(data.test.user),
         "devices": n_dev, "model": model_config.variant},
        f"training {model_config.variant} on {split.name}: {n_train} train / {len(data.val.user)} val / "
        f"{len(data.test.user)} test pairs, batch {cfg.batch_size}, {steps_per_epoch} steps/epoch, "
        f"{n_dev} device(s), history={cfg.history_mode}")

    run_loss, run_n, window_start, window_examples = 0.0, 0, time.time(), 0
    session_start = time.time() - sched["elapsed"]
    step = int(state.step)  # host-side step counter: no device sync per step
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
        host_batches = (
            _local_rows(batching.materialize(plan[k], data.train, data.user_histories, data.item_histories,
                                             max_len=cfg.max_len))
            for k in range(sched["batch"], len(plan))
        )
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
                log({"event": "eval", "epoch": epoch, "step": step, "val_rmse": sched["last_val"],
                     "best_val_rmse": sched["best_val"], "learning_rate": lr},
                    f"  eval step {step}: val RMSE {sched['last_val']:.4f} (best {sched['best_val']:.4f}"
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
    if sched["best_step"] == 0:  # never evaluated (tiny runs): evaluate now
        best_params = _copy(state.params)
        sched["best_val"] = evaluate_val()
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
    }
    if ckpt_dir is not None:
        checkpoint.save_params(ckpt_dir / "best", best_params)
        checkpoint.write_json_atomic(workdir / "results.json", metrics)
    log({"event": "done", **metrics},
        f"done ({sched['reason']}): test RMSE {test_m['rmse']:.4f} MAE {test_m['mae']:.4f}, "
        f"val RMSE {val_m['rmse']:.4f}, {wall:.0f}s")
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
