"""Per-protocol run configurations, one ``ml_collections`` file per protocol (the Flax-examples
convention): ``default`` (synthetic data, the README's first command), ``clothing``, ``ml100k``,
``mlsmall`` and ``custom`` (data given by ``--data=FORMAT:PATH``, fields derived from its statistics).

Each file's ``get_config()`` returns a locked ``ConfigDict``: ``model`` and ``train`` hold every
field of :class:`~iarn_jax.models.config.ModelConfig` / :class:`~iarn_jax.training.config.TrainConfig`
except those a run sets itself (``variant``: ``--model``; ``seed``: ``--seed``; the data sizes), plus
``protocol``, ``protocol_kwargs`` (extra arguments of ``load_protocol``), ``derive_from_data`` and
``ranking`` / ``joint`` (``model`` / ``train`` fields used instead when a run's objective is "ranking" /
"joint" and the config's own objective is not).
The repository's top-level ``configs/*.py`` re-export these files for ``--config=configs/X.py``;
the package copy is what an installed ``iarn_jax`` (and ``--protocol=X``) uses.
"""
from __future__ import annotations

import importlib

import ml_collections

# protocol -> config module (the synthetic protocol is the default config)
CONFIG_MODULES = {"synthetic": "default", "clothing": "clothing", "ml100k": "ml100k", "mlsmall": "mlsmall",
                  "custom": "custom"}
PROTOCOLS = ("synthetic", "clothing", "ml100k", "mlsmall")  # the named protocols (custom = --data)


def get_config(protocol: str) -> ml_collections.ConfigDict:
    """The locked config of ``protocol`` (a named protocol or "custom")."""
    if protocol not in CONFIG_MODULES:
        raise ValueError(f"unknown protocol {protocol!r} (no config file); choose one of {', '.join(CONFIG_MODULES)}")
    return importlib.import_module(f"{__name__}.{CONFIG_MODULES[protocol]}").get_config()
