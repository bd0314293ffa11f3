"""Analytic FLOP count of one IARN example (for throughput / MFU reports).

Only matrix multiplies are counted (1 multiply-add = 2 FLOPs); elementwise work (activations, the
gate mixing, dropout, embedding gathers) is ignored, as usual for MFU. Lengths are the lengths the
computation actually runs over: pass the padded lengths to count what the accelerator does, or the
valid lengths to count useful work. A feature encoder, when configured, is not included.
"""
from __future__ import annotations

from iarn_jax.models.config import ModelConfig

# Backward pass ~ 2x the forward multiply-adds (gradients w.r.t. activations and weights).
TRAINING_MULTIPLIER = 3


def side_macs(config: ModelConfig, length: int) -> int:
    """Multiply-adds of one tower over a history of ``length`` steps (forward pass)."""
    t = int(length)
    d = config.embed_dim + (1 if config.use_rating_input else 0)  # step-input size
    a = config.attention_size  # per direction
    h = config.hidden_size
    macs = 0
    if config.gated:
        k = 4 * a if config.interacting else 2 * a  # width of the gate's fusion layer
        macs += 2 * t * (d * a + a * a)  # attention bi-RNN: two directions, x W + g U per step
        macs += t * (2 * a) * k  # M1 s_t for all steps (context part of the fusion layer)
        if config.gate_step_input:
            macs += t * d * k  # M0 x_t for all steps
        if config.interacting:
            macs += (2 * a) * k  # M2 S: this side's summary projected for the other side, once
            if config.gate_target_embedding:
                macs += config.embed_dim * k  # M3 e_target (the embedding, no rating), once
        macs += t * k  # v^T tanh(.) per step
        macs += t * (d * h + h * h)  # gated layer: x W (hoisted) + h U (in the scan)
    elif config.variant == "rnn":
        macs += t * (d * h + h * h)
    elif config.variant == "lstm":
        macs += t * 4 * (d * h + h * h)  # four gate blocks (i, f, o, g)
    else:  # pragma: no cover - ModelConfig validates the variant
        raise ValueError(f"unknown variant {config.variant!r}")
    macs += h * h  # head Dense(H -> H)
    return macs


def flops_per_example(config: ModelConfig, user_len: int, item_len: int, *, training: bool = True) -> int:
    """FLOPs of one (user, item) example: 2 * multiply-adds of the forward pass (both towers + the
    inner product of the two H-dim representations), times 3 when ``training`` (forward + backward).
    """
    macs = side_macs(config, user_len) + side_macs(config, item_len) + config.hidden_size
    flops = 2 * macs
    return int(flops * (TRAINING_MULTIPLIER if training else 1))
