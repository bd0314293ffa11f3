r"""Train IARN (or a backbone variant) on a protocol and report test RMSE.

With no flags it trains IARN on the built-in synthetic data (configs/default.py: a few minutes on a
2-core CPU) and prints test RMSE beside a bias-only baseline:

  python -m experiments.train
  python -m experiments.train --protocol=ml100k --data_root=../shared/data --model=tagm
  python -m experiments.train --config=configs/ml100k.py --config.model.dropout=0.25 --config.train.max_len=64
  python -m experiments.train --data=ml-dat:/data/ml-1m --cut=2002-01-01 --workdir=runs/ml1m
  python -m experiments.train --protocol=clothing --set=model.dropout=0.25 --set=train.batch_size=128
  python -m experiments.train --coordinator_address=host0:1234 --num_processes=2 --process_id=0 ...

The config: --config=FILE (an ml_collections file, e.g. configs/ml100k.py), else the --protocol's
file (configs/default.py for synthetic), else configs/custom.py for --data. Overrides:
--config.model.FIELD=VALUE / --config.train.FIELD=VALUE (after --config) or --set=model.FIELD=VALUE /
--set=train.FIELD=VALUE for any field of iarn_jax.models.config.ModelConfig /
iarn_jax.training.config.TrainConfig; both are type-checked and win over the config's values.
"""
from __future__ import annotations

import ast
import functools
import os

import ml_collections
from absl import app, flags
from ml_collections import config_flags

from experiments import _cli, _flags, _output
from iarn_jax import configs, distributed
from iarn_jax.data.loaders.dispatch import check_rating_scale
from iarn_jax.models.config import VARIANTS, ModelConfig
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.experiment import enable_compilation_cache, run_experiment

FLAGS = flags.FLAGS


@functools.cache  # once per process: tests call it before running main in-process
def define_flags() -> None:
    _flags.define("protocol", "data_root", "data", "cut", "workdir", "seed", "split_seed", "val_mode", "min_len",
                  "rating_scale", "results_json", "use_tqdm")
    config_flags.DEFINE_config_file("config", None, "Config file (default: the --protocol's, configs/custom.py "
                                    "for --data); override fields with --config.model.FIELD=VALUE.", lock_config=True)
    flags.DEFINE_enum("model", "iarn", list(VARIANTS), "Model variant.")
    flags.DEFINE_enum("history", None, ["full", "full_without_self", "causal"],
                      "History mode of training pairs (default: the config's; full becomes full_without_self "
                      "for objectives with sampled negatives).")
    flags.DEFINE_enum("objective", None, ["rating", "ranking", "joint", "negatives_as_zero"],
                      "Training objective (default: the config's; see TrainConfig.objective).")
    flags.DEFINE_bool("ranking_eval", None, "Report full-ranking AUC / NDCG@10 / HR@10 (default: for ranking "
                      "objectives).")
    flags.DEFINE_list("baselines", ["bias", "mf"], "Reference models printed beside the result (bias, mf; empty: none).")
    flags.DEFINE_bool("resume", False, "Continue from the workdir's latest checkpoint.")
    flags.DEFINE_bool("overwrite", False, "Replace a run already in --workdir (else such a workdir is refused).")
    flags.DEFINE_bool("compilation_cache", True, "Reuse compiled steps across runs (~/.cache/iarn_jax/xla).")
    flags.DEFINE_multi_string("set", [], "Config overrides: model.FIELD=VALUE or train.FIELD=VALUE.")
    flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (or $IARN_COORDINATOR).")
    flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (or $IARN_NUM_PROCESSES).")
    flags.DEFINE_integer("process_id", None, "Multi-host: this process's id (or $IARN_PROCESS_ID).")


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """--set=model.x=1 --set=train.y=2 -> ({"x": 1}, {"y": 2}), values as Python literals."""
    fields = {"model": _cli.field_names(ModelConfig), "train": _cli.field_names(TrainConfig)}
    out = {"model": {}, "train": {}}
    for item in items:
        key, sep, raw = item.partition("=")
        scope, _, name = key.partition(".")
        if not sep or scope not in out or name not in fields[scope]:
            raise app.UsageError(f"bad --set {item!r}: use model.FIELD=VALUE or train.FIELD=VALUE with a known FIELD")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            value = raw
        cls = ModelConfig if scope == "model" else TrainConfig
        out[scope][name] = _cli.coerce_field(cls, name, value, raw, f"--set={item}")  # type-checked
    return out["model"], out["train"]


def selected_config() -> tuple[str, ml_collections.ConfigDict, dict, dict]:
    """(protocol, config, model overrides, train overrides) of --config / --protocol / --data; the
    overrides are the --config.model.* / --config.train.* given, which win over derived fields."""
    if FLAGS.config is None:
        return FLAGS.protocol, configs.get_config("custom" if FLAGS.data else FLAGS.protocol), {}, {}
    config = FLAGS.config
    if not isinstance(config, ml_collections.ConfigDict):  # a file that failed to load
        path = FLAGS["config"].config_filename
        what = "failed to load" if os.path.isfile(path.split(":")[0]) else "no such file"
        raise app.UsageError(f"--config={path}: {what} (a .py file with get_config())")
    if not FLAGS.data and config.protocol == "custom":
        raise app.UsageError("--config with protocol 'custom' needs --data=FORMAT:PATH and --cut")
    if not FLAGS.data and FLAGS["protocol"].present and FLAGS.protocol != config.protocol:
        raise app.UsageError(f"--protocol={FLAGS.protocol} contradicts --config (protocol {config.protocol!r})")
    overrides = {"model": {}, "train": {}}
    for path, value in config_flags.get_override_values(FLAGS["config"]).items():
        scope, _, name = path.partition(".")
        if scope in overrides:
            overrides[scope][name] = value
    return (FLAGS.protocol if FLAGS.data else config.protocol), config, overrides["model"], overrides["train"]


def main(argv):
    _flags.check_no_arguments(argv)
    _output.quiet_output()  # absl / orbax INFO lines only with --verbosity; bars unless --nouse_tqdm
    _flags.check_data_cut()
    protocol, config, model_overrides, train_overrides = selected_config()
    set_model, set_train = parse_overrides(FLAGS.set)
    # Before any JAX computation: joins the other processes when flags, IARN_* variables or a
    # recognised cluster (SLURM, Open MPI, multi-host TPU) say so; a no-op on one process.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.compilation_cache:
        enable_compilation_cache()
    run_experiment(
        protocol, config=config, data_root=FLAGS.data_root, data=FLAGS.data, cut=FLAGS.cut, model=FLAGS.model,
        history=FLAGS.history, objective=FLAGS.objective, ranking_eval=FLAGS.ranking_eval,
        baselines=tuple(FLAGS.baselines), seed=FLAGS.seed, split_seed=FLAGS.split_seed, val_mode=FLAGS.val_mode,
        min_len=FLAGS.min_len, workdir=FLAGS.workdir, resume=FLAGS.resume, overwrite=FLAGS.overwrite,
        rating_scale=FLAGS.rating_scale and check_rating_scale(FLAGS.rating_scale),
        results_json=FLAGS.results_json, model_overrides={**model_overrides, **set_model},
        train_overrides={**train_overrides, **set_train})


if __name__ == "__main__":
    define_flags()
    _cli.run_main(main)  # data / flag / config / run-state errors: one line, exit status 2
