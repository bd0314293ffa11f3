r"""Print a protocol's data statistics (the paper's Table 1 plus split sizes).

  python -m experiments.data_stats --protocol=clothing
  python -m experiments.data_stats --protocol=synthetic --json
  python -m experiments.data_stats --data=ml-dat:/data/ml-1m --cut=2002-01-01

--data needs --cut unless the data carries its own split; --seed (= --split_seed) seeds the
validation split.
"""
from __future__ import annotations

import functools
import json
import sys

from absl import flags

from experiments import _cli, _flags
from iarn_jax.data import protocols

FLAGS = flags.FLAGS


@functools.cache  # once per process
def define_flags() -> None:
    _flags.define("protocol", "data_root", "data", "cut", "min_len", "split_seed", "rating_scale", "json")
    flags.DEFINE_alias("seed", "split_seed")  # this launcher's --seed is the split's
    flags.DEFINE_enum("val_mode", "random", ["random", "temporal"], "Validation split mode.")


_TABLE = (("n_users", "#User"), ("n_items", "#Item"), ("n_ratings", "#Rating"), ("n_features", "#Feature"),
          ("avg_user_len", "#U_av_T"), ("avg_item_len", "#I_av_T"), ("n_train", "train pairs (before val)"),
          ("n_val", "validation pairs"), ("n_test", "test pairs"), ("n_users_kept", "users kept (min_len)"),
          ("n_items_kept", "items kept (min_len)"), ("n_history", "history ratings (all training)"))


def compute_stats(protocol: str, data_root=None, data=None, cut=None, min_len: int = 3, seed: int = 123,
                  val_mode: str = "random", rating_scale=None) -> dict:
    if data:
        from iarn_jax.data.loaders import parse_data_flag
        from iarn_jax.data.loaders.dispatch import check_rating_scale

        fmt, path = parse_data_flag(data)
        split = protocols.custom_protocol(fmt, path, cut, seed=seed, min_len=min_len, val_mode=val_mode,
                                          rating_scale=None if rating_scale is None else check_rating_scale(rating_scale))
    elif rating_scale is not None:
        raise ValueError("--rating_scale applies to --data=csv:PATH / parquet:PATH only")
    else:
        split = protocols.load_protocol(protocol, data_root, seed=seed, min_len=min_len, val_mode=val_mode)
    return protocols.protocol_stats(split)


def format_stats(stats: dict) -> str:
    lines = [f"protocol {stats['protocol']}  cut {stats['cut']}  min_len {stats['min_len']}  seed {stats['seed']}"]
    for key, label in _TABLE:
        value = stats[key]
        lines.append(f"  {label:32s} {value:,.2f}" if isinstance(value, float) else f"  {label:32s} {value:,}")
    lines.append(f"  {'time range':32s} {stats['time_min']} .. {stats['time_max']} ({stats['time_unit']})")
    lines.append(f"  {'data sha256':32s} {stats['data_sha256']}")
    return "\n".join(lines)


def main(argv):
    _flags.check_no_arguments(argv)
    # bad data or flags: one clear line, exit status 2 (experiments._cli.run_main)
    stats = compute_stats(FLAGS.protocol, FLAGS.data_root, FLAGS.data, FLAGS.cut, FLAGS.min_len,
                          FLAGS.split_seed, FLAGS.val_mode, FLAGS.rating_scale)
    sys.stdout.write((json.dumps(stats) if FLAGS.json else format_stats(stats)) + "\n")


if __name__ == "__main__":
    define_flags()
    _cli.run_main(main)
