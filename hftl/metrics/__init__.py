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


# Metrics that are a mean of one score per example: two epochs' scores on the same validation examples can be
# compared example by example (hftl.trainer keeps the best epoch only when it is better beyond that noise).
EXAMPLE_SCORES = {"accuracy": lambda p, r: float(p == r), "mse": lambda p, r: (p - r) ** 2, "mae": lambda p, r: abs(p - r)}


def example_scores(metric: str, predictions, references) -> list[float] | None:
    """Each example's share of ``metric`` (correct or not; squared or absolute error), or None where the metric
    is no mean over examples (F1, Pearson, mAP, perplexity).

    Example:
        >>> example_scores("accuracy", [0, 1, 2], [0, 1, 1]), example_scores("f1", [0], [0])
        ([1.0, 1.0, 0.0], None)
    """
    score = EXAMPLE_SCORES.get(metric)
    return None if score is None else [score(p, r) for p, r in zip(predictions, references)]


def better_beyond_noise(scores: list[float], other: list[float], lower_is_better: bool) -> float:
    """One-sided sign test that ``scores`` beat ``other`` on the same examples; returns its p-value.

    Each example votes for the side with its better score (ties abstain); the p-value is the chance of that many
    votes or more for ``scores`` if both were equally good. For accuracy this is McNemar's exact test. On 16
    validation images, one more right is p = 0.5: no evidence at all.

    Example:
        >>> better_beyond_noise([1.0] * 16, [1.0] * 15 + [0.0], lower_is_better=False)
        0.5
    """
    from scipy.stats import binomtest

    sign = -1.0 if lower_is_better else 1.0
    wins = sum(sign * (a - b) > 0 for a, b in zip(scores, other))
    losses = sum(sign * (a - b) < 0 for a, b in zip(scores, other))
    return float(binomtest(wins, wins + losses, 0.5, alternative="greater").pvalue) if wins + losses else 1.0


def perplexity(mean_loss: float) -> float:
    """Perplexity from a mean token cross-entropy (natural log)."""
    return float(math.exp(mean_loss)) if mean_loss < 50 else float("inf")
