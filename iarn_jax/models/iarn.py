"""The IARN two-tower model and its variants (IARN, TAGM, RNN, LSTM), selected by ``ModelConfig``.

Each tower (user side, item side; no shared parameters) turns its entity's history into a hidden
state: step inputs (learned embeddings of the counterpart ids, optionally + the centred step
rating, optionally transformed by a feature encoder) -> [attention bi-RNN -> gates] -> recurrent
layer -> dropout -> head Dense(H -> H) + PReLU. The prediction is the inner product of the two
towers' outputs (+ optional biases).

The computation is factored so that training, evaluation and full-ranking scoring share one path:

1. ``IARN.encode_user`` / ``IARN.encode_item`` depend only on one entity's own history and return a
   :class:`SideEncoding`: the hoisted input projection of the recurrent layer, the attention
   context projected by M1, the summary S and the summary projected by the *other* side's M2.
   For variants whose recurrent layer does not depend on the pair (TAGM, RNN, LSTM), the recurrent
   layer runs here too (``final_state``), so ranking costs one scan per entity.
2. ``IARN.pair`` takes a user encoding and an item encoding whose leading dims broadcast (e.g. one
   user ``[1, ...]`` against C candidate items ``[C, ...]``) and runs the interacting gates, the
   gated scan (IARN only), dropout on the final states, the head and the inner product.

``IARN.__call__(batch)`` is exactly ``pair(encode_user(...), encode_item(...))``.

Use with ``model.apply(variables, batch, deterministic=False, rngs={"dropout": key})`` for training
(``variables = model_variables(params, constants)``: the parameters plus, with a feature encoder,
the ``"features"`` collection of item feature tables; ``initialize`` creates the parameters);
``model.apply(variables, user, hist, hist_rating, hist_mask, method=IARN.encode_user)`` etc. for
scoring. Gates are also sown into the ``"intermediates"`` collection (``user_gates``,
``item_gates``) when that collection is mutable.

Layout: per-step tensors are time-major (``[t, n, ...]``) from the step inputs to the gated scan, the
layout the scans iterate over; the inputs (batches) and the outputs (``aux`` gates ``[m, t]``) stay
batch-major. The model's numbers do not depend on the layout (the same dropout units are dropped).

Shapes: ``b`` batch, ``tu`` / ``ti`` padded history lengths, ``d`` step-input size
(embed_dim + use_rating_input), ``A`` attention size, ``K`` gate width (4A IARN, 2A TAGM),
``h`` hidden size, ``G`` = 4 for LSTM else 1.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from iarn_jax.models.attention import AttentionBiRNN, AttentionGate
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.features import COLLECTION as FEATURES, build_feature_encoder
from iarn_jax.models.initializers import bias_init, embedding_init, kernel_init, matmul, resolve_dtype
from iarn_jax.models.recurrence import RecurrentLayer

SIDES = ("user", "item")


def model_variables(params: Any, constants: Optional[Mapping[str, Any]] = None) -> dict:
    """The Flax variables of ``IARN.apply``: {"params": params} plus the model's non-trainable
    collections (``constants``: {} or the ``"features"`` tables,
    ``iarn_jax.models.features.feature_variables``)."""
    return {"params": params, **(constants or {})}


def initialize(model: "IARN", rng: jax.Array, batch: dict, constants: Optional[Mapping[str, Any]] = None,
               **kwargs) -> Any:
    """``model.init(rng, batch, **kwargs)["params"]``, reading the ``constants`` collections (the feature
    tables) while the parameters are created. Same parameters as ``init`` for the same key."""
    if not constants:
        return model.init(rng, batch, **kwargs)["params"]
    _, variables = model.apply(dict(constants), batch, rngs={"params": rng}, mutable="params", **kwargs)
    return variables["params"]


class SideEncoding(NamedTuple):
    """Everything of one side that depends only on that entity's own history (n entities).

    The per-step fields (:data:`STEP_FIELDS`) are TIME-MAJOR, ``[t, n, ...]``: the layout of the scans
    that read them, so no transpose sits between the context RNN, the gates and the gated scan. Their
    entity axis is 1; every other field's is 0. Select, repeat or join entities with
    :meth:`map_entities` / :func:`concatenate_encodings`, which know each field's axis.

    entity: [n] user / item id (for the bias terms).
    mask: [t, n] bool, True on valid steps.
    input_proj: [t, n, G h] hoisted recurrent-layer input projection x W + b_W + b_U
      (None once the recurrent layer has run in the encoder, i.e. for non-interacting variants).
    context_proj: [t, n, K] attention context projected by this side's M1 (+ bias); None for rnn/lstm.
    summary: [n, 2A] attention summary S = [fwd at last valid step ; bwd at step 1]; None for rnn/lstm.
    summary_for_other: [n, K] s * M2_other S, S projected by the *other* side's gate (IARN only).
    gates: [t, n] gates when they do not depend on the pair (TAGM; mask as float for rnn/lstm);
      None for IARN (computed in ``pair``).
    final_state: [n, h] final recurrent state when it does not depend on the pair; None for IARN.
    match_keys: [t, n, D] x_t^T B of this side's steps (``gate_match`` only).
    match_query_for_other: [n, D] this entity's embedding in the *other* tower's table, the query
      of the other side's match (``gate_match`` only).
    recency: [n, K + 1] the item's recency features at the pair's time (item side with
      ``recency_windows`` only; read by the time-aware item bias).
    """

    entity: jax.Array
    mask: jax.Array
    input_proj: Optional[jax.Array] = None
    context_proj: Optional[jax.Array] = None
    summary: Optional[jax.Array] = None
    summary_for_other: Optional[jax.Array] = None
    gates: Optional[jax.Array] = None
    final_state: Optional[jax.Array] = None
    match_keys: Optional[jax.Array] = None
    match_query_for_other: Optional[jax.Array] = None
    recency: Optional[jax.Array] = None

    @property
    def steps(self) -> int:
        """t, the padded history length."""
        return int(self.mask.shape[0])

    def map_entities(self, fn) -> "SideEncoding":
        """A new encoding with ``fn(field, axis)`` applied to every present field along its entity axis
        (1 for :data:`STEP_FIELDS`, 0 otherwise), e.g. ``lambda x, axis: jnp.repeat(x, k, axis=axis)``."""
        return SideEncoding(*(None if value is None else fn(value, entity_axis(name))
                              for name, value in zip(self._fields, self)))


STEP_FIELDS = frozenset({"mask", "input_proj", "context_proj", "gates", "match_keys"})


def entity_axis(field: str) -> int:
    """The entity axis of a :class:`SideEncoding` field: 1 for the time-major per-step fields, else 0."""
    return 1 if field in STEP_FIELDS else 0


def concatenate_encodings(parts: Sequence[SideEncoding]) -> SideEncoding:
    """The encodings' entities joined in order (each field along its entity axis)."""
    first = parts[0]
    return SideEncoding(*(None if value is None else jnp.concatenate([p[i] for p in parts], axis=entity_axis(name))
                          for i, (name, value) in enumerate(zip(first._fields, first))))


def _broadcast_leading(x: jax.Array, n: int) -> jax.Array:
    return jnp.broadcast_to(x, (n,) + x.shape[1:])


class Tower(nn.Module):
    """One side (user or item) of the model. The user tower owns the item-embedding table (its
    steps are items) and the per-user bias; the item tower owns the user-embedding table and the
    per-item bias."""

    config: ModelConfig
    side: str
    n_features: int = 0

    @property
    def input_dim(self) -> int:
        return self.config.embed_dim + (1 if self.config.use_rating_input else 0)

    def setup(self):
        cfg = self.config
        if self.side not in SIDES:
            raise ValueError(f"side must be one of {SIDES}, got {self.side!r}")
        n_steps_ids = cfg.n_items if self.side == "user" else cfg.n_users
        n_entities = cfg.n_users if self.side == "user" else cfg.n_items
        self.step_embedding = self.param(
            "step_embedding", embedding_init(cfg.torch_init), (n_steps_ids, cfg.embed_dim)
        )
        self.feature_encoder = build_feature_encoder(cfg, self.side, self.n_features)
        if cfg.gated:
            self.attention = AttentionBiRNN(
                input_dim=self.input_dim, attention_size=cfg.attention_size,
                softplus_beta=cfg.softplus_beta, dropout=cfg.dropout, torch_init=cfg.torch_init,
                compute_dtype=cfg.compute_dtype, cell=cfg.attention_cell,
            )
            self.gate = AttentionGate(
                context_dim=2 * cfg.attention_size, interacting=cfg.interacting,
                target_dim=cfg.embed_dim if cfg.gate_target_embedding else 0,
                step_dim=self.input_dim if cfg.gate_step_input else 0,
                match_dim=cfg.embed_dim if cfg.gate_match else 0,
                gate_logit_scale=cfg.gate_logit_scale, summary_scale=cfg.summary_scale,
                torch_init=cfg.torch_init, compute_dtype=cfg.compute_dtype,
            )
        self.recurrent = RecurrentLayer(
            input_dim=self.input_dim, hidden_size=cfg.hidden_size,
            cell="gated" if cfg.gated else cfg.variant, softplus_beta=cfg.softplus_beta,
            torch_init=cfg.torch_init, compute_dtype=cfg.compute_dtype,
        )
        h = cfg.hidden_size
        self.head_kernel = self.param("head_kernel", kernel_init(h, cfg.torch_init), (h, h))
        self.head_bias = self.param("head_bias", bias_init(h, cfg.torch_init), (h,))
        self.prelu_slope = self.param("prelu_slope", nn.initializers.constant(0.25), ())
        if cfg.bias != "none":
            self.entity_bias = self.param("entity_bias", nn.initializers.zeros_init(), (n_entities,))
        if cfg.stationary_dim:
            self.stationary_factor = self.param(
                "stationary_factor", nn.initializers.normal(0.01), (n_entities, cfg.stationary_dim))
        if cfg.feature_factors and self.side == "item":
            self.feature_factor = self.param(
                "feature_factor", nn.initializers.zeros_init(), (self.n_features, cfg.stationary_dim))
        if cfg.feature_bias and self.side == "item":
            self.feature_bias = self.param("feature_bias", nn.initializers.zeros_init(), (self.n_features,))
        if cfg.recency_windows and self.side == "item":
            self.recency_weight = self.param(
                "recency_weight", nn.initializers.zeros_init(), (len(cfg.recency_windows) + 1,))
        self.state_dropout = nn.Dropout(cfg.dropout)

    # -- step inputs -------------------------------------------------------------------------------
    def step_inputs(
        self,
        history: jax.Array,  # [n, t] counterpart ids (0 on padding)
        history_rating: jax.Array,  # [n, t] step ratings (0 on padding / the target's own step)
        mask: jax.Array,  # [n, t] bool
        *,
        target_item: Optional[jax.Array] = None,  # [n] item ids (item side, for the feature encoder)
        feature_tables: Optional[Mapping[str, jax.Array]] = None,  # the "features" collection
    ) -> jax.Array:
        """Ids (+ ratings) -> step inputs [n, t, d]; zeros on padded steps.

        The rating feature is ``rating - rating_center`` on valid steps whose rating is known
        (non-zero) and 0 elsewhere, so a masked-out target step reads as "neutral".
        With a feature encoder, the embeddings are transformed before the rating is appended:
        user side with each step's item (``step_items=history``), item side with ``target_item``;
        ``feature_tables`` = {"flat": [n_items, K], "paths": [n_items, P, L]}.
        """
        cfg = self.config
        x = jnp.take(self.step_embedding, history, axis=0)  # [n, t, D]
        if self.feature_encoder is not None:
            if self.side == "user":
                x = self.feature_encoder(x, feature_tables, step_items=history, target_item=None)
            else:
                x = self.feature_encoder(x, feature_tables, step_items=None, target_item=target_item)
        if cfg.use_rating_input:
            known = mask & (history_rating != 0)
            rating = jnp.where(known, history_rating - cfg.rating_center, 0.0).astype(x.dtype)
            x = jnp.concatenate([x, rating[..., None]], axis=-1)
        return jnp.where(mask[..., None], x, 0.0)

    # -- encode (own history only) -----------------------------------------------------------------
    def encode(
        self,
        entity: jax.Array,  # [n]
        history: jax.Array,  # [n, t]
        history_rating: jax.Array,  # [n, t]
        mask: jax.Array,  # [n, t] bool
        *,
        target_item: Optional[jax.Array] = None,
        feature_tables: Optional[Mapping[str, jax.Array]] = None,
        deterministic: bool = True,
    ) -> SideEncoding:
        cfg = self.config
        mask = mask.astype(bool)
        if self.feature_encoder is None:  # built time-major from the transposed ids: no float transpose
            x = self.step_inputs(history.T, history_rating.T, mask.T)  # [t, n, d]
        else:  # the encoders read batch-major [n, t, D] steps
            x = jnp.swapaxes(self.step_inputs(history, history_rating, mask, target_item=target_item,
                                              feature_tables=feature_tables), 0, 1)
        mask = mask.T  # [t, n]
        input_proj = self.recurrent.project_inputs(x)  # [t, n, G h], hoisted out of the scan
        encoding = SideEncoding(entity=entity, mask=mask, input_proj=input_proj)
        if not cfg.gated:
            final_state = self.recurrent.run(input_proj, mask)
            return encoding._replace(
                input_proj=None, gates=mask.astype(final_state.dtype), final_state=final_state
            )
        context, summary = self.attention(x, mask, deterministic=deterministic)  # [t, n, 2A], [n, 2A]
        context_proj = self.gate.project_context(context, x if cfg.gate_step_input else None)  # [t, n, K]
        encoding = encoding._replace(context_proj=context_proj, summary=summary)
        if cfg.gate_match:
            encoding = encoding._replace(match_keys=self.gate.match_keys(x[..., : cfg.embed_dim]))
        if cfg.interacting:
            return encoding  # gates and the gated scan need the other side: see ``pair_state``
        gates = self.gate(context_proj, mask)
        final_state = self.recurrent.run(input_proj, mask, gates)
        return encoding._replace(input_proj=None, gates=gates, final_state=final_state)

    def terms_for_other(self, other: SideEncoding) -> SideEncoding:
        """The other side's encoding plus what *this* side's interacting gate needs of it, computed
        once per entity: s * M2 S_other (+ s * M3 e_other with ``gate_target_embedding``) and, with
        ``gate_match``, the match query e_other; e_other = this tower's step embedding [n, D] of the
        other entity (a user tower embeds items)."""
        cfg = self.config
        embedding = None
        if cfg.gate_target_embedding or cfg.gate_match:
            embedding = jnp.take(self.step_embedding, other.entity, axis=0)  # [n, D]
        return other._replace(
            summary_for_other=self.gate.project_summary(
                other.summary, embedding if cfg.gate_target_embedding else None),
            match_query_for_other=embedding if cfg.gate_match else None,
        )

    # -- pair part -----------------------------------------------------------------------------------
    def pair_state(
        self, encoding: SideEncoding, other: SideEncoding
    ) -> tuple[jax.Array, jax.Array]:
        """(final state [m, h], gates [t, m] time-major) of this side for the pair with ``other``."""
        if encoding.final_state is not None:
            return encoding.final_state, encoding.gates
        gates = self.gate(encoding.context_proj, encoding.mask, other.summary_for_other,
                          encoding.match_keys, other.match_query_for_other)  # [t, m]
        input_proj = encoding.input_proj
        input_proj = jnp.broadcast_to(input_proj, (input_proj.shape[0], gates.shape[1]) + input_proj.shape[2:])
        final_state = self.recurrent.run(input_proj, None, gates)
        return final_state, gates

    def represent(self, final_state: jax.Array, entity: Optional[jax.Array] = None, *,
                  feature_tables: Optional[Mapping[str, jax.Array]] = None,
                  deterministic: bool = True) -> jax.Array:
        """dropout(h_T) -> PReLU(W h + b) [m, h]; with stationary factors, [PReLU(...) ; p_entity]
        [m, h + S] (so the inner product of two representations adds <p_u, q_i>; ``entity`` [m]).
        With ``feature_factors`` the item side's q_i is q_i + the mean of its features' factors
        (``feature_tables["flat"]`` [n_items, K], -1 = no feature)."""
        h = self.state_dropout(final_state, deterministic=deterministic)
        z = matmul(h, self.head_kernel, resolve_dtype(self.config.compute_dtype)) + self.head_bias
        representation = jnp.where(z >= 0, z, self.prelu_slope * z)
        if self.config.stationary_dim:
            if entity is None:
                raise ValueError("a model with stationary factors needs the entity ids to represent")
            factor = jnp.take(self.stationary_factor, entity, axis=0)
            if self.config.feature_factors and self.side == "item":
                factor = factor + self.mean_feature_factor(entity, feature_tables)
            factor = jnp.broadcast_to(factor, representation.shape[:-1] + factor.shape[-1:])
            representation = jnp.concatenate([representation, factor.astype(representation.dtype)], axis=-1)
        return representation

    def mean_feature_factor(self, item: jax.Array, feature_tables: Optional[Mapping[str, jax.Array]]) -> jax.Array:
        """Mean of the items' feature factors [m, S] over their distinct features (0 for an item
        without features); ``item`` [m]."""
        return _mean_over_features(self.feature_factor, item, feature_tables, "feature_factors")

    def bias(self, entity: jax.Array, recency: Optional[jax.Array] = None, *,
             feature_tables: Optional[Mapping[str, jax.Array]] = None) -> jax.Array:
        """Per-entity scalar bias [n] (zeros when the config has no biases), plus on the item side
        the mean of the item's feature biases (``feature_bias``; ``feature_tables`` as for
        :meth:`represent`) and the time-aware part w . recency when the config has
        ``recency_windows`` (``recency`` [n, K + 1])."""
        if self.config.bias == "none":
            bias = jnp.zeros(entity.shape, jnp.float32)
        else:
            bias = jnp.take(self.entity_bias, entity, axis=0)
        if self.config.feature_bias and self.side == "item":
            bias = bias + _mean_over_features(self.feature_bias[:, None], entity, feature_tables, "feature_bias")[..., 0]
        if self.config.recency_windows and self.side == "item":
            if recency is None:
                raise ValueError(
                    f"recency_windows={self.config.recency_windows} adds a time-aware item bias that reads the "
                    "batch's 'item_recency' features: build batches with "
                    "materialize(..., recency=ItemRecency.from_histories(item_histories, recency_windows))")
            bias = bias + jnp.sum(recency.astype(jnp.float32) * self.recency_weight, axis=-1)
        return bias


def _mean_over_features(table: jax.Array, item: jax.Array, feature_tables: Optional[Mapping[str, jax.Array]],
                        setting: str) -> jax.Array:
    """Mean of ``table`` [F, S] rows over each item's distinct features -> [m, S] (0 for an item
    without features); ``item`` [m]; ``feature_tables["flat"]`` [n_items, K], -1 = no feature."""
    if feature_tables is None:
        raise ValueError(f"{setting} reads the item feature tables: pass feature_tables (IARN.feature_tables())")
    features = jnp.take(feature_tables["flat"], item, axis=0)  # [m, K], -1 = none
    valid = (features >= 0).astype(jnp.float32)
    rows = jnp.take(table, jnp.maximum(features, 0), axis=0)  # [m, K, S]
    total = jnp.einsum("mk,mks->ms", valid, rows)
    return total / jnp.maximum(valid.sum(axis=-1, keepdims=True), 1.0)


class IARN(nn.Module):
    """IARN / TAGM / RNN / LSTM two-tower rating model.

    config: the ModelConfig.
    n_features: F, the number of item features (the rows of the feature encoder's map tables);
      used only with ``config.feature_encoder``. The feature tables themselves are not part of the
      module: they are the ``"features"`` variable collection, passed to ``apply`` next to the
      parameters (``iarn_jax.models.features.feature_variables``), so compiled steps take them as
      arguments.
    """

    config: ModelConfig
    n_features: int = 0

    def setup(self):
        self.user_tower = Tower(self.config, "user", self.n_features)
        self.item_tower = Tower(self.config, "item", self.n_features)

    def feature_tables(self) -> Optional[dict]:
        """The ``"features"`` collection ({"flat": [n_items, K], "paths": [n_items, P, L]}); None
        when the config reads no item features."""
        if not self.config.reads_item_features:
            return None
        if not self.has_variable(FEATURES, "flat"):
            raise ValueError(
                f"{self.config.item_feature_reader} reads the item feature tables from the "
                f"{FEATURES!r} collection: apply(model_variables(params, constants), ...) and "
                "initialize(model, rng, batch, constants) with constants = "
                "feature_variables(FeatureData.from_dataset(dataset)) (iarn_jax.models.features)")
        return {name: self.get_variable(FEATURES, name) for name in ("flat", "paths")}

    def encode_user(
        self,
        user: jax.Array,  # [n] int
        user_history: jax.Array,  # [n, tu] item ids
        user_history_rating: jax.Array,  # [n, tu]
        user_history_mask: jax.Array,  # [n, tu] bool
        *,
        deterministic: bool = True,
    ) -> SideEncoding:
        """User-side encoding from the user's own history (see :class:`SideEncoding`)."""
        encoding = self.user_tower.encode(
            user, user_history, user_history_rating, user_history_mask, feature_tables=self.feature_tables(),
            deterministic=deterministic,
        )
        return self.item_tower.terms_for_other(encoding) if self.config.interacting else encoding

    def encode_item(
        self,
        item: jax.Array,  # [n] int
        item_history: jax.Array,  # [n, ti] user ids
        item_history_rating: jax.Array,  # [n, ti]
        item_history_mask: jax.Array,  # [n, ti] bool
        item_recency: Optional[jax.Array] = None,  # [n, K + 1] (``recency_windows`` only)
        *,
        deterministic: bool = True,
    ) -> SideEncoding:
        """Item-side encoding from the item's own history (see :class:`SideEncoding`)."""
        encoding = self.item_tower.encode(
            item, item_history, item_history_rating, item_history_mask, target_item=item,
            feature_tables=self.feature_tables(), deterministic=deterministic,
        )
        if self.config.recency_windows:
            encoding = encoding._replace(recency=item_recency)
        return self.user_tower.terms_for_other(encoding) if self.config.interacting else encoding

    def pair(
        self, user_encoding: SideEncoding, item_encoding: SideEncoding, *, deterministic: bool = True
    ) -> tuple[jax.Array, dict]:
        """Prediction [m] for encodings whose leading dims broadcast to m, and aux:
        user_gates [m, tu], item_gates [m, ti] (mask for rnn/lstm), user_representation /
        item_representation [m, h] (the head outputs), bias [m] (bias terms incl. global mean)."""
        user_state, user_gates = self.user_tower.pair_state(user_encoding, item_encoding)
        item_state, item_gates = self.item_tower.pair_state(item_encoding, user_encoding)
        user_repr = self.user_tower.represent(user_state, user_encoding.entity, deterministic=deterministic)
        item_repr = self.item_tower.represent(item_state, item_encoding.entity, feature_tables=self.feature_tables(),
                                              deterministic=deterministic)
        bias = (self.user_tower.bias(user_encoding.entity)
                + self.item_tower.bias(item_encoding.entity, item_encoding.recency,
                                       feature_tables=self.feature_tables()))
        if self.config.bias == "global_user_item":
            bias = bias + self.config.global_mean
        prediction = jnp.sum(user_repr * item_repr, axis=-1) + bias
        m = prediction.shape[0]
        aux = {
            "user_gates": _broadcast_leading(user_gates.T, m),  # [m, tu], batch-major for readers
            "item_gates": _broadcast_leading(item_gates.T, m),
            "user_representation": _broadcast_leading(user_repr, m),
            "item_representation": _broadcast_leading(item_repr, m),  # [m, h (+ S)]
            "bias": _broadcast_leading(jnp.asarray(bias, prediction.dtype), m),
        }
        self.sow("intermediates", "user_gates", aux["user_gates"])
        self.sow("intermediates", "item_gates", aux["item_gates"])
        return prediction, aux

    def score_with_negatives(self, batch: dict, *, deterministic: bool = True) -> tuple[jax.Array, jax.Array, dict]:
        """(positive predictions [b], negative predictions [b, k], aux of the positives).

        ``batch`` is a training batch plus the k sampled negative items of every positive
        (``NEGATIVE_SPEC`` of ``iarn_jax.data.negatives``: ``neg_item`` [b*k] and its padded history
        ``neg_item_history*`` [b*k, Tn], row-major: rows j*k..j*k+k-1 belong to positive j). The user
        side (embeddings, context bi-RNN, summary) is encoded once per positive and shared by its k
        negatives; only the interacting gates, the gated scan, the head and the product run per
        pair.
        """
        user_encoding, item_encoding = self.encode_batch(batch, deterministic=deterministic)
        negative_encoding = self.encode_item(
            batch["neg_item"], batch["neg_item_history"], batch["neg_item_history_rating"],
            batch["neg_item_history_mask"], batch.get("neg_item_recency"), deterministic=deterministic,
        )
        b = batch["user"].shape[0]
        k = batch["neg_item"].shape[0] // b
        positive, aux = self.pair(user_encoding, item_encoding, deterministic=deterministic)
        repeated = user_encoding.map_entities(lambda x, axis: jnp.repeat(x, k, axis=axis))
        negative, _ = self.pair(repeated, negative_encoding, deterministic=deterministic)
        return positive, negative.reshape(b, k), aux

    def __call__(self, batch: dict, *, deterministic: bool = True) -> tuple[jax.Array, dict]:
        """batch: a dict following ``iarn_jax.data.types.BATCH_SPEC`` -> (prediction [b], aux)."""
        user_encoding, item_encoding = self.encode_batch(batch, deterministic=deterministic)
        return self.pair(user_encoding, item_encoding, deterministic=deterministic)

    def encode_batch(self, batch: dict, *, deterministic: bool = True) -> tuple[SideEncoding, SideEncoding]:
        """(user encoding, item encoding) of a BATCH_SPEC batch's pairs."""
        user_encoding = self.encode_user(
            batch["user"], batch["user_history"], batch["user_history_rating"],
            batch["user_history_mask"], deterministic=deterministic,
        )
        item_encoding = self.encode_item(
            batch["item"], batch["item_history"], batch["item_history_rating"],
            batch["item_history_mask"], batch.get("item_recency"), deterministic=deterministic,
        )
        return user_encoding, item_encoding


__all__ = [
    "IARN",
    "STEP_FIELDS",
    "SideEncoding",
    "concatenate_encodings",
    "entity_axis",
    "Tower",
    "initialize",
    "model_variables",
]
