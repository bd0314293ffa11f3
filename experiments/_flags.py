"""The flags several launchers share, each defined once here.

Every launcher has a ``define_flags()`` that calls :func:`define` with the shared names it uses and
then defines its own flags; it runs in the launcher's ``__main__`` block (and in tests that call the
launcher's ``main`` in-process), never at import. So any launchers can be imported into one process
(tests, notebooks) even where two of them give one name different meanings (train's ``--history``
is a history mode, recommend's a list of ratings).
"""
from __future__ import annotations

from absl import app, flags

from iarn_jax import configs

FLAGS = flags.FLAGS

_SHARED = {
    "protocol": lambda: flags.DEFINE_enum(
        "protocol", "synthetic", list(configs.PROTOCOLS),
        "Named protocol (its config file: configs/PROTOCOL.py; synthetic: configs/default.py)."),
    "data_root": lambda: flags.DEFINE_string(
        "data_root", None, "Folder holding the datasets (default: ../shared/data, or the run's for a --workdir "
        "that is read)."),
    "data": lambda: flags.DEFINE_string(
        "data", None, "Custom data as FORMAT:PATH (e.g. ml-dat:/data/ml-1m) instead of --protocol; needs --cut."),
    "cut": lambda: flags.DEFINE_string(
        "cut", None, "Global time cut for --data: a date (YYYY-MM-DD, UTC) or unix seconds."),
    "min_len": lambda: flags.DEFINE_integer("min_len", 3, "Minimum training ratings per kept user and item."),
    "split_seed": lambda: flags.DEFINE_integer(
        "split_seed", 123, "Seed of the validation split (the reference code's 123)."),
    "val_mode": lambda: flags.DEFINE_enum(
        "val_mode", None, ["random", "temporal"],
        "Validation pairs: a random sample of the training period (the reference code) or its latest pairs "
        "(selection and early stopping on the part of training nearest the test period; not trained on). "
        "Default: the config's (val_mode, or its ranking / joint setting's)."),
    "seed": lambda: flags.DEFINE_integer("seed", 0, "Seed of initialisation, dropout, sampling and batch order."),
    "rating_scale": lambda: flags.DEFINE_string(
        "rating_scale", None, "LOW,HIGH rating scale of --data=csv:/parquet: tables (default: the first standard "
        "scale holding every rating)."),
    "workdir": lambda: flags.DEFINE_string(
        "workdir", None, "The run's folder: checkpoints, logs and results (train), cache and tables (reproduce), "
        "or the finished experiments.train run to read (explain, recommend)."),
    "results_json": lambda: flags.DEFINE_string("results_json", None, "Write the results as JSON here."),
    "json": lambda: flags.DEFINE_bool("json", False, "Print one JSON object instead of text."),
    "use_tqdm": lambda: flags.DEFINE_bool(
        "use_tqdm", True, "Progress bars on a terminal (plain periodic lines otherwise)."),
}


def define(*names: str) -> None:
    """Defines the shared flags ``names`` (those not defined yet)."""
    for name in names:
        if name not in FLAGS:
            _SHARED[name]()


def check_no_arguments(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")


def check_data_cut() -> None:
    """--data needs --cut (the global time cut)."""
    if FLAGS.data and not FLAGS.cut:
        raise app.UsageError("--data needs --cut=YYYY-MM-DD (the global time cut)")
