"""Config of the custom protocol: see iarn_jax/configs/custom.py (shipped with the package)."""
from iarn_jax.configs.custom import get_config  # noqa: F401
