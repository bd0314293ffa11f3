"""configs/: one locked ml_collections file per protocol, holding exactly the defaults the
per-protocol dicts of ``training/experiment.py`` had (golden file recorded on commit fbfaff2)."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
import types

import numpy as np
import pandas as pd
import pytest

from iarn_jax import configs
from iarn_jax.training.defaults import build_configs, config_for

REPO = pathlib.Path(__file__).resolve().parents[1]
GOLDEN = json.loads((REPO / "tests" / "golden" / "protocol_configs.json").read_text())


def _split(name, user_len=5, n_users=10, n_items=20):
    rng = np.random.default_rng(0)
    rows = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, user_len, replace=False)]
    history = pd.DataFrame(rows, columns=["user", "item"])
    return types.SimpleNamespace(name=name, history=history, train=history)


SPLITS = {"synthetic": ("synthetic",), "clothing": ("clothing",), "ml100k": ("ml100k",), "mlsmall": ("mlsmall",),
          "custom-long": ("custom", 400, 30, 2000), "custom-sparse": ("custom", 5, 200, 60)}


@pytest.mark.parametrize("key", [k for k in GOLDEN if "/" in k])
def test_config_files_build_the_configs_of_the_old_defaults(key):
    protocol, variant, objective = key.split("/")
    split = _split(*SPLITS[protocol])
    model, train = build_configs(config_for(split), split, variant=variant, seed=0,
                                 objective=None if objective == "default" else objective, verbose=False)
    new = json.loads(json.dumps({"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}))
    assert new == GOLDEN[key]


def test_synthetic_data_size_is_unchanged():
    assert configs.get_config("synthetic").protocol_kwargs.to_dict() == GOLDEN["synthetic_data"]


@pytest.mark.parametrize("protocol", list(configs.CONFIG_MODULES))
def test_configs_are_locked_and_typed(protocol):
    config = configs.get_config(protocol)
    with pytest.raises(AttributeError, match="nosuch"):
        config.model.nosuch = 1
    with pytest.raises(TypeError, match="hidden_size"):
        config.model.hidden_size = 2.5
    config.train.max_len = 16  # an Optional[int] field takes an int
    assert config.protocol == protocol


@pytest.mark.parametrize("name", ["default", "clothing", "ml100k", "mlsmall", "custom"])
def test_top_level_config_files_are_the_package_configs(name):
    spec = importlib.util.spec_from_file_location(f"top_{name}", REPO / "configs" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.get_config() == configs.get_config("synthetic" if name == "default" else name)


def test_unknown_protocol_is_refused():
    with pytest.raises(ValueError, match="no config for protocol 'nope'"):
        configs.get_config("nope")
