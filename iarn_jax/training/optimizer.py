"""The optax chain of the reference code: element-wise clipping, then RMSprop."""
from __future__ import annotations

import optax

from iarn_jax.training.config import TrainConfig


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """clip(+-clip_value) -> RMSprop(decay, eps outside sqrt, no bias correction).

    Torch's optim.rmsprop: m <- a*m + (1-a)*g^2, theta <- theta - lr*g/(sqrt(m)+eps),
    m starting at 0. The learning rate is an injected hyper-parameter, so the
    schedule can change it in the optimiser state without recompiling the step.
    """
    rmsprop = optax.inject_hyperparams(optax.rmsprop)(
        learning_rate=config.learning_rate,
        decay=config.rmsprop_decay,
        eps=config.rmsprop_eps,
        eps_in_sqrt=False,
        initial_scale=0.0,
    )
    return optax.chain(optax.clip(config.clip_value), rmsprop)


def get_learning_rate(opt_state) -> float:
    """Current learning rate held in the optimiser state."""
    return float(opt_state[1].hyperparams["learning_rate"])


def set_learning_rate(opt_state, learning_rate: float):
    """A copy of the optimiser state with a new learning rate (moments kept)."""
    import jax.numpy as jnp

    clip_state, rms_state = opt_state
    old = rms_state.hyperparams["learning_rate"]
    hyper = dict(rms_state.hyperparams)
    hyper["learning_rate"] = jnp.asarray(learning_rate, dtype=old.dtype)
    return (clip_state, rms_state._replace(hyperparams=hyper))
