"""The comparison's methods by name.

* ``METHODS``: registry key -> :class:`Method` (how to fit it). Table 2's rows are ``TABLE2_METHODS``
  (the baselines, the four IARN variants, SASRec and IARN trained for ranking; ``*_rank`` /
  ``iarn_joint`` train the variants with the ranking / joint objective); ``bias`` and ``mostpop`` are
  extra cheap references.
* ``BACKBONES``: Figure 3's recurrent variants.
* ``parse_methods``: "a,b" (keys or row labels) -> registry keys.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Optional, Sequence

BACKBONES = ("rnn", "lstm", "tagm", "iarn")


@dataclasses.dataclass(frozen=True)
class Method:
    """One row of the comparison.

    name: the row label (the paper's spelling).
    kind: "baseline" (an object with fit / predict / score_items, see ``baselines/base.py``) or
      "iarn" (a variant trained by ``training.loop.train``).
    factory: () -> unfitted baseline (baselines only).
    variant: the ModelConfig variant (IARN family only).
    objective: the TrainConfig objective of an IARN-family row (None: the protocol's default, "rating").
    """

    name: str
    kind: str
    factory: Optional[Callable[[], Any]] = None
    variant: Optional[str] = None
    objective: Optional[str] = None


def _baseline(name: str, module: str, attr: str, **kwargs) -> Method:
    def factory():  # imported when fitted: listing the methods loads no model code
        return getattr(importlib.import_module(f"iarn_jax.models.baselines.{module}"), attr)(**kwargs)

    return Method(name=name, kind="baseline", factory=factory)


METHODS: dict[str, Method] = {
    "mf": _baseline("MF", "mf", "MF"),
    "bpr": _baseline("BPR", "bpr", "BPR"),
    "timesvdpp": _baseline("TimeSVD++", "timesvdpp", "TimeSVDpp"),
    "hievh": _baseline("HieVH", "hievh", "HieVH"),
    "item2vec": _baseline("Item2Vec", "item2vec", "Item2Vec"),
    "ncf": _baseline("NCF", "ncf", "NCF"),
    "sasrec": _baseline("SASRec", "sasrec", "SASRec"),
    "mp2vec": _baseline("MP2Vec", "item2vec", "MP2Vec"),
    "rnn": Method(name="RNN", kind="iarn", variant="rnn"),
    "lstm": Method(name="LSTM", kind="iarn", variant="lstm"),
    "tagm": Method(name="TAGM", kind="iarn", variant="tagm"),
    "iarn": Method(name="IARN", kind="iarn", variant="iarn"),
    # the recurrent variants trained for ranking (sampled negatives, BPR) and IARN trained jointly
    "rnn_rank": Method(name="RNN (ranking)", kind="iarn", variant="rnn", objective="ranking"),
    "lstm_rank": Method(name="LSTM (ranking)", kind="iarn", variant="lstm", objective="ranking"),
    "tagm_rank": Method(name="TAGM (ranking)", kind="iarn", variant="tagm", objective="ranking"),
    "iarn_rank": Method(name="IARN (ranking)", kind="iarn", variant="iarn", objective="ranking"),
    "iarn_joint": Method(name="IARN (joint)", kind="iarn", variant="iarn", objective="joint"),
    # extra references (not in the paper's table)
    "bias": _baseline("BiasOnly", "bias", "BiasBaseline"),
    # the bias model with its regularisation chosen on validation, and with category biases too: the
    # peers of IARN's bias_init="tuned" and feature_bias
    "bias_tuned": _baseline("BiasOnly (tuned)", "bias", "BiasBaseline", tuned=True),
    "bias_features": _baseline("BiasOnly+features", "bias", "BiasBaseline", features=True, tuned=True),
    "mostpop": _baseline("MostPop", "bpr", "MostPop"),
    "recentpop": _baseline("RecentPop", "bpr", "RecentPop"),
    # BPR with item-feature factors: the peer of IARN's feature_factors on data with item features
    "bpr_features": _baseline("BPR+features", "bpr", "BPR", feature_factors=True),
}
TABLE2_METHODS = ("mf", "bpr", "timesvdpp", "hievh", "item2vec", "ncf", "mp2vec", "rnn", "lstm", "tagm", "iarn",
                  # beyond the paper: a modern sequential ranking peer, recent popularity (the strongest
                  # ranking peer on a global time cut) and IARN trained for ranking
                  "sasrec", "recentpop", "iarn_rank")


def parse_methods(text: Optional[str], default: Sequence[str] = TABLE2_METHODS) -> list[str]:
    """"a,b" -> ["a", "b"] (registry keys, case-insensitive; "TimeSVD++" etc. accepted)."""
    if not text:
        return list(default)
    aliases = {m.name.lower(): key for key, m in METHODS.items()}
    out = []
    for raw in text.split(","):
        key = raw.strip().lower()
        if not key:
            continue
        key = aliases.get(key, key)
        if key not in METHODS:
            raise ValueError(f"unknown method {raw!r}; choose from {', '.join(METHODS)}")
        if key not in out:
            out.append(key)
    return out
