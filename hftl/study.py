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
      search: true                             # or {lr: [1.0e-4, 1.0e-3]}, or false

Each arm chooses its own hyperparameters (its learning rate, by default) per fold on an inner
validation split of that fold's training examples, never on the held-out fold (nested
cross-validation; :mod:`hftl.study_search`): ``study.search`` (true: each strategy's grid; a grid such
as ``{lr: [1e-4, 1e-3]}``; false: off), or ``search:`` on one arm. What each arm chose is in every
fold's record, study.json, report.md and the winner's card.

``study.pretrain`` lets a study make its own source models first (e.g. on other classes, or on
shuffled labels to show negative transfer); ``model.id: pretrain:NAME`` then points at one.

Regression (``base.task: text_regression``) runs through the same machinery, with what differs
because the targets are real numbers and there are no classes:

- folds are plain seeded k folds (scikit-learn ``KFold``, shuffled), not stratified;
- each fold is scored by ``mse``, ``mae``, ``pearson`` and ``loss``; ``study.metric`` is one of them
  (default ``mse``). Lower is better for ``mse``, ``mae`` and ``loss`` (``hftl.metrics.LOWER_IS_BETTER``),
  higher for ``pearson``: verdicts, the winning arm and its saved fold follow that direction;
- a label budget is still a share of each training fold, taken as a seeded random subset of
  ``ceil(budget * n)`` training examples (nested, the same for every arm), so the curve reads
  "this many training examples per fold"; ``study.max_examples`` is a seeded random subset too.

What a study writes to ``study.output_dir``: ``study.json`` (every fold's numbers, the config, the
verdicts), ``report.md``, ``metric_by_arm.png`` (and ``sample_efficiency.png`` with label
budgets), ``model/`` (the winning arm's best fold, saved like any run, its card carrying the study),
``records/`` (one small JSON per finished fold: a rerun skips those, so an interrupted study
resumes) and ``runs/`` (each fold's log and metrics). The report and plots are rendered by
:mod:`hftl.study_report`; this module holds the config, the folds, the training, the statistics
and resume.

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

from hftl.config import STRATEGIES, TASK_METRICS, Config, _apply, _f, config_from_dict, parse_overrides
from hftl.errors import ConfigError, DataError
from hftl.metrics import LOWER_IS_BETTER
from hftl.study_report import (  # the rendering; its names stay importable from hftl.study
    StudyReport,
    _budget_tag,
    _pct,
    add_study_to_card,
    card_section,
    render_markdown,
    write_plots,
)
from hftl.study_search import (
    SEARCH_HELP,
    candidates,
    choose,
    inner_split,
    nested,
    parse_search,
    read_value,
    resolve_grid,
)

logger = logging.getLogger(__name__)

TESTS = ("t", "corrected_t", "wilcoxon")
VERDICTS = ("positive transfer", "no significant difference", "negative transfer")
STUDY_TASKS = ("image_classification", "text_classification", "text_regression", "audio_classification")
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
    folds: int = _f(5, "Number of stratified cross-validation folds (the same folds for every arm; text_regression: "
                       "plain seeded k folds).")
    seed: int = _f(0, "Seed of the fold assignment and the label-budget subsets.")
    metric: str = _f("accuracy", "Metric the verdicts and the winner are decided on: accuracy, f1 (macro) or loss; "
                                 "text_regression: mse (its default), mae, pearson or loss.")
    label_budgets: list = _f(
        [], "Shares of each training fold to train on, e.g. [0.1, 0.25, 0.5, 1.0] (a sample-efficiency curve); "
            "empty: the whole fold. Subsets are nested and stratified (text_regression: a seeded random "
            "ceil(share * n) examples), and the same for every arm.")
    alpha: float = _f(0.05, "Significance level of the paired tests; the confidence interval is 1 - alpha.")
    test: str = _f(
        "t", "Test that decides the verdict: t (paired t-test over folds), corrected_t (Nadeau-Bengio "
             "corrected resampled t-test: folds share training data, so this one is more conservative) or "
             "wilcoxon (signed-rank; needs at least 6 folds at alpha 0.05).")
    max_examples: int | None = _f(
        None, "Use a seeded, stratified (text_regression: random) subset of this many labelled examples for the "
              "whole study "
              "(a few-label setting); null uses every example of base.data (train and validation pooled).")
    allow_fewer_folds: bool = _f(
        True, "When a class has fewer examples than folds, use that many folds (logged and reported) instead "
              "of stopping with an error.")
    pretrain: list = _f(
        [], "Source models the study makes first, each a mapping {name, config, shuffle_labels}: config "
            "overrides base keys for the source run (its own data, e.g. other classes; strategy defaults to "
            "scratch). Arms use one with model.id: pretrain:NAME.")
    search: bool | dict = _f(True, SEARCH_HELP)
    search_validation: float = _f(
        0.2, "Share of each training fold held out (stratified, seeded, the same for every arm) to choose the "
             "searched values on; the candidates train on the rest, the chosen values then on the whole fold.")
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
    search: bool | dict | None = None  # the arm's own search: setting (None: the study's)
    grid: dict = field(default_factory=dict)  # what it searches: dotted key -> values ({}: nothing)
    candidates: list = field(default_factory=list)  # [(values, Config)] in grid order; one when not searched


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


def _check_entry(entry: Any, where: str, valid: tuple[str, ...], name_hint: str, shape: str) -> tuple[str, dict]:
    """An arm's or a source's mapping: only known keys, a name, and its base-key overrides (dotted keys expanded)."""
    if not isinstance(entry, dict):
        raise ConfigError(f"{where} must be {shape}, not {entry!r}.")
    unknown = [k for k in entry if k not in valid]
    if unknown:
        raise ConfigError(f"Unknown key '{unknown[0]}' in {where}. Valid keys: {', '.join(valid)}.")
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name:
        raise ConfigError(f"{where} needs a name ({name_hint}).")
    overrides = entry.get("config") or {}
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where} '{name}': config must be a mapping of base keys to override.")
    return name, _expand_dotted(overrides)


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
    name, overrides = _check_entry(entry, f"study.arms[{index}]", ("name", "strategy", "config", "search"),
                                   "e.g. name: probe_from_shuffled", "a strategy name or a mapping")
    strategy = entry.get("strategy", name)
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"Arm '{name}' has strategy '{strategy}', which is not known. Valid strategies: {strategies}."
        )
    given = overrides.get("strategy", {}).get("name") if isinstance(overrides.get("strategy"), dict) else None
    if given and given != strategy:
        raise ConfigError(f"Arm '{name}' sets strategy '{strategy}' and config strategy.name '{given}'; keep one.")
    search = parse_search(entry["search"], f"Arm '{name}' search") if "search" in entry else None
    return Arm(name, strategy, overrides, search=search)


def _parse_pretrain(entry: Any, index: int) -> PretrainSource:
    name, overrides = _check_entry(entry, f"study.pretrain[{index}]", ("name", "config", "shuffle_labels"),
                                   "letters, digits, _ or -", "a mapping {name, config, shuffle_labels}")
    shuffle = entry.get("shuffle_labels", False)
    if not isinstance(shuffle, bool):
        raise ConfigError(f"study.pretrain '{name}': shuffle_labels must be true or false.")
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
    if "metric" not in raw_study and base.task in STUDY_TASKS:
        settings.metric = TASK_METRICS[base.task][0]  # the task's headline metric: accuracy, or mse (regression)
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
        _resolve_candidates(arm, settings.search, raw_base, overrides)
    for cfg, what in [(a.config, f"Arm '{a.name}'") for a in arms] + [(s.config, f"pretrain '{s.name}'") for s in sources]:
        if cfg.model.id.startswith(PRETRAIN_PREFIX) and cfg.model.id[len(PRETRAIN_PREFIX):] not in names:
            raise ConfigError(
                f"{what} starts from '{cfg.model.id}', but study.pretrain has no source of that name "
                f"(it has: {', '.join(names) or 'none'})."
            )
    raw = {"base": raw_base, "study": dataclasses.asdict(settings)}
    return StudyConfig(base, settings, arms, sources, raw)


def _resolve_candidates(arm: Arm, study_search: bool | dict, raw_base: dict, overrides: dict) -> None:
    """The arm's grid and one validated run config per candidate (a bad key or value fails here, not mid-study)."""
    arm.grid = resolve_grid(study_search if arm.search is None else arm.search, arm.strategy)
    arm.candidates = []
    for values in candidates(arm.grid):
        cfg = _run_config(raw_base, _merge(overrides, nested(values)), f"Arm '{arm.name}' search {values}")
        try:  # read back as the config holds it (YAML reads "1e-4" as a string; the config, as a float)
            values = {k: read_value(cfg, k) for k in values}
        except AttributeError:
            raise ConfigError(f"Arm '{arm.name}' searches '{next(iter(values))}', which is not a config key.") from None
        arm.candidates.append((values, cfg))
    if len(arm.candidates) == 1:  # nothing to choose: train that value directly, as an unsearched arm would
        arm.config = arm.candidates[0][1]


def _validate_settings(s: StudySettings, base: Config) -> None:
    s.search = parse_search(s.search, "study.search")
    if not 0 < s.search_validation < 1:
        raise ConfigError(f"study.search_validation must be a share in (0, 1), e.g. 0.2 (got {s.search_validation}).")
    if base.task not in STUDY_TASKS:
        raise ConfigError(
            f"A study compares classifiers or regressors on labelled examples; base.task '{base.task}' is not "
            f"supported. Use one of: {', '.join(STUDY_TASKS)}."
        )
    if s.metric not in fold_metrics(base.task):
        raise ConfigError(
            f"study.metric '{s.metric}' is not computed on the folds (task {base.task}). Valid metrics: "
            f"{', '.join(fold_metrics(base.task))}."
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
        from hftl.config import read_yaml

        data = read_yaml(path) or {}  # tabs, bad bytes and alias bombs: one line, as for run configs
        if not isinstance(data, dict):
            raise ConfigError(f"Study config '{path}' must hold a mapping with the sections 'base' and 'study'.")
    return study_config_from_dict(_merge(data, parse_overrides(overrides or [])))


# -------------------------------------------------------------------------------------- statistics

def fold_metrics(task: str) -> tuple[str, ...]:
    """What each held-out fold is scored by: the task's evaluation metrics, then the loss.

    Example:
        >>> fold_metrics("text_regression")
        ('mse', 'mae', 'pearson', 'loss')
    """
    return (*TASK_METRICS[task], "loss")


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is better (``hftl.metrics.LOWER_IS_BETTER``: loss, mse, mae).

    Example:
        >>> higher_is_better("pearson"), higher_is_better("mse")
        (True, False)
    """
    return metric not in LOWER_IS_BETTER


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
        self.metrics = fold_metrics(cfg.base.task)
        self.sign = 1 if higher_is_better(self.s.metric) else -1  # the best arm and fold maximise sign * metric

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
            keep = stratified_take(self._strata(pool["label"], data.regression), self.s.max_examples, self.s.seed)
            pool = pool.select(keep)
            fingerprint = _hash([fingerprint, "max_examples", self.s.max_examples, self.s.seed])
        self.pool = LabelledData(pool, pool.select([]), data.label_names, data.source, fingerprint, data.skipped,
                                 data.regression)
        self.labels = np.asarray(pool["label"])
        self.strata = self._strata(self.labels, data.regression)
        self.folds, self.fold_note = make_folds(self.labels, self.s.folds, self.s.seed, data.label_names,
                                                self.s.allow_fewer_folds, regression=data.regression)
        logger.info("Study pool: %d examples, %s, %d folds", len(pool),
                    f"target '{data.label_names[0]}'" if data.regression else f"{len(data.label_names)} classes",
                    len(self.folds))

    @staticmethod
    def _strata(labels, regression: bool) -> np.ndarray:
        """What subsets are stratified by: the classes, or one stratum for real-valued targets."""
        return np.zeros(len(labels), dtype=int) if regression else np.asarray(labels)

    def fold_indices(self, k: int, budget: float) -> tuple[list[int], list[int]]:
        """Pool indices of fold ``k``'s training examples (at ``budget``) and of its held-out examples."""
        train_idx, val_idx = self.folds[k]
        return budget_subset(train_idx, self.strata, budget, self.s.seed * 1000 + k), val_idx

    def fold_data(self, k: int, budget: float):
        train_idx, val_idx = self.fold_indices(k, budget)
        fingerprint = _hash([self.pool.fingerprint, "fold", k, len(self.folds), budget, self.s.seed, train_idx, val_idx])
        return self.subset(train_idx, val_idx, fingerprint), fingerprint

    def subset(self, train_idx: list[int], val_idx: list[int], fingerprint: str):
        """LabelledData of these pool examples: ``train_idx`` to train on, ``val_idx`` to score on."""
        from hftl.data import LabelledData

        pool = self.pool.train
        return LabelledData(pool.select(train_idx), pool.select(val_idx), self.pool.label_names, self.pool.source,
                            fingerprint, self.pool.skipped, self.pool.regression)

    def inner_data(self, k: int, budget: float):
        """The inner split of fold ``k``'s training examples (never its held-out fold): data, fingerprint, indices."""
        train_idx, _ = self.fold_indices(k, budget)
        # Seeded by study seed, fold and budget only: every arm chooses on the same inner split (paired).
        inner_tr, inner_va = inner_split(train_idx, self.strata, self.s.search_validation,
                                         [self.s.seed, k, round(budget * 10**6), 17])
        fingerprint = _hash([self.pool.fingerprint, "inner", k, len(self.folds), budget, self.s.seed,
                             self.s.search_validation, inner_tr, inner_va])
        return self.subset(inner_tr, inner_va, fingerprint), fingerprint, inner_tr, inner_va

    # -- one fold of one arm -------------------------------------------------------------------
    def run_dir(self, arm: Arm, budget: float, k: int) -> Path:
        return self.out / "runs" / arm.name / _budget_tag(budget) / f"fold{k}"

    def record_path(self, arm: Arm, budget: float, k: int) -> Path:
        return self.records / f"{arm.name}__{_budget_tag(budget)}__fold{k}.json"

    def fold_config(self, arm: Arm, budget: float, k: int, config: Config | None = None,
                    output_dir: Path | None = None) -> Config:
        cfg = self.resolve(config or arm.config)
        cfg.output_dir = str(output_dir or self.run_dir(arm, budget, k))
        cfg.train.seed = self.cfg.base.train.seed + k  # a fold's seed is the same for every arm: paired
        cfg.train.resume = None
        cfg.train.progress = False  # one bar for the study (arm, budget, fold), not one per fold
        # A study resumes fold by fold, so mid-run checkpoints (weights + optimizer state, every epoch by
        # default) would only cost time and disk: keep the one the trainer writes at the end.
        cfg.train.checkpoint_every = NO_MID_RUN_CHECKPOINTS
        cfg.train.keep_checkpoints = 1
        # A fold's validation data is its held-out test fold: choosing an epoch on it (early stopping, best-epoch
        # restore) would select on the test data. Every fold trains its full budget and keeps its last epoch;
        # choices are made by the search, on an inner split of the training fold.
        cfg.train.patience = 0
        cfg.train.keep_best = False
        return cfg

    def run_key(self, arm: Arm, budget: float, k: int, data_fp: str, config: Config | None = None,
                search: dict | None = None) -> str:
        source = arm.config.model.id
        source_key = self.source_keys.get(source[len(PRETRAIN_PREFIX):]) if source.startswith(PRETRAIN_PREFIX) else None
        key = {"config": _config_key(self.fold_config(arm, budget, k, config)), "data": data_fp,
               "source": source_key, "folds": len(self.folds)}
        if search:  # what the choice was made among (an unsearched fold keeps the key it always had)
            key["search"] = search
        return _hash(key)

    def train_once(self, cfg: Config, data) -> tuple[dict, list, float]:
        """Train one run (from its start) and return its metrics, history and seconds."""
        from hftl import api

        folder = Path(cfg.output_dir)
        shutil.rmtree(folder, ignore_errors=True)  # a run interrupted mid-training restarts from its start
        started = time.perf_counter()
        result = api.train(cfg, data=data)
        seconds = time.perf_counter() - started
        if self.s.metric not in result.metrics:
            raise ConfigError(
                f"study.metric '{self.s.metric}' was not computed by the run (it computed: "
                f"{', '.join(result.metrics)}). Choose one of those."
            )
        shutil.rmtree(folder / "checkpoints", ignore_errors=True)  # optimizer state: large, and never resumed
        self.trained += 1
        return {m: float(v) for m, v in result.metrics.items()}, result.history, seconds

    def search(self, arm: Arm, budget: float, k: int, progress=None) -> tuple[Config, dict]:
        """Choose the arm's values for fold ``k`` on the inner split of its training examples.

        Returns the run config to train on the whole training fold and what the search did (for the
        record). Each candidate has its own small record, so an interrupted search resumes too.
        """
        if len(arm.candidates) == 1:  # nothing to choose (no grid, or one value): no inner training
            values = arm.candidates[0][0]
            return arm.config, {"grid": arm.grid, "chosen": values, "candidates": []} if values else {}
        try:
            data, data_fp, inner_tr, inner_va = self.inner_data(k, budget)
        except DataError as e:
            # E.g. one example per class at a small label budget. Every arm meets the same split, so every
            # arm falls back alike, at its configured values; the report says so for that fold.
            logger.warning("%s (arm %s, budget %s, fold %d): trained at its configured values", e, arm.name,
                           _pct(budget), k)
            return arm.config, {"grid": arm.grid, "chosen": {}, "candidates": [], "skipped": str(e)}
        tag = _budget_tag(budget)
        results = []
        for i, (values, config) in enumerate(arm.candidates):
            folder = self.out / "search" / arm.name / tag / f"fold{k}" / f"c{i}"
            cfg = self.fold_config(arm, budget, k, config, output_dir=folder)
            key = self.run_key(arm, budget, k, data_fp, config)
            path = self.records / "search" / f"{arm.name}__{tag}__fold{k}__c{i}.json"
            record = _read_json(path)
            if record and record.get("key") == key:
                self.skipped += 1
            else:
                if progress is not None:
                    progress.set_description(f"arm {arm.name} fold {k + 1}/{len(self.folds)}: search "
                                             f"{i + 1}/{len(arm.candidates)}")
                metrics, history, seconds = self.train_once(cfg, data)
                _lighten(folder)  # a candidate's weights are never used again; its log stays
                record = {"key": key, "values": values, "metrics": metrics, "seconds": round(seconds, 2),
                          "epochs": len(history), "output_dir": str(folder)}
                _write_json_atomic(path, record)
            results.append(record)
        best = choose([r["metrics"] for r in results], self.s.metric, higher_is_better(self.s.metric))
        # A choice at the end of its grid says the best value may lie beyond it: say so, do not widen silently.
        edge = [key for key, value in results[best]["values"].items()
                if len(arm.grid.get(key, [])) > 2 and value in (min(arm.grid[key]), max(arm.grid[key]))
                and all(isinstance(v, (int, float)) for v in arm.grid[key])]
        if edge:
            logger.warning("Arm %s fold %d chose %s at the end of its grid; consider a wider study.search grid",
                           arm.name, k, ", ".join(f"{key}={results[best]['values'][key]:g}" for key in edge))
        info = {"grid": arm.grid, "chosen": results[best]["values"], "metric": self.s.metric,
                "validation_share": self.s.search_validation, "inner_train": inner_tr, "inner_validation": inner_va,
                "candidates": [{"values": r["values"], "metrics": r["metrics"], "seconds": r["seconds"]}
                               for r in results],
                "seconds": round(sum(r["seconds"] for r in results), 2), "at_grid_edge": edge}
        return arm.candidates[best][1], info

    def run_fold(self, arm: Arm, budget: float, k: int, force: bool = False, progress=None) -> dict:
        config, search = self.search(arm, budget, k, progress)
        data, data_fp = self.fold_data(k, budget)
        spec = {"grid": arm.grid, "validation": self.s.search_validation} if search.get("candidates") else None
        key = self.run_key(arm, budget, k, data_fp, config, spec)
        path = self.record_path(arm, budget, k)
        record = _read_json(path)
        if record and record.get("key") == key and not force:
            self.skipped += 1
            return record
        if record and not force:
            logger.warning("Record %s was made with another config or data; training that fold again", path)
        cfg = self.fold_config(arm, budget, k, config)
        metrics, history, seconds = self.train_once(cfg, data)
        train_idx, test_idx = self.fold_indices(k, budget)
        record = {"key": key, "arm": arm.name, "strategy": arm.strategy, "budget": budget, "fold": k,
                  "metrics": metrics, "history": history,
                  "num_train": len(data.train), "num_validation": len(data.validation),
                  "chosen": search.get("chosen", {}), "search": search,
                  "train_indices": train_idx, "test_indices": test_idx,
                  "seed": cfg.train.seed, "seconds": round(seconds, 2), "output_dir": str(cfg.output_dir),
                  "finished": time.strftime("%Y-%m-%dT%H:%M:%S")}
        _write_json_atomic(path, record)
        return record

    def keep_best_weights(self, arm: Arm, budget: float, records: dict) -> None:
        """Keep the weights of this arm's best fold so far at the full budget; lighten the others."""
        if self.s.keep_fold_models:
            return
        done = {k: r for k, r in records.items() if r is not None}
        best = None
        if budget == max(self.budgets) and self.s.winner != "none" and done:
            best = min(done, key=lambda k: (-self.sign * done[k]["metrics"][self.s.metric], k))
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
                        recs[k] = self.run_fold(arm, budget, k, progress=progress)
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
            scores[arm][tag] = {m: [recs[k]["metrics"][m] for k in sorted(recs)] for m in self.metrics}
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
                    higher_is_better=higher_is_better(s.metric), test=s.test, test_train_ratio=ratio, arm=arm,
                    baseline=s.baseline, metric=s.metric)
        return StudyReport(
            name=s.name or self.out.name, output_dir=self.out, metric=s.metric, baseline=s.baseline, arms=arms,
            strategies={a.name: a.strategy for a in self.cfg.arms}, budgets=self.budgets, folds=len(self.folds),
            fold_note=self.fold_note, scores=scores, stats=stats, comparisons=comparisons,
            trained=self.trained, skipped=self.skipped, n_examples=len(self.labels),
            label_names=list(self.pool.label_names), task=self.cfg.base.task, fold_metrics=list(self.metrics),
            higher_is_better=higher_is_better(s.metric),
            searched={a.name: a.grid for a in self.cfg.arms},
            chosen={arm: {_budget_tag(b): [all_records[(arm, b)][k].get("chosen", {}) for k in sorted(all_records[(arm, b)])]
                          for b in self.budgets} for arm in arms},
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
        winner = max(report.arms, key=lambda a: (self.sign * report.stats[a][tag][self.s.metric]["mean"],
                                                 -report.arms.index(a)))
        recs = all_records[(winner, budget)]
        fold = min(recs, key=lambda k: (-self.sign * recs[k]["metrics"][self.s.metric], k))
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
                        f"{data.source} (labels shuffled)", _hash([data.fingerprint, "shuffled", seed]), data.skipped,
                        data.regression)


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
