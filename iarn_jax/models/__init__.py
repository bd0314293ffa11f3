"""Models: the IARN two-tower recurrent model, its variants and baselines."""
from iarn_jax.models.config import ModelConfig, VARIANTS  # noqa: F401
