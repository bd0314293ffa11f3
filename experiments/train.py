r"""Train IARN (or a backbone variant) on a protocol and report test RMSE.

With no flags it trains IARN on the built-in synthetic data (a few minutes on a
2-core CPU) and prints test RMSE beside a bias-only baseline:

  python -m experiments.train
  python -m experiments.train --protocol=ml100k --data_root=../shared/data --model=tagm
  python -m experiments.train --data=ml-dat:/data/ml-1m --cut=2002-01-01 --workdir=runs/ml1m
  python -m experiments.train --protocol=clothing --set=model.dropout=0.25 --set=train.batch_size=128
  python -m experiments.train --coordinator_address=host0:1234 --num_processes=2 --process_id=0 ...

Overrides: --set=model.FIELD=VALUE or --set=train.FIELD=VALUE for any field of
iarn_jax.models.config.ModelConfig / iarn_jax.training.config.TrainConfig.
"""
from __future__ import annotations

import ast
import dataclasses

from absl import app, flags

from experiments import _cli, _output
from iarn_jax import distributed
from iarn_jax.data.loaders.dispatch import check_rating_scale
from iarn_jax.models.config import VARIANTS, ModelConfig
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.experiment import enable_compilation_cache, run_experiment

FLAGS = flags.FLAGS
flags.DEFINE_enum("protocol", "synthetic", ["synthetic", "clothing", "ml100k", "mlsmall"], "Named protocol.")
flags.DEFINE_string("data_root", None, "Folder holding the datasets (default: ../shared/data).")
flags.DEFINE_string("data", None, "Custom data as FORMAT:PATH (e.g. ml-dat:/data/ml-1m); needs --cut.")
flags.DEFINE_string("cut", None, "Global time cut for --data (YYYY-MM-DD, UTC).")
flags.DEFINE_enum("model", "iarn", list(VARIANTS), "Model variant.")
flags.DEFINE_enum("history", None, ["full", "full_without_self", "causal"],
                  "History mode of training pairs (default: full for --objective=rating, else full_without_self).")
flags.DEFINE_enum("objective", None, ["rating", "ranking", "joint", "negatives_as_zero"],
                  "Training objective (default: the protocol's; see TrainConfig.objective).")
flags.DEFINE_bool("ranking_eval", None, "Report full-ranking AUC / NDCG@10 / HR@10 (default: for ranking objectives).")
flags.DEFINE_list("baselines", ["bias", "mf"], "Reference models printed beside the result (bias, mf; empty: none).")
flags.DEFINE_string("workdir", None, "Checkpoints, logs and results go here.")
flags.DEFINE_bool("resume", False, "Continue from the workdir's latest checkpoint.")
flags.DEFINE_bool("overwrite", False, "Replace a run already in --workdir (else such a workdir is refused).")
flags.DEFINE_string("rating_scale", None, "LOW,HIGH rating scale of --data=csv:/parquet: tables (default: "
                    "the first standard scale holding every rating).")
flags.DEFINE_integer("seed", 0, "Seed of initialisation, dropout and batch order.")
flags.DEFINE_integer("split_seed", 123, "Seed of the validation split (the reference code's 123).")
flags.DEFINE_integer("min_len", 3, "Minimum training ratings per kept user and item.")
flags.DEFINE_string("results_json", None, "Write the results as JSON here.")
flags.DEFINE_bool("compilation_cache", True, "Reuse compiled steps across runs (~/.cache/iarn_jax/xla).")
flags.DEFINE_multi_string("set", [], "Config overrides: model.FIELD=VALUE or train.FIELD=VALUE.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 (or $IARN_COORDINATOR).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (or $IARN_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's id (or $IARN_PROCESS_ID).")


def parse_overrides(items: list[str]) -> tuple[dict, dict]:
    """--set=model.x=1 --set=train.y=2 -> ({"x": 1}, {"y": 2}), values as Python literals."""
    fields = {"model": {f.name for f in dataclasses.fields(ModelConfig)},
              "train": {f.name for f in dataclasses.fields(TrainConfig)}}
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


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    _output.quiet_output()  # absl / orbax INFO lines only with --verbosity; bars unless --nouse_tqdm
    if FLAGS.data and not FLAGS.cut:
        raise app.UsageError("--data needs --cut=YYYY-MM-DD (the global time cut)")
    model_overrides, train_overrides = parse_overrides(FLAGS.set)
    # Before any JAX computation: joins the other processes when flags, IARN_* variables or a
    # recognised cluster (SLURM, Open MPI, multi-host TPU) say so; a no-op on one process.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    if FLAGS.compilation_cache:
        enable_compilation_cache()
    run_experiment(
        FLAGS.protocol,
        data_root=FLAGS.data_root,
        data=FLAGS.data,
        cut=FLAGS.cut,
        model=FLAGS.model,
        history=FLAGS.history,
        objective=FLAGS.objective,
        ranking_eval=FLAGS.ranking_eval,
        baselines=tuple(FLAGS.baselines),
        seed=FLAGS.seed,
        split_seed=FLAGS.split_seed,
        min_len=FLAGS.min_len,
        workdir=FLAGS.workdir,
        resume=FLAGS.resume,
        overwrite=FLAGS.overwrite,
        rating_scale=FLAGS.rating_scale and check_rating_scale(FLAGS.rating_scale),
        results_json=FLAGS.results_json,
        model_overrides=model_overrides,
        train_overrides=train_overrides,
    )


if __name__ == "__main__":
    _cli.run_main(main)
