"""The measures of an RL transfer study and their statistics (numpy only).

Per learning curve, the measures of Taylor & Stone (2009, "Transfer Learning for Reinforcement
Learning Domains: A Survey", section 2.1): **jumpstart** (the return before any training on the
target), **steps to threshold** (the first evaluation at or above the threshold; ``None`` when the
run never got there: a failure is counted, never dropped), **area under the learning curve** (the
trapezoid over the evaluations, divided by the steps: the mean return over training) and the
**final return**. Over seeds, each arm's interquartile mean (IQM: the mean of the middle 50%, as
rliable's ``aggregate_iqm``) with a percentile-bootstrap interval; each arm against the baseline, a
two-sided permutation test on the seeds' ranks (a failure ranks worst; a rank test, so one lucky seed
cannot carry a verdict) and the verdict wording of supervised studies (``hftl.study.stats.VERDICTS``).

Example:
    >>> m = curve_measures([0, 100, 200], [0.0, 100.0, 100.0], threshold=100)
    >>> m["jumpstart"], m["steps"], m["auc"], m["final"]
    (0.0, 100, 75.0, 100.0)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass

import numpy as np

from hftl.study.stats import VERDICTS

HIGHER_IS_BETTER = {"jumpstart": True, "steps": False, "auc": True, "final": True}


def auc(steps, returns) -> float:
    """Area under the learning curve per step (trapezoid): the mean return over the training budget.

    Example:
        >>> auc([0, 100, 200], [0.0, 100.0, 100.0])
        75.0
    """
    x, y = np.asarray(steps, dtype=float), np.asarray(returns, dtype=float)
    if len(x) < 2 or x[-1] <= x[0]:
        return float(y[-1]) if len(y) else float("nan")
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)) / (x[-1] - x[0]))


def steps_to_threshold(steps, returns, threshold: float) -> int | None:
    """Environment steps at the first evaluation whose mean return reaches ``threshold``; None if none did.

    Example:
        >>> steps_to_threshold([0, 1024, 2048], [9.0, 480.0, 500.0], 475), steps_to_threshold([0, 1], [1, 2], 475)
        (1024, None)
    """
    for s, r in zip(steps, returns):
        if r >= threshold:
            return int(s)
    return None


def curve_measures(steps, returns, threshold: float) -> dict:
    """Jumpstart, steps to threshold, AUC and final return of one learning curve (evaluations at ``steps``).

    Example:
        >>> curve_measures([0, 100, 200], [0.0, 100.0, 100.0], threshold=100)["auc"]
        75.0
    """
    return {"jumpstart": float(returns[0]), "steps": steps_to_threshold(steps, returns, threshold),
            "auc": auc(steps, returns), "final": float(returns[-1])}


def as_values(measure: str, values) -> np.ndarray:
    """Per-seed values as floats; a run that never reached the threshold (steps None) is +inf."""
    return np.asarray([math.inf if v is None else float(v) for v in values], dtype=float)


def iqm(values) -> float:
    """Interquartile mean: the mean after cutting ``int(n / 4)`` values from each end (scipy's trim_mean 0.25).

    Example:
        >>> iqm([1, 2, 3, 4, 5, 6, 7, 8]), iqm([0, 1, 2, 3, 4, 5, 6, 7, 8, 100])
        (4.5, 4.5)
    """
    v = np.sort(np.asarray(values, dtype=float))
    cut = int(0.25 * len(v))
    return float(np.mean(v[cut:len(v) - cut]))


def _quantiles(samples: np.ndarray, alpha: float) -> tuple[float, float]:
    if np.isnan(samples).any():  # e.g. inf - inf: steps where both arms failed in most resamples
        return math.nan, math.nan
    # inverted_cdf picks observed values, never interpolates: well-defined when some are inf (failures)
    lo, hi = np.quantile(samples, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return float(lo), float(hi)


def bootstrap_ci(values, alpha: float = 0.05, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the IQM over seeds (resampled with replacement).

    Example:
        >>> bootstrap_ci([5.0, 5.0, 5.0])
        (5.0, 5.0)
    """
    v = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(v), size=(resamples, len(v)))
    with np.errstate(invalid="ignore"):
        return _quantiles(np.array([iqm(v[i]) for i in idx]), alpha)


def bootstrap_diff_ci(a, b, alpha: float = 0.05, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``iqm(a) - iqm(b)``, each arm's seeds resampled on their own.

    Example:
        >>> bootstrap_diff_ci([3.0, 3.0], [1.0, 1.0])
        (2.0, 2.0)
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    ia = rng.integers(0, len(a), size=(resamples, len(a)))
    ib = rng.integers(0, len(b), size=(resamples, len(b)))
    with np.errstate(invalid="ignore"):
        return _quantiles(np.array([iqm(a[i]) - iqm(b[j]) for i, j in zip(ia, ib)]), alpha)


def _ranks(values: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return rankdata(values)  # ties (and several +inf failures) share their average rank


def permutation_test(a, b, permutations: int = 20_000, seed: int = 0) -> tuple[float, float]:
    """Two-sided permutation test of the difference in mean ranks of ``a`` and ``b``: (statistic, p).

    Exact (every way of splitting the pooled seeds) when there are at most ``permutations`` ways,
    otherwise that many random splits (p counted as (k + 1) / (n + 1), never 0).

    Example:
        >>> round(permutation_test([10, 11, 12], [1, 2, 3])[1], 3)  # 2 of the 20 splits are as extreme
        0.1
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ranks = _ranks(np.concatenate([a, b]))
    n, na = len(ranks), len(a)
    observed = ranks[:na].mean() - ranks[na:].mean()
    total = ranks.sum()

    def stat(chosen: np.ndarray) -> float:
        s = ranks[chosen].sum()
        return s / na - (total - s) / (n - na)

    tol = 1e-9
    if math.comb(n, na) <= permutations:
        stats = np.array([stat(np.array(c)) for c in itertools.combinations(range(n), na)])
        return float(observed), float(np.mean(np.abs(stats) >= abs(observed) - tol))
    rng = np.random.default_rng(seed)
    hits = sum(abs(stat(rng.permutation(n)[:na])) >= abs(observed) - tol for _ in range(permutations))
    return float(observed), float((hits + 1) / (permutations + 1))


@dataclass
class ArmSummary:
    """One arm's measure over seeds: IQM with its bootstrap interval, mean, median and (steps) how many solved."""

    measure: str
    n: int
    iqm: float
    ci_low: float
    ci_high: float
    mean: float
    median: float
    solved: int  # seeds with a finite value (steps: reached the threshold)

    def to_dict(self) -> dict:
        return asdict(self)


def summarise(measure: str, values, alpha: float = 0.05, resamples: int = 2000, seed: int = 0) -> ArmSummary:
    """IQM, its bootstrap CI, mean, median and solved count of one arm's per-seed values.

    Example:
        >>> summarise("steps", [1024, None, 2048]).solved
        2
    """
    v = as_values(measure, values)
    lo, hi = bootstrap_ci(v, alpha, resamples, seed)
    with np.errstate(invalid="ignore"):
        return ArmSummary(measure, len(v), iqm(v), lo, hi, float(np.mean(v)), float(np.median(v)),
                          int(np.isfinite(v).sum()))


@dataclass
class RLComparison:
    """One arm against the baseline on one measure (differences are arm minus baseline, in IQMs)."""

    arm: str
    baseline: str
    measure: str
    diff: float
    ci_low: float
    ci_high: float
    rank_diff: float
    p_value: float
    verdict: str

    def to_dict(self) -> dict:
        return asdict(self)


def compare(arm_values, base_values, measure: str, *, alpha: float = 0.05, resamples: int = 2000,
            permutations: int = 20_000, seed: int = 0, arm: str = "arm", baseline: str = "scratch") -> RLComparison:
    """Compare an arm's per-seed values with the baseline's: IQM difference, its interval, the test, a verdict.

    Example:
        >>> compare([10, 11, 12, 13, 14], [1, 2, 3, 4, 5], "auc").verdict
        'positive transfer'
    """
    a, b = as_values(measure, arm_values), as_values(measure, base_values)
    with np.errstate(invalid="ignore"):
        diff = iqm(a) - iqm(b)
    lo, hi = bootstrap_diff_ci(a, b, alpha, resamples, seed)
    rank_diff, p = permutation_test(a, b, permutations, seed)
    better = rank_diff > 0 if HIGHER_IS_BETTER[measure] else rank_diff < 0
    if p < alpha and rank_diff != 0:
        verdict = VERDICTS[0] if better else VERDICTS[2]
    else:
        verdict = VERDICTS[1]
    return RLComparison(arm, baseline, measure, float(diff), lo, hi, float(rank_diff), p, verdict)


def mean_curve(curves: list[tuple[list, list]], grid) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Curves (steps, returns) interpolated onto ``grid``: the IQM and the 25th and 75th percentiles per point.

    Example:
        >>> mean_curve([([0, 10], [0.0, 10.0]), ([0, 10], [2.0, 12.0])], [0, 5, 10])[0].tolist()
        [1.0, 6.0, 11.0]
    """
    grid = np.asarray(grid, dtype=float)
    ys = np.array([np.interp(grid, np.asarray(s, float), np.asarray(r, float)) for s, r in curves])
    centre = np.array([iqm(ys[:, j]) for j in range(len(grid))])
    return centre, np.percentile(ys, 25, axis=0), np.percentile(ys, 75, axis=0)
