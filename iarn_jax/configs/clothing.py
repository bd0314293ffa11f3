"""The paper's Amazon Clothing data: embedding 50 (the paper's Amazon size), the reference code's dropout."""
import ml_collections

from iarn_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("clothing")
    config.model.embed_dim = 50
    config.model.dropout = 0.5
    config.model.use_rating_input = True  # the step's rating as an extra input (measured, BUILD_NOTES)
    config.train.batch_size = 128
    return config.lock()
