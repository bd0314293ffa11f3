"""Run records you can trust: checks done before a run writes anything to its workdir.

* :func:`check_output_path` - an output file (``--results_json``) is writable, before training;
* :func:`prepare_workdir` - called once by ``train()`` where it writes ``config.json``: refuses to
  overwrite a finished or partial run without ``overwrite=True``, and with ``resume=True`` compares
  the stored ``config.json`` field by field with the new configuration before anything changes;
* :func:`check_run_info` - the same comparison for ``run.json`` (data flags) of ``run_experiment``;
* :func:`check_finite_metric` - a non-finite validation metric stops the run (:class:`DivergenceError`).

Every refusal is a :class:`RunStateError` whose message is one line.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import shutil
import sys
from typing import Any, Optional

# Fields a resumed run may change: they set how long / how verbosely it runs, not what it learns.
RESUME_MAY_CHANGE = ("max_epochs", "max_steps", "max_seconds", "log_every", "prefetch", "eval_batch_size")
RUN_FILES = ("config.json", "results.json", "log.jsonl", "checkpoints")


class RunStateError(Exception):
    """A run-state problem (workdir, resume, output path): refused before anything is written."""


class DivergenceError(RunStateError, FloatingPointError):
    """A non-finite loss or metric: the run stops; the last good checkpoint stays intact."""


def say(message: str) -> None:
    """A printed decision about the run's records (stderr, never silent)."""
    print(f"[iarn_jax.train] {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- output paths


def check_output_path(path, flag: str = "--results_json") -> None:
    """Raises RunStateError unless ``path`` can be written as a file (checked before training)."""
    if path is None:
        return
    path = pathlib.Path(path)
    if path.is_dir():
        raise RunStateError(f"{flag}={path}: is a folder; give a file name like {path / 'results.json'}")
    parent = path.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise RunStateError(f"{flag}={path}: {parent} is a file, not a folder")
    if path.exists() and not os.access(path, os.W_OK):
        raise RunStateError(f"{flag}={path}: file is not writable")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunStateError(f"{flag}={path}: folder {parent} is not writable")


# --------------------------------------------------------------------------- workdir state


def describe_run(workdir: pathlib.Path) -> Optional[str]:
    """What run the workdir holds ("a finished run (results.json)", ...), or None when none."""
    workdir = pathlib.Path(workdir)
    if (workdir / "results.json").exists():
        return f"a finished run ({workdir / 'results.json'})"
    states = sorted((workdir / "checkpoints").glob("state_*")) if (workdir / "checkpoints").is_dir() else []
    if states:
        return f"a partial run (checkpoint {states[-1].name})"
    present = [name for name in RUN_FILES if (workdir / name).exists()]
    if present:
        return f"run records ({', '.join(present)})"
    return None


def _normalize(value: Any) -> Any:
    return json.loads(json.dumps(value, default=lambda v: list(v) if isinstance(v, tuple) else str(v)))


def _defaults(cls) -> dict:
    out = {}
    for field in dataclasses.fields(cls):
        if field.default is not dataclasses.MISSING:
            out[field.name] = _normalize(field.default)
        elif field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[field.name] = _normalize(field.default_factory())  # type: ignore[misc]
    return out


def config_differences(stored: dict, new: dict, defaults: Optional[dict] = None) -> list[tuple[str, Any, Any]]:
    """Differing fields of two config.json payloads: [(dotted name, stored, new)].

    Compared by field name; a field missing on either side counts as its default (``defaults``:
    section -> {field: default}), so fields added to the configs later do not break the resume of
    older runs. Sections are dicts (``model``, ``train``) or plain values (``protocol``, ``min_len``).
    """
    defaults = defaults or {}
    stored, new = _normalize(stored), _normalize(new)
    diffs = []
    for key in sorted(set(stored) | set(new)):
        a, b = stored.get(key), new.get(key)
        if isinstance(a, dict) or isinstance(b, dict):
            a, b, base = a or {}, b or {}, defaults.get(key, {})
            for name in sorted(set(a) | set(b)):
                va, vb = a.get(name, base.get(name)), b.get(name, base.get(name))
                if va != vb:
                    diffs.append((f"{key}.{name}", va, vb))
        elif key in stored and key in new and a != b:
            diffs.append((key, a, b))
    return diffs


def _with_typed_encoder(payload: dict) -> dict:
    """A stored config.json payload whose model section names its feature encoder in the legacy form
    ("hier:step:r8"), with the typed fields instead (``models.config.encoder_fields``)."""
    from iarn_jax.models.config import encoder_fields

    model = payload.get("model")
    name = model.get("feature_encoder") if isinstance(model, dict) else None
    if not isinstance(name, str) or ":" not in name:
        return payload
    return {**payload, "model": {**model, **encoder_fields(name)}}


def _config_defaults() -> dict:
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training.config import TrainConfig

    return {"model": _defaults(ModelConfig), "train": _defaults(TrainConfig)}


def _refuse_changes(path: pathlib.Path, diffs: list, allowed: tuple = RESUME_MAY_CHANGE) -> list:
    """Raises RunStateError for differences outside ``allowed``; returns the allowed ones."""
    blocking = [d for d in diffs if d[0].rpartition(".")[2] not in allowed]
    if blocking:
        shown = "; ".join(f"{name}: {a!r} -> {b!r}" for name, a, b in blocking)
        may_change = f"only {', '.join(allowed)}" if allowed else f"nothing {path.name} records"
        raise RunStateError(
            f"--resume: the new configuration differs from {path}: {shown}. A resumed run may change "
            f"{may_change}; use another --workdir, or --overwrite to replace the run")
    return [d for d in diffs if d not in blocking]


def _read_json(path: pathlib.Path) -> Optional[dict]:
    try:
        payload = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return payload if isinstance(payload, dict) else None


def check_workdir(workdir, *, resume: bool, overwrite: bool) -> Optional[str]:
    """Refuses a workdir holding a run unless resume or overwrite; returns what it holds."""
    if workdir is None:
        return None
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise RunStateError(f"--workdir={workdir}: is a file, not a folder")
    held = describe_run(workdir) if workdir.exists() else None
    if resume and overwrite:
        raise RunStateError("--resume and --overwrite contradict each other: pass one of them")
    if held and not resume and not overwrite:
        raise RunStateError(f"--workdir={workdir} holds {held}; pass --resume to continue it or "
                            f"--overwrite to replace it (or choose another --workdir)")
    return held


# run.json keys written only when they differ from these values (older runs lack them)
RUN_INFO_DEFAULTS = {"val_mode": "random"}


def check_run_info(workdir, run_info: dict, *, resume: bool) -> None:
    """With resume: refuses data / protocol flags that differ from the stored run.json (a key
    missing on either side counts as its RUN_INFO_DEFAULTS value, e.g. the random validation split)."""
    if workdir is None or not resume:
        return
    path = pathlib.Path(workdir) / "run.json"
    stored = _read_json(path) if path.exists() else None
    if stored is None or not describe_run(pathlib.Path(workdir)):
        return
    _refuse_changes(path, config_differences({**RUN_INFO_DEFAULTS, **stored}, {**RUN_INFO_DEFAULTS, **run_info}),
                    allowed=())


def prepare_workdir(workdir, payload: dict, *, resume: bool, overwrite: bool, ckpt_dir=None) -> None:
    """All checks on the workdir, then (only then) writes config.json.

    resume: compares the stored config.json with ``payload`` (RunStateError on a difference
      outside RESUME_MAY_CHANGE); says when there is nothing to resume.
    overwrite: removes the old run's records (config, results, log, checkpoints) first.
    """
    from iarn_jax.training import checkpoint

    workdir = pathlib.Path(workdir)
    held = check_workdir(workdir, resume=resume, overwrite=overwrite)
    config_path = workdir / "config.json"
    if resume:
        stored = _read_json(config_path) if config_path.exists() else None
        if config_path.exists() and stored is None:
            raise RunStateError(f"{config_path}: unreadable or not a JSON object; cannot check that "
                                f"--resume continues the same run (use --overwrite to replace it)")
        if stored is not None:
            stored = _with_typed_encoder(stored)
            allowed = _refuse_changes(config_path, config_differences(stored, payload, _config_defaults()))
            if allowed:
                say("resume with changed " + ", ".join(f"{n} {a!r} -> {b!r}" for n, a, b in allowed))
        has_checkpoint = ckpt_dir is not None and checkpoint.find_checkpoint(pathlib.Path(ckpt_dir)) is not None
        if not has_checkpoint:
            say(f"--resume: {workdir} holds no checkpoint; starting from scratch")
    elif overwrite and held:
        say(f"--overwrite: replacing {held} in {workdir}")
        for name in RUN_FILES:
            target = workdir / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint.write_json_atomic(config_path, payload)


# --------------------------------------------------------------------------- numerical faults


def last_good_checkpoint(ckpt_dir) -> str:
    if ckpt_dir is None:
        return "none (no --workdir)"
    from iarn_jax.training import checkpoint

    found = checkpoint.find_checkpoint(pathlib.Path(ckpt_dir))
    return f"{pathlib.Path(ckpt_dir) / found[1]} (step {found[0]}), left intact" if found else "none yet"


def check_finite_metric(value: float, step: int, ckpt_dir=None, name: str = "validation RMSE") -> float:
    """``value`` when finite; else DivergenceError naming the step and the last good checkpoint."""
    if value is None or not math.isfinite(float(value)):
        raise DivergenceError(f"training diverged: {name} is {value} at step {step}; "
                              f"last good checkpoint: {last_good_checkpoint(ckpt_dir)}")
    return value
