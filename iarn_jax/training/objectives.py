"""Training losses: MSE on ratings and the ranking losses over sampled negatives.

Shapes: ``b`` positives, ``k`` sampled negatives per positive. ``weight`` [b] is 1 for real
examples and 0 for padding examples; every loss is a weighted mean over the real positives.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def _weighted_mean(values: jax.Array, weight: jax.Array) -> jax.Array:
    return jnp.sum(weight * values) / jnp.maximum(jnp.sum(weight), 1.0)


def weighted_mse(pred: jax.Array, target: jax.Array, weight: jax.Array) -> jax.Array:
    """Mean squared error over the real (weight 1) examples of a batch."""
    return _weighted_mean((pred.astype(jnp.float32) - target) ** 2, weight)


def bpr_loss(positive: jax.Array, negative: jax.Array, weight: jax.Array) -> jax.Array:
    """BPR: mean over positives of the mean over its k negatives of -log sigmoid(s_pos - s_neg).

    positive [b], negative [b, k], weight [b]."""
    diff = positive.astype(jnp.float32)[:, None] - negative.astype(jnp.float32)
    return _weighted_mean(jnp.mean(-jax.nn.log_sigmoid(diff), axis=1), weight)


def bce_loss(positive: jax.Array, negative: jax.Array, weight: jax.Array, offset: float = 0.0) -> jax.Array:
    """Binary cross-entropy with logits ``s - offset``: -log sigmoid(pos) - sum_k log sigmoid(-neg_k)."""
    pos = positive.astype(jnp.float32) - offset
    neg = negative.astype(jnp.float32) - offset
    per_positive = -jax.nn.log_sigmoid(pos) - jnp.sum(jax.nn.log_sigmoid(-neg), axis=1)
    return _weighted_mean(per_positive, weight)


def sampled_softmax_loss(positive: jax.Array, negative: jax.Array, weight: jax.Array) -> jax.Array:
    """-log softmax([s_pos, s_neg_1..k])[0] per positive."""
    logits = jnp.concatenate([positive.astype(jnp.float32)[:, None], negative.astype(jnp.float32)], axis=1)
    return _weighted_mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0], weight)


def ranking_loss(name: str, positive: jax.Array, negative: jax.Array, weight: jax.Array,
                 offset: float = 0.0) -> jax.Array:
    """The ranking loss ``name`` ("bpr", "bce", "softmax")."""
    if name == "bpr":
        return bpr_loss(positive, negative, weight)
    if name == "bce":
        return bce_loss(positive, negative, weight, offset)
    if name == "softmax":
        return sampled_softmax_loss(positive, negative, weight)
    raise ValueError(f"unknown ranking loss {name!r}")


def objective_loss(objective: str, positive: jax.Array, negative, batch: dict, *, loss: str = "bpr",
                   joint_weight: float = 0.1, offset: float = 0.0) -> jax.Array:
    """The loss of one batch for a TrainConfig objective.

    positive [b]: predictions of the observed pairs; negative [b, k] or None (objective "rating").
    """
    weight, rating = batch["weight"], batch["rating"]
    if objective == "rating":
        return weighted_mse(positive, rating, weight)
    if objective == "ranking":
        return ranking_loss(loss, positive, negative, weight, offset)
    if objective == "joint":
        return weighted_mse(positive, rating, weight) + joint_weight * ranking_loss(
            loss, positive, negative, weight, offset)
    if objective == "negatives_as_zero":
        # the reference's -if_negative 1: every sampled negative is one more example with rating 0
        k = negative.shape[1]
        squared = jnp.sum(negative.astype(jnp.float32) ** 2, axis=1)
        total = weight * ((positive.astype(jnp.float32) - rating) ** 2 + squared)
        return jnp.sum(total) / jnp.maximum(jnp.sum(weight) * (1 + k), 1.0)
    raise ValueError(f"unknown objective {objective!r}")


def sampled_auc(positive, negative, weight=None):
    """Mean over positives of the share of its negatives scored below it (ties half).
    positive [b], negative [b, k] (NumPy or JAX)."""
    import numpy as np

    positive = np.asarray(positive, np.float64)[:, None]
    negative = np.asarray(negative, np.float64)
    per = np.mean((positive > negative) + 0.5 * (positive == negative), axis=1)
    if weight is None:
        return float(np.mean(per)) if per.size else float("nan")
    weight = np.asarray(weight, np.float64)
    return float(np.sum(per * weight) / max(weight.sum(), 1.0))
