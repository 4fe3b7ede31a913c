"""Cross-validated transfer-vs-scratch studies: did transfer help on *this* data, and by how much?

A study trains every arm it lists (``scratch``, ``linear_probe``, ``finetune``, ``lora``, ... or a
custom arm, e.g. a probe from another source model) on the **same** stratified, seeded k folds with
the **same** training budget, optionally at several label budgets (a share of each training fold),
and compares each arm with the baseline (``scratch``: the same architecture, randomly initialised)
by a paired test over the folds. The answer is a verdict per arm: *positive transfer*, *no
significant difference* or *negative transfer*, with the mean difference and its confidence
interval.

A study config is YAML with two sections::

    base:              # an ordinary hftl run config (task, model, data, strategy options, train)
      model: {id: timm/resnet18.a1_in1k}
      data: {id: path/to/images, image_size: 64}
      train: {epochs: 5, lr: 0.001}
    study:
      arms: [scratch, linear_probe, finetune]   # or mappings: {name, strategy, config}
      folds: 5
      metric: accuracy
      label_budgets: [0.1, 0.25, 0.5, 1.0]     # optional: the sample-efficiency curve
      output_dir: outputs/study

``study.pretrain`` lets a study make its own source models first (e.g. on other classes, or on
shuffled labels to show negative transfer); ``model.id: pretrain:NAME`` then points at one.

What a study writes to ``study.output_dir``: ``study.json`` (every fold's numbers, the config, the
verdicts), ``report.md``, ``metric_by_arm.png`` (and ``sample_efficiency.png`` with label
budgets), ``model/`` (the winning arm's best fold, saved like any run, its card carrying the study),
``records/`` (one small JSON per finished fold: a rerun skips those, so an interrupted study
resumes) and ``runs/`` (each fold's log and metrics).

Example:
    >>> report = run_study("recipes/configs/study/negative_transfer.yaml", ["study.folds=3"])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from hftl.config import STRATEGIES, Config, _apply, _f, config_from_dict, parse_overrides
from hftl.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

METRICS = ("accuracy", "f1", "loss")  # what the trainer computes on each held-out fold
TESTS = ("t", "corrected_t", "wilcoxon")
VERDICTS = ("positive transfer", "no significant difference", "negative transfer")
STUDY_TASKS = ("image_classification", "text_classification")
PRETRAIN_PREFIX = "pretrain:"
# What a fold's run folder keeps once its weights are no longer needed (the record holds the numbers).
KEEP_LIGHT = {"metrics.json", "log.jsonl", "hftl_config.yaml"}
NO_MID_RUN_CHECKPOINTS = 10**9  # train.checkpoint_every for study runs: only the final checkpoint is written


# ------------------------------------------------------------------------------------------ config

@dataclass
class StudySettings:
    """The ``study:`` section of a study config."""

    arms: list = _f(
        ["scratch", "linear_probe", "finetune"],
        "Arms to compare. A name is a strategy (scratch, linear_probe, finetune, gradual_unfreeze, partial, "
        "lora); a mapping {name, strategy, config} is a custom arm whose config overrides base keys (e.g. "
        "another source model: config: {model: {id: pretrain:shuffled}}).",
    )
    baseline: str = _f("scratch", "The arm every other arm is compared with (the same architecture from scratch).")
    folds: int = _f(5, "Number of stratified cross-validation folds (the same folds for every arm).")
    seed: int = _f(0, "Seed of the fold assignment and the label-budget subsets.")
    metric: str = _f("accuracy", "Metric the verdicts and the winner are decided on: accuracy, f1 (macro) or loss.")
    label_budgets: list = _f(
        [], "Shares of each training fold to train on, e.g. [0.1, 0.25, 0.5, 1.0] (a sample-efficiency curve); "
            "empty: the whole fold. Subsets are nested and stratified, and the same for every arm.")
    alpha: float = _f(0.05, "Significance level of the paired tests; the confidence interval is 1 - alpha.")
    test: str = _f(
        "t", "Test that decides the verdict: t (paired t-test over folds), corrected_t (Nadeau-Bengio "
             "corrected resampled t-test: folds share training data, so this one is more conservative) or "
             "wilcoxon (signed-rank; needs at least 6 folds at alpha 0.05).")
    max_examples: int | None = _f(
        None, "Use a seeded, stratified subset of this many labelled examples for the whole study "
              "(a few-label setting); null uses every example of base.data (train and validation pooled).")
    allow_fewer_folds: bool = _f(
        True, "When a class has fewer examples than folds, use that many folds (logged and reported) instead "
              "of stopping with an error.")
    pretrain: list = _f(
        [], "Source models the study makes first, each a mapping {name, config, shuffle_labels}: config "
            "overrides base keys for the source run (its own data, e.g. other classes; strategy defaults to "
            "scratch). Arms use one with model.id: pretrain:NAME.")
    winner: str = _f(
        "best_fold", "Which model to keep: best_fold (the winning arm's best fold, with its held-out metrics, "
                     "saved to OUTPUT_DIR/model) or none.")
    keep_fold_models: bool = _f(False, "Keep every fold's weights (otherwise only what the winner needs).")
    output_dir: str = _f("outputs/study", "Folder for study.json, report.md, plots, records and the model.")
    name: str | None = _f(None, "Title of the report (default: the output folder's name).")


@dataclass
class Arm:
    """One arm of a study: a name, a strategy and what it changes in the base config."""

    name: str
    strategy: str
    overrides: dict = field(default_factory=dict)
    config: Config | None = None  # the resolved run config (output_dir and seed set per fold)


@dataclass
class PretrainSource:
    """A source model the study trains before the transfer arms."""

    name: str
    overrides: dict = field(default_factory=dict)
    shuffle_labels: bool = False
    config: Config | None = None


@dataclass
class StudyConfig:
    """A validated study: the base run config, the settings, the arms and the sources."""

    base: Config
    study: StudySettings
    arms: list[Arm]
    pretrain: list[PretrainSource]
    raw: dict  # the merged YAML (written to study.json)

    @property
    def output_dir(self) -> Path:
        return Path(self.study.output_dir)


def _expand_dotted(data: Any) -> Any:
    """``{"model.id": x}`` -> ``{"model": {"id": x}}`` (arm configs may use either form)."""
    if not isinstance(data, dict):
        return data
    out: dict = {}
    for key, value in data.items():
        parts = str(key).split(".")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"Config key '{key}' sets a value under a key that is not a section.")
        node[parts[-1]] = _merge(node.get(parts[-1], {}), _expand_dotted(value)) \
            if isinstance(value, dict) else value
    return out


def _merge(base: dict, over: dict) -> dict:
    """Deep merge: mappings merge key by key; anything else (lists included) replaces."""
    out = copy.deepcopy(base) if isinstance(base, dict) else {}
    for key, value in (over or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _run_config(raw_base: dict, overrides: dict, what: str) -> Config:
    """An hftl run Config from the base mapping plus an arm's or a source's overrides."""
    try:
        return config_from_dict(_merge(raw_base, overrides))
    except ConfigError as e:
        raise ConfigError(f"{what}: {e}") from e


def _parse_arm(entry: Any, index: int) -> Arm:
    strategies = ", ".join(STRATEGIES)
    if isinstance(entry, str):
        if entry not in STRATEGIES:
            raise ConfigError(
                f"study.arms[{index}] '{entry}' is not a known arm. A plain arm name is a strategy: {strategies}. "
                "For a custom arm give a mapping, e.g. {name: probe_from_x, strategy: linear_probe, "
                "config: {model: {id: ...}}}."
            )
        return Arm(entry, entry)
    if not isinstance(entry, dict):
        raise ConfigError(f"study.arms[{index}] must be a strategy name or a mapping, not {entry!r}.")
    valid = ("name", "strategy", "config")
    unknown = [k for k in entry if k not in valid]
    if unknown:
        raise ConfigError(f"Unknown key '{unknown[0]}' in study.arms[{index}]. Valid keys: {', '.join(valid)}.")
    name = entry.get("name")
    if not isinstance(name, str) or not name:
        raise ConfigError(f"study.arms[{index}] needs a name (e.g. name: probe_from_shuffled).")
    strategy = entry.get("strategy", name)
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"Arm '{name}' has strategy '{strategy}', which is not known. Valid strategies: {strategies}."
        )
    overrides = entry.get("config") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"Arm '{name}': config must be a mapping of base keys to override.")
    overrides = _expand_dotted(overrides)
    given = overrides.get("strategy", {}).get("name") if isinstance(overrides.get("strategy"), dict) else None
    if given and given != strategy:
        raise ConfigError(f"Arm '{name}' sets strategy '{strategy}' and config strategy.name '{given}'; keep one.")
    return Arm(name, strategy, overrides)


def _parse_pretrain(entry: Any, index: int) -> PretrainSource:
    if not isinstance(entry, dict):
        raise ConfigError(f"study.pretrain[{index}] must be a mapping {{name, config, shuffle_labels}}.")
    valid = ("name", "config", "shuffle_labels")
    unknown = [k for k in entry if k not in valid]
    if unknown:
        raise ConfigError(f"Unknown key '{unknown[0]}' in study.pretrain[{index}]. Valid keys: {', '.join(valid)}.")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"study.pretrain[{index}] needs a name (letters, digits, _ or -).")
    shuffle = entry.get("shuffle_labels", False)
    if not isinstance(shuffle, bool):
        raise ConfigError(f"study.pretrain '{name}': shuffle_labels must be true or false.")
    overrides = _expand_dotted(entry.get("config") or {})
    return PretrainSource(name, overrides, shuffle)


def study_config_from_dict(data: dict) -> StudyConfig:
    """Validate a study mapping (YAML's shape) into a :class:`StudyConfig`.

    Example:
        >>> cfg = study_config_from_dict({"base": {"model": {"id": "timm:test_resnet"}},
        ...                               "study": {"arms": ["scratch", "finetune"], "folds": 3}})
        >>> [a.name for a in cfg.arms]
        ['scratch', 'finetune']
    """
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError("A study config holds a mapping with the sections 'base' and 'study'.")
    for key in data:
        if key not in ("base", "study"):
            hint = f" Did you mean 'base.{key}'?" if key in {f.name for f in dataclasses.fields(Config)} else ""
            raise ConfigError(f"Unknown study config key '{key}'. Valid top-level keys: base, study.{hint}")
    raw_base = _expand_dotted(data.get("base") or {})
    raw_study = data.get("study") or {}
    if not isinstance(raw_base, dict) or not isinstance(raw_study, dict):
        raise ConfigError("The 'base' and 'study' sections of a study config must be mappings.")
    settings = StudySettings()
    _apply(settings, raw_study, prefix="study.")
    base = _run_config(raw_base, {}, "base")
    _validate_settings(settings, base)

    sources = [_parse_pretrain(e, i) for i, e in enumerate(settings.pretrain)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"study.pretrain names must be unique; got {names}.")
    for source in sources:
        overrides = _merge({"strategy": {"name": "scratch"}}, source.overrides) \
            if "name" not in source.overrides.get("strategy", {}) else source.overrides
        source.config = _run_config(raw_base, overrides, f"study.pretrain '{source.name}'")
        if source.config.model.id.startswith(PRETRAIN_PREFIX):
            raise ConfigError(
                f"study.pretrain '{source.name}' starts from '{source.config.model.id}'; a source needs a model of "
                "its own: set its config model.id to an architecture (timm:resnet18) or a pretrained model."
            )

    arms = [_parse_arm(e, i) for i, e in enumerate(settings.arms)]
    arm_names = [a.name for a in arms]
    duplicates = sorted({n for n in arm_names if arm_names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"study.arms names must be unique; '{duplicates[0]}' appears twice. Give custom arms a name.")
    if len(arms) < 2:
        raise ConfigError(
            f"study.arms lists only {arm_names or 'no arm'}; a study compares arms with a baseline, so it needs the "
            "baseline (scratch: the same architecture from random initialisation) plus at least one transfer arm, "
            "e.g. arms: [scratch, linear_probe, finetune]."
        )
    if settings.baseline not in arm_names:
        raise ConfigError(
            f"study.baseline '{settings.baseline}' is not among study.arms ({', '.join(arm_names)}). Add it to the "
            "arms (every arm is compared with it), or set study.baseline to one of the arms."
        )
    for arm in arms:
        overrides = _merge(arm.overrides, {"strategy": {"name": arm.strategy}})
        arm.config = _run_config(raw_base, overrides, f"Arm '{arm.name}'")
        if arm.config.strategy.name == "lora" and arm.config.model.id.startswith("timm:"):
            raise ConfigError(f"Arm '{arm.name}' (lora) needs a pretrained source; model.id is an architecture.")
    for cfg, what in [(a.config, f"Arm '{a.name}'") for a in arms] + [(s.config, f"pretrain '{s.name}'") for s in sources]:
        if cfg.model.id.startswith(PRETRAIN_PREFIX) and cfg.model.id[len(PRETRAIN_PREFIX):] not in names:
            raise ConfigError(
                f"{what} starts from '{cfg.model.id}', but study.pretrain has no source of that name "
                f"(it has: {', '.join(names) or 'none'})."
            )
    raw = {"base": raw_base, "study": dataclasses.asdict(settings)}
    return StudyConfig(base, settings, arms, sources, raw)


def _validate_settings(s: StudySettings, base: Config) -> None:
    if base.task not in STUDY_TASKS:
        raise ConfigError(
            f"A study compares classifiers; base.task '{base.task}' is not supported. Use one of: "
            f"{', '.join(STUDY_TASKS)}."
        )
    if s.metric not in METRICS:
        raise ConfigError(
            f"study.metric '{s.metric}' is not computed on the folds. Valid metrics: {', '.join(METRICS)}."
        )
    if s.folds < 2:
        raise ConfigError(f"study.folds must be at least 2 (got {s.folds}); 5 is the usual choice.")
    if s.test not in TESTS:
        raise ConfigError(f"study.test '{s.test}' is not known. Valid tests: {', '.join(TESTS)}.")
    if not 0 < s.alpha < 0.5:
        raise ConfigError(f"study.alpha must be between 0 and 0.5 (got {s.alpha}); 0.05 is usual.")
    if s.test == "wilcoxon" and min_wilcoxon_folds(s.alpha) > s.folds:
        raise ConfigError(
            f"study.test=wilcoxon cannot reach p < {s.alpha} with {s.folds} folds (the smallest possible p is "
            f"{2 / 2 ** s.folds:.3g}); use at least {min_wilcoxon_folds(s.alpha)} folds, or study.test=t."
        )
    for b in s.label_budgets:
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
            raise ConfigError(f"study.label_budgets holds {b!r}; each budget is a share of a training fold in (0, 1].")
    if s.max_examples is not None and s.max_examples < 2 * s.folds:
        raise ConfigError(f"study.max_examples ({s.max_examples}) is too small for {s.folds} folds.")
    if s.winner not in ("best_fold", "none"):
        raise ConfigError(f"study.winner must be best_fold or none, not '{s.winner}'.")


def load_study_config(path: str | Path | None, overrides: list[str] | None = None) -> StudyConfig:
    """Load a study YAML and apply dotted overrides (``study.folds=3``, ``base.train.epochs=1``).

    Example:
        >>> cfg = load_study_config(None, ["base.model.id=timm:test_resnet", "study.arms=[scratch,finetune]"])
        >>> cfg.study.folds
        5
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Study config '{path}' does not exist. See recipes/configs/study/ for examples.")
        data = yaml.safe_load(path.read_text()) or {}
        if not isinstance(data, dict):
            raise ConfigError(f"Study config '{path}' must hold a mapping with the sections 'base' and 'study'.")
    return study_config_from_dict(_merge(data, parse_overrides(overrides or [])))


# -------------------------------------------------------------------------------------- statistics

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


# ------------------------------------------------------------------------------------------- folds

def make_folds(labels, folds: int, seed: int, label_names: list[str] | None = None,
               allow_fewer: bool = True) -> tuple[list[tuple[list[int], list[int]]], str]:
    """Stratified, seeded k folds (scikit-learn ``StratifiedKFold``); returns (folds, note).

    When a class has fewer examples than ``folds`` the study uses that many folds and ``note`` says
    so (or, with ``allow_fewer=False``, stops with a :class:`DataError`). A class with a single
    example cannot be split at all.

    Example:
        >>> folds, note = make_folds([0, 0, 0, 1, 1, 1], folds=3, seed=0)
        >>> len(folds), note
        (3, '')
    """
    from sklearn.model_selection import StratifiedKFold

    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    names = label_names or [str(c) for c in range(int(labels.max()) + 1)]
    smallest = int(counts.min())
    rarest = names[int(classes[int(counts.argmin())])]
    note = ""
    if smallest < folds:
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
        folds = smallest
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    out = [(sorted(tr.tolist()), sorted(va.tolist())) for tr, va in splitter.split(np.zeros(len(labels)), labels)]
    return out, note


def budget_subset(train_idx: list[int], labels, budget: float, seed: int) -> list[int]:
    """A stratified share of a training fold: per class ``ceil(budget * count)`` (at least one).

    Subsets are nested (a 10% subset lies inside the 25% one) because every budget takes the head of
    the same seeded per-class order; that makes the sample-efficiency curve less noisy.

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
    """``n`` indices (seeded), each class in proportion to its size and at least once.

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


# ------------------------------------------------------------------------------------------- helpers

def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _write_json_atomic(path: Path, data: Any) -> None:
    """Write to a temporary name and rename into place: a crash never leaves a half-written record."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _budget_tag(budget: float) -> str:
    return f"b{budget:g}"


def _pct(budget: float) -> str:
    return f"{budget * 100:g}%"


def _config_key(cfg: Config) -> dict:
    """What in a run config decides its result (not where it writes or whether it shows a bar)."""
    d = cfg.to_dict()
    d.pop("output_dir", None)
    d.pop("hub", None)
    d["train"] = {k: v for k, v in d["train"].items() if k not in ("progress", "resume", "tracker")}
    return d


def _lighten(folder: Path) -> None:
    """Drop a finished fold's weights and checkpoints; keep its small logs."""
    if not folder.is_dir():
        return
    for child in folder.iterdir():
        if child.name in KEEP_LIGHT:
            continue
        shutil.rmtree(child) if child.is_dir() else child.unlink()


# ------------------------------------------------------------------------------------------- report

@dataclass
class StudyReport:
    """What a study found, with where its files are; ``summary()`` is the table the CLI prints."""

    name: str
    output_dir: Path
    metric: str
    baseline: str
    arms: list[str]
    strategies: dict
    budgets: list[float]
    folds: int
    fold_note: str
    scores: dict  # arm -> budget tag -> metric -> [per-fold values]
    stats: dict  # arm -> budget tag -> metric -> describe_scores()
    comparisons: dict  # arm -> budget tag -> Comparison (not for the baseline)
    winner: str | None = None
    winner_fold: int | None = None
    model_dir: Path | None = None
    files: dict = field(default_factory=dict)
    trained: int = 0
    skipped: int = 0
    seconds: float = 0.0
    n_examples: int = 0
    label_names: list = field(default_factory=list)
    budget_sizes: dict = field(default_factory=dict)  # budget tag -> mean training examples per fold

    @property
    def full_budget(self) -> str:
        return _budget_tag(max(self.budgets))

    def verdict(self, arm: str, budget: float | None = None) -> str | None:
        """The verdict of ``arm`` against the baseline at ``budget`` (default: the largest)."""
        tag = _budget_tag(budget) if budget is not None else self.full_budget
        c = self.comparisons.get(arm, {}).get(tag)
        return c.verdict if c else None

    def table_rows(self, tag: str | None = None) -> list[dict]:
        tag = tag or self.full_budget
        rows = []
        for arm in self.arms:
            s = self.stats[arm][tag]
            c = self.comparisons.get(arm, {}).get(tag)
            rows.append({
                "arm": arm, "strategy": self.strategies[arm],
                **{m: s[m] for m in METRICS if m in s},
                "diff": c.mean_diff if c else None, "ci": (c.ci_low, c.ci_high) if c else None,
                "p": c.p_value if c else None, "p_t": c.p_t if c else None,
                "p_wilcoxon": c.p_wilcoxon if c else None,
                "verdict": c.verdict if c else "baseline",
            })
        return rows

    def markdown_table(self, tag: str | None = None) -> str:
        """The results table (one budget) as Markdown."""
        tag = tag or self.full_budget
        c0 = next((c[tag] for c in self.comparisons.values() if tag in c), None)
        conf = f"{c0.confidence:.0%} CI" if c0 else "CI"
        test = {"t": "p (paired t)", "corrected_t": "p (corrected t)", "wilcoxon": "p (Wilcoxon)"}[
            c0.test if c0 else "t"]
        lines = [f"| arm | strategy | accuracy | F1 (macro) | loss | Δ {self.metric} vs {self.baseline} [{conf}] "
                 f"| {test} | p (Wilcoxon) | verdict |",
                 "|---|---|---|---|---|---|---|---|---|"]
        def ms(arm: str, m: str) -> str:
            s = self.stats[arm][tag][m]
            return f"{s['mean']:.3f} ± {s['std']:.3f}"

        for r in self.table_rows(tag):
            if r["diff"] is None:
                diff = p = pw = "—"
            else:
                diff = f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
                p = _fmt_p(r["p"])
                pw = _fmt_p(r["p_wilcoxon"]) if r["p_wilcoxon"] is not None else "n/a"
            verdict = f"**{r['verdict']}**" if r["verdict"] != "baseline" else "baseline"
            lines.append(f"| {r['arm']} | {r['strategy']} | {ms(r['arm'], 'accuracy')} | {ms(r['arm'], 'f1')} "
                         f"| {ms(r['arm'], 'loss')} | {diff} "
                         f"| {p} | {pw} | {verdict} |")
        return "\n".join(lines)

    def budget_table(self) -> str:
        """Plain text: one row per label budget, one column per arm (mean ± sd, ↑/↓ when significant).

        Example:
            >>> print(report.budget_table())  # doctest: +SKIP
            labels per fold   scratch          finetune
            10 (10%)          0.397 ± 0.104    0.594 ± 0.080 ↑
        """
        width = max(19, *(len(a) + 2 for a in self.arms))
        lines = [("labels per fold".ljust(18) + "".join(a.ljust(width) for a in self.arms)).rstrip()]
        for b in self.budgets:
            tag = _budget_tag(b)
            size = self.budget_sizes.get(tag)
            row = (f"{size:.0f} ({_pct(b)})" if size is not None else _pct(b)).ljust(18)
            for a in self.arms:
                st = self.stats[a][tag][self.metric]
                c = self.comparisons.get(a, {}).get(tag)
                mark = {"positive transfer": " ↑", "negative transfer": " ↓"}.get(c.verdict, " =") if c else ""
                row += f"{st['mean']:.3f} ± {st['std']:.3f}{mark}".ljust(width)
            lines.append(row.rstrip())
        lines.append(f"({self.metric} on held-out folds, mean ± sd over {self.folds} folds; ↑/↓/= : significantly "
                     f"better / worse / no significant difference vs {self.baseline}, {self._test_name()})")
        return "\n".join(lines)

    def _test_name(self) -> str:
        c = next((c for by in self.comparisons.values() for c in by.values()), None)
        if c is None:
            return ""
        name = {"t": "paired t-test", "corrected_t": "corrected t-test", "wilcoxon": "Wilcoxon"}[c.test]
        return f"{name}, alpha {1 - c.confidence:.2g}"

    def summary(self) -> str:
        """A plain-text summary: the table at the full budget, the verdicts and the files."""
        tag = self.full_budget
        w = max(22, *(len(a) + 2 for a in self.arms))
        head = f"{'arm':<{w}} {'strategy':<14} {self.metric + ' (mean ± sd)':<22} {'Δ vs ' + self.baseline:<28} " \
               f"{'p':<8} verdict"
        lines = [f"Study '{self.name}': {len(self.arms)} arms x {self.folds} folds"
                 + (f" x {len(self.budgets)} label budgets" if len(self.budgets) > 1 else "")
                 + f" on {self.n_examples} examples ({len(self.label_names)} classes); "
                   f"{self.trained} trained, {self.skipped} resumed from records, {self.seconds:.0f} s", head,
                 "-" * len(head)]
        if self.fold_note:
            lines.insert(1, f"note: {self.fold_note}")
        for r in self.table_rows(tag):
            s = self.stats[r["arm"]][tag][self.metric]
            diff = "—" if r["diff"] is None else f"{r['diff']:+.3f} [{r['ci'][0]:+.3f}, {r['ci'][1]:+.3f}]"
            p = "—" if r["p"] is None else _fmt_p(r["p"])
            lines.append(f"{r['arm']:<{w}} {r['strategy']:<14} {s['mean']:.3f} ± {s['std']:.3f}{'':<8} {diff:<28} "
                         f"{p:<8} {r['verdict']}")
        if len(self.budgets) > 1:
            lines += ["", "By label budget:", self.budget_table()]
        if self.winner:
            lines.append(f"best arm: {self.winner}" + (f" (model: {self.model_dir})" if self.model_dir else ""))
        for label, path in self.files.items():
            lines.append(f"{label}: {path}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "metric": self.metric, "baseline": self.baseline, "arms": self.arms,
            "strategies": self.strategies, "label_budgets": self.budgets, "folds": self.folds,
            "fold_note": self.fold_note, "n_examples": self.n_examples, "label_names": self.label_names,
            "stats": self.stats,
            "comparisons": {a: {t: c.to_dict() for t, c in by.items()} for a, by in self.comparisons.items()},
            "winner": self.winner, "winner_fold": self.winner_fold,
            "model_dir": str(self.model_dir) if self.model_dir else None,
            "files": {k: str(v) for k, v in self.files.items()},
            "trained": self.trained, "resumed": self.skipped, "seconds": round(self.seconds, 1),
            "budget_sizes": self.budget_sizes,
        }


def _fmt_p(p: float | None) -> str:
    if p is None:
        return "n/a"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


# ------------------------------------------------------------------------------------------- the study

class _Study:
    """Runs one study; split out of :func:`run_study` so each step stays short."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.s = cfg.study
        self.out = cfg.output_dir
        self.records = self.out / "records"
        self.trained = 0
        self.skipped = 0
        self.source_keys: dict[str, str] = {}
        self.source_info: dict[str, dict] = {}

    # -- sources -----------------------------------------------------------------------------
    def source_dir(self, name: str) -> Path:
        return self.out / "sources" / name

    def resolve(self, cfg: Config) -> Config:
        """Replace ``model.id: pretrain:NAME`` with that source's folder."""
        cfg = copy.deepcopy(cfg)
        if cfg.model.id.startswith(PRETRAIN_PREFIX):
            cfg.model.id = str(self.source_dir(cfg.model.id[len(PRETRAIN_PREFIX):]))
        return cfg

    def pretrain(self, source: PretrainSource, progress) -> None:
        from hftl import api
        from hftl.data import load_labelled_data

        cfg = copy.deepcopy(source.config)
        folder = self.source_dir(source.name)
        cfg.output_dir = str(folder)
        cfg.train.resume = None
        cfg.train.checkpoint_every = NO_MID_RUN_CHECKPOINTS  # an interrupted pretraining restarts
        key = _hash({"config": _config_key(cfg), "shuffle_labels": source.shuffle_labels})
        record_path = self.records / f"pretrain__{source.name}.json"
        record = _read_json(record_path)
        self.source_keys[source.name] = key
        if record and record.get("key") == key and (folder / "hftl.json").is_file():
            logger.info("Source '%s' already pretrained (%s); skipping", source.name, folder)
            self.source_info[source.name] = record
            self.skipped += 1
            return
        progress.set_description(f"pretrain source '{source.name}'")
        shutil.rmtree(folder, ignore_errors=True)  # an interrupted pretraining restarts cleanly
        data = load_labelled_data(cfg.data, cfg.task, cfg.train.seed)
        if source.shuffle_labels:
            data = _shuffled(data, cfg.train.seed)
        started = time.perf_counter()
        result = api.train(cfg, data=data)
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)
        record = {"key": key, "name": source.name, "output_dir": str(folder), "metrics": result.metrics,
                  "data": data.source, "classes": data.label_names, "num_train": len(data.train),
                  "shuffle_labels": source.shuffle_labels, "model": source.config.model.id,
                  "strategy": cfg.strategy.name, "epochs": cfg.train.epochs,
                  "seconds": round(time.perf_counter() - started, 2)}
        _write_json_atomic(record_path, record)
        self.source_info[source.name] = record
        self.trained += 1

    # -- data and folds ----------------------------------------------------------------------
    def load_pool(self):
        import datasets

        from hftl.data import LabelledData, load_labelled_data

        base = self.resolve(self.cfg.base)
        data = load_labelled_data(base.data, base.task, base.train.seed)
        pool = datasets.concatenate_datasets([data.train, data.validation]) if len(data.validation) else data.train
        fingerprint = data.fingerprint
        if self.s.max_examples and self.s.max_examples < len(pool):
            keep = stratified_take(pool["label"], self.s.max_examples, self.s.seed)
            pool = pool.select(keep)
            fingerprint = _hash([fingerprint, "max_examples", self.s.max_examples, self.s.seed])
        self.pool = LabelledData(pool, pool.select([]), data.label_names, data.source, fingerprint, data.skipped)
        self.labels = np.asarray(pool["label"])
        self.folds, self.fold_note = make_folds(self.labels, self.s.folds, self.s.seed, data.label_names,
                                                self.s.allow_fewer_folds)
        logger.info("Study pool: %d examples, %d classes, %d folds", len(pool), len(data.label_names),
                    len(self.folds))

    def fold_data(self, k: int, budget: float):
        from hftl.data import LabelledData

        train_idx, val_idx = self.folds[k]
        train_idx = budget_subset(train_idx, self.labels, budget, self.s.seed * 1000 + k)
        pool = self.pool.train
        fingerprint = _hash([self.pool.fingerprint, "fold", k, len(self.folds), budget, self.s.seed, train_idx, val_idx])
        data = LabelledData(pool.select(train_idx), pool.select(val_idx), self.pool.label_names, self.pool.source,
                            fingerprint, self.pool.skipped)
        return data, fingerprint

    # -- one fold of one arm -------------------------------------------------------------------
    def run_dir(self, arm: Arm, budget: float, k: int) -> Path:
        return self.out / "runs" / arm.name / _budget_tag(budget) / f"fold{k}"

    def record_path(self, arm: Arm, budget: float, k: int) -> Path:
        return self.records / f"{arm.name}__{_budget_tag(budget)}__fold{k}.json"

    def fold_config(self, arm: Arm, budget: float, k: int) -> Config:
        cfg = self.resolve(arm.config)
        cfg.output_dir = str(self.run_dir(arm, budget, k))
        cfg.train.seed = self.cfg.base.train.seed + k  # a fold's seed is the same for every arm: paired
        cfg.train.resume = None
        cfg.train.progress = False  # one bar for the study (arm, budget, fold), not one per fold
        # A study resumes fold by fold, so mid-run checkpoints (weights + optimizer state, every epoch by
        # default) would only cost time and disk: keep the one the trainer writes at the end.
        cfg.train.checkpoint_every = NO_MID_RUN_CHECKPOINTS
        cfg.train.keep_checkpoints = 1
        return cfg

    def run_key(self, arm: Arm, budget: float, k: int, data_fp: str) -> str:
        source = arm.config.model.id
        source_key = self.source_keys.get(source[len(PRETRAIN_PREFIX):]) if source.startswith(PRETRAIN_PREFIX) else None
        return _hash({"config": _config_key(self.fold_config(arm, budget, k)), "data": data_fp,
                      "source": source_key, "folds": len(self.folds)})

    def run_fold(self, arm: Arm, budget: float, k: int, force: bool = False) -> dict:
        from hftl import api

        data, data_fp = self.fold_data(k, budget)
        key = self.run_key(arm, budget, k, data_fp)
        path = self.record_path(arm, budget, k)
        record = _read_json(path)
        if record and record.get("key") == key and not force:
            self.skipped += 1
            return record
        if record and not force:
            logger.warning("Record %s was made with another config or data; training that fold again", path)
        cfg = self.fold_config(arm, budget, k)
        folder = Path(cfg.output_dir)
        shutil.rmtree(folder, ignore_errors=True)  # a fold interrupted mid-training restarts from its start
        started = time.perf_counter()
        result = api.train(cfg, data=data)
        seconds = time.perf_counter() - started
        if self.s.metric not in result.metrics:
            raise ConfigError(
                f"study.metric '{self.s.metric}' was not computed by the run (it computed: "
                f"{', '.join(result.metrics)}). Choose one of those."
            )
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # optimizer state: large, and never resumed
        record = {"key": key, "arm": arm.name, "strategy": arm.strategy, "budget": budget, "fold": k,
                  "metrics": {m: float(v) for m, v in result.metrics.items()}, "history": result.history,
                  "num_train": len(data.train), "num_validation": len(data.validation),
                  "seed": cfg.train.seed, "seconds": round(seconds, 2), "output_dir": str(folder),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, record)
        self.trained += 1
        return record

    def keep_best_weights(self, arm: Arm, budget: float, records: dict) -> None:
        """Keep the weights of this arm's best fold so far at the full budget; lighten the others."""
        if self.s.keep_fold_models:
            return
        done = {k: r for k, r in records.items() if r is not None}
        best = None
        if budget == max(self.budgets) and self.s.winner != "none" and done:
            best = min(done, key=lambda k: (-done[k]["metrics"][self.s.metric] if self.s.metric != "loss"
                                            else done[k]["metrics"][self.s.metric], k))
        for k in done:
            if k != best:
                _lighten(self.run_dir(arm, budget, k))

    # -- the whole study -----------------------------------------------------------------------
    def run(self) -> StudyReport:
        from contextlib import nullcontext

        from tqdm.auto import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        self.budgets = sorted({float(b) for b in self.s.label_budgets}) or [1.0]
        show = self.cfg.base.train.progress
        # Log lines go through tqdm while the bar is shown, so they do not tear it into pieces.
        with logging_redirect_tqdm() if show else nullcontext(), \
                tqdm(total=len(self.cfg.pretrain), desc="study", unit="run", disable=not show,
                     dynamic_ncols=True) as progress:
            for source in self.cfg.pretrain:
                self.pretrain(source, progress)
                progress.update(1)
            self.load_pool()
            total = len(self.cfg.arms) * len(self.budgets) * len(self.folds)
            progress.reset(total=total)
            all_records: dict = {}
            for arm in self.cfg.arms:
                for budget in self.budgets:
                    recs: dict = {k: None for k in range(len(self.folds))}
                    for k in range(len(self.folds)):
                        budget_txt = f" budget {_pct(budget)}" if len(self.budgets) > 1 else ""
                        progress.set_description(f"arm {arm.name}{budget_txt} fold {k + 1}/{len(self.folds)}")
                        recs[k] = self.run_fold(arm, budget, k)
                        self.keep_best_weights(arm, budget, recs)
                        logger.info("%s%s fold %d/%d: %s %.4f", arm.name, budget_txt, k + 1, len(self.folds),
                                    self.s.metric, recs[k]["metrics"][self.s.metric])
                        progress.set_postfix({self.s.metric: f"{recs[k]['metrics'][self.s.metric]:.3f}"})
                        progress.update(1)
                    all_records[(arm.name, budget)] = recs
        report = self.analyse(all_records)
        report.seconds = time.perf_counter() - started
        self.save_winner(report, all_records)
        self.write(report, all_records)
        return report

    def analyse(self, all_records: dict) -> StudyReport:
        s = self.s
        arms = [a.name for a in self.cfg.arms]
        scores: dict = {a: {} for a in arms}
        stats: dict = {a: {} for a in arms}
        for (arm, budget), recs in all_records.items():
            tag = _budget_tag(budget)
            scores[arm][tag] = {m: [recs[k]["metrics"][m] for k in sorted(recs)] for m in METRICS}
            stats[arm][tag] = {m: describe_scores(v) for m, v in scores[arm][tag].items()}
        comparisons: dict = {}
        for arm in arms:
            if arm == s.baseline:
                continue
            comparisons[arm] = {}
            for budget in self.budgets:
                tag = _budget_tag(budget)
                recs = all_records[(arm, budget)]
                ratio = float(np.mean([recs[k]["num_validation"] / recs[k]["num_train"] for k in recs]))
                comparisons[arm][tag] = compare_paired(
                    scores[arm][tag][s.metric], scores[s.baseline][tag][s.metric], alpha=s.alpha,
                    higher_is_better=s.metric != "loss", test=s.test, test_train_ratio=ratio, arm=arm,
                    baseline=s.baseline, metric=s.metric)
        return StudyReport(
            name=s.name or self.out.name, output_dir=self.out, metric=s.metric, baseline=s.baseline, arms=arms,
            strategies={a.name: a.strategy for a in self.cfg.arms}, budgets=self.budgets, folds=len(self.folds),
            fold_note=self.fold_note, scores=scores, stats=stats, comparisons=comparisons,
            trained=self.trained, skipped=self.skipped, n_examples=len(self.labels),
            label_names=list(self.pool.label_names),
            budget_sizes={_budget_tag(b): float(np.mean([r["num_train"] for r in all_records[(s.baseline, b)].values()]))
                          for b in self.budgets})

    # -- the winner's model --------------------------------------------------------------------
    def save_winner(self, report: StudyReport, all_records: dict) -> None:
        """Copy the winning arm's best fold (at the full budget) to OUTPUT_DIR/model, card and all.

        The best fold rather than a retrain on all data: its card then shows metrics on examples it
        never saw, and the study costs no extra training. The cross-validated estimate (mean ± sd)
        is in the card's study section; the fold's own number is one draw of it.
        """
        if self.s.winner == "none":
            return
        budget = max(self.budgets)
        tag = _budget_tag(budget)
        sign = -1 if self.s.metric == "loss" else 1
        winner = max(report.arms, key=lambda a: (sign * report.stats[a][tag][self.s.metric]["mean"],
                                                 -report.arms.index(a)))
        recs = all_records[(winner, budget)]
        fold = min(recs, key=lambda k: (-sign * recs[k]["metrics"][self.s.metric], k))
        arm = next(a for a in self.cfg.arms if a.name == winner)
        folder = self.run_dir(arm, budget, fold)
        if not (folder / "hftl.json").is_file():
            # Its weights were lightened in an earlier session (e.g. before an arm was added): retrain that fold.
            logger.info("Retraining %s fold %d to save it (its weights were not kept)", winner, fold)
            self.run_fold(arm, budget, fold, force=True)
        target = self.out / "model"
        tmp = self.out / ".model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("checkpoints"))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        report.winner, report.winner_fold, report.model_dir = winner, fold, target
        if not self.s.keep_fold_models:
            for other in self.cfg.arms:
                for k in range(len(self.folds)):
                    if (other.name, k) != (winner, fold):
                        _lighten(self.run_dir(other, budget, k))

    # -- files ---------------------------------------------------------------------------------
    def write(self, report: StudyReport, all_records: dict) -> None:
        plots = write_plots(report, self.out)
        report.files = {"report": self.out / "report.md", "study.json": self.out / "study.json",
                        **{f"plot ({p.stem.replace('_', ' ')})": p for p in plots}}
        if report.model_dir:
            report.files["model"] = report.model_dir
        markdown = render_markdown(report, self.cfg, all_records, self.source_info, plots)
        (self.out / "report.md").write_text(markdown)
        if report.model_dir:
            add_study_to_card(report.model_dir / "README.md", card_section(report))
        data = {
            **report.to_dict(),
            "config": self.cfg.raw,
            "sources": self.source_info,
            "folds_detail": [{"fold": k, "num_train": len(tr), "num_validation": len(va)}
                             for k, (tr, va) in enumerate(self.folds)],
            "runs": [r for recs in all_records.values() for r in recs.values()],
            "scores": report.scores,
        }
        _write_json_atomic(self.out / "study.json", data)


def _shuffled(data, seed: int):
    """The same examples with their labels permuted (seeded): a source that learned nothing transferable."""
    from hftl.data import LabelledData

    rng = np.random.default_rng(seed)

    def permute(ds):
        labels = np.asarray(ds["label"])
        return ds.remove_columns("label").add_column("label", rng.permutation(labels).tolist())

    return LabelledData(permute(data.train), permute(data.validation), data.label_names,
                        f"{data.source} (labels shuffled)", _hash([data.fingerprint, "shuffled", seed]), data.skipped)


# ------------------------------------------------------------------------------------------- rendering

def write_plots(report: StudyReport, out: Path) -> list[Path]:
    """``metric_by_arm.png`` (mean ± sd with each fold's point) and, with budgets, ``sample_efficiency.png``.

    Uses Matplotlib's object API on the Agg canvas, so no global backend is switched (notebooks keep theirs).

    Example:
        >>> write_plots(report, Path("outputs/study"))  # doctest: +SKIP
        [PosixPath('outputs/study/metric_by_arm.png'), PosixPath('outputs/study/sample_efficiency.png')]
    """
    from matplotlib.figure import Figure

    metric = report.metric
    tag = report.full_budget
    colours = {"positive transfer": "#2e7d32", "negative transfer": "#c62828",
               "no significant difference": "#757575", "baseline": "#37474f"}
    paths = []
    fig = Figure(figsize=(max(5.0, 1.3 * len(report.arms) + 2), 4.2), dpi=130, layout="constrained")
    ax = fig.subplots()
    means = [report.stats[a][tag][metric]["mean"] for a in report.arms]
    sds = [report.stats[a][tag][metric]["std"] for a in report.arms]
    verdicts = [report.verdict(a) or "baseline" for a in report.arms]
    x = np.arange(len(report.arms))
    ax.bar(x, means, yerr=sds, capsize=6, color=[colours[v] for v in verdicts], alpha=0.75, edgecolor="black")
    rng = np.random.default_rng(0)
    for i, arm in enumerate(report.arms):
        pts = report.scores[arm][tag][metric]
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(pts)), pts, color="black", s=14, zorder=3)
    ax.set_xticks(x, [f"{a}\n{v}" if v != "baseline" else f"{a}\n(baseline)" for a, v in zip(report.arms, verdicts)],
                  fontsize=8)
    ax.set_ylabel(f"{metric} on held-out folds")
    ax.set_title(f"{report.name}\n{metric} on held-out folds, mean ± sd over {report.folds} folds", fontsize=10)
    if metric == "accuracy" and report.label_names:
        chance = 1 / len(report.label_names)  # uniform guessing (balanced classes): "learned nothing"
        ax.axhline(chance, color="#9e9e9e", linestyle=":", linewidth=1)
        ax.annotate("chance", (len(report.arms) - 0.5, chance), xytext=(0, 2), textcoords="offset points",
                    ha="right", va="bottom", fontsize=7, color="#757575")
    lows = [m - s for m, s in zip(means, sds)] + [min(report.scores[a][tag][metric]) for a in report.arms]
    if metric == "accuracy" and report.label_names:
        lows.append(1 / len(report.label_names))
    if metric != "loss":
        ax.set_ylim(max(0.0, min(lows) - 0.1), min(1.02, max(m + s for m, s in zip(means, sds)) + 0.08))
    ax.grid(axis="y", alpha=0.3)
    path = out / "metric_by_arm.png"
    fig.savefig(path)
    paths.append(path)

    if len(report.budgets) > 1:
        fig = Figure(figsize=(6.4, 4.2), dpi=130, layout="constrained")
        ax = fig.subplots()
        for i, arm in enumerate(report.arms):
            ys = [report.stats[arm][_budget_tag(b)][metric]["mean"] for b in report.budgets]
            es = [report.stats[arm][_budget_tag(b)][metric]["std"] for b in report.budgets]
            shift = 1 + 0.025 * (i - (len(report.arms) - 1) / 2)  # side by side, so error bars stay readable
            ax.errorbar([100 * b * shift for b in report.budgets], ys, yerr=es, marker="o", capsize=4, label=arm,
                        linestyle="--" if arm == report.baseline else "-")
        ax.set_xscale("log")
        sizes = report.budget_sizes
        ax.set_xticks([100 * b for b in report.budgets],
                      [f"{_pct(b)}\n({sizes[_budget_tag(b)]:.0f})" if _budget_tag(b) in sizes else _pct(b)
                       for b in report.budgets])
        ax.minorticks_off()
        ax.set_xlabel("share of each training fold's labels used (labelled examples per fold)")
        ax.set_ylabel(f"{metric} on held-out folds")
        ax.set_title(f"{report.name}\nsample efficiency: mean ± sd over {report.folds} folds", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        path = out / "sample_efficiency.png"
        fig.savefig(path)
        paths.append(path)
    return paths


def _verdict_sentence(report: StudyReport) -> str:
    parts = []
    for arm in report.arms:
        c = report.comparisons.get(arm, {}).get(report.full_budget)
        if c:
            parts.append(f"**{arm}**: {c.verdict} ({report.metric} {c.mean_diff:+.3f}, {c.confidence:.0%} CI "
                         f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}], p = {_fmt_p(c.p_value)})")
    return "; ".join(parts) + "."


def card_section(report: StudyReport) -> str:
    """The study as it appears in the saved model's card: the table, the verdicts and what this model is.

    Example:
        >>> add_study_to_card(Path("outputs/study/model/README.md"), card_section(report))  # doctest: +SKIP
    """
    tag = report.full_budget
    s = report.stats[report.winner][tag][report.metric] if report.winner else None
    lines = [
        f"Cross-validated transfer study `{report.name}`: {len(report.arms)} arms on the same "
        f"{report.folds} stratified folds of {report.n_examples} examples, compared with `{report.baseline}` by a "
        "paired test over the folds.",
        "",
        report.markdown_table(tag),
        "",
        "Verdicts: " + _verdict_sentence(report),
    ]
    if report.winner:
        lines += ["", f"This model is fold {report.winner_fold} of the best arm, `{report.winner}` "
                      f"(its metrics above are on that fold's held-out examples); the arm's cross-validated "
                      f"{report.metric} is {s['mean']:.3f} ± {s['std']:.3f}."]
    if report.fold_note:
        lines += ["", f"Note: {report.fold_note}"]
    return "\n".join(lines)


def add_study_to_card(readme: Path, section: str) -> None:
    """Put the study section into a model card (before 'How to use', as the card template places it).

    Example:
        >>> add_study_to_card(Path("outputs/run/README.md"), "| arm | accuracy |...")  # doctest: +SKIP
    """
    from huggingface_hub import ModelCard

    card = ModelCard.load(readme)
    text = card.text
    block = f"## Transfer study\n\n{section}\n\n"
    if "## Transfer study" in text:  # a rerun replaces the old section
        start = text.index("## Transfer study")
        end = text.find("\n## ", start + 1)
        text = text[:start] + block + (text[end + 1:] if end != -1 else "")
    elif "## How to use" in text:
        i = text.index("## How to use")
        text = text[:i] + block + text[i:]
    else:
        text = text.rstrip() + "\n\n" + block
    card.text = text
    card.save(readme)


def render_markdown(report: StudyReport, cfg: StudyConfig, all_records: dict, sources: dict,
                    plots: list[Path]) -> str:
    """report.md: the verdicts first, then the table, the plots, what was run and every fold's numbers.

    Example:
        >>> Path("report.md").write_text(render_markdown(report, cfg, records, {}, plots))  # doctest: +SKIP
    """
    base = cfg.base
    tag = report.full_budget
    lines = [f"# Transfer study: {report.name}", "",
             f"Does transfer beat training from scratch on this data? {_verdict_sentence(report)}", ""]
    if report.fold_note:
        lines += [f"> **Note:** {report.fold_note}", ""]
    lines += [f"## Results ({_pct(max(report.budgets))} of each training fold)", "",
              report.markdown_table(tag), "",
              f"Mean ± sample standard deviation over {report.folds} folds; Δ is the arm minus `{report.baseline}`, "
              "paired by fold.", ""]
    for p in plots:
        lines += [f"![{p.stem}]({p.name})", ""]
    if len(report.budgets) > 1:
        lines += ["## Sample efficiency", "", f"{report.metric} (mean ± sd) by share of each training fold's labels:",
                  "", "| arm | " + " | ".join(f"{_pct(b)} ({report.budget_sizes.get(_budget_tag(b), 0):.0f} labels)"
                                          for b in report.budgets) + " |",
                  "|---|" + "---|" * len(report.budgets)]
        for arm in report.arms:
            cells = []
            for b in report.budgets:
                st = report.stats[arm][_budget_tag(b)][report.metric]
                c = report.comparisons.get(arm, {}).get(_budget_tag(b))
                mark = {"positive transfer": " ↑", "negative transfer": " ↓"}.get(c.verdict, "") if c else ""
                cells.append(f"{st['mean']:.3f} ± {st['std']:.3f}{mark}")
            lines.append(f"| {arm} | " + " | ".join(cells) + " |")
        lines += ["", f"↑ / ↓: significantly better / worse than `{report.baseline}` at that budget.", ""]

    lines += ["## What was run", "",
              f"- Task: {base.task}; data: `{base.data.id}`"
              + (f" (classes {', '.join(map(str, base.data.classes))})" if base.data.classes else "")
              + f"; {report.n_examples} labelled examples, {len(report.label_names)} classes"
              + (" (a seeded, stratified subset: study.max_examples)" if cfg.study.max_examples else "")
              + ".",
              f"- Folds: {report.folds} stratified folds (scikit-learn StratifiedKFold, shuffled, seed "
              f"{cfg.study.seed}), the same for every arm; each fold trains on the other folds and is scored on "
              "its own held-out examples (the metric of the final epoch, so no fold is used to pick an epoch).",
              f"- Training budget per arm and fold (unless an arm overrides it): {base.train.epochs} epochs, global "
              f"batch {base.train.global_batch_size}, peak lr {base.train.lr:g}, {base.train.scheduler} schedule, "
              f"seed {base.train.seed} + fold index (the same for every arm).",
              f"- Verdict: {cfg.study.test} test on {report.metric} at alpha {cfg.study.alpha:g} "
              f"({'paired t-test, scipy.stats.ttest_rel' if cfg.study.test == 't' else cfg.study.test}); "
              "Wilcoxon signed-rank where there are enough folds.",
              "", "| arm | strategy | starts from | epochs | lr |", "|---|---|---|---|---|"]
    for arm in cfg.arms:
        c = arm.config
        start = c.model.id
        if arm.strategy == "scratch":
            start = f"{c.model.id} (architecture only, random init)"
        lines.append(f"| {arm.name} | {arm.strategy} | `{start}` | {c.train.epochs} | {c.train.lr:g} |")
    if sources:
        lines += ["", "Source models the study pretrained itself (`pretrain:NAME`):", "",
                  "| source | from | data | classes | labels | epochs | its validation accuracy |",
                  "|---|---|---|---|---|---|---|"]
        for name, r in sources.items():
            lines.append(f"| {name} | `{r['model']}` ({r['strategy']}) | `{r['data']}` | {', '.join(r['classes'])} | "
                         f"{'**shuffled**' if r['shuffle_labels'] else 'true'} | {r['epochs']} | "
                         f"{r['metrics'].get('accuracy', float('nan')):.3f} |")
    lines += ["", "## Saved model", ""]
    if report.model_dir:
        lines.append(f"`{report.model_dir}`: fold {report.winner_fold} of the best arm `{report.winner}` (highest mean "
                     f"{report.metric}), saved like any hftl run; its card carries this study's table. It is that "
                     "fold's model (not a retrain on all data), so its card's metrics are on examples it never saw.")
    else:
        lines.append("None (study.winner=none).")
    lines += ["", "## Every fold", "", "| arm | budget | fold | train | held-out | accuracy | F1 | loss | seconds |",
              "|---|---|---|---|---|---|---|---|---|"]
    for (arm, budget), recs in all_records.items():
        for k in sorted(recs):
            r = recs[k]
            m = r["metrics"]
            lines.append(f"| {arm} | {_pct(budget)} | {k} | {r['num_train']} | {r['num_validation']} | "
                         f"{m['accuracy']:.4f} | {m['f1']:.4f} | {m['loss']:.4f} | {r['seconds']:.1f} |")
    lines += ["", "## How to read this", "",
              "- Each verdict compares an arm with the baseline fold by fold (paired), so differences between "
              "folds' difficulty cancel out.",
              "- *No significant difference* is not proof of equality: with few folds, small effects go undetected. "
              "Look at the confidence interval: it bounds the plausible effect.",
              "- Folds share training data, so the plain paired t-test is somewhat optimistic; "
              "`study.test=corrected_t` (Nadeau & Bengio) is the conservative alternative.",
              "", f"Made with hftl in {report.seconds:.0f} s ({report.trained} runs trained, {report.skipped} "
              "resumed from records)."]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- entry point

def run_study(config: StudyConfig | str | Path | dict | None, overrides: list[str] | None = None) -> StudyReport:
    """Run a cross-validated transfer-vs-scratch study; returns its :class:`StudyReport`.

    ``config`` is a study YAML path, a mapping of the same shape, or a :class:`StudyConfig`. A rerun
    with the same config skips every fold already finished (resume), so an interrupted study
    continues where it stopped.

    Example:
        >>> report = run_study("recipes/configs/study/negative_transfer.yaml")  # doctest: +SKIP
        >>> report.verdict("probe_from_shuffled")  # doctest: +SKIP
        'negative transfer'
    """
    if isinstance(config, StudyConfig):
        cfg = config
        if overrides:
            cfg = study_config_from_dict(_merge(cfg.raw, parse_overrides(overrides)))
    elif isinstance(config, dict):
        cfg = study_config_from_dict(_merge(config, parse_overrides(overrides or [])))
    else:
        cfg = load_study_config(config, overrides)
    return _Study(cfg).run()
