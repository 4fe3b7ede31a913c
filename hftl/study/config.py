"""A study's config: ``base:`` (an ordinary hftl run config) and ``study:`` (arms, folds, budgets, tests, search).

:func:`load_study_config` reads the YAML (plus dotted overrides) and :func:`study_config_from_dict`
validates it into a :class:`StudyConfig`: every arm's and every source's run config, and each
searched candidate's, is built here, so a bad key or value fails before anything trains.

Example:
    >>> cfg = study_config_from_dict({"base": {"model": {"id": "timm:test_resnet"}},
    ...                               "study": {"arms": ["scratch", "finetune"], "folds": 3}})
    >>> [a.name for a in cfg.arms]
    ['scratch', 'finetune']
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hftl.config import Config, _apply, _f, config_from_dict, parse_overrides
from hftl.errors import ConfigError
from hftl.registry import STRATEGIES, get_task, task_names
from hftl.study.search import SEARCH_HELP, candidates, nested, parse_search, read_value, resolve_grid
from hftl.study.stats import TESTS, fold_metrics, min_wilcoxon_folds

# The tasks a study supports: those learnt from labelled examples (classes or values). A snapshot of the registry
# at import, kept for hftl.study's public names; the checks below ask the registry itself.
STUDY_TASKS = task_names(labelled=True)
PRETRAIN_PREFIX = "pretrain:"
BACKENDS = ("local", "ray")  # where a study's workers run (hftl.study.parallel)


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
            "scratch; its own task too, e.g. audio_classification). Arms use one with model.id: pretrain:NAME, or "
            "copy its weights into their own architecture with model.init_from: pretrain:NAME (e.g. an audio "
            "transformer's into an image ViT, as hftl.convert converts them).")
    rank_first: int | None = _f(
        None, "Before training, score the source models of the transfer arms with hftl rank (LogME on the study "
              "pool's frozen features) and run only the arms of the k best sources, plus the baseline and any "
              "scratch arm; the report lists every source's scores and the arms left out. null: run every arm.")
    search: bool | dict = _f(True, SEARCH_HELP)
    search_validation: float = _f(
        0.2, "Share of each training fold held out (stratified, seeded, the same for every arm) to choose the "
             "searched values on; the candidates train on the rest, the chosen values then on the whole fold.")
    winner: str = _f(
        "refit", "Which model to save to OUTPUT_DIR/model: refit (the winning arm trained again on the whole "
                 "pool with the values its folds' searches scored best, as scikit-learn's refit; one more "
                 "training, on hftl train's own training/validation split: the model hftl train gives), best_fold (the winning arm's best fold: no extra training, but it saw only part of "
                 "the data) or none.")
    keep_fold_models: bool = _f(False, "Keep every fold's weights (otherwise only what the winner needs).")
    workers: int = _f(1, "Trainings to run at once: each fold of each arm is independent. Above 1, each worker is a "
                         "process with its own share of the CPU cores (or its own GPU); results equal a serial run's.")
    backend: str = _f("local", "Where workers run: local (a process pool on this machine) or ray (Ray tasks; a local "
                               "Ray instance, or the cluster at RAY_ADDRESS, whose nodes must see output_dir; "
                               "pip install 'hftl[ray]').")
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
    if "metric" not in raw_study and get_task(base.task).labelled:
        settings.metric = get_task(base.task).metric  # the task's headline metric: accuracy, or mse (regression)
    _validate_settings(settings, base)

    sources = [_parse_pretrain(e, i) for i, e in enumerate(settings.pretrain)]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ConfigError(f"study.pretrain names must be unique; got {names}.")
    for source in sources:
        overrides = _merge({"strategy": {"name": "scratch"}}, source.overrides) \
            if "name" not in source.overrides.get("strategy", {}) else source.overrides
        source.config = _run_config(raw_base, overrides, f"study.pretrain '{source.name}'")
        if (source.config.model.init_from or "").startswith(PRETRAIN_PREFIX):
            raise ConfigError(
                f"study.pretrain '{source.name}' sets model.init_from '{source.config.model.init_from}'; sources are "
                "made from their own model, not from one another. Start that source from an architecture or a "
                "pretrained model.")
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
    for arm in arms:
        if settings.metric.startswith("target_") and not arm.config.domain_adapt.target:
            raise ConfigError(f"Arm '{arm.name}' has no target domain, but study.metric '{settings.metric}' scores "
                              "each arm on it: keep base.domain_adapt.target in every arm.")
        if arm.name == settings.baseline and arm.config.domain_adapt.method == "oracle":
            raise ConfigError(f"study.baseline '{arm.name}' is an oracle (trained on target labels): it is the ceiling, "
                              "reported apart. Compare with source_only instead.")
    for cfg, what in [(a.config, f"Arm '{a.name}'") for a in arms] + [(s.config, f"pretrain '{s.name}'") for s in sources]:
        for key, ref in (("starts from", cfg.model.id), ("takes model.init_from", cfg.model.init_from or "")):
            if ref.startswith(PRETRAIN_PREFIX) and ref[len(PRETRAIN_PREFIX):] not in names:
                raise ConfigError(
                    f"{what} {key} '{ref}', but study.pretrain has no source of that name "
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
    if not get_task(base.task).labelled:
        raise ConfigError(
            f"A study compares classifiers or regressors on labelled examples; base.task '{base.task}' is not "
            f"supported. Use one of: {', '.join(task_names(labelled=True))}."
        )
    if s.metric not in fold_metrics(base.task, base):
        raise ConfigError(
            f"study.metric '{s.metric}' is not computed on the folds (task {base.task}). Valid metrics: "
            f"{', '.join(fold_metrics(base.task, base))}"
            + ("" if base.domain_adapt.target or not s.metric.startswith("target_") else
               " (target_* metrics need a target domain: set base.domain_adapt.target)") + "."
        )
    if s.rank_first is not None:
        if isinstance(s.rank_first, bool) or not isinstance(s.rank_first, int) or s.rank_first < 1:
            raise ConfigError(f"study.rank_first must be a number of sources, at least 1 (got {s.rank_first!r}); "
                              "null runs every arm.")
        if not get_task(base.task).classification:
            raise ConfigError(f"study.rank_first ranks sources for classification tasks; base.task '{base.task}' "
                              "is not one. Set study.rank_first: null.")
    if isinstance(s.workers, bool) or not isinstance(s.workers, int) or s.workers < 1:
        raise ConfigError(f"study.workers must be a whole number of workers, at least 1 (got {s.workers!r}).")
    if s.backend not in BACKENDS:
        raise ConfigError(f"study.backend '{s.backend}' is not known. Valid backends: {', '.join(BACKENDS)}.")
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
    if s.winner not in ("refit", "best_fold", "none"):
        raise ConfigError(f"study.winner must be refit, best_fold or none, not '{s.winner}'.")


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
