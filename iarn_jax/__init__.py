"""iarn_jax: Interacting Attention-gated Recurrent Networks for recommendation in JAX/Flax.

Top-level API (imported lazily so that ``import iarn_jax.data`` stays light):

  iarn_jax.train(split, model_config, train_config, workdir=...) -> TrainResult
  iarn_jax.predict(result, pairs_df) -> predicted ratings
  iarn_jax.load_protocol(name, data_root) -> ProtocolSplit
  iarn_jax.ModelConfig / iarn_jax.TrainConfig
  iarn_jax.explain(result, user, item) -> Explanation (prediction + gates of both histories)
  iarn_jax.recommend(model, user, k=10, explain=False, history=None) -> DataFrame of the top-K items
  iarn_jax.save_model(result, path) / iarn_jax.load_model(path) -> ServedModel (predict / recommend / explain)
"""
__version__ = "0.1.0"

_LAZY = {
    "train": ("iarn_jax.training.loop", "train"),
    "predict": ("iarn_jax.training.loop", "predict"),
    "TrainResult": ("iarn_jax.training.loop", "TrainResult"),
    "TrainConfig": ("iarn_jax.training.config", "TrainConfig"),
    "ModelConfig": ("iarn_jax.models.config", "ModelConfig"),
    "load_protocol": ("iarn_jax.data.protocols", "load_protocol"),
    "run_experiment": ("iarn_jax.training.experiment", "run_experiment"),
    "explain": ("iarn_jax.interpret.explain", "explain"),
    "recommend": ("iarn_jax.serve.recommender", "recommend"),
    "recommend_many": ("iarn_jax.serve.recommender", "recommend_many"),
    "save_model": ("iarn_jax.serve.model_io", "save_model"),
    "load_model": ("iarn_jax.serve.model_io", "load_model"),
}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'iarn_jax' has no attribute {name!r}")


__all__ = sorted(_LAZY)
