"""The skeleton every protocol file edits: the dataclasses' defaults as typed, unlocked fields."""
from __future__ import annotations

import dataclasses
import typing

import ml_collections
from ml_collections import config_dict

from iarn_jax.models.config import ModelConfig
from iarn_jax.training.config import TrainConfig

# fields a run sets itself, never a config: the variant (--model), the seed (--seed), the data sizes
RUN_FIELDS = {"variant", "seed", "n_users", "n_items", "global_mean"}


def _field(hint, default):
    """A typed field: Optional[X] defaulting to None is a placeholder of X (overridable by an X)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if default is None and args:
        return config_dict.placeholder(args[0])
    return float(default) if hint is float else default


def dataclass_fields(cls) -> ml_collections.ConfigDict:
    """``cls``'s fields (less RUN_FIELDS) with their defaults."""
    hints = typing.get_type_hints(cls)
    return ml_collections.ConfigDict({f.name: _field(hints[f.name], f.default) for f in dataclasses.fields(cls)
                                      if f.name not in RUN_FIELDS})


def get_config(protocol: str) -> ml_collections.ConfigDict:
    """Unlocked: ModelConfig / TrainConfig defaults under ``model`` / ``train``, and the protocol fields."""
    config = ml_collections.ConfigDict()
    config.protocol = protocol  # the data (a named protocol; "custom": --data=FORMAT:PATH)
    config.protocol_kwargs = ml_collections.ConfigDict()  # extra arguments of data.protocols.load_protocol
    config.derive_from_data = False  # True: training.defaults.derived_defaults fills the data-dependent fields
    # the validation pairs (data.protocols.split_by_time): "random" (the reference code) or "temporal"
    config.val_mode = "random"
    config.model = dataclass_fields(ModelConfig)
    config.train = dataclass_fields(TrainConfig)
    # model / train fields that replace the ones above when a run's objective is "ranking" and the
    # config's own objective is not (a protocol's ranking setting); empty: the same setting
    # config.ranking.val_mode: that setting's validation pairs (None: config.val_mode)
    config.ranking = ml_collections.ConfigDict({"model": {}, "train": {}, "val_mode": config_dict.placeholder(str)})
    # likewise when a run's objective is "joint" (a protocol's joint setting)
    config.joint = ml_collections.ConfigDict({"model": {}, "train": {}, "val_mode": config_dict.placeholder(str)})
    return config
