"""One error path for every launcher: ``run_main(main)`` instead of ``app.run(main)``.

A data, flag, config or run-state error prints one line ``error: <what, where>`` to stderr and
exits with status 2. A traceback is shown only with ``--verbosity=1`` (absl's flag) or
``IARN_DEBUG=1``. Bad flag values (absl's parser) take the same path.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import typing
from typing import Any, Callable

from absl import app, flags

from experiments import _host_memory

from iarn_jax.data.types import DataError
from iarn_jax.training.run_records import RunStateError

FLAGS = flags.FLAGS
EXIT_USER_ERROR = 2
# What a user can fix: bad data, flags, configs, paths or run state. FloatingPointError: a run
# that diverged (its message names the step and the last good checkpoint).
USER_ERRORS = (DataError, ValueError, app.UsageError, RunStateError, FloatingPointError, OverflowError,
               FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, flags.Error)


def debug_requested() -> bool:
    if os.environ.get("IARN_DEBUG", "").strip() not in ("", "0"):
        return True
    try:
        return int(FLAGS["verbosity"].value or 0) >= 1
    except (KeyError, AttributeError, TypeError, ValueError, flags.UnparsedFlagAccessError):
        return False


def error_line(error: BaseException) -> str:
    """The one line printed for ``error``: ``error: <message>`` (newlines folded)."""
    message = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)) \
            and error.filename and str(error.filename) not in message:
        message = f"{error.filename}: {message}"
    return f"error: {message}"


def fail(error: BaseException) -> None:
    """Print the one-line error and exit with status 2."""
    sys.stderr.write(error_line(error) + "\n")
    sys.stderr.flush()
    sys.exit(EXIT_USER_ERROR)


def guarded(main: Callable) -> Callable:
    """``main`` with user errors turned into one line and exit status 2 (a traceback on request)."""

    def wrapped(argv):
        try:
            return main(argv)
        except USER_ERRORS as error:
            if debug_requested():
                raise
            fail(error)

    return wrapped


def parse_flags(argv: list[str]) -> list[str]:
    """absl's parser, but a bad flag value (or config field) is one line and exit status 2."""
    try:
        return FLAGS(argv)
    except flags.UnrecognizedFlagError as error:
        if error.flagname.startswith("config."):  # an override without a config file to override
            error = app.UsageError(f"--{error.flagname} needs --config=FILE before it (e.g. configs/ml100k.py)")
        fail(error)
        raise  # unreachable
    except (flags.Error, SyntaxError) as error:  # SyntaxError: a --config file that is not Python
        fail(error)
        raise  # unreachable
    except (AttributeError, KeyError) as error:  # ml_collections: --config.X of a field the config lacks
        field = str(error).strip("'\"")
        named = [arg for arg in argv if arg.startswith("--config.") and field in arg.split("=")[0].split(".")]
        if not named:
            raise
        fail(app.UsageError(f"{named[0]}: the config has no field '{field}'"))


def run_main(main: Callable) -> None:
    """Use instead of ``app.run(main)`` in a launcher's ``__main__`` block.

    First re-executes the process once with glibc's malloc tunables where they apply, and runs CPU
    steps on the calling thread, so a step's temporaries stay in memory between steps
    (``experiments._host_memory``; ``IARN_HOST_MALLOC=default`` switches both off).
    """
    _host_memory.reexec_with_malloc_tunables()
    _host_memory.run_cpu_steps_inline()
    app.run(guarded(main), flags_parser=parse_flags)


# --------------------------------------------------------------------------- config values


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) is None and hasattr(hint, "__name__"):
        return hint.__name__
    return str(hint).replace("typing.", "")


def coerce_field(cls, name: str, value: Any, raw: str, flag: str) -> Any:
    """``value`` checked against the type of dataclass field ``cls.name``; app.UsageError otherwise.

    int fields take ints (not bools), float fields ints or floats, bool fields True/False, str
    fields any text, Optional[X] also None, tuple[X, ...] a tuple/list of X (or one X).
    """
    hint = typing.get_type_hints(cls)[name]

    def check(hint, value):
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin is typing.Union:
            if value is None and type(None) in args:
                return None
            for arg in (a for a in args if a is not type(None)):
                try:
                    return check(arg, value)
                except TypeError:
                    continue
            raise TypeError
        if origin is tuple:
            items = value if isinstance(value, (tuple, list)) else (value,)
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(check(args[0], item) for item in items)
            if len(items) != len(args):
                raise TypeError
            return tuple(check(a, item) for a, item in zip(args, items))
        if hint is bool:
            if isinstance(value, bool):
                return value
            raise TypeError
        if hint is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            raise TypeError
        if hint is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            raise TypeError
        if hint is str:
            return value if isinstance(value, str) else raw
        if isinstance(hint, type) and isinstance(value, hint):
            return value
        raise TypeError

    try:
        return check(hint, value)
    except TypeError:
        raise app.UsageError(f"{flag}: field '{name}' of {cls.__name__} expects {_type_name(hint)}, "
                             f"got {raw!r}") from None


def field_names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}
