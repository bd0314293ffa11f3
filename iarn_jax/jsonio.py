"""JSON helpers shared by every writer of results (runs, checkpoints' progress, reports, explanations).

* :func:`jsonable`: a value -> plain JSON types (NumPy scalars and arrays, tuples and sets become
  numbers and lists, dicts and lists are converted recursively, anything else becomes its ``str``);
  usable directly or as ``json.dumps(..., default=jsonable)``.
* :func:`write_json_atomic`: write to ``PATH.tmp``, then rename over ``PATH``, so a reader never sees a
  half-written file (the file's presence can mark a finished job).
"""
from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import numpy as np


def jsonable(value: Any):
    """``value`` with NumPy scalars / arrays, tuples and sets turned into JSON numbers and lists."""
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def write_json_atomic(path: str | pathlib.Path, payload: Any, **dumps_kwargs) -> None:
    """Writes ``payload`` as JSON (indent 1, ``default=jsonable`` unless given) via ``PATH.tmp`` + rename."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, **{"indent": 1, "default": jsonable, **dumps_kwargs}))
    os.replace(tmp, path)
