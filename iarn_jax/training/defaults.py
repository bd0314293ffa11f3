"""A run's ModelConfig / TrainConfig keyword arguments from its config file (``iarn_jax/configs``):
the data-dependent fields of custom data derived from its statistics, the gate options of the variant.
"""
from __future__ import annotations

from typing import Optional

import ml_collections
import numpy as np

from iarn_jax import configs
from iarn_jax.data.types import ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.training.config import TrainConfig

# gate options and the variants that have them (a config never forces one on another variant)
GATE_OPTION_VARIANTS = {"gate_match": ("iarn",), "gate_target_embedding": ("iarn",),
                        "gate_step_input": ("iarn", "tagm")}


def derived_defaults(split: ProtocolSplit) -> tuple[dict, dict, str]:
    """(model fields, train fields, a one-line explanation) for data without a named protocol,
    from its statistics, following the named protocols' choices:

    * ``max_len``: uncapped when the longest history has <= 160 steps (as Clothing), else the 64 most
      recent steps (as the MovieLens protocols): scan cost grows with the padded length, and a few
      items with thousands of ratings would otherwise set it for whole batches.
    * ``batch_size``: 128 up to 500k training pairs, 256 above (fewer, fuller steps on big data).
    * ``embed_dim``: 25 (the paper's MovieLens / Netflix size; 50 for the sparse Amazon data, where the
      median user has <= 10 ratings), the rating-of-step input on.
    """
    history = split.history
    user_len = history.groupby("user").size().to_numpy()
    item_len = history.groupby("item").size().to_numpy()
    longest = int(max(user_len.max(initial=0), item_len.max(initial=0)))
    p90 = int(np.percentile(np.concatenate([user_len, item_len]), 90)) if len(history) else 0
    max_len = None if longest <= 160 else 64
    n_train = len(split.train)
    batch_size = 128 if n_train <= 500_000 else 256
    sparse = float(np.median(user_len)) <= 10 if len(user_len) else False
    embed_dim = 50 if sparse else 25
    model = {"embed_dim": embed_dim, "dropout": 0.5 if sparse else 0.0, "use_rating_input": True}
    train_defaults = {"max_len": max_len, "batch_size": batch_size}
    text = (f"derived defaults for {split.name}: max_len={max_len} (longest history {longest:,} steps, 90% <= "
            f"{p90:,}), batch_size={batch_size} ({n_train:,} training pairs), embed_dim={embed_dim}, "
            f"dropout={model['dropout']} (median user history {float(np.median(user_len)) if len(user_len) else 0:g} "
            f"ratings), rating-of-step input on; override with --set")
    return model, train_defaults, text


def config_settings(config: ml_collections.ConfigDict, split: ProtocolSplit, *, variant: str = "iarn",
                    verbose: bool = True, objective: Optional[str] = None) -> tuple[dict, dict]:
    """(model, train) keyword arguments of ModelConfig / TrainConfig from ``config``: with
    ``derive_from_data``, the fields of :func:`derived_defaults` (printed when ``verbose``); with
    ``objective="ranking"`` or ``"joint"`` (and a config of another objective), the config's ``ranking`` /
    ``joint`` fields on top; gate options the ``variant`` does not have are left out (their dataclass default: off)."""
    model, train = config.model.to_dict(), config.train.to_dict()
    if config.derive_from_data:
        derived_model, derived_train, text = derived_defaults(split)
        model.update(derived_model)
        train.update(derived_train)
        if verbose:
            print(text, flush=True)
    if objective in ("ranking", "joint") and train.get("objective", "rating") != objective and objective in config:
        model.update(config[objective].model.to_dict())
        train.update(config[objective].train.to_dict())
    for option, variants in GATE_OPTION_VARIANTS.items():
        if variant not in variants:
            model.pop(option, None)
    return model, train


def config_val_mode(config: ml_collections.ConfigDict, objective: Optional[str] = None) -> str:
    """The validation split ("random" | "temporal") of a run of ``config``: the ``ranking`` / ``joint``
    section's ``val_mode`` when the run's ``objective`` is that one (and not the config's own) and the
    section sets one, else the config's ``val_mode``."""
    own = config.train.get("objective") or "rating"
    if objective in ("ranking", "joint") and objective != own and config[objective].get("val_mode"):
        return config[objective].val_mode
    return config.val_mode


def config_for(split: ProtocolSplit) -> ml_collections.ConfigDict:
    """The config file of the split's protocol (custom.py for data without a named protocol)."""
    return configs.get_config(split.name if split.name in configs.PROTOCOLS else "custom")


def protocol_defaults(split: ProtocolSplit, verbose: bool = True, variant: str = "iarn") -> tuple[dict, dict]:
    """(model, train) defaults of the split's protocol config (derived from the data, and printed,
    for data without a named protocol); gate options the ``variant`` does not have are left out."""
    return config_settings(config_for(split), split, variant=variant, verbose=verbose)


def build_configs(config: ml_collections.ConfigDict, split: ProtocolSplit, *, variant: str = "iarn", seed: int = 0,
                  objective: Optional[str] = None, history: Optional[str] = None,
                  model_overrides: Optional[dict] = None, train_overrides: Optional[dict] = None,
                  verbose: bool = True) -> tuple[ModelConfig, TrainConfig]:
    """A run's (ModelConfig, TrainConfig): ``config`` (see :func:`config_settings`), then the
    overrides, then ``objective`` / ``history`` when given. Without ``history``, an objective with
    sampled negatives never keeps the target inside its own history ("full" -> "full_without_self")."""
    model_defaults, train_defaults = config_settings(config, split, variant=variant, verbose=verbose,
                                                     objective=objective)
    model_kwargs = {**model_defaults, "variant": variant, **(model_overrides or {})}
    train_kwargs = train_settings({**train_defaults, "seed": seed}, objective, history, train_overrides)
    return ModelConfig(**model_kwargs), TrainConfig(**train_kwargs)


def train_settings(defaults: dict, objective: Optional[str] = None, history: Optional[str] = None,
                   overrides: Optional[dict] = None) -> dict:
    """TrainConfig keyword arguments: ``defaults`` (a config's), ``objective`` when given, then
    ``overrides``. An objective other than the config's resets ``val_metric`` to "auto" (a config's
    selection metric belongs to its own objective: RMSE selection is meaningless for ``ranking``).
    Without ``history``, an objective with sampled negatives never keeps the target inside its own
    history ("full" -> "full_without_self")."""
    kwargs = dict(defaults)
    if objective is not None and objective != kwargs.get("objective", "rating"):
        kwargs.update(objective=objective, val_metric="auto")
    kwargs.update(overrides or {})
    if objective is not None:
        kwargs["objective"] = objective
    if history is not None:
        kwargs["history_mode"] = history
    elif kwargs.get("objective", "rating") != "rating" and kwargs.get("history_mode", "full") == "full":
        kwargs["history_mode"] = "full_without_self"
    return kwargs
