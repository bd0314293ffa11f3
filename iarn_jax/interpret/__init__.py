"""Interpretation of predictions by the attention gates (paper section 4.2, Figure 5).

  explain(result, user, item) -> Explanation (prediction, both histories with gates)
  load_run(workdir) -> TrainResult of a finished ``experiments.train`` run
  gate_relevance_auc(result, synthetic) -> AUC of gates against planted relevance
  plot_explanation(explanation, path) -> Figure-5 style PNG (needs matplotlib)
"""
from iarn_jax.interpret.explain import (  # noqa: F401
    Explanation,
    Step,
    collect_gates,
    contiguous_id,
    explain,
    gate_relevance_auc,
    load_run,
)


def plot_explanation(*args, **kwargs):
    """See :func:`iarn_jax.interpret.plot.plot_explanation` (imports matplotlib lazily)."""
    from iarn_jax.interpret.plot import plot_explanation as _plot

    return _plot(*args, **kwargs)
