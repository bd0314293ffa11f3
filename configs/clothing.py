"""Config of the clothing protocol: see iarn_jax/configs/clothing.py (shipped with the package)."""
from iarn_jax.configs.clothing import get_config  # noqa: F401
