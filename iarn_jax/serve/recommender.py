"""Top-K recommendations with reasons, predictions and explanations of a trained model.

Every function takes a ``TrainResult`` (``iarn_jax.train``) or a loaded model
(``iarn_jax.load_model``); users and items are the data's **original ids**::

    recs = recommend(result, user="196", k=10, explain=True)      # DataFrame: rank, item, title, score, ...
    recs = recommend(model, history=[("50", 5, "1998-03-01"), ("172", 4, "1998-03-02")])  # a new user
    many = recommend_many(model, ["196", "186"], k=5)               # one row per (user, rank)
    ratings = predict(model, "196", ["50", "172"])                  # predicted ratings
    why = explain(model, "196", "50")                               # Explanation (gates of both sides)

Scores are the model's predicted ratings (unclipped; biases included; for a model trained with
``objective="ranking"`` they order items but are not ratings), computed with the users' and
items' whole training-period histories. A history given at request time (``history=``) is scored
without retraining: for a new user it is her whole history; for an existing user it extends her
training history. The item side always reads its training-period history (see
:mod:`iarn_jax.serve.new_users`, which also says how a new user gets her per-user parameters).

Candidates are the items with at least one training-period rating (items never seen in training
have no learned representation); ``exclude_seen`` drops the items in the user's history.
Ranking uses :class:`~iarn_jax.evaluate.scorer.RankingScorer`: items are encoded once per model and
cached, so each further user costs one user encoding and the pair part.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence

import numpy as np
import pandas as pd

from iarn_jax.data import batching
from iarn_jax.data import histories as histories_lib
from iarn_jax.serve.model_io import ServedModel
from iarn_jax.serve.new_users import request_histories, with_unknown_user

_FAR_FUTURE = np.iinfo(np.int64).max  # request pairs come after every history event: no own step


def _served(model) -> ServedModel:
    return ServedModel.from_result(model)


def _user_row(served: ServedModel, user) -> Optional[int]:
    return None if user is None else served.user_index(user)


def candidate_items(served: ServedModel) -> np.ndarray:
    """Contiguous ids of the items with at least one training-period rating."""
    return np.flatnonzero(served.data.item_histories.lengths > 0)


def _scorer(served: ServedModel):
    """One RankingScorer per model (the item cache is built once), on the model with an extra
    unknown-user row so known and new users share it."""
    if "scorer" not in served._cache:
        from iarn_jax.evaluate.scorer import RankingScorer

        unknown = with_unknown_user(served)
        cfg = served.train_config
        served._cache["scorer"] = RankingScorer(
            unknown.model, unknown.params, served.data.user_histories, served.data.item_histories,
            candidate_items(served), max_len=cfg.max_len, bucket_lengths=cfg.bucket_lengths,
            constants=served.constants)
    return served._cache["scorer"]


def _request_pairs(row: int, items: np.ndarray, user_histories, item_histories):
    frame = pd.DataFrame({"user": np.full(len(items), row, np.int64), "item": np.asarray(items, np.int64),
                          "rating": np.zeros(len(items), np.float32), "time": np.full(len(items), _FAR_FUTURE)})
    return histories_lib.make_pairs(frame, user_histories, item_histories, mode="full")


def _eval_step(served: ServedModel, model):
    key = ("eval_step", id(model))
    if key not in served._cache:
        from iarn_jax.training.loop import make_apply_fn
        from iarn_jax.training.step import make_eval_step, make_mesh

        mesh = make_mesh()
        served._cache[key] = (make_eval_step(make_apply_fn(model), mesh, served.constants), mesh)
    return served._cache[key]


def predict(model, users=None, items=None, *, history=None) -> np.ndarray:
    """Predicted ratings [n] (unclipped) of (user, item) pairs; original ids.

    users: one user (broadcast over ``items``), or one user per item; None with ``history`` = a new
      user. items: one item or a sequence.
    history: ratings given now, [(item, rating, time), ...] (see ``new_users.parse_history``): the
      history of a new user (users=None) or fresh ratings that extend one existing user's history.
    """
    from iarn_jax.training.loop import predict_pairs

    served = _served(model)
    if items is None:
        raise ValueError("give the items to predict")
    item_rows = served.item_index(items)
    user_list = None if users is None else list(np.atleast_1d(np.asarray(users, dtype=object)).tolist())
    if history is not None or user_list is None or len(user_list) == 1:
        user = None if user_list is None else user_list[0]
        net, params, user_histories, row = request_histories(served, _user_row(served, user), history)
        rows = np.full(item_rows.size, row, np.int64)
    else:
        if len(user_list) != item_rows.size:
            raise ValueError(f"{len(user_list)} users for {item_rows.size} items: give one user, or one per item")
        net, params, user_histories = served.model, served.params, served.data.user_histories
        rows = np.asarray([served.user_index(u) for u in user_list], np.int64)
    frame = pd.DataFrame({"user": rows, "item": item_rows, "rating": np.zeros(rows.size, np.float32),
                          "time": np.full(rows.size, _FAR_FUTURE)})
    pairs = histories_lib.make_pairs(frame, user_histories, served.data.item_histories, mode="full")
    data = dataclasses.replace(served.data, user_histories=user_histories)
    eval_step, mesh = _eval_step(served, net)
    return predict_pairs(eval_step, params, pairs, data, served.train_config, mesh)


def _top_k(scores: np.ndarray, candidates: np.ndarray, seen: np.ndarray, k: int, exclude_seen: bool):
    keep = ~np.isin(candidates, seen) if exclude_seen else np.ones(candidates.size, bool)
    positions = np.flatnonzero(keep)
    order = positions[np.argsort(-scores[positions], kind="stable")][:k]
    return candidates[order], scores[order]


def _frame(served: ServedModel, items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({"rank": np.arange(1, items.size + 1), "item": served.item_ids(items)})
    titles = served.item_titles(items)
    if titles is not None:
        frame["title"] = titles
    frame["score"] = scores.astype(np.float32)
    return frame


def recommend(model, user=None, k: int = 10, *, exclude_seen: bool = True, explain: bool = False,
              history=None, top_steps: int = 3) -> pd.DataFrame:
    """The top-``k`` items for one user as a DataFrame: rank, item (original id), title (when the
    data has titles), score (predicted rating).

    user: an original user id; None with ``history`` = a new user.
    history: ratings given now, [(item, rating, time), ...]: a new user's whole history, or fresh
      ratings extending ``user``'s training history. No retraining; items keep their training
      histories.
    exclude_seen: drop the items already in the user's history (training + ``history``).
    explain: add the history steps that drove each score: ``user_steps`` (the user's rated items
      with the largest gates for that candidate: item, title, rating, gate), ``item_steps`` (the
      candidate's raters with the largest gates: user, rating, gate) and ``because`` (the user side
      as text); ``top_steps`` per side.
    """
    served = _served(model)
    net, params, user_histories, row = request_histories(served, _user_row(served, user), history)
    scorer = _scorer(served)
    if user_histories is not served.data.user_histories:
        scorer = scorer.with_user_histories(user_histories)
    scores = scorer.score_all(row)
    seen = user_histories.counterpart[user_histories.events(row)]
    items, top = _top_k(scores, scorer.items, seen, k, exclude_seen)
    frame = _frame(served, items, top)
    if explain:
        frame = _add_reasons(served, frame, net, params, user_histories, row, items, top_steps)
    return frame


def recommend_many(model, users: Sequence, k: int = 10, *, exclude_seen: bool = True, explain: bool = False,
                   top_steps: int = 3, progress: bool = False) -> pd.DataFrame:
    """``recommend`` for many known users at once: one row per (user, rank), columns user, rank,
    item, title, score (+ the reason columns with ``explain``). Scored with the cached item encodings;
    for TAGM / RNN / LSTM all users are one matrix product."""
    from iarn_jax.progress import Progress

    served = _served(model)
    users = list(users)
    rows = np.asarray([served.user_index(u) for u in users], np.int64)
    scorer = _scorer(served)
    uh = served.data.user_histories
    frames = []
    bar = Progress(len(users), label="recommend", unit="users", enabled=progress)
    chunk = 256 if scorer.fast else 1
    for start in range(0, rows.size, chunk):
        block = rows[start:start + chunk]
        matrix = scorer.score_matrix(block, scorer.items)
        for offset, row in enumerate(block):
            items, top = _top_k(matrix[offset], scorer.items, uh.counterpart[uh.events(int(row))], k, exclude_seen)
            frame = _frame(served, items, top)
            if explain:
                frame = _add_reasons(served, frame, served.model, served.params, uh, int(row), items, top_steps)
            frame.insert(0, "user", users[start + offset])
            frames.append(frame)
        bar.update(min(start + chunk, rows.size))
    bar.close()
    if not frames:
        return pd.DataFrame(columns=["user", "rank", "item", "score"])
    return pd.concat(frames, ignore_index=True)


def _gates_fn(served: ServedModel, net):
    key = ("gates", id(net))
    if key not in served._cache:
        import jax

        from iarn_jax.models.iarn import model_variables

        apply = jax.jit(lambda p, c, b: net.apply(model_variables(p, c), b)[1])
        constants = served.constants  # the item feature tables: an argument, not a compiled constant
        served._cache[key] = lambda p, b: apply(p, constants, b)
    return served._cache[key]


def gates(served: ServedModel, net, params, user_histories, row: int, items: np.ndarray) -> dict:
    """Gates of both sides for (row, item) pairs, with the events each column is:
    {"user_gates" [K, Tu], "item_gates" [K, Ti], "user_events" [K, Tu], "item_events" [K, Ti]}
    (events index the flat CSR arrays; -1 on padding)."""
    import jax

    ih = served.data.item_histories
    max_len = served.train_config.max_len
    pairs = _request_pairs(row, items, user_histories, ih)
    batch = batching.materialize(np.arange(items.size), pairs, user_histories, ih, max_len=max_len,
                                 bucket_lengths=served.train_config.bucket_lengths, recency=served.data.recency)
    aux = jax.device_get(_gates_fn(served, net)(params, batch))
    out = {}
    for side, hist, entity, visible in (("user", user_histories, pairs.user, pairs.user_len),
                                        ("item", ih, pairs.item, pairs.item_len)):
        visible = visible.astype(np.int64)
        mask = batch[f"{side}_history_mask"]
        kept = batching.capped_lengths(visible, max_len)
        first = hist.offsets[entity.astype(np.int64)] + visible - kept
        events = np.where(mask, first[:, None] + np.arange(mask.shape[1])[None], -1)
        out[f"{side}_gates"] = np.where(mask, np.asarray(aux[f"{side}_gates"], np.float32), np.nan)
        out[f"{side}_events"] = events
    return out


def _add_reasons(served, frame, net, params, user_histories, row, items, top_steps) -> pd.DataFrame:
    if items.size == 0:
        return frame.assign(user_steps=[], item_steps=[], because=[])
    found = gates(served, net, params, user_histories, row, items)
    ih = served.data.item_histories
    user_ids = np.asarray(served.dataset.user_ids)
    user_steps, item_steps, because = [], [], []
    for k in range(items.size):
        steps = []
        for col in _top_columns(found["user_gates"][k], top_steps):
            e = int(found["user_events"][k, col])
            item = int(user_histories.counterpart[e])
            titles = served.item_titles([item])
            steps.append({"item": served.item_ids([item])[0], "title": titles[0] if titles else None,
                          "rating": float(user_histories.rating[e]), "time": int(user_histories.time[e]),
                          "gate": float(found["user_gates"][k, col])})
        user_steps.append(steps)
        because.append("; ".join(f"{s['title'] or s['item']} ({s['rating']:g}, gate {s['gate']:.2f})" for s in steps))
        raters = []
        for col in _top_columns(found["item_gates"][k], top_steps):
            e = int(found["item_events"][k, col])
            raters.append({"user": _plain(user_ids[int(ih.counterpart[e])]), "rating": float(ih.rating[e]),
                           "time": int(ih.time[e]), "gate": float(found["item_gates"][k, col])})
        item_steps.append(raters)
    return frame.assign(user_steps=user_steps, item_steps=item_steps, because=because)


def _top_columns(values: np.ndarray, n: int) -> list:
    valid = np.flatnonzero(~np.isnan(values))
    return valid[np.argsort(-values[valid], kind="stable")][:n].tolist()


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def explain(model, user=None, item=None, *, history=None):
    """:class:`~iarn_jax.interpret.explain.Explanation` of one (user, item) prediction: both
    histories with every step's gate (``.format()`` for text, ``plot_explanation`` for the picture).
    user=None with ``history`` explains for a new user (shown as "(new user)")."""
    from iarn_jax.interpret.explain import explain as explain_pair

    served = _served(model)
    if item is None:
        raise ValueError("give the item to explain")
    item_row = int(served.item_index([item])[0])
    if history is None:
        return explain_pair(served, served.user_index(user), item_row)
    net, params, user_histories, row = request_histories(served, _user_row(served, user), history)
    data = dataclasses.replace(served.data, user_histories=user_histories)
    if user is None:
        dataset = data.split.dataset
        user_ids = np.asarray(list(np.asarray(dataset.user_ids).tolist()) + ["(new user)"], dtype=object)
        data = dataclasses.replace(data, split=dataclasses.replace(
            data.split, dataset=dataclasses.replace(dataset, user_ids=user_ids)))
    return explain_pair((net, params, data), row, item_row, max_len=served.train_config.max_len,
                        objective=served.train_config.objective)


__all__ = ["candidate_items", "explain", "gates", "predict", "recommend", "recommend_many"]
