"""Feature encoders (paper section 3.3, equations 10-12) for the model's feature-encoder seam.

Each feature f owns a linear map M_f of the D-dimensional step input (eq. 10). By default
M_f = I + U_f V_f^T with U_f, V_f in R^{D x r} (low rank r; U_f starts at 0, so every map starts
as the identity and the encoder starts as IARN-Plain up to the flat encoder's feature count);
``dense`` gives a full D x D matrix per feature (initialised to I).

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

Which inputs (``ModelConfig.feature_encoder`` = ``"KIND[:INPUTS][:rR|:dense][:sum|:mean]"``):

* ``target`` (default; the paper): the item side's steps (users) are transformed with the
  **target item's** features; one map per example, applied to all its steps.
* ``step``: each step of a user's history (an item) is transformed with **that item's own**
  features (the natural counterpart on the user side).
* ``both``: both of the above (separate parameters per tower).

``:sum`` (default) / ``:mean`` chooses whether the flat encoder sums (eq. 11) or averages the
feature maps; ``hier`` always averages over paths.

Cost: the maps are never materialised per step. Per level of the path (a static loop, max depth
L), the factors of that level's feature are gathered per example (target) or per step (step) and
applied as x + (x V_f) U_f^T: 2 D r multiply-adds per feature per step, memory O(rows * D * r).
Parameters: 2 F D r (low rank) or F D^2 (dense).

Usage::

    data = FeatureData.from_dataset(split.dataset)
    model = IARN(ModelConfig(feature_encoder="hier:target:r8", ...), feature_data=data)
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn

from iarn_jax.data.types import Dataset, ItemFeatures
from iarn_jax.models.config import ModelConfig
from iarn_jax.models.iarn import register_feature_encoder

KINDS = ("flat", "hier", "ref")
INPUTS = ("target", "step", "both")
DEFAULT_RANK = 8


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

    def names_of(self, item: int, view: str = "paths") -> list:
        """Feature names of one item: a list of paths (lists of names) or the flat list."""
        if view == "flat":
            return [str(self.feature_names[f]) for f in self.flat[item] if f >= 0]
        return [[str(self.feature_names[f]) for f in path if f >= 0] for path in self.paths[item] if path[0] >= 0]


def feature_data_for(config: ModelConfig, dataset: Dataset) -> Optional[FeatureData]:
    """The model's ``feature_data`` argument: None without an encoder; an error when the data has
    no item features."""
    if config.feature_encoder is None:
        return None
    data = FeatureData.from_dataset(dataset)
    if data is None:
        raise ValueError(f"feature_encoder={config.feature_encoder!r} but dataset {dataset.name!r} has no item features")
    return data


# ---------------------------------------------------------------------------------------------
# Encoder name


@dataclasses.dataclass(frozen=True)
class EncoderSpec:
    kind: str = "flat"
    inputs: str = "target"
    rank: Optional[int] = DEFAULT_RANK  # None = dense D x D maps
    reduce: str = "sum"  # flat encoder: "sum" (eq. 11) or "mean"


def parse_encoder_name(name: str) -> EncoderSpec:
    """``"KIND[:INPUTS][:rR|:dense][:sum|:mean]"``, e.g. ``"hier"``, ``"flat:step:r4"``."""
    kind, *options = name.split(":")
    if kind not in KINDS:
        raise ValueError(f"unknown feature encoder kind {kind!r} in {name!r}; choose one of {KINDS}")
    spec = EncoderSpec(kind=kind)
    for option in options:
        if option in INPUTS:
            spec = dataclasses.replace(spec, inputs=option)
        elif option == "dense":
            spec = dataclasses.replace(spec, rank=None)
        elif option in ("sum", "mean"):
            spec = dataclasses.replace(spec, reduce=option)
        elif option.startswith("r") and option[1:].isdigit() and int(option[1:]) > 0:
            spec = dataclasses.replace(spec, rank=int(option[1:]))
        else:
            raise ValueError(f"bad feature encoder option {option!r} in {name!r} (inputs {INPUTS}, rR, dense, sum, mean)")
    return spec


# ---------------------------------------------------------------------------------------------
# The encoder module


class FeatureEncoder(nn.Module):
    """Transforms step inputs x [n, t, D] with per-feature maps (see the module doc).

    Target mode (``target_item`` [n]): one feature set per example. Step mode (``step_items``
    [n, t]): one feature set per step.
    """

    spec: EncoderSpec
    feature_data: FeatureData
    dim: int

    def setup(self):
        f, d = self.feature_data.n_features, self.dim
        if self.spec.rank is None:
            self.maps = self.param("maps", lambda k, s: jnp.broadcast_to(jnp.eye(d), s), (f, d, d))
        else:
            r = self.spec.rank
            self.map_out = self.param("map_out", nn.initializers.zeros_init(), (f, d, r))  # U_f
            self.map_in = self.param("map_in", nn.initializers.normal(1.0 / np.sqrt(d)), (f, d, r))  # V_f

    def _apply_map(self, y: jax.Array, ids: jax.Array, per_step: bool) -> jax.Array:
        """M_f y for the feature ids ``ids`` ([n] or [n, t], >= 0); y [n, t, D]."""
        if self.spec.rank is None:
            m = jnp.take(self.maps, ids, axis=0)
            return jnp.einsum("ntd,nted->nte" if per_step else "ntd,ned->nte", y, m)
        u = jnp.take(self.map_out, ids, axis=0)
        v = jnp.take(self.map_in, ids, axis=0)
        if per_step:
            return y + jnp.einsum("ntr,ntdr->ntd", jnp.einsum("ntd,ntdr->ntr", y, v), u)
        return y + jnp.einsum("ntr,ndr->ntd", jnp.einsum("ntd,ndr->ntr", y, v), u)

    def __call__(self, x: jax.Array, *, step_items: Optional[jax.Array] = None,
                 target_item: Optional[jax.Array] = None) -> jax.Array:
        per_step = step_items is not None
        items = step_items if per_step else target_item
        if items is None:
            return x
        table = self.feature_data.flat if self.spec.kind in ("flat", "ref") else self.feature_data.paths
        ids = jnp.take(jnp.asarray(table), items, axis=0)  # [n(, t), K] or [n(, t), P, L]

        def expand(a):  # per-example values [n, ...] -> broadcast over steps [n, 1, ...]
            return a if per_step else a[:, None]

        if self.spec.kind == "flat":
            total = jnp.zeros_like(x)
            for k in range(ids.shape[-1]):
                f = ids[..., k]
                mapped = self._apply_map(x, jnp.maximum(f, 0), per_step)
                total = total + jnp.where(expand(f >= 0)[..., None], mapped, 0.0)
            count = expand(jnp.sum(ids >= 0, axis=-1))[..., None].astype(x.dtype)
            if self.spec.reduce == "mean":
                total = total / jnp.maximum(count, 1.0)
            return jnp.where(count > 0, total, x)
        if self.spec.kind == "ref":
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


def make_feature_encoder(*, config: ModelConfig, side: str, feature_data: Any) -> Optional[nn.Module]:
    """Factory for the model's seam (registered for every kind in KINDS)."""
    spec = parse_encoder_name(config.feature_encoder)
    wanted = {"target": ("item",), "step": ("user",), "both": ("user", "item")}[spec.inputs]
    if side not in wanted:
        return None
    if feature_data is None:
        raise ValueError(
            f"feature_encoder={config.feature_encoder!r} needs feature_data: IARN(config, "
            "feature_data=FeatureData.from_dataset(dataset))"
        )
    if not isinstance(feature_data, FeatureData):
        feature_data = FeatureData.from_item_features(feature_data, config.n_items)
    return FeatureEncoder(spec=spec, feature_data=feature_data, dim=config.embed_dim)


for _kind in KINDS:
    register_feature_encoder(_kind, make_feature_encoder)


def encoder_param_count(params: Any) -> int:
    """Number of feature-encoder parameters in a model's params tree."""
    total = 0
    for tower in params.values() if isinstance(params, dict) else ():
        if isinstance(tower, dict) and "feature_encoder" in tower:
            total += sum(int(np.prod(a.shape)) for a in jax.tree_util.tree_leaves(tower["feature_encoder"]))
    return total


__all__ = [
    "EncoderSpec",
    "FeatureData",
    "FeatureEncoder",
    "encoder_param_count",
    "feature_data_for",
    "make_feature_encoder",
    "parse_encoder_name",
]
