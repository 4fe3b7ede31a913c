"""The statistics of a study: paired tests over the folds, the confidence interval, the verdict.

Each arm is compared with the baseline on the same folds (:func:`compare_paired`): a paired t-test,
the Nadeau-Bengio corrected t-test, Wilcoxon's signed-rank test where there are folds enough, the
mean difference with its t-based interval, and a verdict: positive transfer, no significant
difference or negative transfer. The direction of each metric comes from ``hftl.metrics.LOWER_IS_BETTER``.

Example:
    >>> c = compare_paired([0.9, 0.92, 0.91, 0.93, 0.9], [0.7, 0.71, 0.69, 0.72, 0.7])
    >>> c.verdict
    'positive transfer'
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from hftl.metrics import LOWER_IS_BETTER
from hftl.registry import get_task

TESTS = ("t", "corrected_t", "wilcoxon")
VERDICTS = ("positive transfer", "no significant difference", "negative transfer")


TARGET_PREFIX = "target_"  # a domain-adaptation run's scores on the target domain (hftl.methods.domain_adapt)


def fold_metrics(task: str, cfg=None) -> tuple[str, ...]:
    """What each held-out fold is scored by: the task's evaluation metrics, then the loss; with a run config
    ``cfg`` that names a target domain (``domain_adapt.target``), the same on the target (``target_accuracy``...).

    Example:
        >>> fold_metrics("text_regression")
        ('mse', 'mae', 'pearson', 'loss')
    """
    own = (*get_task(task).metrics, "loss")
    if cfg is not None and getattr(getattr(cfg, "domain_adapt", None), "target", None):
        return (*own, *(TARGET_PREFIX + m for m in own))
    return own


def selection_metric(metric: str) -> str:
    """The metric a study chooses by (searched values, the kept fold, the winner): ``metric`` itself, or for a
    target-domain metric its source counterpart, so no target label ever chooses anything.

    Example:
        >>> selection_metric("target_accuracy"), selection_metric("f1")
        ('accuracy', 'f1')
    """
    return metric[len(TARGET_PREFIX):] if metric.startswith(TARGET_PREFIX) else metric


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (``hftl.metrics.LOWER_IS_BETTER``: loss, mse, mae; also on the target).

    Example:
        >>> higher_is_better("pearson"), higher_is_better("mse"), higher_is_better("target_loss")
        (True, False, False)
    """
    return selection_metric(metric) not in LOWER_IS_BETTER


def min_wilcoxon_folds(alpha: float) -> int:
    """Fewest pairs for which a two-sided exact signed-rank test can reach ``p < alpha``.

    Example:
        >>> min_wilcoxon_folds(0.05)
        6
    """
    return max(2, math.ceil(math.log2(2 / alpha)))


@dataclass
class Comparison:
    """One arm against the baseline over paired folds (differences are arm minus baseline)."""

    arm: str
    baseline: str
    metric: str
    n: int
    mean_diff: float
    sd_diff: float
    ci_low: float
    ci_high: float
    confidence: float
    p_t: float
    p_corrected_t: float | None
    p_wilcoxon: float | None
    test: str
    p_value: float
    verdict: str
    note: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _t_p(mean: float, se: float, df: int) -> float:
    """Two-sided p of a t statistic ``mean / se``.

    With zero spread (every fold differs by exactly the same amount, common with accuracies on small
    folds) the t-test is undefined; the exact sign test is used instead: all ``df + 1`` folds agree
    in sign with probability ``2 * 0.5 ** n`` under no effect. Never a p of 0 from a division by zero.
    """
    from scipy import stats

    if se == 0:
        return 1.0 if mean == 0 else min(1.0, 2 * 0.5 ** (df + 1))
    return float(2 * stats.t.sf(abs(mean / se), df))


def compare_paired(arm_scores, baseline_scores, *, alpha: float = 0.05, higher_is_better: bool = True,
                   test: str = "t", test_train_ratio: float | None = None, arm: str = "arm",
                   baseline: str = "scratch", metric: str = "accuracy") -> Comparison:
    """Compare an arm with the baseline over the same folds: paired tests, the mean difference, a verdict.

    The paired t-test is ``scipy.stats.ttest_rel``; the confidence interval of the mean difference is
    t-based at level ``1 - alpha``. ``corrected_t`` inflates the variance by ``1/n + n_test/n_train``
    (Nadeau & Bengio, 2003), because cross-validation folds share training data and the plain test is
    optimistic. Wilcoxon's signed-rank test is computed when there are enough folds for it to reach
    ``alpha``. The verdict follows ``test``: significant and better is *positive transfer*,
    significant and worse *negative transfer*, otherwise *no significant difference*.

    Example:
        >>> c = compare_paired([0.9, 0.92, 0.91, 0.93, 0.9], [0.7, 0.71, 0.69, 0.72, 0.7])
        >>> c.verdict, round(c.mean_diff, 3)
        ('positive transfer', 0.208)
    """
    from scipy import stats

    a = np.asarray(arm_scores, dtype=float)
    b = np.asarray(baseline_scores, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"Paired scores need the same folds: got {a.shape} and {b.shape}.")
    n = len(a)
    if n < 2:
        raise ValueError("A paired test needs at least 2 folds.")
    d = a - b
    mean, sd = float(d.mean()), float(d.std(ddof=1))
    if sd < 1e-12 * max(1.0, abs(mean)):
        sd = 0.0  # identical differences on every fold: rounding noise must not become a p-value
    df = n - 1
    se = sd / math.sqrt(n)
    p_t = float(stats.ttest_rel(a, b).pvalue) if sd > 0 else _t_p(mean, 0.0, df)
    p_corr = None
    if test_train_ratio is not None:
        p_corr = _t_p(mean, sd * math.sqrt(1 / n + test_train_ratio), df)
    p_w, note = None, ""
    if sd == 0 and mean != 0:
        note = "Every fold differs by the same amount: the t-test is undefined, so p is the exact sign test's. "
    if n >= min_wilcoxon_folds(alpha):
        if np.all(d == 0):
            p_w = 1.0
        else:
            p_w = float(stats.wilcoxon(a, b, zero_method="wilcox").pvalue)
    else:
        note += f"Wilcoxon needs at least {min_wilcoxon_folds(alpha)} folds to reach p < {alpha}; not computed."
    if test == "corrected_t":
        if p_corr is None:
            raise ValueError("test='corrected_t' needs test_train_ratio (held-out size / training size).")
        p, se_used = p_corr, sd * math.sqrt(1 / n + test_train_ratio)
    elif test == "wilcoxon":
        if p_w is None:
            raise ValueError(f"test='wilcoxon' needs at least {min_wilcoxon_folds(alpha)} folds at alpha {alpha}.")
        p, se_used = p_w, se
    else:
        p, se_used = p_t, se
    half = float(stats.t.ppf(1 - alpha / 2, df)) * se_used
    better = mean > 0 if higher_is_better else mean < 0
    if p < alpha and mean != 0:
        verdict = "positive transfer" if better else "negative transfer"
    else:
        verdict = "no significant difference"
    return Comparison(arm, baseline, metric, n, mean, sd, mean - half, mean + half, 1 - alpha, p_t, p_corr, p_w,
                      test, p, verdict, note)


def describe_scores(values) -> dict:
    """Mean, sample standard deviation (ddof 1), min and max of per-fold values.

    Example:
        >>> describe_scores([0.5, 1.0])["mean"]
        0.75
    """
    v = np.asarray(values, dtype=float)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max()), "n": int(len(v))}
