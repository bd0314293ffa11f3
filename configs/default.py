"""Config of the synthetic protocol (the default job): see iarn_jax/configs/default.py (shipped with the package)."""
from iarn_jax.configs.default import get_config  # noqa: F401
