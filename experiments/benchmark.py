r"""Speed benchmark of IARN (the "Speed measures" of ../shared/docs/benchmarks.md).

  python -m experiments.benchmark            # readable table
  python -m experiments.benchmark --json     # one JSON object on stdout
  python -m experiments.benchmark --pipeline # + host pipeline: histories / plans at 1M, 3M, 10M ratings
  python -m experiments.benchmark --scale    # + sharded step on 1, 2, 4 forced host devices
  python -m experiments.benchmark --converge # + the default Clothing IARN trained to its early stop

Measured (all in this one process, so ratios are comparable on a noisy shared machine):

* train step examples/s (forward + backward + RMSprop update, jit, donated state) of the full
  IARN at batch 64 and 512, user and item histories padded to ``--history_len`` (50), embedding 25,
  hidden and attention 64; median over ``--repeats`` timed runs after compilation;
* ``flops_per_example`` from :func:`iarn_jax.models.flops.flops_per_example` at the padded lengths;
* matmul GFLOP/s of a large square matmul in the compute dtype (jit, median; 2048 on CPU, 8192 on
  an accelerator unless ``--matmul_size``);
* efficiency = achieved train FLOP/s / matmul FLOP/s (at every batch size);
* the process's user and system CPU milliseconds per train step (medians; where ``getrusage``
  exists): the step's own work and what the kernel added, so a slow run can be told from a slow host;
* the ranking objective's train step (BPR, ``--n_negatives`` sampled negatives per positive, the
  user side encoded once and shared): positives/s and scored pairs/s beside the rating step;
* scorer pairs/s: one user against ``--score_candidates`` candidate items through
  ``IARN.encode_user`` / ``encode_item`` / ``pair`` in one jit function.
"""
from __future__ import annotations

import functools
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Optional, Sequence

import numpy as np


def _process_cpu_seconds() -> Optional[tuple[float, float]]:
    """(user, system) CPU seconds of this process so far, all threads; None without ``getrusage``."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime, usage.ru_stime


def _timed_runs(fn, count: int, repeats: int) -> list[tuple[float, Optional[float], Optional[float]]]:
    """``repeats`` x (count / wall seconds, user CPU seconds, system CPU seconds) of ``fn()``, which
    must block until done (CPU seconds None where the process's CPU time is not available)."""
    runs = []
    for _ in range(repeats):
        cpu0 = _process_cpu_seconds()
        t0 = time.perf_counter()
        fn()
        seconds = time.perf_counter() - t0
        cpu1 = _process_cpu_seconds()
        user, system = (None, None) if cpu0 is None or cpu1 is None else (cpu1[0] - cpu0[0], cpu1[1] - cpu0[1])
        runs.append((count / seconds, user, system))
    return runs


def _median_rate(fn, count: int, repeats: int) -> float:
    """Median over ``repeats`` of count / seconds(fn()); fn must block until done."""
    return float(statistics.median(rate for rate, _, _ in _timed_runs(fn, count, repeats)))


def random_batch(rng: np.random.Generator, batch_size: int, history_len: int, n_users: int, n_items: int,
                 full: bool = True) -> dict:
    """A batch dict (BATCH_SPEC) with left-aligned histories padded to ``history_len``.

    full=True: every history is exactly ``history_len`` long (the padded workload of the benchmark);
    otherwise lengths are uniform in [1, history_len].
    """
    def side(n_counterparts):
        if full:
            lengths = np.full(batch_size, history_len)
        else:
            lengths = rng.integers(1, history_len + 1, batch_size)
        mask = np.arange(history_len)[None, :] < lengths[:, None]
        ids = np.where(mask, rng.integers(0, n_counterparts, (batch_size, history_len)), 0).astype(np.int32)
        ratings = np.where(mask, rng.integers(1, 6, (batch_size, history_len)), 0).astype(np.float32)
        return ids, ratings, mask

    u_ids, u_r, u_m = side(n_items)
    i_ids, i_r, i_m = side(n_users)
    return {
        "user": rng.integers(0, n_users, batch_size).astype(np.int32),
        "item": rng.integers(0, n_items, batch_size).astype(np.int32),
        "rating": rng.integers(1, 6, batch_size).astype(np.float32),
        "weight": np.ones(batch_size, np.float32),
        "user_history": u_ids, "user_history_rating": u_r, "user_history_mask": u_m,
        "item_history": i_ids, "item_history_rating": i_r, "item_history_mask": i_m,
    }


def model_config(embed_dim=25, hidden_size=64, attention_size=64, n_users=5000, n_items=5000,
                 variant="iarn", compute_dtype="float32"):
    from iarn_jax.models.config import ModelConfig

    return ModelConfig(variant=variant, n_users=n_users, n_items=n_items, embed_dim=embed_dim,
                       hidden_size=hidden_size, attention_size=attention_size, use_rating_input=True,
                       compute_dtype=compute_dtype)


def matmul_gflops(size: int = 2048, repeats: int = 5, dtype: str = "float32") -> float:
    """GFLOP/s of a jit-compiled [size, size] @ [size, size] matmul in ``dtype`` (median)."""
    import jax
    import jax.numpy as jnp

    key = jax.random.PRNGKey(0)
    a = jax.random.normal(key, (size, size), jnp.float32).astype(dtype)
    b = jax.random.normal(jax.random.fold_in(key, 1), (size, size), jnp.float32).astype(dtype)
    f = jax.jit(jnp.matmul)
    f(a, b).block_until_ready()
    inner = max(1, int(2e9 / (2 * size**3)))  # ~2 GFLOP per timed run at least
    def run():
        out = None
        for _ in range(inner):
            out = f(a, b)
        out.block_until_ready()
    return _median_rate(run, 2 * size**3 * inner, repeats) / 1e9


def with_random_negatives(rng: np.random.Generator, batch: dict, n_negatives: int, history_len: int,
                          n_users: int, n_items: int) -> dict:
    """batch + ``n_negatives`` random negative items per positive with full-length histories
    (NEGATIVE_SPEC of ``iarn_jax.data.negatives``: [B*k] ids, [B*k, history_len] histories)."""
    rows = batch["user"].shape[0] * n_negatives
    negatives = random_batch(rng, rows, history_len, n_users, n_items)
    return {**batch, "neg_item": negatives["item"], "neg_item_history": negatives["item_history"],
            "neg_item_history_rating": negatives["item_history_rating"],
            "neg_item_history_mask": negatives["item_history_mask"]}


def train_step_rate(config, batch_size: int, history_len: int, *, steps: int = 5, repeats: int = 5,
                    devices: Optional[list] = None, seed: int = 0, objective: str = "rating",
                    n_negatives: int = 4) -> float:
    """Median train examples/s (positives/s for objectives with sampled negatives) of the jit train
    step (after compilation)."""
    return train_step_timing(config, batch_size, history_len, steps=steps, repeats=repeats, devices=devices,
                             seed=seed, objective=objective, n_negatives=n_negatives)["rate"]


def train_step_timing(config, batch_size: int, history_len: int, *, steps: int = 5, repeats: int = 5,
                      devices: Optional[list] = None, seed: int = 0, objective: str = "rating",
                      n_negatives: int = 4) -> dict:
    """``rate``: :func:`train_step_rate`; ``user_ms`` / ``system_ms``: the process's user and system
    CPU milliseconds per step, medians over the timed runs (absent without ``getrusage``). The user
    time is the step's own work; system time is the kernel's (page faults on the step's fresh
    temporaries, thread wake-ups), which a busy virtual-machine host can inflate many times over."""
    import jax

    from iarn_jax.models.iarn import IARN
    from iarn_jax.training.config import TrainConfig
    from iarn_jax.training.loop import make_apply_fn, make_loss_fn
    from iarn_jax.training.optimizer import make_optimizer
    from iarn_jax.training.step import create_train_state, make_mesh, make_train_step, put_batch

    rng = np.random.default_rng(seed)
    mesh = make_mesh(devices)
    model = IARN(config)
    host = random_batch(rng, batch_size, history_len, config.n_users, config.n_items)
    params = jax.jit(lambda r, b: model.init(r, b)["params"])(jax.random.PRNGKey(seed), host)
    train_config = TrainConfig(objective=objective, n_negatives=n_negatives,
                               history_mode="full" if objective == "rating" else "full_without_self")
    if train_config.uses_negatives:
        host = with_random_negatives(rng, host, n_negatives, history_len, config.n_users, config.n_items)
    tx = make_optimizer(train_config)
    state = create_train_state(params, tx, jax.random.PRNGKey(seed + 1), mesh)
    step = make_train_step(make_apply_fn(model), tx, mesh, loss_fn=make_loss_fn(model, config, train_config))
    batch = put_batch(host, mesh)
    holder = {"state": state}

    def run(n=steps):
        s = holder["state"]
        for _ in range(n):
            s, metrics = step(s, batch)
        jax.block_until_ready((s, metrics))
        holder["state"] = s

    run(2)  # compile + warm up
    runs = _timed_runs(run, steps * batch_size, repeats)
    timing = {"rate": float(statistics.median(rate for rate, _, _ in runs))}
    if runs[0][1] is not None:
        timing["user_ms"] = 1e3 * statistics.median(user for _, user, _ in runs) / steps
        timing["system_ms"] = 1e3 * statistics.median(system for _, _, system in runs) / steps
    return timing


def score_rate(config, n_candidates: int, history_len: int, *, repeats: int = 5, seed: int = 0) -> float:
    """Median (user, item) pairs/s scoring one user against ``n_candidates`` items (encode + pair, jit)."""
    import jax

    from iarn_jax.models.iarn import IARN

    rng = np.random.default_rng(seed)
    model = IARN(config)
    host = random_batch(rng, n_candidates, history_len, config.n_users, config.n_items)
    params = jax.jit(lambda r, b: model.init(r, {k: v[:2] for k, v in b.items()})["params"])(
        jax.random.PRNGKey(seed), host)

    @jax.jit
    def score(params, user, uh, uhr, uhm, item, ih, ihr, ihm):
        variables = {"params": params}
        ue = model.apply(variables, user, uh, uhr, uhm, method=IARN.encode_user)
        ie = model.apply(variables, item, ih, ihr, ihm, method=IARN.encode_item)
        pred, _ = model.apply(variables, ue, ie, method=IARN.pair)
        return pred

    args = [params, host["user"][:1], host["user_history"][:1], host["user_history_rating"][:1],
            host["user_history_mask"][:1], host["item"], host["item_history"], host["item_history_rating"],
            host["item_history_mask"]]
    args = [jax.device_put(a) for a in args]
    score(*args).block_until_ready()
    return _median_rate(lambda: score(*args).block_until_ready(), n_candidates, repeats)


def run_speed(*, batch_sizes: Sequence[int] = (64, 512), history_len: int = 50, embed_dim: int = 25,
              hidden_size: int = 64, attention_size: int = 64, n_users: int = 5000, n_items: int = 5000,
              steps: int = 5, repeats: int = 5, matmul_size: int = 0, score_candidates: int = 2048,
              compute_dtype: str = "float32", ranking_batch_sizes: Sequence[int] = (512,),
              n_negatives: int = 4) -> dict:
    """The benchmark's speed figures as a flat dict (see the module docstring).

    matmul_size 0: 2048 on CPU, 8192 on an accelerator (large enough to reach its matmul rate).
    """
    import jax

    from iarn_jax.models.flops import flops_per_example

    config = model_config(embed_dim, hidden_size, attention_size, n_users, n_items, compute_dtype=compute_dtype)
    flops = flops_per_example(config, history_len, history_len, training=True)
    if not matmul_size:
        matmul_size = 2048 if jax.default_backend() == "cpu" else 8192
    gflops = matmul_gflops(matmul_size, repeats, dtype=compute_dtype)
    out = {
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0].device_kind),
        "n_devices": jax.device_count(),
        "history_len": history_len, "embed_dim": embed_dim, "hidden_size": hidden_size,
        "attention_size": attention_size, "compute_dtype": compute_dtype,
        "flops_per_example": flops,
        "matmul_size": matmul_size,
        "matmul_gflops": gflops,
        "matmul_precision": str(jax.config.jax_default_matmul_precision),
    }
    for b in batch_sizes:
        timing = train_step_timing(config, b, history_len, steps=steps, repeats=repeats)
        rate = timing["rate"]
        out[f"train_examples_per_second_b{b}"] = rate
        if "user_ms" in timing:  # CPU time per step: what the step costs vs what the host added
            out[f"train_cpu_user_ms_per_step_b{b}"] = timing["user_ms"]
            out[f"train_cpu_system_ms_per_step_b{b}"] = timing["system_ms"]
        out[f"train_gflops_b{b}"] = rate * flops / 1e9
        out[f"efficiency_b{b}"] = rate * flops / (gflops * 1e9)
    for b in ranking_batch_sizes:
        rate = train_step_rate(config, b, history_len, steps=steps, repeats=repeats, objective="ranking",
                               n_negatives=n_negatives)
        out[f"ranking_positives_per_second_b{b}"] = rate  # each with n_negatives scored negatives
        out[f"ranking_pairs_per_second_b{b}"] = rate * (1 + n_negatives)
    out["n_negatives"] = n_negatives
    out["score_candidates"] = score_candidates
    out["score_pairs_per_second"] = score_rate(config, score_candidates, history_len, repeats=repeats)
    return out


# -- input pipeline ---------------------------------------------------------------------------------

def run_pipeline(sizes: Sequence[int] = (1_000_000, 3_000_000, 10_000_000), batch_size: int = 512,
                 max_len: int = 256) -> list:
    """Histories + pairs + one epoch's batch plan for synthetic rating tables of each size (50 ratings
    per user, 100 per item on average, log-normal item popularity), each in a fresh subprocess so
    peak RSS is per size: seconds, peak resident memory (incl. the generated table and the Python /
    NumPy baseline ``rss_before_mb``) and the host time to build one batch (capped at ``max_len``)."""
    results = []
    for n in sizes:
        proc = subprocess.run([sys.executable, "-m", "experiments._bench_pipeline", str(n), str(batch_size), str(max_len)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
    return results


def run_epoch(protocol: str = "clothing", data_root: Optional[str] = None, batch_size: int = 64,
              max_steps: Optional[int] = None) -> dict:
    """One real training epoch (host batches built in the loop's prefetch thread, placed, stepped,
    losses fetched in bulk every ``log_every`` steps, as ``training.loop.train`` does) against the pure train step on
    the same batches pre-placed on the device. Every (Tu, Ti) shape is compiled before timing.

    Returns loop and pure examples/s (pure both back-to-back and with a loss fetch after every step,
    which the loop avoids), their ratio, and the host time to build one batch.
    """
    import jax

    from iarn_jax.data import batching
    from iarn_jax.data.protocols import load_protocol
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.models.iarn import IARN
    from iarn_jax.training import loop
    from iarn_jax.training.config import TrainConfig
    from iarn_jax.training.optimizer import make_optimizer
    from iarn_jax.training.step import create_train_state, make_mesh, make_train_step, put_batch

    split = load_protocol(protocol, data_root)
    cfg = TrainConfig(batch_size=batch_size)
    data = loop.prepare_data(split, cfg.history_mode)
    model = IARN(loop.complete_model_config(ModelConfig(variant="iarn"), split))
    mesh = make_mesh()
    plan = batching.make_batch_plan(data.train, batch_size, seed=cfg.seed, epoch=0,
                                    bucket_lengths=cfg.bucket_lengths, max_len=cfg.max_len,
                                    rare_shape_batches=cfg.rare_shape_batches)
    k = len(plan) if max_steps is None else min(max_steps, len(plan))

    def host(j):
        return loop._local_rows(batching.materialize(plan[j], data.train, data.user_histories,
                                                     data.item_histories, max_len=cfg.max_len))

    tx = make_optimizer(cfg)
    params = jax.jit(lambda r, b: model.init(r, b)["params"])(jax.random.PRNGKey(0), host(0))
    state = create_train_state(params, tx, jax.random.PRNGKey(1), mesh)
    step = make_train_step(loop.make_apply_fn(model), tx, mesh)
    shapes = {}
    for j in range(k):
        shapes.setdefault((int(plan.user_T[j]), int(plan.item_T[j])), j)
    t0 = time.perf_counter()
    for j in shapes.values():  # compile every shape
        state, m = step(state, put_batch(host(j), mesh))
    jax.block_until_ready(state)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    host_batches = [host(j) for j in range(k)]
    build_s = time.perf_counter() - t0
    placed = [put_batch(b, mesh) for b in host_batches]
    del host_batches
    t0 = time.perf_counter()
    for b in placed:
        state, m = step(state, b)
    jax.block_until_ready(state)
    pure = k * batch_size / (time.perf_counter() - t0)
    t0 = time.perf_counter()
    for b in placed:
        state, m = step(state, b)
        float(m["loss"])
    pure_synced = k * batch_size / (time.perf_counter() - t0)
    del placed
    t0 = time.perf_counter()
    losses = []
    for j, b in enumerate(loop.prefetch((host(j) for j in range(k)), cfg.prefetch)):
        state, m = step(state, put_batch(b, mesh))
        losses.append(m["loss"])  # fetched in bulk, as training.loop.train does at each log
        if (j + 1) % cfg.log_every == 0:
            jax.device_get(losses)
            losses = []
    jax.block_until_ready(state)
    looped = k * batch_size / (time.perf_counter() - t0)
    return {"protocol": protocol, "batch_size": batch_size, "steps": k, "shapes": len(shapes),
            "loop_examples_per_second": looped, "pure_step_examples_per_second": pure,
            "pure_step_synced_examples_per_second": pure_synced, "loop_over_pure": looped / pure,
            "host_batch_ms": 1e3 * build_s / k, "compile_seconds": compile_s}


# -- converged default run ----------------------------------------------------------------------------

def run_converge(protocol: str = "clothing", data_root: Optional[str] = None, seed: int = 0,
                 workdir: Optional[str] = None) -> dict:
    """Trains the launcher's default IARN on ``protocol`` (its protocol defaults, rating objective) to
    its early stop and reports wall seconds (data loading, compilation and evaluation included),
    epochs, the stop reason and the test RMSE. Training output goes to stderr."""
    import contextlib

    from iarn_jax.training.experiment import run_experiment

    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):
        metrics, _ = run_experiment(protocol, data_root=data_root, model="iarn", seed=seed, workdir=workdir,
                                    overwrite=workdir is not None, baselines=(), ranking_eval=False)
    return {"protocol": protocol, "seed": seed, "wall_seconds": time.perf_counter() - t0,
            "train_wall_seconds": metrics.get("wall_seconds"), "epochs": metrics.get("epochs"),
            "stop_reason": metrics.get("stop_reason"), "test_rmse": metrics["test_rmse"],
            "val_rmse": metrics.get("val_rmse"),
            "train_examples_per_second": metrics.get("train_examples_per_second")}


# -- scaling over forced host devices ---------------------------------------------------------------

def run_scale(device_counts: Sequence[int] = (1, 2, 4), batch_size: int = 512, history_len: int = 50) -> dict:
    """Train-step examples/s with the batch sharded over N forced host devices (subprocesses)."""
    out = {}
    for n in device_counts:
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}", "JAX_PLATFORMS": "cpu"}
        proc = subprocess.run([sys.executable, "-m", "experiments._bench_scale", str(batch_size), str(history_len)],
                              capture_output=True, text=True, env=env, check=True)
        out[f"train_examples_per_second_{n}dev"] = json.loads(proc.stdout.strip().splitlines()[-1])["rate"]
    return out


def format_table(result: dict) -> str:
    rows = [(k, v) for k, v in result.items() if not isinstance(v, (list, dict))]
    width = max(len(k) for k, _ in rows)
    lines = []
    for k, v in rows:
        text = f"{v:,.4g}" if isinstance(v, float) else str(v)
        lines.append(f"{k:<{width}}  {text}")
    for k, v in result.items():
        if isinstance(v, list):
            lines.append(f"{k}:")
            for item in v:
                lines.append("  " + ", ".join(f"{a}={b:.4g}" if isinstance(b, float) else f"{a}={b}"
                                              for a, b in item.items()))
        elif isinstance(v, dict):
            lines.append(f"{k}:")
            for a, b in v.items():
                lines.append(f"  {a:<{width}}  {b:,.4g}" if isinstance(b, float) else f"  {a}  {b}")
    return "\n".join(lines)


def main(argv):
    from absl import flags

    from experiments import _flags, _output

    F = flags.FLAGS
    _flags.check_no_arguments(argv)
    _output.quiet_output()  # absl INFO lines only with --verbosity; no TPU-probe record
    result = run_speed(
        batch_sizes=[int(b) for b in F.batch_sizes], history_len=F.history_len, embed_dim=F.embed_dim,
        hidden_size=F.hidden_size, attention_size=F.attention_size, n_users=F.n_users, n_items=F.n_items,
        steps=F.steps, repeats=F.repeats, matmul_size=F.matmul_size, score_candidates=F.score_candidates,
        compute_dtype=F.compute_dtype, ranking_batch_sizes=[int(b) for b in F.ranking_batch_sizes],
        n_negatives=F.n_negatives,
    )
    if F.pipeline:
        result["pipeline"] = run_pipeline([int(s) for s in F.pipeline_sizes])
    if F.epoch:
        result["epoch"] = run_epoch(F.epoch, F.data_root, F.epoch_batch_size, F.epoch_steps or None)
    if F.converge:
        result["converge"] = run_converge(F.converge_protocol, F.data_root, F.seed)
    if F.scale:
        result["scale"] = run_scale([int(n) for n in F.scale_devices])
    print(json.dumps(result, sort_keys=True) if F.json else format_table(result), flush=True)


@functools.cache  # once per process
def define_flags() -> None:
    from absl import flags

    from experiments import _flags

    _flags.define("json", "data_root", "seed", "use_tqdm")
    flags.DEFINE_list("batch_sizes", ["64", "512"], "Train-step batch sizes.")
    flags.DEFINE_integer("history_len", 50, "Padded user and item history length.")
    flags.DEFINE_integer("embed_dim", 25, "Embedding size.")
    flags.DEFINE_integer("hidden_size", 64, "Hidden size.")
    flags.DEFINE_integer("attention_size", 64, "Attention size per direction.")
    flags.DEFINE_integer("n_users", 5000, "User table size.")
    flags.DEFINE_integer("n_items", 5000, "Item table size.")
    flags.DEFINE_integer("steps", 5, "Train steps per timed run.")
    flags.DEFINE_integer("repeats", 5, "Timed runs (the median is reported).")
    flags.DEFINE_integer("matmul_size", 0, "Side of the square matmul (0: 2048 on CPU, 8192 on an accelerator).")
    flags.DEFINE_list("ranking_batch_sizes", ["512"], "Batch sizes (positives) of the ranking-objective step.")
    flags.DEFINE_integer("n_negatives", 4, "Sampled negatives per positive in the ranking-objective step.")
    flags.DEFINE_integer("score_candidates", 2048, "Candidates scored against one user.")
    flags.DEFINE_enum("compute_dtype", "float32", ["float32", "bfloat16"], "Matmul input dtype.")
    flags.DEFINE_bool("pipeline", False, "Also time histories + batch plans on synthetic ratings.")
    flags.DEFINE_list("pipeline_sizes", ["1000000", "3000000", "10000000"], "Rating counts for --pipeline.")
    flags.DEFINE_string("epoch", None, "Also run a real training loop on this protocol (e.g. clothing).")
    flags.DEFINE_integer("epoch_steps", 0, "Steps of the --epoch loop (0: a whole epoch).")
    flags.DEFINE_integer("epoch_batch_size", 64, "Batch size of the --epoch loop.")
    flags.DEFINE_bool("converge", False, "Also train the default IARN of --converge_protocol to its early stop.")
    flags.DEFINE_string("converge_protocol", "clothing", "Protocol of --converge.")
    flags.DEFINE_bool("scale", False, "Also time the sharded step on forced host devices.")
    flags.DEFINE_list("scale_devices", ["1", "2", "4"], "Device counts for --scale.")


if __name__ == "__main__":
    from experiments import _cli

    define_flags()
    _cli.run_main(main)  # data / flag / run-state errors: one line, exit status 2
