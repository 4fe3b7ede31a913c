"""The folds of a study: stratified seeded k folds, nested label-budget subsets, a stratified sample.

Every arm trains on the same folds and the same subsets (seeded by the study, never by the arm),
so the comparison over folds is paired. Regression targets have nothing to stratify: their folds
are plain seeded k folds and their subsets plain seeded samples (one stratum).

Example:
    >>> folds, note = make_folds([0, 0, 0, 1, 1, 1], folds=3, seed=0)
    >>> len(folds), note
    (3, '')
"""

from __future__ import annotations

import logging
import math

import numpy as np

from hftl.errors import DataError

logger = logging.getLogger(__name__)


def make_folds(labels, folds: int, seed: int, label_names: list[str] | None = None,
               allow_fewer: bool = True, regression: bool = False) -> tuple[list[tuple[list[int], list[int]]], str]:
    """Stratified, seeded k folds (scikit-learn ``StratifiedKFold``); returns (folds, note).

    When a class has fewer examples than ``folds`` the study uses that many folds and ``note`` says
    so (or, with ``allow_fewer=False``, stops with a :class:`DataError`). A class with a single
    example cannot be split at all. With ``regression=True`` the labels are real-valued targets:
    the folds are plain seeded ``KFold`` (nothing to stratify), each holding out at least 2 examples.

    Example:
        >>> folds, note = make_folds([0, 0, 0, 1, 1, 1], folds=3, seed=0)
        >>> len(folds), note
        (3, '')
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    labels = np.asarray(labels)
    note = ""
    if regression:
        if len(labels) < 2 * folds:  # a held-out fold of one example has no spread (Pearson's r is undefined)
            raise DataError(f"{len(labels)} examples are too few for study.folds={folds}: each held-out fold needs "
                            "at least 2. Add examples or lower study.folds.")
        splitter = KFold(n_splits=folds, shuffle=True, random_state=seed)
    else:
        folds, note = _folds_every_class_allows(labels, folds, label_names, allow_fewer)
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in splitter.split(np.zeros(len(labels)), labels)]
    return out, note


def _folds_every_class_allows(labels: np.ndarray, folds: int, label_names: list[str] | None,
                              allow_fewer: bool) -> tuple[int, str]:
    """How many stratified folds the rarest class allows (each fold holds one of every class), and a note."""
    classes, counts = np.unique(labels, return_counts=True)
    names = label_names or [str(c) for c in range(int(labels.max()) + 1)]
    smallest = int(counts.min())
    rarest = names[int(classes[int(counts.argmin())])]
    if smallest >= folds:
        return folds, ""
    if smallest < 2 or not allow_fewer:
        raise DataError(
            f"Class '{rarest}' has only {smallest} example(s), fewer than study.folds={folds}: stratified "
            f"folds need at least as many examples of every class as folds. Add examples of '{rarest}', "
            f"drop the class (data.classes), or lower study.folds"
            + (" (study.allow_fewer_folds=true does this for you)." if smallest >= 2 else ".")
        )
    note = (f"Used {smallest} folds instead of {folds}: class '{rarest}' has only {smallest} examples "
            "(each fold needs one of every class).")
    logger.warning(note)
    return smallest, note


def budget_subset(train_idx: list[int], labels, budget: float, seed: int) -> list[int]:
    """A stratified share of a training fold: per class ``ceil(budget * count)`` (at least one).

    Subsets are nested (a 10% subset lies inside the 25% one) because every budget takes the head of
    the same seeded per-class order; that makes the sample-efficiency curve less noisy. A regression
    study passes one stratum (every label 0), so its subset is a plain seeded ``ceil(budget * n)``.

    Example:
        >>> budget_subset(list(range(8)), [0, 0, 0, 0, 1, 1, 1, 1], 0.5, seed=0)
        [0, 2, 6, 7]
    """
    if budget >= 1:
        return list(train_idx)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    idx = np.asarray(train_idx)
    for c in np.unique(labels[idx]):
        members = idx[labels[idx] == c]
        order = rng.permutation(members)
        keep += order[: max(1, math.ceil(budget * len(members)))].tolist()
    return sorted(keep)


def stratified_take(labels, n: int, seed: int) -> list[int]:
    """``n`` indices (seeded), each class in proportion to its size and at least once (one stratum: a plain sample).

    Example:
        >>> len(stratified_take([0] * 50 + [1] * 30 + [2] * 20, 10, seed=0))
        10
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    n = max(n, len(classes))
    exact = n * counts / counts.sum()
    quota = np.maximum(1, np.floor(exact)).astype(int)
    # Largest remainders first, until the total is n (never more than a class holds).
    for i in np.argsort(-(exact - np.floor(exact)), kind="stable"):
        if quota.sum() >= n:
            break
        if quota[i] < counts[i]:
            quota[i] += 1
    while quota.sum() > n:  # the at-least-one rule overshot: trim the largest classes
        quota[int(np.argmax(quota))] -= 1
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c, q in zip(classes, quota):
        keep += rng.permutation(np.flatnonzero(labels == c))[:q].tolist()
    return sorted(keep)
