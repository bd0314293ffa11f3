"""Models: the IARN two-tower recurrent model, its variants and baselines."""
from iarn_jax.models.config import ModelConfig, VARIANTS  # noqa: F401
from iarn_jax.models.flops import flops_per_example  # noqa: F401
from iarn_jax.models.iarn import IARN, SideEncoding, initialize, model_variables  # noqa: F401
