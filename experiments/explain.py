r"""Explain one prediction of a trained model by its attention gates (paper Figure 5).

On the work directory of a finished ``python -m experiments.train --workdir=DIR`` run:

  python -m experiments.explain --workdir=runs/ml100k                       # first test pair
  python -m experiments.explain --workdir=runs/ml100k --user=13 --item=300 --png=explain.png
  python -m experiments.explain --workdir=runs/ml100k --json
  python -m experiments.explain --workdir=runs/mine --data=ml-dat:/data/ml-1m --cut=2002-01-01

--user / --item are the source's original ids; --data_root / --data / --cut default to the run's. Prints the predicted rating (a ranking model's score) and both histories
(user: items, item: users) with each step's gate; --png writes the Figure-5 style picture (needs
matplotlib); --json prints the explanation as JSON instead of text.
"""
from __future__ import annotations

import functools
import sys

from absl import app, flags

from experiments import _cli, _flags, _output

FLAGS = flags.FLAGS


@functools.cache  # once per process
def define_flags() -> None:
    _flags.define("workdir", "data_root", "data", "cut", "json", "use_tqdm")
    flags.mark_flag_as_required("workdir")
    flags.DEFINE_string("user", None, "Original user id (default: the first test pair's).")
    flags.DEFINE_string("item", None, "Original item id (default: the first test pair's).")
    flags.DEFINE_string("png", None, "Write the Figure-5 style picture here.")
    flags.DEFINE_integer("max_steps", 20, "Steps per row in the picture; the text shows all (see --text_steps).")
    flags.DEFINE_integer("text_steps", None, "Show only the most recent N steps of each history in the text.")


def main(argv):
    _flags.check_no_arguments(argv)
    _output.quiet_output()  # absl / orbax INFO lines only with --verbosity
    _flags.check_data_cut()
    if (FLAGS.user is None) != (FLAGS.item is None):
        raise app.UsageError("give both --user and --item (original ids), or neither (the first test pair)")
    from iarn_jax.interpret.explain import explain, load_run

    result = load_run(FLAGS.workdir, data_root=FLAGS.data_root, data=FLAGS.data, cut=FLAGS.cut)
    if FLAGS.user is None:
        test = result.data.split.test
        if not len(test):
            raise app.UsageError("the run's split has no test pairs; give --user and --item")
        user, item, original = int(test["user"].iloc[0]), int(test["item"].iloc[0]), False
    else:
        user, item, original = FLAGS.user, FLAGS.item, True
    try:
        explanation = explain(result, user, item, original_ids=original)
    except KeyError as exc:
        raise app.UsageError(str(exc)) from exc
    if FLAGS.json:
        print(explanation.to_json(indent=1))
    else:
        print(explanation.format(FLAGS.text_steps))
    if FLAGS.png:
        try:
            from iarn_jax.interpret.plot import plot_explanation

            path = plot_explanation(explanation, FLAGS.png, max_steps=FLAGS.max_steps)
        except ImportError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        print(f"wrote {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    define_flags()
    _cli.run_main(main)  # data / flag / run-state errors: one line, exit status 2
