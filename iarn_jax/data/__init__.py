"""Data layer: loaders, protocols, histories, batches and synthetic data."""
from iarn_jax.data.types import BATCH_SPEC, DataError, Dataset, ItemFeatures, ProtocolSplit  # noqa: F401
