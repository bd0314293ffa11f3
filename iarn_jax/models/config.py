"""Model configuration shared by every IARN variant."""
from __future__ import annotations

import dataclasses
from typing import Optional

VARIANTS = ("iarn", "tagm", "lstm", "rnn")
ATTENTION_CELLS = ("softplus", "tanh")
FEATURE_KINDS = ("flat", "hier", "ref")  # kinds; see iarn_jax.models.features
FEATURE_INPUTS = ("target", "step", "both")
FEATURE_REDUCES = ("sum", "mean")


def encoder_fields(name: str) -> dict:
    """The typed encoder fields of a legacy encoder name ``"KIND[:INPUTS][:rR|:dense][:sum|:mean]"``
    (e.g. ``"hier:step:r8"`` -> ``{"feature_encoder": "hier", "feature_inputs": "step",
    "feature_rank": 8}``; ``"dense"`` is rank 0). The only reader of that form: configs saved before
    the typed fields (manifests, config.json, cached reports) and ``--encoders`` labels go through it.
    """
    kind, *options = name.split(":")
    if kind not in FEATURE_KINDS:
        raise ValueError(f"feature_encoder: unknown kind {kind!r} in {name!r}; choose one of {FEATURE_KINDS}")
    fields: dict = {"feature_encoder": kind}
    for option in options:
        if option in FEATURE_INPUTS:
            fields["feature_inputs"] = option
        elif option == "dense":
            fields["feature_rank"] = 0
        elif option in FEATURE_REDUCES:
            fields["feature_reduce"] = option
        elif option.startswith("r") and option[1:].isdigit() and int(option[1:]) > 0:
            fields["feature_rank"] = int(option[1:])
        else:
            raise ValueError(f"feature_encoder: bad option {option!r} in {name!r} "
                             f"(inputs {FEATURE_INPUTS}, rR, dense, {FEATURE_REDUCES})")
    return fields


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
    feature_encoder: None (IARN-Plain) or the kind of item-feature encoder (paper section 3.3, see
      ``iarn_jax.models.features``): "flat" (eq. 11, sum of per-feature maps), "hier" (eq. 12,
      product of the maps along each category path, mean over paths) or "ref" (the reference code's
      tanh chain over ascending ids). The legacy form "KIND[:INPUTS][:rR|:dense][:sum|:mean]"
      (e.g. "hier:step:r8") is still read, by :func:`encoder_fields`, into the fields below.
    feature_inputs: which steps the encoder transforms: "target" (the paper: the item side's steps
      by the target item's features), "step" (each user-side step by its own item's features) or
      "both" (separate maps per tower).
    feature_rank: r of each feature map M_f = I + U_f V_f^T (U_f, V_f [D, r]); 0 = a dense D x D map.
    feature_reduce: "flat" only: "sum" (eq. 11) or "mean" of the feature maps.
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
    recency_windows: not in the paper: a time-aware item bias b_i(t) = w . r_i(t) added to the
      prediction, where r_i(t) [K + 1] = log1p of the item's event counts in the last w_k of the
      training period before t (each w_k a fraction of the training period's span) and before t
      overall (``iarn_jax.data.recency``); w starts at 0. Batches then carry ``item_recency``.
      () (the paper) = none.
    feature_factors: not in the paper: with stationary factors, an item's factor is
      ``q_i + mean_f c_f`` over its distinct item features f (a per-feature factor c_f [S], starting
      at 0; SVDFeature-style sharing), so items rated rarely inherit their categories' factor. Needs
      item features (the ``"features"`` tables, as a feature encoder does). False (the paper) = none.
    feature_bias: not in the paper: the item bias is ``b_i + mean_f c_f`` over the item's distinct
      features (a scalar c_f per feature, starting at 0), so an item rated rarely inherits its
      categories' mean residual. Needs an item bias (``bias`` != "none") and item features.
      False (the paper) = none.
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
    feature_inputs: str = "target"
    feature_rank: int = 8
    feature_reduce: str = "sum"
    compute_dtype: str = "float32"
    gate_target_embedding: bool = False
    gate_step_input: bool = False
    gate_match: bool = False
    attention_cell: str = "softplus"
    stationary_dim: int = 0
    recency_windows: tuple = ()
    feature_factors: bool = False
    feature_bias: bool = False

    def __post_init__(self):
        object.__setattr__(self, "recency_windows", tuple(float(f) for f in (self.recency_windows or ())))
        if any(not 0.0 < f <= 1.0 for f in self.recency_windows):
            raise ValueError(f"recency_windows must be fractions in (0, 1], got {self.recency_windows}")
        if self.feature_encoder is not None and ":" in self.feature_encoder:
            self._read_legacy_encoder_name()
        if self.feature_encoder is not None and self.feature_encoder not in FEATURE_KINDS:
            raise ValueError(f"feature_encoder: unknown kind {self.feature_encoder!r}; choose one of "
                             f"{FEATURE_KINDS} (or None)")
        if self.feature_inputs not in FEATURE_INPUTS:
            raise ValueError(f"feature_inputs: unknown value {self.feature_inputs!r}; choose one of {FEATURE_INPUTS}")
        if not isinstance(self.feature_rank, int) or isinstance(self.feature_rank, bool) or self.feature_rank < 0:
            raise ValueError(f"feature_rank must be an int >= 0 (0 = dense maps), got {self.feature_rank!r}")
        if self.feature_reduce not in FEATURE_REDUCES:
            raise ValueError(f"feature_reduce: unknown value {self.feature_reduce!r}; choose one of {FEATURE_REDUCES}")
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
        if self.feature_factors and not self.stationary_dim:
            raise ValueError("feature_factors adds feature factors to the stationary item factors: "
                             "set stationary_dim > 0")
        if self.feature_bias and self.bias == "none":
            raise ValueError("feature_bias adds feature biases to the item bias: set bias to "
                             "'user_item' or 'global_user_item', not 'none'")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    def _read_legacy_encoder_name(self) -> None:
        """Replaces a legacy ``feature_encoder`` name by its typed fields; a typed field set to a
        non-default value that the name contradicts is refused."""
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        name = self.feature_encoder
        for field, value in encoder_fields(name).items():
            current = getattr(self, field)
            if field != "feature_encoder" and current != defaults[field] and current != value:
                raise ValueError(f"{field}={current!r} contradicts feature_encoder={name!r}")
            object.__setattr__(self, field, value)

    @property
    def reads_item_features(self) -> bool:
        """Whether the model reads the item feature tables (a feature encoder, feature factors or
        feature biases)."""
        return self.feature_encoder is not None or self.feature_factors or self.feature_bias

    @property
    def item_feature_reader(self) -> str:
        """The setting that makes the model read item features, for error messages."""
        if self.feature_encoder is not None:
            return f"feature_encoder={self.feature_encoder!r}"
        return "feature_factors=True" if self.feature_factors else "feature_bias=True"

    @property
    def gated(self) -> bool:
        return self.variant in ("iarn", "tagm")

    @property
    def interacting(self) -> bool:
        return self.variant == "iarn"
