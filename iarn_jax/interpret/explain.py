"""Explanations of one prediction by its attention gates (paper section 4.2, Figure 5).

``explain(source, user, item)`` runs the model on one (user, item) pair and returns an
:class:`Explanation`: the predicted rating and, for the user's history (items) and the item's
history (users), every step's contiguous id, original id, name / title (when the source has one),
item features (user-history steps), time, step rating and gate value.

``source`` is a :class:`~iarn_jax.training.loop.TrainResult` (e.g. from ``iarn_jax.train`` or
:func:`load_run` on a finished ``experiments.train`` work directory), or a model with ``params=``
and ``data=`` (a :class:`~iarn_jax.training.loop.PreparedData`). Ids are contiguous unless
``original_ids=True``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
from typing import Any, Optional, Union

import numpy as np
import pandas as pd

from iarn_jax import jsonio
from iarn_jax.data import batching, histories
from iarn_jax.data.types import Dataset


@dataclasses.dataclass(frozen=True)
class Step:
    """One step of a history. ``id`` is the contiguous id of the step's counterpart (an item on the
    user side, a user on the item side)."""

    position: int  # 0-based position in the entity's whole history (time order)
    id: int
    original_id: Any
    name: Optional[str]
    features: Optional[list]  # feature names of the step's item (user side), else None
    time: int
    time_text: str
    rating: Optional[float]  # None on the pair's own step (hidden from the model)
    gate: float


@dataclasses.dataclass(frozen=True)
class Explanation:
    user: int
    item: int
    user_original_id: Any
    item_original_id: Any
    item_title: Optional[str]
    item_features: Optional[list]
    prediction: float
    rating: Optional[float]  # the observed rating of the pair, when it is in the split
    pair_set: Optional[str]  # "train" / "val" / "test" / None
    model: str
    user_steps: list
    item_steps: list
    user_history_length: int
    item_history_length: int
    prediction_kind: str = "rating"  # "rating" (rating / joint objectives) or "score" (ranking: not a rating)

    def to_dict(self) -> dict:
        return jsonio.jsonable(dataclasses.asdict(self))

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    def format(self, max_steps: Optional[int] = None) -> str:
        """Readable text: the pair, the prediction and both histories with their gates."""
        head = (f"{self.model}: user {self.user_original_id} -> item {self.item_original_id}"
                + (f" {self.item_title!r}" if self.item_title else "")
                + (f" [{_features_text(self.item_features)}]" if self.item_features else ""))
        rating = f", observed {self.rating:g} ({self.pair_set})" if self.rating is not None else ""
        label = "predicted rating" if self.prediction_kind == "rating" else "ranking score"
        lines = [head, f"{label} {self.prediction:.3f}{rating}"]
        for label, steps, total in (("user history (items)", self.user_steps, self.user_history_length),
                                    ("item history (users)", self.item_steps, self.item_history_length)):
            shown = steps if max_steps is None else steps[-max_steps:]
            lines.append(f"\n{label}: {total} steps" + (f", last {len(shown)} shown" if len(shown) < total else ""))
            lines.append(f"  {'pos':>4} {'gate':>5} {'':10} {'rating':>6}  {'time':19}  id / name")
            for s in shown:
                bar = "#" * int(round(10 * s.gate))
                r = "own" if s.rating is None else f"{s.rating:g}"
                name = f"{s.original_id}" + (f"  {s.name}" if s.name else "")
                if s.features:
                    name += f"  [{_features_text(s.features)}]"
                lines.append(f"  {s.position:>4} {s.gate:5.3f} {bar:10} {r:>6}  {s.time_text:19}  {name}")
        return "\n".join(lines)


def _features_text(features) -> str:
    if features and isinstance(features[0], list):
        return " | ".join(" > ".join(path) for path in features)
    return ", ".join(features)


def _time_text(value: int, unit: str) -> str:
    if unit == "seconds":
        return pd.Timestamp(int(value), unit="s").strftime("%Y-%m-%d %H:%M")
    return f"#{int(value)}"


def _item_feature_names(dataset: Dataset, item: int) -> Optional[list]:
    features = dataset.item_features
    if features is None or item >= len(features.paths) or not features.paths[item]:
        return None
    names = features.feature_names
    if features.hierarchical:
        return [[str(names[f]) for f in path] for path in features.paths[item]]
    return [str(names[f]) for f in features.flat_features(item)]


def contiguous_id(ids: np.ndarray, original: Any, what: str) -> int:
    """Contiguous id of an original id (compared as text, so "50" finds 50)."""
    hits = np.flatnonzero(np.asarray(ids).astype(str) == str(original))
    if len(hits) == 0:
        raise KeyError(f"no {what} with original id {original!r}")
    return int(hits[0])


def _find_pair(split, user: int, item: int):
    for name in ("test", "val", "train"):
        frame = getattr(split, name)
        rows = frame[(frame["user"].to_numpy() == user) & (frame["item"].to_numpy() == item)]
        if len(rows):
            return name, float(rows["rating"].iloc[0]), int(rows["time"].iloc[0])
    return None, None, None


def explain(source, user, item, *, params: Any = None, data: Any = None, original_ids: bool = False,
            max_len: Optional[int] = None, variables: Optional[dict] = None,
            objective: Optional[str] = None) -> Explanation:
    """Prediction and per-step gates of both histories for one pair (see the module doc).

    source: a TrainResult, or an IARN model (then ``params`` and ``data`` = PreparedData), or a
      tuple ``(model, params, data)``.
    user, item: contiguous ids, or original ids with ``original_ids=True``.
    max_len: keep the most recent steps (default: the training config's max_len, else all).
    objective: the model's training objective (default: the training config's, else "rating"); a
      "ranking" model's prediction is a score, not a rating (``Explanation.prediction_kind``).
    """
    if isinstance(source, tuple):
        source, params, data = source
    if hasattr(source, "params") and hasattr(source, "data") and hasattr(source, "model_config"):
        model, params, data = source.model, source.params, source.data
        if max_len is None:
            max_len = source.train_config.max_len
        if objective is None:
            objective = source.train_config.objective
    else:
        model = source
        if params is None or data is None:
            raise TypeError("explain(model, ...) needs params= and data= (PreparedData); or pass a TrainResult")
    dataset = data.split.dataset
    if original_ids:
        user = contiguous_id(dataset.user_ids, user, "user")
        item = contiguous_id(dataset.item_ids, item, "item")
    user, item = int(user), int(item)
    if not (0 <= user < dataset.n_users and 0 <= item < dataset.n_items):
        raise KeyError(f"pair ({user}, {item}) outside [0, {dataset.n_users}) x [0, {dataset.n_items})")

    pair_set, rating, time = _find_pair(data.split, user, item)
    frame = pd.DataFrame({"user": [user], "item": [item], "rating": [rating or 0.0],
                          "time": [time if time is not None else np.iinfo(np.int64).max]})
    uh, ih = data.user_histories, data.item_histories
    mode = data.history_mode if pair_set in ("train", "val") else "full"
    pairs = histories.make_pairs(frame, uh, ih, mode=mode)
    windows = getattr(getattr(model, "config", None), "recency_windows", ())
    batch = batching.materialize(np.array([0]), pairs, uh, ih, max_len=max_len,
                                 recency=data.with_recency(windows).recency)
    import jax

    if variables is None:
        from iarn_jax.models.features import feature_data_for, feature_variables
        from iarn_jax.models.iarn import model_variables

        config = getattr(model, "config", None)
        constants = feature_variables(feature_data_for(config, dataset)) if config is not None else {}
        variables = model_variables(params, constants)
    prediction, aux = model.apply(variables, batch)
    user_gates = np.asarray(jax.device_get(aux["user_gates"]))[0]
    item_gates = np.asarray(jax.device_get(aux["item_gates"]))[0]

    def steps(side_histories, entity, visible, own, gates, side):
        kept = int(batching.capped_lengths(np.array([visible]), max_len)[0])
        first = int(side_histories.offsets[entity]) + visible - kept
        own_col = own - (visible - kept) if own >= 0 else -1
        out = []
        for k in range(kept):
            e = first + k
            cid = int(side_histories.counterpart[e])
            if side == "user":
                original = dataset.item_ids[cid]
                name = str(dataset.item_titles[cid]) if dataset.item_titles is not None else None
                feats = _item_feature_names(dataset, cid)
            else:
                original, name, feats = dataset.user_ids[cid], None, None
            t = int(side_histories.time[e])
            out.append(Step(position=visible - kept + k, id=cid, original_id=jsonio.jsonable(original), name=name, features=feats,
                            time=t, time_text=_time_text(t, dataset.time_unit),
                            rating=None if k == own_col else float(side_histories.rating[e]),
                            gate=float(gates[k])))
        return out

    return Explanation(
        user=user, item=item,
        user_original_id=jsonio.jsonable(dataset.user_ids[user]), item_original_id=jsonio.jsonable(dataset.item_ids[item]),
        item_title=str(dataset.item_titles[item]) if dataset.item_titles is not None else None,
        item_features=_item_feature_names(dataset, item),
        prediction=float(np.asarray(prediction)[0]), rating=rating, pair_set=pair_set,
        model=getattr(getattr(model, "config", None), "variant", "model")
        + (f"+{model.config.feature_encoder}:{model.config.feature_inputs}"
           if getattr(getattr(model, "config", None), "feature_encoder", None) else ""),
        user_steps=steps(uh, user, int(pairs.user_len[0]), int(pairs.user_self[0]), user_gates, "user"),
        item_steps=steps(ih, item, int(pairs.item_len[0]), int(pairs.item_self[0]), item_gates, "item"),
        user_history_length=int(pairs.user_len[0]), item_history_length=int(pairs.item_len[0]),
        prediction_kind="score" if objective == "ranking" else "rating",
    )


def load_run(workdir: Union[str, pathlib.Path], *, data_root: Optional[str] = None,
             data: Optional[str] = None, cut: Optional[str] = None):
    """A TrainResult rebuilt from a finished ``experiments.train`` work directory: the split from
    ``run.json`` (or, for runs trained through the library, e.g. ``experiments.reproduce``'s
    ``iarn_runs/NAME``, from the protocol recorded in ``config.json``), the configs from
    ``config.json``, the best parameters from ``checkpoints/best``. ``data`` ("FORMAT:PATH") and
    ``cut`` override the data recorded in the run (e.g. when the data set has moved)."""
    from iarn_jax.models.config import ModelConfig
    from iarn_jax.training import checkpoint, run_records
    from iarn_jax.training.config import TrainConfig
    from iarn_jax.training.experiment import load_split
    from iarn_jax.training.loop import TrainResult, prepare_data

    workdir = pathlib.Path(workdir)
    for name in ("config.json", "checkpoints/best"):
        if not (workdir / name).exists():
            raise FileNotFoundError(f"{workdir / name} is missing: is {workdir} the workdir of a finished "
                                    "`python -m experiments.train --workdir=...` run?")
    config = json.loads((workdir / "config.json").read_text())
    run_path = workdir / "run.json"
    if run_path.exists():
        run = json.loads(run_path.read_text())
    elif data:
        run = {k: config[k] for k in ("min_len", "split_seed") if k in config}
    elif config.get("protocol") in ("synthetic", "clothing", "ml100k", "mlsmall"):
        run = {k: config[k] for k in ("protocol", "min_len", "split_seed") if k in config}
    else:
        raise FileNotFoundError(f"{run_path} is missing and {workdir / 'config.json'} names no built-in "
                                "protocol: cannot tell which data the run was trained on")
    model_fields = {f.name for f in dataclasses.fields(ModelConfig)}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    train_dict = {k: v for k, v in config["train"].items() if k in train_fields}
    if "bucket_lengths" in train_dict:
        train_dict["bucket_lengths"] = tuple(train_dict["bucket_lengths"])
    model_config = ModelConfig(**{k: v for k, v in config["model"].items() if k in model_fields})
    train_config = TrainConfig(**train_dict)
    split = load_split(run.get("protocol", config.get("protocol")), data_root or run.get("data_root"),
                       data=data or run.get("data"), cut=cut or run.get("cut"), min_len=run.get("min_len", 3),
                       seed=run.get("split_seed", 123), protocol_kwargs=run.get("protocol_kwargs"),
                       val_mode=run.get("val_mode", run_records.RUN_INFO_DEFAULTS["val_mode"]))
    if (split.n_users, split.n_items) != (model_config.n_users, model_config.n_items):
        raise ValueError(f"{workdir}: the data loaded from run.json has {split.n_users} users / {split.n_items} "
                         f"items, the trained model {model_config.n_users} / {model_config.n_items}: "
                         "not the data this run was trained on")
    data = prepare_data(split, train_config.history_mode).with_recency(model_config.recency_windows)
    params = checkpoint.load_params(workdir / "checkpoints" / "best")
    metrics = json.loads((workdir / "results.json").read_text()) if (workdir / "results.json").exists() else {}
    return TrainResult(model_config, train_config, params, metrics, data, workdir)


def _step_times(side_histories, entity: np.ndarray, visible: np.ndarray, width: int,
                max_len: Optional[int]) -> np.ndarray:
    """[B, width] times of the steps a batch shows (left-aligned, most recent ``kept`` steps)."""
    kept = batching.capped_lengths(visible, max_len)
    first = side_histories.offsets[entity] + (visible - kept)
    cols = np.arange(width)[None]
    flat = np.where(cols < kept[:, None], first[:, None] + cols, 0)
    return side_histories.time[np.minimum(flat, max(side_histories.n_events - 1, 0))]


def collect_gates(result, pairs_df: pd.DataFrame, *, batch_size: int = 512, history_mode: str = "full"):
    """Yields (batch, user_gates [B, Tu], item_gates [B, Ti], item_step_times [B, Ti]) for the real
    rows of every evaluation batch of ``pairs_df`` (contiguous ids)."""
    import jax

    windows = getattr(getattr(result, "model_config", None), "recency_windows", ())
    data = result.data.with_recency(windows) if windows else result.data
    uh, ih = data.user_histories, data.item_histories
    max_len = result.train_config.max_len
    pairs = histories.make_pairs(pairs_df, uh, ih, mode=history_mode)
    plan = batching.make_batch_plan(pairs, batch_size, shuffle=False, max_len=max_len,
                                    bucket_lengths=result.train_config.bucket_lengths)
    model = result.model
    from iarn_jax.models.iarn import model_variables

    apply = jax.jit(lambda p, c, b: model.apply(model_variables(p, c), b)[1])
    constants = result.constants  # the feature tables: an argument of the compiled call
    for entry in plan:
        batch = batching.materialize(entry, pairs, uh, ih, max_len=max_len, recency=data.recency)
        aux = jax.device_get(apply(result.params, constants, batch))
        real = batch["weight"] > 0
        idx = np.asarray(entry.indices)[real]
        batch = {k: v[real] for k, v in batch.items()}
        times = _step_times(ih, pairs.item[idx].astype(np.int64), pairs.item_len[idx].astype(np.int64),
                            batch["item_history"].shape[1], max_len)
        yield batch, np.asarray(aux["user_gates"])[real], np.asarray(aux["item_gates"])[real], times


def gate_relevance_auc(result, synthetic, pairs_df: Optional[pd.DataFrame] = None, *,
                       min_steps: int = 1) -> dict:
    """How well the gates find the planted relevant steps of synthetic data.

    ``synthetic``: the :class:`~iarn_jax.data.synthetic.SyntheticData` the split was made from.
    Ground truth per step: ``user_step_relevance`` (same category as the target item) and
    ``item_step_relevance`` (the target's category is a main interest of the step's user at the
    step's time). Returns, per side, ``pooled`` = the AUC of all valid steps' gates against the
    ground truth, and ``per_pair`` = the mean over pairs (with both classes among >= ``min_steps``
    steps) of the within-history AUC; plus the numbers of steps / pairs.
    """
    from iarn_jax.evaluate.metrics import auc

    pairs_df = result.data.split.test if pairs_df is None else pairs_df
    pooled = {"user": ([], []), "item": ([], [])}
    per_pair = {"user": [], "item": []}
    for batch, ug, ig, times in collect_gates(result, pairs_df):
        item = batch["item"][:, None]
        truth = {"user": synthetic.user_step_relevance(item, batch["user_history"]),
                 "item": synthetic.item_step_relevance(item, batch["item_history"], times)}
        gates = {"user": ug, "item": ig}
        for side in ("user", "item"):
            mask = batch[f"{side}_history_mask"]
            pooled[side][0].append(gates[side][mask])
            pooled[side][1].append(truth[side][mask])
            for g, r, m in zip(gates[side], truth[side], mask):
                if m.sum() >= min_steps and 0 < r[m].sum() < m.sum():
                    per_pair[side].append(auc(g[m], r[m]))
    out = {}
    for side in ("user", "item"):
        g, r = np.concatenate(pooled[side][0]), np.concatenate(pooled[side][1])
        out[side] = {"pooled": float(auc(g, r)), "per_pair": float(np.mean(per_pair[side])),
                     "steps": int(len(g)), "relevant_fraction": float(r.mean()), "pairs": len(per_pair[side])}
    return out


__all__ = ["Explanation", "Step", "collect_gates", "contiguous_id", "explain", "gate_relevance_auc", "load_run"]
