"""Knowledge distillation: the student learns from the teacher's predictions, not only from the labels."""

from __future__ import annotations

import random

import pytest
from conftest import tiny_train_overrides

import hftl
from hftl.config import DataConfig
from hftl.data import LabelledData, load_labelled_data
from hftl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny ResNet that learned the digits (at 32 px; the students below see 24 px)."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{
        "data.max_train_samples": 400, "data.max_eval_samples": 100, "train.epochs": 6, "train.lr": 0.02}))
    assert result.metrics["accuracy"] > 0.8, result.history
    return out


def shuffled_labels_data(seed: int = 0) -> LabelledData:
    """Digits whose training labels are shuffled (nothing to learn from them); validation keeps the true ones."""
    data = load_labelled_data(DataConfig(id="builtin:digits", max_train_samples=400, max_eval_samples=100),
                              "image_classification", seed)
    labels = list(data.train["label"])
    random.Random(seed).shuffle(labels)
    train = data.train.remove_columns("label").add_column("label", labels)
    return LabelledData(train, data.validation, data.label_names, "digits, shuffled train labels", "shuffled-v1")


def student(out, **extra) -> list[str]:
    return tiny_train_overrides(out, **{"data.image_size": 24, "train.epochs": 6, "train.lr": 0.02,
                                        "strategy.name": "scratch", **extra})


def test_a_student_learns_the_task_from_the_teacher_alone(teacher, tmp_path):
    data = shuffled_labels_data()
    plain = hftl.train(None, student(tmp_path / "labels_only"), data=data)
    distilled = hftl.train(None, student(tmp_path / "distilled", **{
        "distill.teacher": teacher, "distill.alpha": 1.0, "distill.temperature": 2.0}), data=data)
    # Shuffled labels teach nothing (chance is 0.1); the teacher's predictions teach the digits.
    assert plain.metrics["accuracy"] < 0.3, plain.history
    assert distilled.metrics["accuracy"] > 0.6, distilled.history
    card = (distilled.output_dir / "README.md").read_text()
    assert f"Distilled from | `{teacher}`" in card and "knowledge-distillation" in card


def test_teacher_predictions_are_computed_once(teacher, tmp_path, cache_root, caplog):
    import logging

    runs = {"distill.teacher": teacher, "distill.alpha": 0.5, "train.epochs": 1}
    hftl.train(None, student(tmp_path / "first", **runs))
    with caplog.at_level(logging.INFO, logger="hftl.methods.feature_cache"):
        hftl.train(None, student(tmp_path / "second", **runs))
    assert any("Cache hit for the train logits" in r.message for r in caplog.records)


def test_distillation_checks(teacher, tmp_path):
    with pytest.raises(ConfigError, match="same classes"):
        hftl.train(None, student(tmp_path / "classes", **{"distill.teacher": teacher,
                                                           "data.classes": "[0, 1, 2]"}))
    with pytest.raises(ConfigError, match="alpha must be between 0 and 1"):
        hftl.train(None, student(tmp_path / "alpha", **{"distill.teacher": teacher, "distill.alpha": 1.5}))
    with pytest.raises(ConfigError, match="classification tasks, not causal_lm"):
        hftl.train(None, ["task=causal_lm", f"distill.teacher={teacher}"])
