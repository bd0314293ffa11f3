"""Training configuration (the reference code's optimiser and schedule by default)."""
from __future__ import annotations

import dataclasses
from typing import Optional


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the training loop.

    Defaults follow the authors' code: RMSprop (decay 0.95, eps 1e-8 outside the
    square root, no bias correction), lr 1e-3 at hidden 64, batch 64, element-wise
    gradient clipping at 10, validation every 100 steps, lr x0.4 and restore the
    best parameters after 10 evaluations without improvement, stop after 30, or
    when lr < 1e-5.

    history_mode: "full" (every pair sees the entity's whole training history,
      the reference code) or "causal" (a training pair sees only earlier steps).
    max_len: keep only the most recent max_len steps of each history (None = all).
    eval_every: steps between validation evaluations (0 = once per epoch).
    bias_init: with a model that has bias terms, "baseline" starts the per-user
      and per-item biases at the regularised bias-only (BaselineOnly ALS) solution
      fitted on the training pairs, so the recurrent towers learn the residual;
      "zeros" starts them at 0.
    """

    batch_size: int = 64
    eval_batch_size: int = 512
    learning_rate: float = 1e-3
    rmsprop_decay: float = 0.95
    rmsprop_eps: float = 1e-8
    clip_value: float = 10.0
    eval_every: int = 100
    decay_patience: int = 10
    stop_patience: int = 30
    lr_decay: float = 0.4
    min_learning_rate: float = 1e-5
    max_epochs: int = 50
    max_steps: int = 100_000
    max_seconds: Optional[float] = None
    history_mode: str = "full"
    max_len: Optional[int] = None
    bucket_lengths: tuple[int, ...] = (8, 16, 32, 64, 128, 256)
    seed: int = 0
    log_every: int = 50
    checkpoint_every_eval: bool = True
    prefetch: int = 2
    bias_init: str = "baseline"

    def __post_init__(self):
        if self.history_mode not in ("full", "causal"):
            raise ValueError(f"history_mode must be 'full' or 'causal', got {self.history_mode!r}")
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ValueError("batch sizes must be positive")
        if self.bias_init not in ("baseline", "zeros"):
            raise ValueError(f"bias_init must be 'baseline' or 'zeros', got {self.bias_init!r}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
