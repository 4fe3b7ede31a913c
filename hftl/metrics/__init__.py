"""Metrics as ``evaluate`` modules that ship with hftl and load by path, with no Hub access.

Example:
    >>> from hftl.metrics import compute_metrics
    >>> compute_metrics(["accuracy"], predictions=[0, 1], references=[0, 0])
    {'accuracy': 0.5}
"""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path

from hftl.registry import get_task

_HERE = Path(__file__).parent
# Metrics where lower is better; every other one is better higher.
LOWER_IS_BETTER = ("loss", "mse", "mae", "perplexity")
# The module that computes each reported metric (a name not listed: a shipped module of that name). ``perplexity``
# is no module: the evaluation computes it from the loss. The loss needs none: every evaluation reports it.
METRIC_MODULES = {"accuracy": "accuracy", "f1": "f1", "mse": "regression", "mae": "regression", "pearson": "regression",
                  "perplexity": "perplexity",
                  "f1_micro": "multilabel", "f1_macro": "multilabel", "map": "multilabel"}


def metrics_for_task(task: str) -> tuple[str, ...]:
    """The metric modules a run of ``task`` evaluates with: those computing what its registry entry reports.

    Example:
        >>> metrics_for_task("text_regression"), metrics_for_task("causal_lm"), metrics_for_task("simclr")
        (('regression',), ('perplexity',), ())
    """
    return tuple(dict.fromkeys(METRIC_MODULES.get(m, m) for m in get_task(task).metrics if m != "loss"))


@cache
def load_metric(name: str):
    """Load one shipped metric module (``accuracy``, ``f1`` or ``regression``) as an ``evaluate`` module."""
    import evaluate

    path = _HERE / name
    if not (path / f"{name}.py").is_file():
        known = ", ".join(sorted(p.name for p in _HERE.iterdir() if (p / f"{p.name}.py").is_file()))
        raise ValueError(f"Metric '{name}' is not shipped with hftl. Known metrics: {known}.")
    return evaluate.load(str(path))


def compute_metrics(names, predictions, references) -> dict:
    """Compute each named metric module on predictions (class indices, or values for ``regression``)."""
    out = {}
    for name in names:
        out.update(load_metric(name).compute(predictions=list(predictions), references=list(references)))
    return {k: float(v) for k, v in out.items()}


def perplexity(mean_loss: float) -> float:
    """Perplexity from a mean token cross-entropy (natural log)."""
    return float(math.exp(mean_loss)) if mean_loss < 50 else float("inf")
