"""Metrics of a model during and after training: predictions, RMSE / MAE, sampled AUC, gate saturation.

:class:`Validator` measures the validation metrics that select the model (``rmse`` for objectives
whose predictions are ratings, ``auc`` sampled against fixed negatives when a sampler is given) and
the final numbers of a run (:meth:`Validator.final_metrics`). Everything here only reads parameters.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional

import jax
import numpy as np

from iarn_jax.data.negatives import NegativeSampler
from iarn_jax.models.iarn import IARN, model_variables
from iarn_jax.training.config import TrainConfig
from iarn_jax.training.input_pipeline import PreparedData, eval_batches, local_rows, with_negatives
from iarn_jax.training.objectives import sampled_auc
from iarn_jax.training.step import (make_apply_fn, make_eval_step, make_eval_with_gate_stats_step,
                                    make_negative_eval_step, put_batch)


def predict_pairs(
    eval_step: Callable, params: Any, pairs: Any, data: PreparedData, config: TrainConfig, mesh
) -> np.ndarray:
    """Predictions [N] for every pair of a PairSet, in the PairSet's order."""
    out = np.zeros(len(pairs.user), np.float32)
    for idx, pred in _eval_outputs(eval_step, params, pairs, data, config, mesh):
        valid = idx >= 0
        out[idx[valid]] = np.asarray(pred)[valid]
    return out


def _eval_outputs(step: Callable, params: Any, pairs: Any, data: PreparedData, config: TrainConfig, mesh):
    """(row indices [B] into ``pairs``, -1 for padding; ``step``'s outputs on the host) per eval batch."""
    for idx, batch in eval_batches(pairs, data, config, n_devices=mesh.devices.size):
        yield idx, jax.device_get(step(params, put_batch(local_rows(batch), mesh)))


def predict_pairs_with_gate_stats(
    step: Callable, params: Any, pairs: Any, data: PreparedData, config: TrainConfig, mesh
) -> tuple[np.ndarray, dict]:
    """(predictions [N] in the PairSet's order, ``{side}_gates_saturated`` shares) from one pass of
    ``step`` (``make_eval_with_gate_stats_step``): the share of valid history steps whose gate is
    saturated (< 0.01 or > 0.99 by default), per side."""
    out = np.zeros(len(pairs.user), np.float32)
    totals = np.zeros((2, 2))
    for idx, (pred, stats) in _eval_outputs(step, params, pairs, data, config, mesh):
        valid = idx >= 0
        out[idx[valid]] = np.asarray(pred)[valid]
        totals += np.asarray(stats)
    return out, _saturation_shares(totals)


def _saturation_shares(totals: np.ndarray) -> dict:
    return {f"{side}_gates_saturated": float(totals[i, 0] / max(totals[i, 1], 1.0))
            for i, side in enumerate(("user", "item"))}


def rating_metrics(pred: np.ndarray, target: np.ndarray, rating_scale) -> dict:
    """RMSE and MAE of predictions clipped to the rating scale."""
    clipped = np.clip(pred, *rating_scale)
    err = clipped - np.asarray(target, np.float32)
    return {"rmse": float(np.sqrt(np.mean(err**2))), "mae": float(np.mean(np.abs(err)))}


def validation_negatives(sampler: NegativeSampler, pairs: Any, count: int) -> np.ndarray:
    """[N, count] fixed negatives of the validation pairs (the same for every training seed)."""
    return sampler.sample(pairs.user, count, np.random.default_rng([0, 0x56414C]))


def score_pairs_with_negatives(neg_eval_step: Callable, params: Any, pairs: Any, negatives: np.ndarray,
                               data: PreparedData, cfg: TrainConfig, mesh) -> tuple[np.ndarray, np.ndarray]:
    """(positive [N], negative [N, k]) scores of every pair of ``pairs`` and its negatives [N, k]."""
    n, k = negatives.shape
    n_dev = mesh.devices.size
    batch_size = max(n_dev, (cfg.eval_batch_size // (1 + k)) // n_dev * n_dev)
    positive, negative = np.zeros(n, np.float32), np.zeros((n, k), np.float32)
    for idx, batch in eval_batches(pairs, data, cfg, batch_size, n_devices=n_dev):
        valid, safe = idx >= 0, np.where(idx >= 0, idx, 0)
        batch = with_negatives(batch, negatives[safe], pairs.time[safe], data, cfg)
        pos, neg = jax.device_get(neg_eval_step(params, put_batch(local_rows(batch), mesh)))
        positive[idx[valid]] = np.asarray(pos)[valid]
        negative[idx[valid]] = np.asarray(neg)[valid]
    return positive, negative


def gate_saturation(stats_step: Callable, params: Any, pairs: Any, data: PreparedData, cfg: TrainConfig,
                    mesh) -> dict:
    """Share of valid history steps whose gate is < 0.01 or > 0.99, per side, over ``pairs``."""
    totals = np.zeros((2, 2))
    for _, stats in _eval_outputs(stats_step, params, pairs, data, cfg, mesh):
        totals += np.asarray(stats)
    return _saturation_shares(totals)


@dataclasses.dataclass
class Validator:
    """The compiled evaluation steps of one model and the data they score.

    constants: the model's non-trainable collections (the feature tables; {} without), passed to
      every compiled step.
    neg_eval_step / val_negatives [N_val, cfg.val_negatives]: set when a sampled AUC is measured.
    """

    model: IARN
    data: PreparedData
    cfg: TrainConfig
    mesh: Any
    eval_step: Callable
    constants: dict = dataclasses.field(default_factory=dict)
    neg_eval_step: Optional[Callable] = None
    val_negatives: Optional[np.ndarray] = None

    @property
    def rates(self) -> bool:
        """Whether predictions are ratings, so RMSE is defined (TrainConfig.predicts_ratings)."""
        return self.cfg.predicts_ratings

    def metrics(self, params: Any) -> dict:
        """{"rmse": val RMSE (rating objectives), "auc": sampled val AUC (with negatives)}."""
        out = {}
        if self.rates:
            out["rmse"] = self._val_rating_metrics(params)["rmse"]
        if self.neg_eval_step is not None:
            out["auc"] = self._sampled_val_auc(params)
        return out

    def _val_rating_metrics(self, params: Any) -> dict:
        pred = predict_pairs(self.eval_step, params, self.data.val, self.data, self.cfg, self.mesh)
        return rating_metrics(pred, self.data.val.rating, self.data.split.rating_scale)

    def _sampled_val_auc(self, params: Any) -> float:
        positive, negative = score_pairs_with_negatives(self.neg_eval_step, params, self.data.val,
                                                        self.val_negatives, self.data, self.cfg, self.mesh)
        return sampled_auc(positive, negative)

    def final_metrics(self, params: Any) -> dict:
        """Test / val RMSE and MAE of ``params`` (clipped), the sampled val AUC when measured and, for
        gated models, the share of saturated gates on the test pairs (``{side}_gates_saturated``)."""
        data, scale = self.data, self.data.split.rating_scale
        val = self._val_rating_metrics(params)  # the validation pairs are predicted once
        sampled = {"val_auc_sampled": self._sampled_val_auc(params)} if self.neg_eval_step is not None else {}
        saturation = {}
        if self.model.config.gated:  # a tower whose gates all sit at 0 or 1 is visible at once
            step = make_eval_with_gate_stats_step(make_apply_fn(self.model), self.mesh, constants=self.constants)
            test_pred, saturation = predict_pairs_with_gate_stats(step, params, data.test, data, self.cfg, self.mesh)
        else:
            test_pred = predict_pairs(self.eval_step, params, data.test, data, self.cfg, self.mesh)
        test = rating_metrics(test_pred, data.test.rating, scale)
        return {"test_rmse": test["rmse"], "test_mae": test["mae"], "val_rmse": val["rmse"], **sampled, **saturation}


def make_validator(model: IARN, data: PreparedData, cfg: TrainConfig, mesh,
                   sampler: Optional[NegativeSampler] = None, constants: Optional[dict] = None) -> Validator:
    """A Validator of ``model`` (``constants``: its feature tables, see ``training.step``); with a
    sampler, also the sampled validation AUC."""
    constants = dict(constants or {})
    validator = Validator(model, data, cfg, mesh, make_eval_step(make_apply_fn(model), mesh, constants), constants)
    if sampler is not None:
        validator.neg_eval_step = make_negative_eval_step(
            lambda params, batch, constants: model.apply(model_variables(params, constants), batch, deterministic=True,
                                                         method=IARN.score_with_negatives)[:2], mesh, constants)
        validator.val_negatives = validation_negatives(sampler, data.val, cfg.val_negatives)
    return validator
