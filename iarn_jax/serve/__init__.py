"""Serving a trained model: saved models, top-K recommendations with reasons, new-user histories.

  save_model(result, path) / load_model(path) -> ServedModel      (model_io)
  recommend(model, user, k=10, explain=False, history=None)      (recommender)
  recommend_many(model, users, k=10) / predict / explain           (recommender)
  new users and fresh ratings: history=[(item, rating, time), ...] (new_users)
"""
from iarn_jax.serve.model_io import FORMAT_VERSION, ServedModel, load_model, save_model  # noqa: F401
from iarn_jax.serve.recommender import explain, predict, recommend, recommend_many  # noqa: F401

__all__ = ["FORMAT_VERSION", "ServedModel", "explain", "load_model", "predict", "recommend", "recommend_many",
           "save_model"]
