"""configs/: one locked ml_collections file per protocol, holding exactly the defaults the
per-protocol dicts of ``training/experiment.py`` had (golden file recorded on commit fbfaff2; since then
ml100k / mlsmall start at HieVH and train jointly with the time-aware item bias: validated changes
of issues 10 / 11, their golden entries regenerated; Clothing has a ranking setting (issue 10; causal
histories since session 7, the BCE loss since session 10), ml100k / mlsmall one since session 7
(sampled softmax, 15 epochs), and Clothing stops after 20 validations without improvement (issue 12);
Clothing has a joint setting (session 8, its golden entries generated then); Clothing's rating setting
has category biases (issue 11, session 13: feature_bias added to its default entries) and whole histories
without the pair's own step (session 14: history_mode full_without_self in its default entries)).
The validation split is a config field too (``val_mode``, below): random pairs everywhere, except Clothing's
rating setting, which stops on the training period's latest pairs since session 16."""
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
    # fields added after the golden file (the typed feature-encoder fields) must hold their defaults
    for part, config_class in (("model", type(model)), ("train", type(train))):
        defaults = json.loads(json.dumps(dataclasses.asdict(config_class(**GOLDEN[key][part]))))
        for field in set(new[part]) - set(GOLDEN[key][part]):
            assert new[part].pop(field) == defaults[field], (part, field)
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
    with pytest.raises(ValueError, match="unknown protocol 'nope'"):
        configs.get_config("nope")


# --------------------------------------------------------------------------- experiments.train --config


@pytest.fixture
def train_flags(monkeypatch):
    """Parses a train command line in-process (ml_collections reads --config.X overrides from sys.argv)."""
    from absl import flags

    from experiments import train as train_cli

    train_cli.define_flags()

    def parse(*argv):
        monkeypatch.setattr("sys.argv", ["train", *argv])
        flags.FLAGS.unparse_flags()
        flags.FLAGS(["train", *argv])
        return train_cli.selected_config()

    yield parse
    flags.FLAGS.unparse_flags()


def test_config_file_and_overrides_select_the_run_configs(train_flags):
    protocol, config, model, train = train_flags("--config=configs/ml100k.py", "--config.model.dropout=0.25",
                                                 "--config.train.max_len=64")
    assert protocol == "ml100k" and config.model.dropout == 0.25 and config.train.max_len == 64
    assert model == {"dropout": 0.25} and train == {"max_len": 64}
    split = _split("ml100k")
    model_config, train_config = build_configs(config, split, variant="tagm", model_overrides=model,
                                               train_overrides=train, verbose=False)
    assert model_config.dropout == 0.25 and not model_config.gate_match and train_config.max_len == 64
    assert model_config.hidden_size == 32 and train_config.factor_l2 == 0.01  # the rest: ml100k.py


@pytest.mark.parametrize("argv,protocol,name", [((), "synthetic", "synthetic"),
                                                (("--protocol=clothing",), "clothing", "clothing"),
                                                (("--data=csv:/x.csv", "--cut=2000-01-01"), "synthetic", "custom")])
def test_protocol_or_data_picks_the_config_file(train_flags, argv, protocol, name):
    got_protocol, config, model, train = train_flags(*argv)
    assert (got_protocol, config.protocol, model, train) == (protocol, name, {}, {})
    assert config == configs.get_config(name)


def test_contradicting_protocol_and_config_is_refused(train_flags):
    from absl import app

    with pytest.raises(app.UsageError, match="contradicts --config"):
        train_flags("--config=configs/ml100k.py", "--protocol=clothing")
    with pytest.raises(app.UsageError, match="needs --data"):
        train_flags("--config=configs/custom.py")


@pytest.mark.parametrize("override,needles", [
    ("--config.model.nosuch=1", ["--config.model.nosuch=1", "no field 'nosuch'"]),
    ("--config.model.embed_dim=2.5", ["--config.model.embed_dim=2.5", "int"]),
])
def test_wrong_config_field_or_type_is_one_error_line(override, needles):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "IARN_DEBUG"}
    out = subprocess.run([sys.executable, "-m", "experiments.train", "--config=configs/ml100k.py", override],
                         cwd=REPO, env={**env, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=120)
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert out.returncode == 2 and len(errors) == 1 and "Traceback" not in out.stderr, out.stderr
    assert all(needle in errors[0] for needle in needles), errors[0]


def test_another_objective_resets_the_configs_selection_metric():
    """A config's val_metric belongs to its own objective: --objective=ranking on a config that selects
    a joint model on RMSE selects on the sampled AUC ("auto"); an explicit override still wins."""
    from iarn_jax.training.defaults import train_settings

    joint = {"objective": "joint", "val_metric": "rmse", "history_mode": "full_without_self"}
    assert train_settings(joint, "ranking")["val_metric"] == "auto"
    assert train_settings(joint, "joint")["val_metric"] == "rmse"
    assert train_settings(joint)["val_metric"] == "rmse"
    assert train_settings(joint, "ranking", overrides={"val_metric": "rmse"})["val_metric"] == "rmse"
    rating = {"objective": "rating", "history_mode": "full"}
    assert train_settings(rating, "ranking")["history_mode"] == "full_without_self"
    assert train_settings(rating, "ranking", history="causal")["history_mode"] == "causal"
    assert train_settings(rating)["history_mode"] == "full"


def test_ranking_fields_apply_only_to_the_ranking_objective():
    from iarn_jax.configs import base

    config = base.get_config("synthetic")
    config.ranking.model.hidden_size = 16
    config.ranking.train.max_len = 32
    split = _split("synthetic")
    for objective, hidden, max_len in ((None, 64, None), ("rating", 64, None), ("joint", 64, None),
                                       ("ranking", 16, 32)):
        model, train = build_configs(config, split, objective=objective, verbose=False)
        assert (model.hidden_size, train.max_len) == (hidden, max_len), objective
    # the joint fields likewise; a section that names its objective keeps its own selection metric
    config.joint.train = {"max_len": 24, "objective": "joint", "val_metric": "rmse"}
    for objective, max_len, selection in ((None, None, "rmse"), ("ranking", 32, "auc"), ("joint", 24, "rmse")):
        _, train = build_configs(config, split, objective=objective, verbose=False)
        assert (train.max_len, train.selection_metric) == (max_len, selection), objective
    # an explicit override still wins over the ranking fields
    model, _ = build_configs(config, split, objective="ranking", model_overrides={"hidden_size": 8}, verbose=False)
    assert model.hidden_size == 8


# the validation pairs of each protocol's settings (data.protocols.split_by_time's val_mode)
VAL_MODES = {(protocol, objective): "random" for protocol in configs.CONFIG_MODULES
             for objective in (None, "rating", "ranking", "joint")}
# Clothing's rating setting stops on the training period's latest pairs (issue 11, session 16)
VAL_MODES.update({("clothing", None): "temporal", ("clothing", "rating"): "temporal"})


@pytest.mark.parametrize("protocol,objective", sorted(VAL_MODES, key=str))
def test_each_setting_validates_on_its_recorded_split(protocol, objective):
    from iarn_jax.training.defaults import config_val_mode

    assert config_val_mode(configs.get_config(protocol), objective) == VAL_MODES[protocol, objective]


def test_a_ranking_or_joint_section_sets_the_validation_split_of_its_objective_only():
    from iarn_jax.configs import base
    from iarn_jax.training.defaults import config_val_mode

    config = base.get_config("synthetic")
    config.val_mode = "temporal"
    config.ranking.val_mode = "random"
    assert [config_val_mode(config, o) for o in (None, "rating", "ranking", "joint")] == \
        ["temporal", "temporal", "random", "temporal"]  # the joint section sets none: the config's
    config.train.objective = "ranking"  # a config whose own objective is ranking: its section is not read
    assert config_val_mode(config, "ranking") == "temporal"
