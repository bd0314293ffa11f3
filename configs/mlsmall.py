"""Config of the mlsmall protocol: see iarn_jax/configs/mlsmall.py (shipped with the package)."""
from iarn_jax.configs.mlsmall import get_config  # noqa: F401
