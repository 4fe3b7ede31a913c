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
cross-validation; :mod:`hftl.study.search`): ``study.search`` (true: each strategy's grid; a grid such
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
budgets), ``model/`` (the winning arm trained again on the whole pool, ``study.winner: refit``; saved like
any run, its card carrying the study),
``records/`` (one small JSON per finished fold: a rerun skips those, so an interrupted study
resumes) and ``runs/`` (each fold's log and metrics).

The package, one part per module: :mod:`~hftl.study.config` (reading and validating the config),
:mod:`~hftl.study.folds` (folds and label budgets), :mod:`~hftl.study.search` (each arm's nested
search), :mod:`~hftl.study.stats` (tests, intervals, verdicts), :mod:`~hftl.study.runner` (training
the folds, resume, the winner) and :mod:`~hftl.study.report` (the report, card section and plots).
The names below are importable from ``hftl.study``.

Example:
    >>> report = run_study("recipes/configs/study/negative_transfer.yaml", ["study.folds=3"])  # doctest: +SKIP
    >>> print(report.summary())  # doctest: +SKIP
"""

from hftl.study.config import (
    PRETRAIN_PREFIX,
    STUDY_TASKS,
    Arm,
    PretrainSource,
    StudyConfig,
    StudySettings,
    load_study_config,
    study_config_from_dict,
)
from hftl.study.folds import budget_subset, make_folds, stratified_take
from hftl.study.report import StudyReport, add_study_to_card, card_section, render_markdown, write_plots
from hftl.study.runner import _Study as _Study  # not public: tests drive one study's steps
from hftl.study.runner import run_study
from hftl.study.stats import (
    TESTS,
    VERDICTS,
    Comparison,
    compare_paired,
    describe_scores,
    fold_metrics,
    higher_is_better,
    min_wilcoxon_folds,
)

__all__ = [
    "PRETRAIN_PREFIX", "STUDY_TASKS", "TESTS", "VERDICTS", "Arm", "Comparison", "PretrainSource", "StudyConfig",
    "StudyReport", "StudySettings", "add_study_to_card", "budget_subset", "card_section",
    "compare_paired", "describe_scores", "fold_metrics", "higher_is_better", "load_study_config", "make_folds",
    "min_wilcoxon_folds", "render_markdown", "run_study", "stratified_take", "study_config_from_dict",
    "write_plots",
]
