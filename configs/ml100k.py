"""Config of the ml100k protocol: see iarn_jax/configs/ml100k.py (shipped with the package)."""
from iarn_jax.configs.ml100k import get_config  # noqa: F401
