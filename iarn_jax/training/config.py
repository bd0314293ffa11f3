"""Training configuration (the reference code's optimiser and schedule by default)."""
from __future__ import annotations

import dataclasses
from typing import Optional


HISTORY_MODES = ("full", "full_without_self", "causal")
OBJECTIVES = ("rating", "ranking", "joint", "negatives_as_zero")
RANKING_LOSSES = ("bpr", "bce", "softmax")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of the training loop.

    Defaults follow the authors' code: RMSprop (decay 0.95, eps 1e-8 outside the
    square root, no bias correction), lr 1e-3 at hidden 64, batch 64, element-wise
    gradient clipping at 10, validation every 100 steps, lr x0.4 and restore the
    best parameters after 10 evaluations without improvement, stop after 30, or
    when lr < 1e-5.

    history_mode: "full" (every pair sees the entity's whole training history,
      the reference code; the pair's own step stays in it with rating 0),
      "full_without_self" (the whole history minus the pair's own interaction, as a
      test pair sees it) or "causal" (a training pair sees only earlier steps).
    max_len: keep only the most recent max_len steps of each history (None = all).
    rare_shape_batches: a (user, item) length bucket with fewer training batches than this per epoch is
      padded to coarse lengths (16 / 64 / 256, then multiples of 256: ``batching.coarse_length``) so the
      rare buckets share a few compiled train-step shapes (same pairs, same batches; 0 = every bucket its
      own shape). Clothing: 35 -> 19 shapes,
      each ~7 s of XLA compilation on 2 cores (issue 12, BUILD_NOTES).
    eval_every: steps between validation evaluations (0 = once per epoch).
    bias_init: with a model that has bias terms, "baseline" starts the per-user
      and per-item biases at the regularised bias-only (BaselineOnly ALS) solution
      fitted on the training pairs, so the recurrent towers learn the residual;
      "tuned" starts them at the same model with (reg_user, reg_item) chosen on the
      validation pairs (``BiasBaseline(tuned=True).select``; Surprise's defaults shrink
      short user histories too hard); "zeros" starts them at 0. With the model's
      ``feature_bias`` the start has the same feature biases.
    objective: "rating" (MSE on observed ratings), "ranking" (implicit feedback: every
      training pair is a positive, ``n_negatives`` sampled negatives per positive,
      ``ranking_loss``), "joint" (MSE + ``joint_weight`` * ranking loss) or
      "negatives_as_zero" (the reference code's ``-if_negative 1``: sampled negatives
      labelled 0 inside the MSE).
    ranking_loss: "bpr" (mean over negatives of -log sigmoid(s_pos - s_neg)), "bce"
      (-log sigmoid(s_pos - mu) - sum log sigmoid(mu - s_neg), mu = the model's global mean)
      or "softmax" (sampled softmax: -log softmax([s_pos, s_neg...])[0]).
    negative_distribution / negative_alpha: "uniform", or "popularity" with
      P(item) ~ count ** alpha.
    val_metric: "auto" (rating objective: val RMSE; ranking / joint /
      negatives_as_zero: sampled validation AUC), "rmse" or "auc". The sampled
      validation AUC ranks each validation positive against ``val_negatives`` items
      the user never interacted with (drawn once, seed-fixed); ties count half.
    factor_l2: L2 weight on the stationary factors p_u, q_i of the pairs in a batch.
    divergence_retries: how many times a run that diverges (a non-finite or exploding training loss, a
      non-finite validation metric) goes back to its best parameters with a fresh optimiser state and
      the learning rate times ``lr_decay``, and continues; the next divergence stops it with the error
      (0: stop at the first). The uncapped paper model's softplus context overflowed in 2 of 21 Clothing
      runs (issue 11).
    factor_init: with stationary factors: "baseline" (rating / joint: start at the project's tuned
      MF: its biases and factors, with the item tower's head at 0 so the first prediction is MF's;
      the run evaluates that start, so early stopping never ends worse on validation; ranking:
      random, which trained to a higher validation AUC than a BPR start on ml100k), "bpr" (ranking:
      start at the tuned BPR the same way), "hievh" (rating / joint: start at the tuned HieVH,
      trained on the training pairs only, its category factors folded into q_i; ranking: as
      "baseline", a random start), "als" (factors
      from an ALS factorisation of the residuals after the BaselineOnly biases) or "random".
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
    rare_shape_batches: int = 8
    seed: int = 0
    log_every: int = 50
    checkpoint_every_eval: bool = True
    prefetch: int = 2
    bias_init: str = "baseline"
    objective: str = "rating"
    n_negatives: int = 4
    ranking_loss: str = "bpr"
    negative_distribution: str = "uniform"
    negative_alpha: float = 0.75
    joint_weight: float = 0.1
    val_metric: str = "auto"
    val_negatives: int = 20
    factor_l2: float = 0.0
    factor_init: str = "baseline"
    divergence_retries: int = 2

    def __post_init__(self):
        if self.history_mode not in HISTORY_MODES:
            raise ValueError(f"history_mode must be one of {HISTORY_MODES}, got {self.history_mode!r}")
        if self.objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {OBJECTIVES}, got {self.objective!r}")
        if self.ranking_loss not in RANKING_LOSSES:
            raise ValueError(f"ranking_loss must be one of {RANKING_LOSSES}, got {self.ranking_loss!r}")
        if self.negative_distribution not in ("uniform", "popularity"):
            raise ValueError(f"negative_distribution must be 'uniform' or 'popularity', "
                             f"got {self.negative_distribution!r}")
        if self.val_metric not in ("auto", "rmse", "auc"):
            raise ValueError(f"val_metric must be 'auto', 'rmse' or 'auc', got {self.val_metric!r}")
        if self.objective != "rating" and self.history_mode == "full":
            raise ValueError(
                f"objective {self.objective!r} with history_mode='full' would leave each positive's item in its "
                "user's history (and no negative's), a shortcut the model learns instead of preferences: "
                "use history_mode='full_without_self' (or 'causal')")
        if self.objective != "rating" and self.n_negatives < 1:
            raise ValueError(f"objective {self.objective!r} needs n_negatives >= 1, got {self.n_negatives}")
        if self.val_negatives < 1:
            raise ValueError(f"val_negatives must be >= 1, got {self.val_negatives}")
        if self.factor_init not in ("baseline", "bpr", "hievh", "als", "random"):
            raise ValueError(f"factor_init must be 'baseline', 'bpr', 'hievh', 'als' or 'random', "
                             f"got {self.factor_init!r}")
        if self.factor_l2 < 0 or self.joint_weight < 0:
            raise ValueError("factor_l2 and joint_weight must be >= 0")
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ValueError("batch sizes must be positive")
        if self.bias_init not in ("baseline", "tuned", "zeros"):
            raise ValueError(f"bias_init must be 'baseline', 'tuned' or 'zeros', got {self.bias_init!r}")
        if self.rare_shape_batches < 0:
            raise ValueError(f"rare_shape_batches must be >= 0, got {self.rare_shape_batches}")
        if self.divergence_retries < 0:
            raise ValueError(f"divergence_retries must be >= 0, got {self.divergence_retries}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")

    @property
    def uses_negatives(self) -> bool:
        return self.objective != "rating"

    @property
    def predicts_ratings(self) -> bool:
        """Whether predictions are ratings (every objective but "ranking"), so RMSE is defined."""
        return self.objective != "ranking"

    @property
    def selection_metric(self) -> str:
        """The validation metric of early stopping and lr decay: "rmse" or "auc"."""
        if self.val_metric != "auto":
            return self.val_metric
        return "rmse" if self.objective == "rating" else "auc"
