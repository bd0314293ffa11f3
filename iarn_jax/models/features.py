"""Feature encoders (paper section 3.3, equations 10-12) for the model's feature-encoder seam.

Each feature f owns a linear map M_f of the D-dimensional step input (eq. 10). By default
M_f = I + U_f V_f^T with U_f, V_f in R^{D x r} (low rank r; U_f starts at 0, so every map starts
as the identity and the encoder starts as IARN-Plain up to the flat encoder's feature count);
``feature_rank=0`` gives a full D x D matrix per feature (initialised to I).

* ``flat`` (eq. 11): E(x) = sum_f M_f x over the item's distinct features (the flat view: a
  category name under two parents is one feature).
* ``hier`` (eq. 12): for one path (f_root, ..., f_leaf), E(x) = M_leaf ... M_root x (the root map
  is applied first, the leaf last). Items with several paths: the **mean of the path
  compositions**. The path view keeps each name at its position in each path.
* ``ref`` (the reference code's ``mul``): tanh(M_cK ... tanh(M_c2 tanh(M_c1 x))) over the item's
  distinct ids sorted ascending (smallest id innermost). An option only: the ascending-id order
  is not the root -> leaf order for 17.6 % of Clothing items, and the tanh makes it a different
  function from eq. 12.

Items without features are left unchanged (the reference code's rule), in every kind.

Configuration (typed fields of ``ModelConfig``): ``feature_encoder`` = the kind (above, or None),
``feature_inputs`` = which steps are transformed:

* ``target`` (default; the paper): the item side's steps (users) are transformed with the
  **target item's** features; one map per example, applied to all its steps.
* ``step``: each step of a user's history (an item) is transformed with **that item's own**
  features (the natural counterpart on the user side).
* ``both``: both of the above (separate parameters per tower).

``feature_rank`` = r (0 = dense D x D maps); ``feature_reduce`` = ``sum`` (default, eq. 11) or
``mean``: whether the flat encoder sums or averages the feature maps; ``hier`` always averages over
paths.

Cost: the maps are never materialised per step. Per level of the path (a static loop, max depth
L), the factors of that level's feature are gathered per example (target) or per step (step) and
applied as x + (x V_f) U_f^T: 2 D r multiply-adds per feature per step, memory O(rows * D * r).
Parameters: 2 F D r (low rank) or F D^2 (dense).

The feature tables are **inputs** of the model, not part of it: the Flax variable collection
``"features"`` (:func:`feature_variables`: ``flat`` int32 [n_items, K], ``paths`` int32
[n_items, P, L]) is passed next to the parameters, so a jit-compiled step takes them as arguments
instead of embedding them as constants. The model only knows the number of features (the size of
its parameter tables). Usage::

    data = FeatureData.from_dataset(split.dataset)
    config = ModelConfig(feature_encoder="hier", feature_inputs="target", feature_rank=8, ...)
    model = IARN(config, n_features=data.n_features)
    constants = feature_variables(data)                      # {"features": {...}}
    params = initialize(model, rng, batch, constants)       # iarn_jax.models.iarn
    prediction, aux = model.apply({"params": params, **constants}, batch)

(``iarn_jax.training.loop.build_model`` and ``model_constants`` do the first lines from a split.)
``iarn_jax.models.iarn`` imports :func:`build_feature_encoder` from here; this module imports no
model code, so there is no registry and no import cycle.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from iarn_jax.data.types import Dataset, ItemFeatures
from iarn_jax.models.config import FEATURE_KINDS, ModelConfig

COLLECTION = "features"  # the Flax variable collection that carries the tables
SIDES_OF_INPUTS = {"target": ("item",), "step": ("user",), "both": ("user", "item")}


# ---------------------------------------------------------------------------------------------
# Feature data


@dataclasses.dataclass(frozen=True, eq=False)
class FeatureData:
    """Per-item feature ids as padded arrays (-1 = no feature), built once from ItemFeatures.

    paths:  int32 [n_items, P, L] each item's paths, root first (general -> specific).
    flat:   int32 [n_items, K] each item's distinct feature ids, ascending (the flat view; also
            the reference code's ``mul`` order).
    feature_names: [n_features] names.
    hierarchical: the source's paths are real hierarchies.
    """

    paths: np.ndarray
    flat: np.ndarray
    feature_names: np.ndarray
    hierarchical: bool

    @property
    def n_items(self) -> int:
        return int(self.paths.shape[0])

    @property
    def n_features(self) -> int:
        return int(len(self.feature_names))

    @classmethod
    def from_item_features(cls, features: ItemFeatures, n_items: Optional[int] = None) -> "FeatureData":
        n = len(features.paths) if n_items is None else int(n_items)
        item_paths = [tuple(features.paths[j]) if j < len(features.paths) else () for j in range(n)]
        n_paths = max([len(p) for p in item_paths] + [1])
        depth = max([len(path) for p in item_paths for path in p] + [1])
        flat_sets = [sorted({f for path in p for f in path}) for p in item_paths]
        width = max([len(s) for s in flat_sets] + [1])
        paths = np.full((n, n_paths, depth), -1, np.int32)
        flat = np.full((n, width), -1, np.int32)
        for j, (p, s) in enumerate(zip(item_paths, flat_sets)):
            for k, path in enumerate(p):
                paths[j, k, : len(path)] = path
            flat[j, : len(s)] = s
        return cls(paths=paths, flat=flat, feature_names=np.asarray(features.feature_names, dtype=object),
                   hierarchical=bool(features.hierarchical))

    @classmethod
    def from_dataset(cls, dataset: Dataset) -> Optional["FeatureData"]:
        """None when the dataset has no item features."""
        if dataset.item_features is None:
            return None
        return cls.from_item_features(dataset.item_features, dataset.n_items)

    def tables(self) -> dict:
        """The encoder's inputs: {"flat": int32 [n_items, K], "paths": int32 [n_items, P, L]}."""
        return {"flat": self.flat, "paths": self.paths}

    def names_of(self, item: int, view: str = "paths") -> list:
        """Feature names of one item: a list of paths (lists of names) or the flat list."""
        if view == "flat":
            return [str(self.feature_names[f]) for f in self.flat[item] if f >= 0]
        return [[str(self.feature_names[f]) for f in path if f >= 0] for path in self.paths[item] if path[0] >= 0]


def feature_data_for(config: ModelConfig, dataset: Dataset) -> Optional[FeatureData]:
    """The dataset's feature tables when the config reads them (a feature encoder or feature
    factors; None otherwise); an error when the data has no item features."""
    if not config.reads_item_features:
        return None
    data = FeatureData.from_dataset(dataset)
    if data is None:
        raise ValueError(f"{config.item_feature_reader} but dataset {dataset.name!r} has no item features")
    return data


def feature_variables(data: Optional[FeatureData]) -> dict:
    """The model's non-trainable variables: {} without feature data, else
    {"features": {"flat": [n_items, K], "paths": [n_items, P, L]}} (int32, -1 = no feature)."""
    return {} if data is None else {COLLECTION: data.tables()}


# ---------------------------------------------------------------------------------------------
# The encoder module


class FeatureEncoder(nn.Module):
    """Transforms step inputs x [n, t, D] with per-feature maps (see the module doc).

    kind: "flat", "hier" or "ref"; n_features: F (rows of the map tables); dim: D;
    rank: r of M_f = I + U_f V_f^T (0 = dense D x D maps); reduce: "sum" or "mean" (flat only).
    Called as ``encoder(x, tables, step_items=...)`` or ``encoder(x, tables, target_item=...)``:
    ``tables`` = {"flat": [n_items, K], "paths": [n_items, P, L]} (:meth:`FeatureData.tables`).
    Target mode (``target_item`` [n]): one feature set per example. Step mode (``step_items``
    [n, t]): one feature set per step.
    """

    kind: str
    n_features: int
    dim: int
    rank: int = 8
    reduce: str = "sum"

    def setup(self):
        f, d = self.n_features, self.dim
        if self.rank == 0:
            self.maps = self.param("maps", lambda k, s: jnp.broadcast_to(jnp.eye(d), s), (f, d, d))
        else:
            r = self.rank
            self.map_out = self.param("map_out", nn.initializers.zeros_init(), (f, d, r))  # U_f
            self.map_in = self.param("map_in", nn.initializers.normal(1.0 / np.sqrt(d)), (f, d, r))  # V_f

    def _apply_map(self, y: jax.Array, ids: jax.Array, per_step: bool) -> jax.Array:
        """M_f y for the feature ids ``ids`` ([n] or [n, t], >= 0); y [n, t, D]."""
        if self.rank == 0:
            m = jnp.take(self.maps, ids, axis=0)
            return jnp.einsum("ntd,nted->nte" if per_step else "ntd,ned->nte", y, m)
        u = jnp.take(self.map_out, ids, axis=0)
        v = jnp.take(self.map_in, ids, axis=0)
        if per_step:
            return y + jnp.einsum("ntr,ntdr->ntd", jnp.einsum("ntd,ntdr->ntr", y, v), u)
        return y + jnp.einsum("ntr,ndr->ntd", jnp.einsum("ntd,ndr->ntr", y, v), u)

    def __call__(self, x: jax.Array, tables: Mapping[str, jax.Array], *, step_items: Optional[jax.Array] = None,
                 target_item: Optional[jax.Array] = None) -> jax.Array:
        per_step = step_items is not None
        items = step_items if per_step else target_item
        if items is None:
            return x
        table = tables["flat"] if self.kind in ("flat", "ref") else tables["paths"]
        ids = jnp.take(table, items, axis=0)  # [n(, t), K] or [n(, t), P, L]

        def expand(a):  # per-example values [n, ...] -> broadcast over steps [n, 1, ...]
            return a if per_step else a[:, None]

        if self.kind == "flat":
            total = jnp.zeros_like(x)
            for k in range(ids.shape[-1]):
                f = ids[..., k]
                mapped = self._apply_map(x, jnp.maximum(f, 0), per_step)
                total = total + jnp.where(expand(f >= 0)[..., None], mapped, 0.0)
            count = expand(jnp.sum(ids >= 0, axis=-1))[..., None].astype(x.dtype)
            if self.reduce == "mean":
                total = total / jnp.maximum(count, 1.0)
            return jnp.where(count > 0, total, x)
        if self.kind == "ref":
            y = x
            for k in range(ids.shape[-1]):  # ascending ids, smallest innermost
                f = ids[..., k]
                y = jnp.where(expand(f >= 0)[..., None], jnp.tanh(self._apply_map(y, jnp.maximum(f, 0), per_step)), y)
            return y
        # hier: per path, root first; mean over the item's paths
        total = jnp.zeros_like(x)
        for p in range(ids.shape[-2]):
            y = x
            for level in range(ids.shape[-1]):
                f = ids[..., p, level]
                y = jnp.where(expand(f >= 0)[..., None], self._apply_map(y, jnp.maximum(f, 0), per_step), y)
            total = total + jnp.where(expand(ids[..., p, 0] >= 0)[..., None], y, 0.0)
        n_paths = expand(jnp.sum(ids[..., 0] >= 0, axis=-1))[..., None].astype(x.dtype)
        return jnp.where(n_paths > 0, total / jnp.maximum(n_paths, 1.0), x)


def build_feature_encoder(config: ModelConfig, side: str, n_features: int) -> Optional[FeatureEncoder]:
    """The encoder of one tower ("user" or "item"), or None when the config has no encoder or its
    ``feature_inputs`` leave that side untransformed. n_features: F of the data's feature tables."""
    if config.feature_encoder is None or side not in SIDES_OF_INPUTS[config.feature_inputs]:
        return None
    if config.feature_encoder not in FEATURE_KINDS:  # ModelConfig refuses this already
        raise ValueError(f"feature_encoder: unknown kind {config.feature_encoder!r}")
    if n_features <= 0:
        raise ValueError(f"feature_encoder={config.feature_encoder!r} needs the number of item features: "
                         "IARN(config, n_features=FeatureData.from_dataset(dataset).n_features) "
                         "(iarn_jax.training.loop.build_model does this)")
    return FeatureEncoder(kind=config.feature_encoder, n_features=n_features, dim=config.embed_dim,
                          rank=config.feature_rank, reduce=config.feature_reduce)


def encoder_param_count(params: Any) -> int:
    """Number of feature-encoder parameters in a model's params tree."""
    total = 0
    for tower in params.values() if isinstance(params, dict) else ():
        if isinstance(tower, dict) and "feature_encoder" in tower:
            total += sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tower["feature_encoder"]))
    return total


__all__ = [
    "COLLECTION",
    "FeatureData",
    "FeatureEncoder",
    "build_feature_encoder",
    "encoder_param_count",
    "feature_data_for",
    "feature_variables",
]
