"""Defaults for data without a named protocol, derived from the data's statistics."""
from __future__ import annotations

import types

import numpy as np
import pandas as pd

from iarn_jax.training.experiment import derived_defaults, protocol_defaults


def _split(user_len: int, n_users: int, n_items: int, name="custom"):
    rng = np.random.default_rng(0)
    rows = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, user_len, replace=False)]
    history = pd.DataFrame(rows, columns=["user", "item"])
    return types.SimpleNamespace(name=name, history=history, train=history)


def test_very_long_histories_get_a_cap_and_short_ones_do_not():
    long = _split(user_len=400, n_users=30, n_items=2000)  # items ~6 raters, users 400 steps
    model, train, text = derived_defaults(long)
    assert train["max_len"] == 64 and "longest history 400" in text
    assert model["embed_dim"] == 25 and model["use_rating_input"]
    short = _split(user_len=5, n_users=200, n_items=60)  # items ~17 raters, users 5: sparse
    model, train, text = derived_defaults(short)
    assert train["max_len"] is None and model["embed_dim"] == 50 and model["dropout"] == 0.5
    assert train["batch_size"] == 128


def test_named_protocols_keep_their_defaults(capsys):
    model, train = protocol_defaults(_split(5, 10, 20, name="ml100k"))
    assert train["max_len"] == 32 and model["embed_dim"] == 25 and model["stationary_dim"] == 25
    assert capsys.readouterr().out == ""  # named protocols print nothing; derived ones print their choice
    protocol_defaults(_split(5, 10, 20))
    assert "derived defaults for custom" in capsys.readouterr().out


def test_gate_options_are_left_out_for_variants_without_them():
    from iarn_jax.models.config import ModelConfig

    for variant in ("iarn", "tagm", "lstm", "rnn"):
        model, _ = protocol_defaults(_split(5, 10, 20, name="ml100k"), variant=variant)
        assert model.get("gate_match", False) == (variant == "iarn")
        ModelConfig(variant=variant, **model)  # valid for every variant
