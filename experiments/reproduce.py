r"""Reproduce the paper's comparison (Table 2) and backbone study (Figure 3) on one protocol.

  python -m experiments.reproduce --protocol=ml100k --data_root=../shared/data --table=2
  python -m experiments.reproduce --protocol=clothing --table=2 --methods=mf,bpr,iarn \
      --iarn_max_seconds=1800 --workdir=runs/table2_clothing --results_json=runs/clothing_table2.json
  python -m experiments.reproduce --protocol=ml100k --figure=3 --workdir=runs/table2_ml100k
  python -m experiments.reproduce --data=ml-dat:/data/ml-1m --cut=2002-01-01 --table=2 --workdir=runs/table2_mine
  python -m experiments.reproduce --protocol=clothing --figure=4 --iarn_max_seconds=600 \
      [--encoders=plain,flat:target,hier:target,hier:step]

Every method is fitted on the same split and evaluated with the same metrics: test RMSE / MAE of
clipped predictions (rating models), full-ranking AUC / NDCG@10 / HR@10 over a fixed, seeded sample
of test users (1000; 500 on MovieLens). The IARN variants (RNN, LSTM, TAGM, IARN) train with the
protocol's config file (``configs/``), capped by ``--iarn_max_seconds`` and ``--max_len``.
Each finished method is cached in ``WORKDIR/methods/`` (default ``runs/reproduce_PROTOCOL``; IARN checkpoints in
``WORKDIR/iarn_runs/``), so a re-run resumes; ``--fresh`` ignores the cache.

Outputs (WORKDIR): ``table2.md``, ``table2.json`` (rows + protocol, data checksum, seeds, users,
per-method configs and timings), ``figure3.md``, ``figure3.json``, ``figure3.png`` (with
matplotlib); ``figure4.md``, ``figure4.json``, ``figure4.png`` for ``--figure=4`` (IARN-Plain vs IARN
with each feature encoder, test RMSE; the plain row reuses Table 2's IARN run when it was trained
with the same budget). ``--results_json`` gets the list of Table 2 rows (method, rmse, mae, auc, ndcg10, hr10,
seconds; null where a metric does not apply).
"""
from __future__ import annotations

import functools
import json
import pathlib
import shutil
import time

from absl import flags

from experiments import _cli, _flags, _output
from iarn_jax import jsonio
from iarn_jax.reports import figures, registry, runner, tables

FLAGS = flags.FLAGS


@functools.cache  # once per process
def define_flags() -> None:
    _flags.define("protocol", "data_root", "data", "cut", "workdir", "results_json", "seed", "split_seed",
                  "val_mode", "use_tqdm")
    flags.DEFINE_integer("table", None, "2: the Table 2 comparison.")
    flags.DEFINE_integer("figure", None, "3: RMSE by minimum history length for RNN / LSTM / TAGM / IARN; "
                         "4: IARN-Plain vs IARN with feature encoders.")
    flags.DEFINE_string("encoders", None, "Figure 4's encoder specs, comma-separated ('plain' = none; default: "
                        "plain,flat:target,hier:target,hier:step on clothing, plain,flat:target,flat:step else).")
    flags.DEFINE_string("methods", None, f"Comma-separated subset of: {', '.join(registry.METHODS)} "
                        "(default: Table 2's methods).")
    flags.DEFINE_float("iarn_max_seconds", None, "Training time cap of each IARN variant (TrainConfig.max_seconds).")
    flags.DEFINE_integer("max_len", None, "History cap of the IARN variants (TrainConfig.max_len; default: protocol's).")
    flags.DEFINE_integer("n_eval_users", None, "Evaluated users (default 1000, 500 on MovieLens).")
    flags.DEFINE_integer("eval_seed", 0, "Seed of the evaluated-user sample.")
    flags.DEFINE_bool("fresh", False, "Ignore (and delete) the workdir's cached methods.")
    flags.DEFINE_bool("quiet", False, "Less progress output.")


def reproduce(protocol: str, *, split=None, data_root=None, data=None, cut=None, table=None, figure=None, methods=None,
              workdir=None, results_json=None, iarn_max_seconds=None, encoders=None, max_len=None, n_eval_users=None,
              eval_seed=0, seed=0, split_seed=123, val_mode=None, fresh=False, verbose=True) -> dict:
    """The library entry point of the command (``split`` may be given directly, e.g. in tests;
    ``data`` = "FORMAT:PATH" with a ``cut`` date runs on custom data, as ``experiments.train``).
    ``val_mode``: the validation pairs every method selects and stops on (None: the protocol config's
    ``val_mode``, that of its rating setting: one split serves all methods).
    Returns {"rows", "figure3", "figure4"} (each None when not requested)."""
    if table is None and figure is None:
        table = 2
    if table not in (None, 2) or figure not in (None, 3, 4):
        raise ValueError("only --table=2, --figure=3 and --figure=4 exist")
    start = time.time()
    if split is None:
        from iarn_jax import configs
        from iarn_jax.training.experiment import config_val_mode, load_split

        val_mode = val_mode or config_val_mode(configs.get_config("custom" if data else protocol))
        split = load_split(protocol, data_root, data=data, cut=cut, seed=split_seed, val_mode=val_mode)
    workdir = pathlib.Path(workdir or f"runs/reproduce_{split.name}")
    if fresh and (workdir / "methods").exists():
        shutil.rmtree(workdir / "methods")
    workdir.mkdir(parents=True, exist_ok=True)
    table_methods = registry.parse_methods(methods) if table else []
    figure_methods = [m for m in registry.parse_methods(methods, registry.BACKBONES)
                      if m in registry.BACKBONES] if figure == 3 else []
    needed = table_methods + [m for m in figure_methods if m not in table_methods]
    result = runner.run_comparison(
        split, needed, eval_seed=eval_seed, n_eval_users=n_eval_users, seed=seed, workdir=workdir,
        iarn_max_seconds=iarn_max_seconds, max_len=max_len, verbose=verbose)
    record = {**result["record"], "iarn_max_seconds": iarn_max_seconds, "max_len": max_len,
              "wall_seconds": time.time() - start}
    out = {"rows": None, "figure3": None, "figure4": None}
    if table:
        rows = [result["outputs"][k].row for k in table_methods]
        _write_outputs(workdir, "table2", tables.markdown_table(
            rows, title=f"Table 2 on `{split.name}` ({record['n_users']} evaluated users, data "
                        f"{record['checksum']}, seed {seed})"), record, rows)
        if results_json:
            path = pathlib.Path(results_json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(rows, indent=1))
        out["rows"] = rows
    if figure == 4:
        specs = [e.strip() for e in encoders.split(",") if e.strip()] if isinstance(encoders, str) else encoders
        rows = figures.run_figure4(split, specs, seed=seed, workdir=workdir, iarn_max_seconds=iarn_max_seconds,
                                   max_len=max_len, verbose=verbose)
        _write_outputs(workdir, "figure4", tables.figure4_markdown(
            rows, title=f"Figure 4 on `{split.name}`: IARN-Plain vs feature encoders (IARN budget "
                        f"{iarn_max_seconds} s)"), record, rows)
        if figures.plot_figure4(rows, workdir / "figure4.png", title=split.name):
            print(f"plot: {workdir / 'figure4.png'}")
        out["figure4"] = rows
    if figure == 3:
        names = [registry.METHODS[k].name for k in figure_methods]
        rows = figures.figure3_rows(split, result["outputs"], figure_methods)
        _write_outputs(workdir, "figure3", tables.figure3_markdown(
            rows, names, title=f"Figure 3 on `{split.name}`: test RMSE on pairs whose user and item have >= L "
                               "training interactions"), record, rows)
        if figures.plot_figure3(rows, names, workdir / "figure3.png", title=split.name):
            print(f"plot: {workdir / 'figure3.png'}")
        else:
            print("matplotlib not installed (pip install .[plots]): no plot, the table above stands")
        out["figure3"] = rows
    return out


def _write_outputs(workdir: pathlib.Path, name: str, text: str, record: dict, rows: list) -> None:
    """Prints the table and writes ``NAME.md`` and ``NAME.json`` (the run record plus the rows)."""
    print("\n" + text + "\n", flush=True)
    (workdir / f"{name}.md").write_text(text + "\n")
    jsonio.write_json_atomic(workdir / f"{name}.json", {**record, "rows": rows})


def main(argv):
    _flags.check_no_arguments(argv)
    _output.quiet_output()
    _flags.check_data_cut()
    reproduce(FLAGS.protocol, data_root=FLAGS.data_root, data=FLAGS.data, cut=FLAGS.cut, table=FLAGS.table,
              figure=FLAGS.figure, methods=FLAGS.methods, workdir=FLAGS.workdir, results_json=FLAGS.results_json,
              iarn_max_seconds=FLAGS.iarn_max_seconds, encoders=FLAGS.encoders, max_len=FLAGS.max_len,
              n_eval_users=FLAGS.n_eval_users, eval_seed=FLAGS.eval_seed, seed=FLAGS.seed,
              split_seed=FLAGS.split_seed, val_mode=FLAGS.val_mode, fresh=FLAGS.fresh, verbose=not FLAGS.quiet)


if __name__ == "__main__":
    define_flags()
    _cli.run_main(main)  # data / flag / run-state errors: one line, exit status 2
