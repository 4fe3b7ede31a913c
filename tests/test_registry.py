"""The task registry: every task's facts in one entry, and every module that needs them agrees with it."""

import pytest

from hftl import registry
from hftl.card_metadata import HUB_PIPELINE_TAGS
from hftl.cards import HUB_METRICS, render_card
from hftl.config import load_config
from hftl.errors import ConfigError
from hftl.metrics import LOWER_IS_BETTER, compute_metrics, metrics_for_task
from hftl.registry import STRATEGIES, TASKS, TaskSpec, get_task, register_task
from hftl.study.stats import fold_metrics

# What the shipped metric modules report on a tiny input; perplexity comes from the loss, not a module.
SAMPLE = {"accuracy": ([0, 1, 1], [0, 1, 0]), "f1": ([0, 1, 1], [0, 1, 0]),
          "regression": ([0.1, 0.5, 0.8], [0.0, 0.6, 0.9]),
          "multilabel": ([[0.9, 0.2], [0.4, 0.7]], [[1.0, 0.0], [0.0, 1.0]])}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_validates_in_config_with_its_own_metric(name):
    spec = TASKS[name]
    cfg = load_config(None, [f"task={name}", f"strategy.name={spec.strategies[0]}"])
    assert cfg.train.metric == spec.metric  # the default train.metric becomes the task's headline metric
    for metric in spec.metrics:
        assert load_config(None, [f"task={name}", f"strategy.name={spec.strategies[0]}",
                                  f"train.metric={metric}"]).train.metric == metric


@pytest.mark.parametrize("name", list(TASKS))
def test_metrics_for_task_computes_what_the_registry_says(name):
    spec = TASKS[name]
    reported = set()
    for module in metrics_for_task(name):
        if module == "perplexity":
            reported.add("perplexity")
        else:
            reported.update(compute_metrics([module], *SAMPLE[module]))
    assert reported == set(spec.metrics) - {"loss"}
    assert fold_metrics(name) == (*spec.metrics, "loss")
    assert spec.higher_is_better == (spec.metric not in LOWER_IS_BETTER)


def test_simclr_reports_its_loss_only():
    assert get_task("simclr").metrics == ("loss",) and metrics_for_task("simclr") == ()


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_has_a_card_pipeline_tag(name):
    spec = TASKS[name]
    assert spec.pipeline_tag in HUB_PIPELINE_TAGS and spec.card_name
    metric = next((m for m in spec.metrics if m in HUB_METRICS), None)
    card = render_card({"task": name, "library": "transformers", "metrics": {metric: 0.5} if metric else {}})
    assert card.data.pipeline_tag == spec.pipeline_tag
    if metric:
        assert card.data.eval_results[0].task_name == spec.card_name


@pytest.mark.parametrize("name", list(TASKS))
def test_strategies_outside_a_task_are_refused_by_config(name):
    spec = TASKS[name]
    assert set(spec.strategies) <= set(STRATEGIES)
    for strategy in set(STRATEGIES) - set(spec.strategies):
        with pytest.raises(ConfigError, match=f"strategy {strategy} does not apply to {name}"):
            load_config(None, [f"task={name}", f"strategy.name={strategy}"])


def test_strategy_names_match_the_strategy_classes():
    from hftl.methods.strategies import STRATEGIES as CLASSES

    assert set(CLASSES) == set(STRATEGIES)


def test_a_registered_task_is_accepted_by_config_and_returned():
    spec = TaskSpec("toy_tagging", "text", metrics=("accuracy", "f1"), pipeline_tag="token-classification",
                    card_name="Toy Tagging", classification=True, strategies=("finetune", "scratch"),
                    implementation="hftl.tasks.text_classification:TextClassification")
    assert "toy_tagging" not in TASKS
    with pytest.raises(ConfigError, match="toy_tagging"):
        load_config(None, ["task=toy_tagging"])
    try:
        assert register_task(spec) is spec
        assert get_task("toy_tagging") is spec
        cfg = load_config(None, ["task=toy_tagging", "train.metric=f1"])
        assert cfg.task == "toy_tagging" and cfg.train.metric == "f1"
        assert metrics_for_task("toy_tagging") == ("accuracy", "f1")
        with pytest.raises(ConfigError, match="does not apply to toy_tagging"):
            load_config(None, ["task=toy_tagging", "strategy.name=lora"])
        with pytest.raises(ValueError, match="already registered"):
            register_task(spec)
    finally:
        TASKS.pop("toy_tagging", None)
    assert "toy_tagging" not in TASKS


def test_a_bad_spec_is_refused():
    with pytest.raises(ValueError, match="default metric"):
        register_task(TaskSpec("bad", "text", metrics=("accuracy",), metric="mse", pipeline_tag="fill-mask",
                               card_name="Bad"))
    with pytest.raises(ValueError, match="not known"):
        register_task(TaskSpec("bad", "text", metrics=("accuracy",), pipeline_tag="fill-mask", card_name="Bad",
                               strategies=("magic",)))
    assert "bad" not in TASKS


def test_a_spec_without_an_implementation_is_refused():
    with pytest.raises(ValueError, match="needs an implementation"):
        register_task(TaskSpec("bare", "text", metrics=("accuracy",), pipeline_tag="fill-mask", card_name="Bare"))
    assert "bare" not in TASKS


def test_an_unknown_task_lists_the_registered_ones():
    with pytest.raises(ConfigError) as e:
        get_task("image_clasification")
    assert str(e.value) == f"task 'image_clasification' is not known. Valid tasks: {', '.join(TASKS)}."
    with pytest.raises(ConfigError) as e:
        load_config(None, ["task=image_clasification"])
    assert all(name in str(e.value) for name in TASKS)


def test_the_registry_imports_nothing_heavy():
    import ast
    from pathlib import Path

    tree = ast.parse(Path(registry.__file__).read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert imported <= {"__future__", "dataclasses", "hftl.errors"}
