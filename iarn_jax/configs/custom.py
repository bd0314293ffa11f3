"""Data without a named protocol (``--data=FORMAT:PATH --cut=DATE``).

The data-dependent fields (None here) are derived from the data's statistics when it is loaded
(``iarn_jax.training.defaults.derived_defaults``, which prints its choice); a value given on the
command line wins.
"""
import ml_collections
from ml_collections import config_dict

from iarn_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("custom")
    config.derive_from_data = True
    config.model.embed_dim = config_dict.placeholder(int)  # 25, or 50 for sparse data
    config.model.dropout = config_dict.placeholder(float)  # 0, or 0.5 for sparse data
    config.model.use_rating_input = True
    config.train.batch_size = config_dict.placeholder(int)  # 128, or 256 above 500k training pairs
    # train.max_len: None (all steps), or 64 when some history has more than 160 steps
    return config.lock()
