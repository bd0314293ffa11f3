"""Data layer: loaders, protocols, histories, batches and synthetic data."""
from iarn_jax.data.types import BATCH_SPEC, DataError, Dataset, ItemFeatures, ProtocolSplit  # noqa: F401
from iarn_jax.data.histories import Histories, PairSet, build_histories, make_pairs  # noqa: F401
from iarn_jax.data.batching import (  # noqa: F401
    BatchPlan,
    iterate_batches,
    iterate_eval_batches,
    make_batch_plan,
    materialize,
    padding_fraction,
    unbatch,
)
from iarn_jax.data.protocols import custom_protocol, load_protocol, protocol_stats, split_by_time  # noqa: F401
from iarn_jax.data.synthetic import SyntheticData, make_synthetic  # noqa: F401
