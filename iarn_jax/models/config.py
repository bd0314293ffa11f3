"""Model configuration shared by every IARN variant."""
from __future__ import annotations

import dataclasses
from typing import Optional

VARIANTS = ("iarn", "tagm", "lstm", "rnn")
ATTENTION_CELLS = ("softplus", "tanh")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of the two-tower recurrent model.

    variant: "iarn" (interacting gate), "tagm" (gate from own side only),
      "lstm" (no gate, LSTM backbone), "rnn" (no gate, softplus RNN backbone).
    n_users / n_items: sizes of the id embedding tables.
    embed_dim: D, step input size (paper: 25 MovieLens/Netflix, 50 Amazon).
    hidden_size: H of the gated recurrent layer and the head.
    attention_size: A of each direction of the attention bi-RNN.
    dropout: one rate, applied where the reference code applies it (attention
      bi-RNN outputs and the final recurrent state).
    gate_logit_scale: w in a_t = sigmoid(w * (v^T tanh(...) + c)) (reference: 2).
    summary_scale: s multiplying the other side's summary (reference: 0.25).
    softplus_beta: beta of the attention bi-RNN's softplus cell (reference: 5).
    use_rating_input: append each step's rating (centred) to the step input.
    bias: "global_user_item" (default, chosen on validation: global mean + per-user +
      per-item scalars), "user_item", or "none" (the reference code's default).
    torch_init: Torch-style U(-1/sqrt(fan_in), 1/sqrt(fan_in)) weights and biases.
    feature_encoder: None (IARN-Plain) or the name of an encoder (seam for the
      feature-encoder issue).
    compute_dtype: "float32" or "bfloat16" for matmuls (parameters stay fp32).
    gate_target_embedding: IARN only, not in the paper: each tower's gate also reads the pair's
      other entity through the tower's own embedding table (``e_target``; see attention.py), so
      "is this step like the target?" is one layer away instead of behind the other side's summary.
    gate_step_input: gated variants, not in the paper: the gate also reads each step's own input
      x_t (``M0 x_t``), next to its bi-RNN context s_t.
    gate_match: IARN only, not in the paper: a bilinear match x_t^T B e_target of each step's
      embedding with the target's embedding (this tower's table) is added to the gate logit.
    attention_cell: activation of the attention context bi-RNN: "softplus" (the reference:
      softplus(beta), unbounded, so its state can overflow float32 on long histories) or "tanh"
      (bounded in [-1, 1]: finite for any history length and input scale).
    stationary_dim: S > 0 adds stationary factors (Recurrent Recommender Networks, Wu et al. 2017):
      a per-user p_u and per-item q_i [S] whose inner product is added to the prediction,
      ``mu + b_u + b_i + <p_u, q_i> + <u~, v~>``; 0 (the paper) = none. Implemented as the
      concatenation ``[u~ ; p_u] . [v~ ; q_i]`` of the towers' representations.
    """

    variant: str = "iarn"
    n_users: int = 1
    n_items: int = 1
    embed_dim: int = 25
    hidden_size: int = 64
    attention_size: int = 64
    dropout: float = 0.0
    gate_logit_scale: float = 2.0
    summary_scale: float = 0.25
    softplus_beta: float = 5.0
    use_rating_input: bool = False
    rating_center: float = 3.0
    bias: str = "global_user_item"
    global_mean: float = 0.0
    torch_init: bool = True
    feature_encoder: Optional[str] = None
    compute_dtype: str = "float32"
    gate_target_embedding: bool = False
    gate_step_input: bool = False
    gate_match: bool = False
    attention_cell: str = "softplus"
    stationary_dim: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown model variant {self.variant!r}; choose one of {VARIANTS}")
        if self.bias not in ("none", "user_item", "global_user_item"):
            raise ValueError(f"unknown bias setting {self.bias!r}")
        if self.gate_target_embedding and self.variant != "iarn":
            raise ValueError("gate_target_embedding needs the interacting gate (variant 'iarn')")
        if self.gate_match and self.variant != "iarn":
            raise ValueError("gate_match needs the interacting gate (variant 'iarn')")
        if self.gate_step_input and self.variant not in ("iarn", "tagm"):
            raise ValueError("gate_step_input needs a gated variant ('iarn' or 'tagm')")
        if self.attention_cell not in ATTENTION_CELLS:
            raise ValueError(f"unknown attention_cell {self.attention_cell!r}; choose one of {ATTENTION_CELLS}")
        if self.stationary_dim < 0:
            raise ValueError(f"stationary_dim must be >= 0, got {self.stationary_dim}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    @property
    def gated(self) -> bool:
        return self.variant in ("iarn", "tagm")

    @property
    def interacting(self) -> bool:
        return self.variant == "iarn"
