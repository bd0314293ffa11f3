"""Synthetic data: the default job (``python -m experiments.train``), a few minutes on a 2-core CPU."""
import ml_collections

from iarn_jax.configs import base


def get_config() -> ml_collections.ConfigDict:
    config = base.get_config("synthetic")
    # small enough to train in well under 3 minutes on a 2-core CPU, with histories long enough to
    # hold several steps of each planted interest
    config.protocol_kwargs = ml_collections.ConfigDict({"n_users": 1500, "n_items": 600, "n_ratings": 30_000})
    model = config.model
    model.embed_dim = 25
    model.dropout = 0.0
    # the synthetic ratings depend on the user's past ratings of same-category items, so the planted
    # signal is only visible with the rating-of-step input
    model.use_rating_input = True
    # stationary factors started at our MF, the bounded attention cell and open, matching gates
    # (issue 11): IARN starts at MF and learns the planted temporal signal on top
    model.stationary_dim = 25
    model.attention_cell = "tanh"
    model.gate_logit_scale = 0.25
    model.gate_match = True
    train = config.train
    train.max_epochs = 5
    train.eval_every = 0  # one validation per epoch
    train.batch_size = 128
    train.decay_patience = 2
    train.stop_patience = 3
    train.max_len = 32
    train.bucket_lengths = (16, 32)
    train.history_mode = "full_without_self"
    return config.lock()
