"""MovieLens latest-small: the ml100k setting."""
import ml_collections

from iarn_jax.configs import ml100k


def get_config() -> ml_collections.ConfigDict:
    return ml100k.get_config("mlsmall")
