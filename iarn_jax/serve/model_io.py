"""A trained model as one versioned folder that serves without the data or the training pipeline.

Layout of a saved model (``save_model(result, path)``)::

  manifest.json   format name + version, package version, ModelConfig, TrainConfig, the dataset's
                  name / rating scale / time unit / source, the history mode and the test metrics
  params/         orbax pytree of the (best) parameters
  ids.npz         user_ids, item_ids (original ids of the contiguous ids), item_titles when known
  histories.npz   the training-period histories of both sides (CSR: offsets, counterpart, rating,
                  time), i.e. what the towers read at serving time
  features.npz    item feature names and paths (only when the dataset has item features; the
                  feature encoders need them)

``load_model(path)`` returns a :class:`ServedModel` in a fresh process, without the data folder:
``predict``, ``recommend``, ``recommend_many`` and ``explain`` work on it as on a ``TrainResult``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from typing import Any, Optional

import numpy as np
import pandas as pd

from iarn_jax.data import histories as histories_lib
from iarn_jax.data.histories import Histories
from iarn_jax.data.types import RATING_COLUMNS, Dataset, ItemFeatures, ProtocolSplit
from iarn_jax.models.config import ModelConfig
from iarn_jax.training.config import TrainConfig

FORMAT = "iarn_jax.saved_model"
FORMAT_VERSION = 1


@dataclasses.dataclass(eq=False)
class ServedModel:
    """A trained model ready to serve: configs, parameters and the training-period histories.

    ``data`` is a :class:`~iarn_jax.training.loop.PreparedData`; for a loaded model its split holds
    the id maps, titles and features and the training history, with empty train / val / test
    tables. A ServedModel can stand in for a ``TrainResult`` (``iarn_jax.explain``,
    ``RankingScorer.from_result`` with explicit items, ``iarn_jax.predict``).
    """

    model_config: ModelConfig
    train_config: TrainConfig
    params: Any
    data: Any
    metrics: dict = dataclasses.field(default_factory=dict)
    path: Optional[pathlib.Path] = None
    _cache: dict = dataclasses.field(default_factory=dict, repr=False)

    @classmethod
    def from_result(cls, result) -> "ServedModel":
        """The ServedModel of a TrainResult (cached on the result, so caches are reused)."""
        if isinstance(result, ServedModel):
            return result
        served = getattr(result, "_served_model", None)
        if served is None or served.params is not result.params:
            served = cls(result.model_config, result.train_config, result.params, result.data,
                         dict(result.metrics or {}), getattr(result, "workdir", None))
            result._served_model = served
        return served

    @property
    def model(self):
        from iarn_jax.training.loop import build_model

        if "model" not in self._cache:
            self._cache["model"] = build_model(self.model_config, self.data.split)
        return self._cache["model"]

    @property
    def constants(self) -> dict:
        """The model's non-trainable variables: its item feature tables, rebuilt from the saved
        features (``features.npz``); {} without a feature encoder."""
        from iarn_jax.training.loop import model_constants

        if "constants" not in self._cache:
            self._cache["constants"] = model_constants(self.model_config, self.data.split)
        return self._cache["constants"]

    @property
    def dataset(self) -> Dataset:
        return self.data.split.dataset

    @property
    def rating_scale(self) -> tuple[float, float]:
        return tuple(self.dataset.rating_scale)

    # -- ids ----------------------------------------------------------------------------------------
    def _index(self, what: str) -> dict:
        key = f"{what}_index"
        if key not in self._cache:
            ids = self.dataset.user_ids if what == "user" else self.dataset.item_ids
            self._cache[key] = {str(v): k for k, v in enumerate(np.asarray(ids).tolist())}
        return self._cache[key]

    def user_index(self, user) -> int:
        """Contiguous id of an original user id (compared as text); KeyError when unknown."""
        try:
            return self._index("user")[str(user)]
        except KeyError:
            raise KeyError(f"unknown user {user!r} (not in the training data); pass history=[(item, rating, "
                           "time), ...] to score a new user") from None

    def item_index(self, items) -> np.ndarray:
        """Contiguous ids [n] of original item ids; KeyError naming the first unknown ones."""
        index = self._index("item")
        items = list(np.atleast_1d(np.asarray(items, dtype=object)).tolist())
        missing = [i for i in items if str(i) not in index]
        if missing:
            raise KeyError(f"unknown items {missing[:5]} (not in the training data)")
        return np.asarray([index[str(i)] for i in items], dtype=np.int64)

    def item_ids(self, contiguous: np.ndarray) -> list:
        return [_plain(v) for v in np.asarray(self.dataset.item_ids)[np.asarray(contiguous, dtype=np.int64)]]

    def item_titles(self, contiguous: np.ndarray) -> Optional[list]:
        titles = self.dataset.item_titles
        if titles is None:
            return None
        return [str(t) for t in np.asarray(titles)[np.asarray(contiguous, dtype=np.int64)]]

    # -- the serving API (see iarn_jax.serve.recommender) -----------------------------------------------
    def predict(self, users=None, items=None, *, history=None) -> np.ndarray:
        from iarn_jax.serve.recommender import predict

        return predict(self, users, items, history=history)

    def recommend(self, user=None, k: int = 10, **kwargs) -> pd.DataFrame:
        from iarn_jax.serve.recommender import recommend

        return recommend(self, user, k, **kwargs)

    def recommend_many(self, users, k: int = 10, **kwargs) -> pd.DataFrame:
        from iarn_jax.serve.recommender import recommend_many

        return recommend_many(self, users, k, **kwargs)

    def explain(self, user=None, item=None, *, history=None):
        from iarn_jax.serve.recommender import explain

        return explain(self, user, item, history=history)

    def save(self, path) -> pathlib.Path:
        return save_model(self, path)


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _id_array(values) -> np.ndarray:
    """Ids as a numpy array that np.savez stores without pickling (object arrays become text)."""
    values = np.asarray(values)
    return values.astype(str) if values.dtype == object else values


def _config_dict(config) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))


def _config_from(cls, values: dict):
    """A config dataclass from saved JSON; unknown fields (a newer version's) are refused by name."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"the saved {cls.__name__} has fields this version does not know: {unknown}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return cls(**values)


def save_model(result, path) -> pathlib.Path:
    """Writes ``result`` (a TrainResult or ServedModel) to the folder ``path`` (see the module doc).

    The folder is written next to ``path`` and renamed into place, so an interrupted save never
    leaves a half-written model under ``path``; an existing model there is replaced.
    """
    import shutil

    from iarn_jax.training import checkpoint

    served = ServedModel.from_result(result)
    path = pathlib.Path(path).absolute()
    tmp = path.with_name(path.name + ".tmp-save")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dataset = served.dataset
    split = served.data.split
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "iarn_jax_version": _package_version(),
        "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model_config": _config_dict(served.model_config),
        "train_config": _config_dict(served.train_config),
        "history_mode": served.data.history_mode,
        "dataset": {"name": dataset.name, "rating_scale": list(map(float, dataset.rating_scale)),
                    "time_unit": dataset.time_unit, "source": str(dataset.source),
                    "n_users": dataset.n_users, "n_items": dataset.n_items,
                    "has_titles": dataset.item_titles is not None,
                    "has_features": dataset.item_features is not None},
        "split": {"name": split.name, "min_len": split.min_len, "cut": split.cut, "seed": split.seed},
        "metrics": json.loads(json.dumps(served.metrics or {}, default=str)),
    }
    ids = {"user_ids": _id_array(dataset.user_ids), "item_ids": _id_array(dataset.item_ids)}
    if dataset.item_titles is not None:
        ids["item_titles"] = np.asarray(dataset.item_titles).astype(str)
    np.savez(tmp / "ids.npz", **ids)
    arrays = {}
    for side, hist in (("user", served.data.user_histories), ("item", served.data.item_histories)):
        for name in ("offsets", "counterpart", "rating", "time"):
            arrays[f"{side}_{name}"] = getattr(hist, name)
    np.savez(tmp / "histories.npz", **arrays)
    if dataset.item_features is not None:
        np.savez(tmp / "features.npz", **_features_arrays(dataset.item_features))
        manifest["dataset"]["hierarchical_features"] = bool(dataset.item_features.hierarchical)
    checkpoint.save_params(tmp / "params", served.params)
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True))
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path


def load_model(path) -> ServedModel:
    """The :class:`ServedModel` saved at ``path`` by :func:`save_model` (no data folder needed)."""
    from iarn_jax.training import checkpoint
    from iarn_jax.training.loop import PreparedData

    path = pathlib.Path(path).absolute()
    manifest_path = path / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} is missing: is {path} a model written by iarn_jax.save_model?")
    manifest = json.loads(manifest_path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{manifest_path}: not an iarn_jax saved model (format {manifest.get('format')!r})")
    if int(manifest.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: saved model format version {manifest['format_version']} is newer than this "
                         f"iarn_jax reads ({FORMAT_VERSION}); upgrade iarn_jax")
    model_config = _config_from(ModelConfig, manifest["model_config"])
    train_config = _config_from(TrainConfig, manifest["train_config"])
    with np.load(path / "ids.npz", allow_pickle=False) as ids:
        user_ids, item_ids = ids["user_ids"], ids["item_ids"]
        titles = ids["item_titles"] if "item_titles" in ids.files else None
    with np.load(path / "histories.npz", allow_pickle=False) as arrays:
        user_histories, item_histories = (
            Histories(**{name: arrays[f"{side}_{name}"] for name in ("offsets", "counterpart", "rating", "time")})
            for side in ("user", "item"))
    features = None
    if (path / "features.npz").exists():
        with np.load(path / "features.npz", allow_pickle=False) as arrays:
            features = _features_from_arrays(arrays, bool(manifest["dataset"].get("hierarchical_features")))
    info = manifest["dataset"]
    dataset = Dataset(
        name=info["name"], ratings=_empty_frame(), user_ids=user_ids, item_ids=item_ids,
        rating_scale=tuple(info["rating_scale"]), time_unit=info["time_unit"], item_titles=titles,
        item_features=features, source=info.get("source", ""),
    )
    split_info = manifest.get("split", {})
    split = ProtocolSplit(
        name=split_info.get("name", info["name"]), dataset=dataset, history=history_frame(user_histories),
        train=_empty_frame(), val=_empty_frame(), test=_empty_frame(), min_len=split_info.get("min_len", 0),
        cut=split_info.get("cut"), seed=split_info.get("seed", 0),
    )
    empty = histories_lib.make_pairs(_empty_frame(), user_histories, item_histories)
    data = PreparedData(split=split, user_histories=user_histories, item_histories=item_histories,
                        train=empty, val=empty, test=empty, history_mode=manifest.get("history_mode", "full")
                        ).with_recency(model_config.recency_windows)
    served = ServedModel(model_config, train_config, None, data, manifest.get("metrics", {}), path)
    like = abstract_params(served.model, served.constants)
    served.params = checkpoint.load_params(path / "params", like)
    return served


def abstract_params(model, constants: Optional[dict] = None) -> Any:
    """The parameter tree's shapes and dtypes (``jax.eval_shape`` of ``init``; nothing is computed).
    constants: the model's feature tables (``ServedModel.constants``) when it has an encoder."""
    import jax

    from iarn_jax.models.iarn import initialize

    batch = {
        "user": np.zeros(1, np.int32), "item": np.zeros(1, np.int32),
        "rating": np.zeros(1, np.float32), "weight": np.ones(1, np.float32),
        "user_history": np.zeros((1, 1), np.int32), "user_history_rating": np.zeros((1, 1), np.float32),
        "user_history_mask": np.ones((1, 1), bool), "item_history": np.zeros((1, 1), np.int32),
        "item_history_rating": np.zeros((1, 1), np.float32), "item_history_mask": np.ones((1, 1), bool),
    }
    windows = getattr(getattr(model, "config", None), "recency_windows", ())
    if windows:  # the time-aware item bias reads the item's recency features
        batch["item_recency"] = np.zeros((1, len(windows) + 1), np.float32)
    return jax.eval_shape(lambda c: initialize(model, jax.random.PRNGKey(0), batch, c, deterministic=True),
                          constants or {})


def history_frame(user_histories: Histories) -> pd.DataFrame:
    """The training history table (user, item, rating, time) of CSR user histories."""
    users = np.repeat(np.arange(user_histories.n_entities, dtype=np.int64), user_histories.lengths)
    return pd.DataFrame({"user": users, "item": user_histories.counterpart.astype(np.int64),
                         "rating": user_histories.rating, "time": user_histories.time})


def _empty_frame() -> pd.DataFrame:
    return pd.DataFrame({"user": np.zeros(0, np.int64), "item": np.zeros(0, np.int64),
                         "rating": np.zeros(0, np.float32), "time": np.zeros(0, np.int64)})[list(RATING_COLUMNS)]


def _features_arrays(features: ItemFeatures) -> dict:
    """Item paths as flat arrays: path_item [P], path_offsets [P + 1], path_features [F]."""
    path_item, lengths, flat = [], [], []
    for item, paths in enumerate(features.paths):
        for p in paths:
            path_item.append(item)
            lengths.append(len(p))
            flat.extend(int(f) for f in p)
    offsets = np.zeros(len(lengths) + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return {"feature_names": np.asarray(features.feature_names).astype(str), "n_items": np.int64(len(features.paths)),
            "path_item": np.asarray(path_item, np.int64), "path_offsets": offsets,
            "path_features": np.asarray(flat, np.int64)}


def _features_from_arrays(arrays, hierarchical: bool) -> ItemFeatures:
    paths: list[list] = [[] for _ in range(int(arrays["n_items"]))]
    offsets, flat = arrays["path_offsets"], arrays["path_features"]
    for k, item in enumerate(arrays["path_item"].tolist()):
        paths[item].append(tuple(int(f) for f in flat[offsets[k]:offsets[k + 1]]))
    return ItemFeatures(feature_names=arrays["feature_names"], paths=[tuple(p) for p in paths],
                        hierarchical=hierarchical)


def _package_version() -> str:
    import iarn_jax

    return getattr(iarn_jax, "__version__", "unknown")


__all__ = ["FORMAT_VERSION", "ServedModel", "abstract_params", "history_frame", "load_model", "save_model"]
