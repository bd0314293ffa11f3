"""One experiment = load a protocol, train a model, score it beside a bias-only baseline.

Everything ``python -m experiments.train`` does, importable from notebooks::

    from iarn_jax.training.experiment import run_experiment
    metrics = run_experiment("ml100k", data_root="../shared/data", model="iarn")
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Optional

import ml_collections

from iarn_jax import configs, jsonio
from iarn_jax.data import protocols
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.training.defaults import (build_configs, config_val_mode, derived_defaults,  # noqa: F401 (re-exported)
                                       protocol_defaults)
from iarn_jax.training.loop import TrainResult, train


def enable_compilation_cache(path: Optional[str] = None) -> str:
    """Turns on JAX's persistent compilation cache (reused across runs: one
    compile per bucket shape, paid once per machine). Default folder:
    $IARN_JAX_CACHE or ~/.cache/iarn_jax/xla."""
    import os

    import jax

    path = path or os.environ.get("IARN_JAX_CACHE") or os.path.expanduser("~/.cache/iarn_jax/xla")
    jax.config.update("jax_compilation_cache_dir", path)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def load_split(
    protocol: str = "synthetic",
    data_root: Optional[str | pathlib.Path] = None,
    *,
    data: Optional[str] = None,
    cut: Optional[str] = None,
    min_len: int = 3,
    seed: int = 123,
    val_mode: str = "random",
    rating_scale: Optional[tuple[float, float]] = None,
    protocol_kwargs: Optional[dict] = None,
) -> ProtocolSplit:
    """The named protocol, or custom data given as "FORMAT:PATH" with a cut date.

    rating_scale: (low, high) of a generic csv / parquet table (refused for other data).
    protocol_kwargs: extra arguments of ``load_protocol`` (None: the protocol config's, e.g. the
      synthetic data's size)."""
    if data:
        from iarn_jax.data.loaders import parse_data_flag

        fmt, path = parse_data_flag(data)
        return protocols.custom_protocol(fmt, path, cut, min_len=min_len, seed=seed, val_mode=val_mode,
                                         rating_scale=rating_scale)
    if rating_scale is not None:
        raise ValueError("--rating_scale applies to --data=csv:PATH / parquet:PATH only")
    kwargs = _protocol_kwargs(protocol) if protocol_kwargs is None else protocol_kwargs
    return protocols.load_protocol(protocol, data_root or None, seed=seed, min_len=min_len, val_mode=val_mode,
                                   **kwargs)


def _protocol_kwargs(protocol: str) -> dict:
    """The protocol config's extra arguments of ``load_protocol`` (e.g. the synthetic data's size)."""
    return configs.get_config(protocol).protocol_kwargs.to_dict() if protocol in configs.PROTOCOLS else {}


BASELINE_NAMES = {"bias": "bias-only", "mf": "MF"}


def bias_baseline_metrics(split: ProtocolSplit, seed: int = 0) -> dict:
    """Test RMSE/MAE of the regularised bias-only model (Surprise's BaselineOnly)."""
    return baseline_metrics("bias", split, seed=seed)


def baseline_metrics(key: str, split: ProtocolSplit, seed: int = 0) -> dict:
    """Test RMSE/MAE of a reference rating model: "bias" (BaselineOnly) or "mf" (our MF, grid on val)."""
    from iarn_jax.models.baselines.bias import BiasBaseline
    from iarn_jax.models.baselines.mf import MF
    from iarn_jax.training.loop import rating_metrics

    if key not in BASELINE_NAMES:
        raise ValueError(f"unknown reference baseline {key!r}; choose from {sorted(BASELINE_NAMES)}")
    model = (BiasBaseline() if key == "bias" else MF()).fit(split, seed=seed, verbose=False)
    pred = model.predict(split.test["user"].to_numpy(), split.test["item"].to_numpy())
    return rating_metrics(pred, split.test["rating"].to_numpy(), split.rating_scale)


def run_experiment(
    protocol: str = "synthetic",
    *,
    data_root: Optional[str | pathlib.Path] = None,
    data: Optional[str] = None,
    cut: Optional[str] = None,
    model: str = "iarn",
    history: Optional[str] = None,
    objective: Optional[str] = None,
    seed: int = 0,
    split_seed: int = 123,
    val_mode: Optional[str] = None,
    min_len: int = 3,
    workdir: Optional[str | pathlib.Path] = None,
    resume: bool = False,
    results_json: Optional[str | pathlib.Path] = None,
    model_overrides: Optional[dict] = None,
    train_overrides: Optional[dict] = None,
    verbose: bool = True,
    overwrite: bool = False,
    rating_scale: Optional[tuple[float, float]] = None,
    ranking_eval: Optional[bool] = None,
    baselines: tuple[str, ...] = ("bias", "mf"),
    config: Optional[ml_collections.ConfigDict] = None,
) -> tuple[dict, TrainResult]:
    """Trains `model` on `protocol` and returns (metrics, TrainResult).

    config: the run's config (``iarn_jax.configs``; None = the protocol's file, custom.py for
      ``data``); model_overrides / train_overrides win over it.
    history: the TrainConfig history mode; None = the protocol default, else "full" for the rating
      objective and "full_without_self" for objectives with sampled negatives.
    objective: the TrainConfig objective (None = the protocol default).
    val_mode: "random" (validation pairs sampled from the training period, the reference code) or
      "temporal" (its latest pairs; see ``data.protocols``); None = the config's (for ``objective``).
    ranking_eval: also report full-ranking AUC / NDCG@10 / HR@10 on the protocol's evaluated users
      (benchmarks.md); None = only for objectives with sampled negatives.
    baselines: reference models fitted on the same split and printed beside the model ("bias":
      BaselineOnly, "mf": our tuned MF; rating metrics).

    metrics holds protocol, model, seed, test_rmse, test_mae, val_rmse, n_train,
    n_test, epochs, wall_seconds, train_examples_per_second, the baselines' test RMSE/MAE
    (``bias_baseline_test_rmse``, ``mf_baseline_test_rmse``), the ranking metrics (``full_auc``,
    ``full_ndcg10``, ``full_hr10``) when asked for, and the configs.
    """
    start = time.time()
    from iarn_jax.training import run_records  # output paths and the workdir, before anything is loaded or written

    run_records.check_output_path(results_json)
    run_records.check_workdir(workdir, resume=resume, overwrite=overwrite)
    if config is None:
        config = configs.get_config("custom" if data else protocol)
    protocol_kwargs = config.protocol_kwargs.to_dict()
    val_mode = val_mode or config_val_mode(config, objective)
    split = load_split(protocol, data_root, data=data, cut=cut, min_len=min_len, seed=split_seed,
                       val_mode=val_mode, rating_scale=rating_scale, protocol_kwargs=protocol_kwargs)
    name = split.name
    model_config, train_config = build_configs(
        config, split, variant=model, seed=seed, objective=objective, history=history,
        model_overrides=model_overrides, train_overrides=train_overrides, verbose=verbose)
    import jax

    is_main = jax.process_index() == 0  # JSON outputs come from process 0 only
    run_info = {"protocol": protocol, "data_root": str(data_root) if data_root else None, "data": data, "cut": cut,
                "min_len": min_len, "split_seed": split_seed}
    if val_mode != "random":  # absent for the default, so runs recorded before the flag still resume
        run_info["val_mode"] = val_mode
    if not data and protocol_kwargs != _protocol_kwargs(protocol):  # e.g. another synthetic data size
        run_info["protocol_kwargs"] = protocol_kwargs
    run_records.check_run_info(workdir, run_info, resume=resume)
    if workdir is not None and is_main:
        pathlib.Path(workdir).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(workdir) / "run.json").write_text(json.dumps(run_info, indent=1))
    result = train(split, model_config, train_config, workdir=workdir, resume=resume, verbose=verbose,
                   overwrite=overwrite)
    reference = {key: baseline_metrics(key, split, seed=seed) for key in baselines}
    ranking = {}
    if ranking_eval or (ranking_eval is None and train_config.uses_negatives):
        from iarn_jax.evaluate.ranking import sample_eval_users
        from iarn_jax.evaluate.scorer import iarn_ranking_metrics

        users = sample_eval_users(split)
        rank = iarn_ranking_metrics(result, split, users, progress=verbose)
        ranking = {f"full_{k}": rank[k] for k in ("auc", "ndcg10", "hr10", "n_users")}
    metrics = {
        **result.metrics,
        **ranking,
        "protocol": name,
        **{f"{key}_baseline_test_{m}": value for key, values in reference.items() for m, value in values.items()},
        "model_config": dataclasses.asdict(result.model_config),
        "train_config": dataclasses.asdict(result.train_config),
        "total_wall_seconds": time.time() - start,
    }
    if verbose and is_main:
        shown = "  |  ".join(f"{BASELINE_NAMES[key]} RMSE {values['rmse']:.4f}" for key, values in reference.items())
        line = f"\n{name} / {model} ({train_config.objective} objective, {train_config.history_mode} histories): "
        if train_config.predicts_ratings:
            line += f"test RMSE {metrics['test_rmse']:.4f} (MAE {metrics['test_mae']:.4f})"
        else:
            line += "test RMSE n/a (a ranking model's scores are not ratings)"
        if ranking:
            line += (f", full-ranking AUC {ranking['full_auc']:.4f} NDCG@10 {ranking['full_ndcg10']:.4f} "
                     f"HR@10 {ranking['full_hr10']:.4f} ({ranking['full_n_users']} users)")
        print(line + (f"  |  {shown}" if shown else ""))
    if results_json and is_main:
        path = pathlib.Path(results_json)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=1, default=jsonio.jsonable))
    return metrics, result
