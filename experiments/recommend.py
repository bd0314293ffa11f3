r"""Top-K recommendations for one user, from a finished run or a saved model.

  python -m experiments.recommend --workdir=runs/ml100k --user=196 --k=10
  python -m experiments.recommend --model_path=models/ml100k --user=196 --explain
  python -m experiments.recommend --workdir=runs/ml1m --data=ml-dat:/data/ml-1m --cut=2002-01-01 --user=6040
  python -m experiments.recommend --model_path=models/ml100k --history=50:5,172:4,181:5   # a new user

--user is the source's original id. --workdir reloads the run's data (``run.json``; --data / --cut /
--data_root override it); --model_path serves a folder written by ``iarn_jax.save_model`` (or by
--save_model here) without any data. --history gives ratings ITEM:RATING[:TIME] (comma-separated)
that extend --user's history, or are a new user's whole history without --user. --explain adds the
history steps that drove each score.
"""
from __future__ import annotations

import functools

from absl import app, flags

from experiments import _cli, _flags, _output

FLAGS = flags.FLAGS


@functools.cache  # once per process
def define_flags() -> None:
    _flags.define("workdir", "data_root", "data", "cut", "use_tqdm")
    flags.DEFINE_string("model_path", None, "A saved model (iarn_jax.save_model).")
    flags.DEFINE_string("user", None, "Original user id.")
    flags.DEFINE_string("history", None, "Ratings given now: ITEM:RATING[:TIME],... (original item ids).")
    flags.DEFINE_integer("k", 10, "Number of recommendations.")
    flags.DEFINE_bool("explain", False, "Show the history steps that drove each score.")
    flags.DEFINE_bool("include_seen", False, "Also rank the items the user has already rated.")
    flags.DEFINE_string("save_model", None, "Also save the loaded run as a servable model folder here.")


def parse_history_flag(text: str) -> list:
    """"50:5,172:4:1998-03-01" -> [("50", 5.0, None), ("172", 4.0, "1998-03-01")]."""
    rows = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        fields = part.split(":", 2)
        if len(fields) < 2:
            raise app.UsageError(f"--history entry {part!r}: use ITEM:RATING or ITEM:RATING:TIME")
        try:
            rating = float(fields[1])
        except ValueError:
            raise app.UsageError(f"--history entry {part!r}: the rating {fields[1]!r} is not a number") from None
        time = fields[2] if len(fields) == 3 else None
        rows.append((fields[0], rating, int(time) if time is not None and time.isdigit() else time))
    return rows


def format_recommendations(frame, explain: bool, predicts_ratings: bool = True) -> str:
    """One line per recommendation (plus its reasons with ``explain``); a ranking-trained model's
    scores are labelled "score", not "predicted" (they are not ratings)."""
    label = "predicted" if predicts_ratings else "score"
    lines = []
    for row in frame.itertuples(index=False):
        name = getattr(row, "title", None) or f"item {row.item}"
        lines.append(f"{row.rank:>3}. {name}  (item {row.item}, {label} {row.score:.2f})")
        if explain:
            if row.because:
                lines.append(f"       because you rated: {row.because}")
            raters = ", ".join(f"user {s['user']} ({s['rating']:g}, gate {s['gate']:.2f})" for s in row.item_steps)
            if raters:
                lines.append(f"       its raters that mattered: {raters}")
    return "\n".join(lines)


def load(workdir, model_path, *, data_root=None, data=None, cut=None):
    """A servable model: ``load_model(model_path)`` or the run in ``workdir``."""
    import iarn_jax
    from iarn_jax.interpret.explain import load_run

    if (workdir is None) == (model_path is None):
        raise app.UsageError("give exactly one of --workdir (a finished run) or --model_path (a saved model)")
    if model_path is not None:
        return iarn_jax.load_model(model_path)
    if data and not cut:
        raise app.UsageError("--data needs --cut=YYYY-MM-DD (the global time cut)")
    return load_run(workdir, data_root=data_root, data=data, cut=cut)


def main(argv):
    _flags.check_no_arguments(argv)
    _output.quiet_output()
    import iarn_jax

    if FLAGS.user is None and FLAGS.history is None:
        raise app.UsageError("give --user=ID (original id) and/or --history=ITEM:RATING,...")
    model = load(FLAGS.workdir, FLAGS.model_path, data_root=FLAGS.data_root, data=FLAGS.data, cut=FLAGS.cut)
    if FLAGS.save_model:
        print(f"saved model: {iarn_jax.save_model(model, FLAGS.save_model)}")
    history = parse_history_flag(FLAGS.history) if FLAGS.history else None
    try:
        frame = iarn_jax.recommend(model, FLAGS.user, FLAGS.k, exclude_seen=not FLAGS.include_seen,
                                   explain=FLAGS.explain, history=history)
    except KeyError as exc:
        raise app.UsageError(str(exc.args[0] if exc.args else exc)) from exc
    who = f"user {FLAGS.user}" if FLAGS.user is not None else "a new user"
    extra = f" + {len(history)} new rating(s)" if history and FLAGS.user is not None else ""
    print(f"top {len(frame)} for {who}{extra}:")
    train_config = getattr(model, "train_config", None)
    print(format_recommendations(frame, FLAGS.explain,
                                 predicts_ratings=train_config is None or train_config.predicts_ratings))
    return 0


if __name__ == "__main__":
    define_flags()
    _cli.run_main(main)  # data / flag / run-state errors: one line, exit status 2
