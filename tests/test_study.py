"""Cross-validated transfer studies: the statistics, the folds, the report, resume, and every bad input
(classification, and text_regression with its own metrics, folds and direction).

Models are tiny (timm test_resnet at 16 px, a 2-layer BERT 32 wide), data a few dozen examples,
one epoch: these tests check the machinery, not the science (the demo and the negative-transfer
recipe do that with real numbers). The machinery tests run without the per-arm search
(``study.search: false``) to stay fast; the search has its own tests at the end.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from hftl import api
from hftl.errors import ConfigError, DataError
from hftl.study import (
    StudySettings,
    budget_subset,
    compare_paired,
    higher_is_better,
    load_study_config,
    make_folds,
    run_study,
    study_config_from_dict,
)
from hftl.study.search import DEFAULT_GRIDS, choose, inner_split

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

REPO = Path(__file__).resolve().parents[1]
TOPICS = REPO / "hftl" / "demo_data" / "topics.jsonl"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
REAL_TRAIN = api.train


def tiny_study(out: Path, **study) -> dict:
    """A study of a tiny timm ResNet on three digit classes, one epoch per fold."""
    return {
        "base": {
            "model": {"id": "timm:test_resnet"},
            "data": {"id": "builtin:digits", "classes": ["0", "1", "2"], "image_size": 16, "augment": False},
            "train": {"epochs": 1, "global_batch_size": 8, "per_device_batch_size": 8, "lr": 0.01,
                      "progress": False},
        },
        # best_fold: these tests count trainings per fold; the refit (the default) has its own tests.
        "study": {"arms": ["scratch", "finetune"], "folds": 2, "max_examples": 12, "output_dir": str(out),
                  "search": False, "winner": "best_fold", **study},
    }


def tiny_bert(folder: Path, texts: list[str]) -> Path:
    """A 2-layer BERT 32 wide, randomly initialised, with a word-level tokenizer of ``texts``, saved to ``folder``."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"[a-z]+", t.lower())})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))
    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                                num_attention_heads=2, intermediate_size=64, max_position_embeddings=64))
    bert.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def topic_rows() -> list[dict]:
    return [json.loads(line) for line in TOPICS.read_text().splitlines()]


class CountTrainings:
    """Wraps hftl.api.train: counts calls, and can stop the study after N trainings (an interruption)."""

    def __init__(self, monkeypatch, stop_after: int | None = None):
        self.calls = 0
        self.stop_after = stop_after
        monkeypatch.setattr(api, "train", self)

    def __call__(self, *args, **kwargs):
        if self.stop_after is not None and self.calls >= self.stop_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        return REAL_TRAIN(*args, **kwargs)


# ------------------------------------------------------------------------------------------ statistics

def test_clearly_positive_transfer():
    arm = [0.90, 0.92, 0.91, 0.93, 0.90]
    base = [0.70, 0.71, 0.69, 0.72, 0.70]
    c = compare_paired(arm, base)
    assert c.verdict == "positive transfer"
    assert c.p_t == pytest.approx(stats.ttest_rel(arm, base).pvalue)
    d = np.subtract(arm, base)
    half = stats.t.ppf(0.975, 4) * d.std(ddof=1) / math.sqrt(5)
    assert (c.ci_low, c.ci_high) == pytest.approx((d.mean() - half, d.mean() + half))
    assert c.ci_low > 0 and c.mean_diff == pytest.approx(0.208)
    assert c.p_wilcoxon is None and "6 folds" in c.note  # 5 folds cannot reach p < 0.05 with Wilcoxon


def test_clearly_negative_transfer():
    c = compare_paired([0.55, 0.60, 0.52, 0.58, 0.57], [0.90, 0.93, 0.91, 0.95, 0.92])
    assert c.verdict == "negative transfer"
    assert c.ci_high < 0 and c.p_value < 0.001


def test_null_case_is_no_significant_difference():
    rng = np.random.default_rng(0)
    base = rng.uniform(0.7, 0.9, 8)
    arm = base + np.array([0.02, -0.03, 0.01, -0.01, 0.03, -0.02, 0.00, -0.01])
    c = compare_paired(arm, base)
    assert c.verdict == "no significant difference"
    assert c.ci_low < 0 < c.ci_high
    assert c.p_wilcoxon is not None and c.p_wilcoxon > 0.05  # 8 folds: Wilcoxon is computed
    same = compare_paired([0.8, 0.9, 0.7], [0.8, 0.9, 0.7])
    assert (same.verdict, same.p_value, same.ci_low, same.ci_high) == ("no significant difference", 1.0, 0.0, 0.0)


def test_lower_is_better_and_conservative_corrected_test():
    # The arm's loss is lower on every fold: that is positive transfer when the metric is a loss.
    c = compare_paired([0.30, 0.32, 0.29, 0.35, 0.31], [0.50, 0.49, 0.55, 0.52, 0.48], higher_is_better=False,
                       test_train_ratio=0.25)
    assert c.verdict == "positive transfer"
    assert c.p_corrected_t > c.p_t  # folds share training data: the corrected test is more cautious
    # The same difference on every fold (zero spread): the t-test is undefined, the exact sign test
    # answers (all n folds agree in sign with probability 2 * 0.5**n), never p = 0 from a division by zero.
    three = compare_paired([0.9, 0.8, 0.7], [0.8, 0.7, 0.6])
    assert three.verdict == "no significant difference" and three.p_value == pytest.approx(0.25)
    assert "sign test" in three.note
    six = compare_paired([0.9] * 6, [0.8] * 6)
    assert six.verdict == "positive transfer" and six.p_value == pytest.approx(1 / 32)


# ------------------------------------------------------------------------------------------ folds

def test_folds_are_stratified_seeded_and_cover_every_example():
    labels = [0] * 10 + [1] * 10 + [2] * 5
    folds, note = make_folds(labels, 5, seed=3)
    assert note == "" and len(folds) == 5
    held_out = sorted(i for _, va in folds for i in va)
    assert held_out == list(range(25))  # every example held out exactly once
    for train, val in folds:
        assert not set(train) & set(val)
        assert sorted(np.asarray(labels)[val].tolist()) == [0, 0, 1, 1, 2]  # every class in every fold
    assert make_folds(labels, 5, seed=3)[0] == folds
    assert make_folds(labels, 5, seed=4)[0] != folds


def test_fewer_examples_than_folds_is_said_aloud_or_an_error():
    labels = [0] * 10 + [1] * 3
    folds, note = make_folds(labels, 5, seed=0, label_names=["cat", "dog"])
    assert len(folds) == 3 and "class 'dog' has only 3 examples" in note and "3 folds instead of 5" in note
    with pytest.raises(DataError, match="Class 'dog' has only 3 example.*study.folds=5"):
        make_folds(labels, 5, seed=0, label_names=["cat", "dog"], allow_fewer=False)
    with pytest.raises(DataError, match="Class 'dog' has only 1 example"):
        make_folds([0] * 10 + [1], 5, seed=0, label_names=["cat", "dog"])


def test_label_budgets_are_stratified_and_nested():
    labels = np.array([0] * 20 + [1] * 20)
    train = list(range(40))
    small, large = budget_subset(train, labels, 0.1, seed=1), budget_subset(train, labels, 0.5, seed=1)
    assert np.bincount(labels[small]).tolist() == [2, 2]
    assert np.bincount(labels[large]).tolist() == [10, 10]
    assert set(small) <= set(large)
    assert budget_subset(train, labels, 0.01, seed=1) and len(budget_subset(train, labels, 0.01, seed=1)) == 2


# ------------------------------------------------------------------------------------------ bad input

@pytest.mark.parametrize("study, message", [
    ({"arms": ["scratch", "fine_tune"]}, r"'fine_tune' is not a known arm.*scratch"),
    ({"arms": ["finetune"]}, r"only \['finetune'\].*needs the baseline"),
    ({"arms": ["linear_probe", "finetune"]}, r"baseline 'scratch' is not among study.arms"),
    ({"arms": ["scratch", "finetune", "finetune"]}, r"'finetune' appears twice"),
    ({"metric": "auc"}, r"study.metric 'auc' is not computed.*accuracy, f1, loss"),
    ({"folds": 1}, r"study.folds must be at least 2"),
    ({"test": "wilcoxon"}, r"wilcoxon cannot reach p < 0.05 with 2 folds"),
    ({"label_budgets": [0.5, 1.5]}, r"label_budgets holds 1.5"),
    ({"folds_count": 3}, r"Unknown config key 'study.folds_count'.*study.folds"),
    ({"arms": ["scratch", {"name": "x", "strategy": "probe"}]}, r"Arm 'x' has strategy 'probe'"),
    ({"arms": ["scratch", {"name": "x", "strategy": "finetune", "cfg": {}}]}, r"Unknown key 'cfg' in study.arms\[1\]"),
    ({"arms": ["scratch", {"name": "x", "strategy": "finetune", "config": {"train.epoch": 2}}]},
     r"Arm 'x': Unknown config key 'train.epoch'.*train.epochs"),
    ({"arms": ["scratch", {"name": "x", "strategy": "linear_probe", "config": {"model.id": "pretrain:src"}}]},
     r"starts from 'pretrain:src'.*no source of that name"),
    ({"search": "yes"}, r"study.search' expects bool \| dict"),
    ({"search": {"lr": []}}, r"study.search.lr must be a non-empty list"),
    ({"search": {"lr": 0.1}}, r"study.search.lr must be a non-empty list"),
    ({"search": {"lr": [0.1, 0.1]}}, r"lists a value twice"),
    ({"search": {"epochz": [1, 2]}}, r"'epochz' is not a config key.*train.lr"),
    ({"search": {"train.lrr": [0.1, 0.2]}}, r"Arm 'scratch' search.*Unknown config key 'train.lrr'"),
    ({"search": {"lr": ["fast", 0.1]}}, r"Arm 'scratch' search.*train.lr' expects float"),
    ({"search_validation": 1.5}, r"study.search_validation must be a share in \(0, 1\)"),
    ({"rank_first": 0}, r"study.rank_first must be a number of sources, at least 1"),
    ({"arms": ["scratch", {"name": "x", "strategy": "finetune", "search": [0.1]}]}, r"Arm 'x' search must be true"),
])
def test_bad_study_configs_are_clear_errors(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message):
        study_config_from_dict(tiny_study(tmp_path, **study))


def test_bad_top_level_and_task(tmp_path):
    with pytest.raises(ConfigError, match=r"Unknown study config key 'train'.*Did you mean 'base.train'"):
        study_config_from_dict({**tiny_study(tmp_path), "train": {"epochs": 1}})
    bad = tiny_study(tmp_path)
    bad["base"]["task"] = "causal_lm"
    with pytest.raises(ConfigError, match="base.task 'causal_lm' is not supported"):
        study_config_from_dict(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_study_config(tmp_path / "missing.yaml")


def test_a_class_with_one_example_stops_the_study(tmp_path):
    from PIL import Image

    for name, count in (("cat", 4), ("dog", 1)):
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(count):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(tmp_path / "imgs" / name / f"{i}.png")
    cfg = tiny_study(tmp_path / "out")
    cfg["base"]["data"] = {"id": str(tmp_path / "imgs"), "image_size": 16, "augment": False}
    cfg["study"]["max_examples"] = None
    with pytest.raises(DataError, match="Class 'dog' has only 1 example"):
        run_study(cfg)


# ------------------------------------------------------------------------------------------ end to end

@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    """A whole tiny study: a source pretrained inside it, three arms, two label budgets, two folds."""
    out = tmp_path_factory.mktemp("study") / "digits"
    cfg = tiny_study(out, arms=["scratch", "linear_probe", "finetune"], label_budgets=[0.5, 1.0],
                     pretrain=[{"name": "src", "config": {"model": {"id": "timm:test_resnet"},
                                                          "data": {"classes": ["3", "4", "5"], "max_train_samples": 30}}}])
    cfg["base"]["model"]["id"] = "pretrain:src"
    return run_study(cfg), out


def test_study_writes_json_report_plots_and_model(finished_study):
    report, out = finished_study
    data = json.loads((out / "study.json").read_text())
    assert len(data["runs"]) == 3 * 2 * 2  # arms x budgets x folds, each with its own numbers
    assert {(r["arm"], r["budget"], r["fold"]) for r in data["runs"]} == {
        (a, b, k) for a in ("scratch", "linear_probe", "finetune") for b in (0.5, 1.0) for k in (0, 1)}
    assert all(0 <= r["metrics"]["accuracy"] <= 1 and r["num_validation"] == 6 for r in data["runs"])
    assert data["n_examples"] == 12  # study.max_examples, stratified: 4 of each class
    assert data["comparisons"]["finetune"]["b1"]["verdict"] in (
        "positive transfer", "no significant difference", "negative transfer")
    assert data["config"]["study"]["folds"] == 2 and data["sources"]["src"]["classes"] == ["3", "4", "5"]
    assert report.scores["finetune"]["b0.5"]["accuracy"] == [
        r["metrics"]["accuracy"] for r in sorted(data["runs"], key=lambda r: r["fold"])
        if r["arm"] == "finetune" and r["budget"] == 0.5]

    md = (out / "report.md").read_text()
    assert "| linear_probe | linear_probe |" in md and "Δ accuracy vs scratch" in md
    assert "(unless an arm overrides it): 1 epoch, global batch 8" in md
    assert re.search(r"(positive transfer|no significant difference|negative transfer)", md)
    assert "## Sample efficiency" in md and "## Every fold" in md and "![metric_by_arm](metric_by_arm.png)" in md
    for name in ("metric_by_arm.png", "sample_efficiency.png"):
        png = (out / name).read_bytes()
        assert png[:8] == PNG_MAGIC and len(png) > 5000

    summary = report.summary()
    assert "finetune" in summary and str(out / "report.md") in summary and "By label budget" in summary


def test_the_report_says_what_an_unset_epoch_budget_means():
    from hftl.config import TrainConfig
    from hftl.study.report import _epochs

    assert _epochs(TrainConfig()) == "enough epochs for 400 optimizer steps and at least 3 (train.epochs null)"
    assert _epochs(TrainConfig(epochs=5)) == "5 epochs"


def test_winning_model_is_saved_with_the_study_in_its_card(finished_study):
    from huggingface_hub import ModelCard

    from hftl.model import load

    report, out = finished_study
    model_dir = out / "model"
    assert report.model_dir == model_dir and report.winner in report.arms
    card = ModelCard.load(model_dir / "README.md")
    assert "## Transfer study" in card.text and report.markdown_table() in card.text
    assert f"fold {report.winner_fold} of the best arm, `{report.winner}`" in card.text
    assert card.text.index("## Transfer study") < card.text.index("## How to use")
    model = load(model_dir)
    assert model.label_names == ["0", "1", "2"]
    # Only the saved model keeps weights: the other folds keep their small logs.
    weights = sorted(p.parent.name for p in (out / "runs").rglob("*.safetensors"))
    assert weights == [f"fold{report.winner_fold}"]


def test_rank_first_runs_only_the_arms_of_the_best_ranked_sources(tmp_path):
    source = {"model": {"id": "timm:test_resnet"}, "data": {"max_train_samples": 90}, "train": {"epochs": 6}}
    cfg = tiny_study(tmp_path / "s", max_examples=30, rank_first=1,
                     pretrain=[{"name": "good", "config": source},
                               {"name": "shuffled", "config": source, "shuffle_labels": True}],
                     arms=["scratch",
                           {"name": "from_good", "strategy": "finetune", "config": {"model.id": "pretrain:good"}},
                           {"name": "probe_good", "strategy": "linear_probe", "config": {"model.id": "pretrain:good"}},
                           {"name": "from_shuffled", "strategy": "finetune",
                            "config": {"model.id": "pretrain:shuffled"}}])
    report = run_study(cfg)
    data = json.loads((tmp_path / "s" / "study.json").read_text())
    ranking = data["ranking"]
    assert [r["logme"] for r in ranking["sources"]] == sorted((r["logme"] for r in ranking["sources"]), reverse=True)
    assert ranking["kept"] == [ranking["sources"][0]["candidate"]] and ranking["kept"][0].endswith("good")
    assert ranking["dropped_arms"] == ["from_shuffled"]  # the labels-shuffled source scores lower and is not run
    assert report.arms == ["scratch", "from_good", "probe_good"]
    assert {r["arm"] for r in data["runs"]} == {"scratch", "from_good", "probe_good"}
    assert not list((tmp_path / "s" / "records").glob("from_shuffled__*"))
    md = (tmp_path / "s" / "report.md").read_text()
    assert "study.rank_first: 1" in md and "Arms not run: from_shuffled." in md


def test_resume_skips_finished_folds(tmp_path, monkeypatch):
    cfg = tiny_study(tmp_path / "s")
    counter = CountTrainings(monkeypatch, stop_after=3)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)  # interrupted during the 4th of 4 trainings (2 arms x 2 folds)
    assert counter.calls == 3
    assert len(list((tmp_path / "s" / "records").glob("*.json"))) == 3

    counter = CountTrainings(monkeypatch)
    report = run_study(cfg)
    assert counter.calls == 1  # only the fold that had not finished
    assert (report.trained, report.skipped) == (1, 3)

    counter = CountTrainings(monkeypatch)
    again = run_study(cfg)
    assert counter.calls == 0 and again.skipped == 4
    assert again.scores == report.scores

    counter = CountTrainings(monkeypatch)
    run_study(cfg, ["base.train.lr=0.02"])  # another training budget: the records no longer apply
    assert counter.calls == 4


def test_too_few_examples_for_the_folds_uses_fewer_folds_and_says_so(tmp_path):
    report = run_study(tiny_study(tmp_path / "s", folds=3, max_examples=6))  # 2 examples per class
    assert report.folds == 2
    assert "Used 2 folds instead of 3" in report.fold_note
    assert "Used 2 folds instead of 3" in (tmp_path / "s" / "report.md").read_text()
    assert "Used 2 folds instead of 3" in report.summary()


def test_text_study_runs_through_the_same_machinery(tmp_path, monkeypatch):
    from hftl.backbones.hf_text import HFTextModel

    calls = []
    tokenize = HFTextModel.tokenize
    monkeypatch.setattr(HFTextModel, "tokenize", lambda self, texts, pairs=None: calls.append(len(texts))
                        or tokenize(self, texts, pairs))
    bert = tiny_bert(tmp_path / "bert", [r["text"] for r in topic_rows()])
    cfg = {
        "base": {"task": "text_classification", "model": {"id": str(bert)},
                 "data": {"id": str(TOPICS), "max_length": 24},
                 "train": {"epochs": 1, "global_batch_size": 8, "per_device_batch_size": 8, "lr": 0.001,
                           "progress": False}},
        "study": {"arms": ["scratch", "linear_probe"], "folds": 2, "max_examples": 16, "search": False,
                  "output_dir": str(tmp_path / "out")},
    }
    report = run_study(cfg)
    assert report.label_names == ["food", "sport", "technology", "weather"]
    assert len(report.scores["linear_probe"]["b1"]["accuracy"]) == 2
    assert (tmp_path / "out" / "model" / "README.md").is_file()
    assert [n for n in calls if n] == [16]  # the pool, tokenized once for 2 arms x 2 folds x (train, held-out)


def test_shipped_study_configs_are_valid():
    """Every study YAML in the repo and the package loads against the code that reads it."""
    paths = sorted((REPO / "recipes" / "configs" / "study").glob("*.yaml")) + \
        sorted((REPO / "hftl" / "demo_data").glob("*.yaml"))
    assert len(paths) >= 3
    for path in paths:
        cfg = load_study_config(path)
        assert cfg.study.baseline in [a.name for a in cfg.arms] and len(cfg.arms) >= 2


# ------------------------------------------------------------------------------------------ regression

TOPIC_SCORE = {"sport": 0.0, "food": 1.0, "weather": 2.0, "technology": 3.0}


def regression_study(out: Path, model: Path, data: Path, **study) -> dict:
    """A text_regression study: a tiny BERT predicts a real-valued score of each sentence, one epoch per fold."""
    return {
        "base": {"task": "text_regression", "model": {"id": str(model)},
                 "data": {"id": str(data), "label_column": "score", "max_length": 24},
                 "train": {"epochs": 1, "global_batch_size": 8, "per_device_batch_size": 8, "lr": 0.001,
                           "progress": False}},
        "study": {"arms": ["scratch", "finetune"], "folds": 2, "max_examples": 24, "output_dir": str(out),
                  "search": False, **study},
    }


def test_regression_folds_are_plain_seeded_kfold():
    from sklearn.model_selection import KFold

    targets = np.linspace(0.0, 1.0, 9)  # every value once: stratified folds could not split these
    folds, note = make_folds(targets, 3, seed=0, regression=True)
    assert note == "" and len(folds) == 3
    expected = [(sorted(tr.tolist()), sorted(va.tolist()))
                for tr, va in KFold(3, shuffle=True, random_state=0).split(targets)]
    assert folds == expected
    assert sorted(i for _, va in folds for i in va) == list(range(9))  # every example held out exactly once
    assert make_folds(targets, 3, seed=1, regression=True)[0] != folds
    with pytest.raises(DataError, match="5 examples are too few for study.folds=3"):
        make_folds(targets[:5], 3, seed=0, regression=True)


def test_regression_verdicts_follow_the_metrics_direction():
    # Known numbers: the arm's MSE is lower on every fold, its Pearson r higher. Both are positive transfer.
    arm_mse, base_mse = [0.10, 0.12, 0.11, 0.13, 0.10], [0.30, 0.31, 0.29, 0.33, 0.30]
    c = compare_paired(arm_mse, base_mse, higher_is_better=higher_is_better("mse"), metric="mse")
    assert c.verdict == "positive transfer" and c.mean_diff == pytest.approx(-0.194) and c.ci_high < 0
    c = compare_paired([0.8, 0.7, 0.9, 0.85, 0.75], [0.5, 0.45, 0.6, 0.5, 0.4],
                       higher_is_better=higher_is_better("pearson"), metric="pearson")
    assert c.verdict == "positive transfer" and c.mean_diff == pytest.approx(0.31)
    # A higher MSE is worse: the same numbers the other way round are negative transfer.
    assert compare_paired(base_mse, arm_mse, higher_is_better=higher_is_better("mse")).verdict == "negative transfer"
    assert [higher_is_better(m) for m in ("mse", "mae", "loss", "pearson", "accuracy")] == [
        False, False, False, True, True]


def test_regression_study_metrics(tmp_path):
    data = tmp_path / "d.csv"
    cfg = regression_study(tmp_path / "out", tmp_path / "bert", data)
    assert study_config_from_dict(cfg).study.metric == "mse"  # the task's headline metric, not accuracy
    for metric in ("mae", "pearson", "loss"):
        assert study_config_from_dict(regression_study(tmp_path, tmp_path, data, metric=metric)).study.metric == metric
    with pytest.raises(ConfigError, match=r"study.metric 'accuracy' is not computed.*mse, mae, pearson, loss"):
        study_config_from_dict(regression_study(tmp_path, tmp_path, data, metric="accuracy"))


@pytest.fixture(scope="module")
def finished_regression_study(tmp_path_factory):
    """Two arms, two label budgets, two folds on 24 sentences scored by topic (and a little by length)."""
    import pandas as pd

    folder = tmp_path_factory.mktemp("regression")
    rows = topic_rows()
    data = folder / "scores.csv"
    pd.DataFrame({"text": [r["text"] for r in rows],
                  "score": [TOPIC_SCORE[r["label"]] + len(r["text"].split()) / 100 for r in rows]}).to_csv(data,
                                                                                                           index=False)
    bert = tiny_bert(folder / "bert", [r["text"] for r in rows])
    out = folder / "study"
    return run_study(regression_study(out, bert, data, label_budgets=[0.5, 1.0])), out


def test_regression_study_end_to_end(finished_regression_study):
    report, out = finished_regression_study
    data = json.loads((out / "study.json").read_text())
    runs = data["runs"]
    assert len(runs) == 2 * 2 * 2  # arms x budgets x folds
    for r in runs:
        assert set(r["metrics"]) >= {"mse", "mae", "pearson", "loss"} and "accuracy" not in r["metrics"]
        assert r["metrics"]["mse"] >= 0 and -1 <= r["metrics"]["pearson"] <= 1
        assert r["num_validation"] == 12 and r["num_train"] == (12 if r["budget"] == 1.0 else 6)  # KFold; ceil(0.5 n)
    assert data["n_examples"] == 24 and data["task"] == "text_regression" and data["metric"] == "mse"
    assert data["higher_is_better"] is False and data["label_names"] == ["score"]
    assert sorted(report.scores["finetune"]["b1"]["pearson"]) == sorted(
        r["metrics"]["pearson"] for r in runs if r["arm"] == "finetune" and r["budget"] == 1.0)

    # Lower MSE is better: the winner is the arm with the lowest mean, refitted on all 24 examples (the default).
    means = {a: report.stats[a]["b1"]["mse"]["mean"] for a in report.arms}
    assert report.winner == min(means, key=means.get)
    assert report.refit["num_train"] + report.refit["num_validation"] == 24 and "mse" in report.refit["metrics"]
    c = report.comparisons["finetune"]["b1"]
    assert c.metric == "mse" and c.mean_diff == pytest.approx(means["finetune"] - means["scratch"])
    assert c.verdict == "no significant difference" or (c.verdict == "positive transfer") == (c.mean_diff < 0)

    md = (out / "report.md").read_text()
    assert "| arm | strategy | MSE | MAE | Pearson r | loss | Δ mse vs scratch" in md
    assert "| MSE | MAE | Pearson r | loss | seconds |" in md  # every fold's numbers
    assert "accuracy" not in md and "F1" not in md and "classes" not in md
    assert "Lower mse is better." in md and "lowest mean mse" in md
    assert "scikit-learn KFold" in md and "target `score`" in md and "(6 examples)" in md
    for name in ("metric_by_arm.png", "sample_efficiency.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    summary = report.summary()
    assert "(target 'score')" in summary and "examples per fold" in summary and "mse (lower is better)" in summary
    assert "| MSE | MAE | Pearson r | loss |" in (out / "model" / "README.md").read_text()


# ------------------------------------------------------------------------------------------ per-arm search

GRID = [0.003, 0.03]


def example_ids(ds) -> list[str]:
    """One id per example from its content (pixels and label), so the test sees what training was given."""
    import hashlib

    return [hashlib.sha1(np.asarray(ex["image"]).tobytes() + bytes([ex["label"]])).hexdigest() for ex in ds]


class RecordTrainings:
    """Wraps hftl.api.train: what every training was given (its examples) and what it returned."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        monkeypatch.setattr(api, "train", self)

    def __call__(self, cfg, *args, data=None, **kwargs):
        result = REAL_TRAIN(cfg, *args, data=data, **kwargs)
        self.calls.append({"dir": Path(cfg.output_dir), "lr": cfg.train.lr, "train": example_ids(data.train),
                           "validation": example_ids(data.validation), "metrics": dict(result.metrics)})
        return result


@pytest.fixture(scope="module")
def searched_study(tmp_path_factory):
    """Two arms, two folds, each arm choosing its lr from two candidates on an inner split; every training recorded."""
    mp = pytest.MonkeyPatch()
    recorder = RecordTrainings(mp)
    out = tmp_path_factory.mktemp("searched") / "s"
    try:
        report = run_study(tiny_study(out, search={"lr": GRID}, winner="refit"))
    finally:
        mp.undo()
    return report, out, recorder.calls


def test_refit_trains_the_winner_on_the_whole_pool_with_its_best_mean_inner_choice(searched_study):
    from huggingface_hub import ModelCard

    from hftl.model import load

    report, out, calls = searched_study
    data = json.loads((out / "study.json").read_text())
    refits = [c for c in calls if "refit" in c["dir"].parts]
    assert len(refits) == 1 and refits[0]["dir"].name == report.winner  # one more training, of the winner
    refit = refits[0]
    # Every example of the pool, each once: the refit's training split plus the validation split it held out.
    pool = {e for c in calls if "runs" in c["dir"].parts for e in c["train"] + c["validation"]}
    assert set(refit["train"]) | set(refit["validation"]) == pool and len(pool) == data["n_examples"] == 12
    assert not set(refit["train"]) & set(refit["validation"])
    assert data["refit"]["num_train"] + data["refit"]["num_validation"] == 12
    # Its lr: the candidate with the best mean inner-validation accuracy over the folds (never a held-out fold).
    folds = [r["search"]["candidates"] for r in data["runs"] if r["arm"] == report.winner]
    means = [{m: np.mean([f[i]["metrics"][m] for f in folds]) for m in ("accuracy", "loss")} for i in range(len(GRID))]
    best = choose(means, "accuracy", True)
    assert report.refit["values"] == {"train.lr": GRID[best]} and refit["lr"] == GRID[best]
    card = ModelCard.load(out / "model" / "README.md").text
    assert f"the best arm, `{report.winner}`, trained again on the whole pool" in card
    assert f"lr {GRID[best]:g}, the values its folds' inner searches scored best" in card
    assert "## Transfer study" in card and report.winner_fold is None
    assert load(out / "model").label_names == ["0", "1", "2"]
    assert not list((out / "runs").rglob("*.safetensors"))  # no fold's weights are needed any more


def test_a_refit_resumes_from_its_record(tmp_path, monkeypatch):
    cfg = tiny_study(tmp_path / "s", winner="refit")
    counter = CountTrainings(monkeypatch)
    first = run_study(cfg)
    assert counter.calls == 2 * 2 + 1 and first.trained == 5  # arms x folds, then the winner on the whole pool
    counter = CountTrainings(monkeypatch)
    again = run_study(cfg)
    assert counter.calls == 0 and again.refit == first.refit and (again.trained, again.skipped) == (0, 5)


@pytest.mark.parametrize("arms", [["scratch", "linear_probe"], ["scratch", "finetune"]])
def test_the_refitted_winner_is_the_model_hftl_train_gives(tmp_path, monkeypatch, arms):
    """At the whole budget the refit trains on hftl train's own split, in its order: the study's saved model is
    the one `hftl train` gives with the winner's strategy (a solved probe chooses the same L2 strength again)."""
    from safetensors.torch import load_file

    from hftl.data import load_labelled_data

    recorder = RecordTrainings(monkeypatch)
    cfg = tiny_study(tmp_path / "s", arms=arms, winner="refit", max_examples=None)
    cfg["base"]["data"].update(max_train_samples=24, max_eval_samples=6)  # hftl train's split: 24 + 6 digits
    report = run_study(cfg)
    refit = next(c for c in recorder.calls if "refit" in c["dir"].parts)
    base = {**cfg["base"], "strategy": {"name": report.winner}, "output_dir": str(tmp_path / "plain")}
    plain = REAL_TRAIN(base)
    own = load_labelled_data(api.as_config(base).data, "image_classification", 42)
    assert (refit["train"], refit["validation"]) == (example_ids(own.train), example_ids(own.validation))
    ours, theirs = (load_file(next(Path(d).glob("*.safetensors"))) for d in (report.model_dir, plain.output_dir))
    assert ours.keys() == theirs.keys()
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    def probe(folder):  # what the solver chose (every strength's scores, the L2 it took twice), not its seconds
        record = json.loads((Path(folder) / "metrics.json").read_text()).get("probe") or {}
        return {k: v for k, v in record.items() if k != "seconds"}

    assert probe(report.model_dir) == probe(plain.output_dir)
    assert ("refit_l2" in probe(plain.output_dir)) == (report.winner == "linear_probe")


def test_search_never_reads_the_outer_test_fold(searched_study):
    report, out, calls = searched_study
    runs = {(r["arm"], r["fold"]): r for r in json.loads((out / "study.json").read_text())["runs"]}
    final = {(c["dir"].parts[-3], int(c["dir"].name[4:])): c for c in calls if "runs" in c["dir"].parts}
    inner = [c for c in calls if "search" in c["dir"].parts]
    assert len(final) == 2 * 2 and len(inner) == 2 * 2 * len(GRID)  # arms x folds (x candidates)
    # Pool index -> example, from what each outer training was given (its train and held-out examples, in order).
    pool: dict[int, str] = {}
    for key, c in final.items():
        pool.update(zip(runs[key]["train_indices"], c["train"]))
        pool.update(zip(runs[key]["test_indices"], c["validation"]))
    assert len(pool) == 12 and len(set(pool.values())) == 12  # the 12 examples are told apart by content
    for c in inner:
        arm, fold, cand = c["dir"].parts[-4], int(c["dir"].parts[-2][4:]), int(c["dir"].name[1:])
        outer = final[(arm, fold)]
        record = runs[(arm, fold)]
        search = record["search"]
        # What the inner training was given: only the outer fold's training examples, split in two.
        assert not (set(c["train"]) | set(c["validation"])) & set(outer["validation"])
        assert set(c["train"]) | set(c["validation"]) <= set(outer["train"])
        assert c["validation"] and not set(c["train"]) & set(c["validation"])
        # The record's indices are the examples it was given, and none is a held-out index.
        assert c["train"] == [pool[i] for i in search["inner_train"]]
        assert c["validation"] == [pool[i] for i in search["inner_validation"]]
        assert not (set(search["inner_train"]) | set(search["inner_validation"])) & set(record["test_indices"])
        # The selection used this inner run's own scores (on the inner split), nothing else.
        assert c["lr"] == GRID[cand]
        assert search["candidates"][cand]["values"] == {"train.lr": GRID[cand]}
        assert search["candidates"][cand]["metrics"] == pytest.approx(c["metrics"])
    for (arm, fold), record in runs.items():
        search = record["search"]
        best = choose([c["metrics"] for c in search["candidates"]], "accuracy", True)
        assert record["chosen"] == search["candidates"][best]["values"]
        assert final[(arm, fold)]["lr"] == record["chosen"]["train.lr"]  # the outer run trained the choice
        # Every arm chose on the same inner split of a fold (paired), whatever it is.
        assert search["inner_train"] == runs[("scratch", fold)]["search"]["inner_train"]


def test_chosen_lr_is_recorded_per_arm_and_fold(searched_study):
    from huggingface_hub import ModelCard

    report, out, _ = searched_study
    data = json.loads((out / "study.json").read_text())
    for arm in ("scratch", "finetune"):
        chosen = data["search"][arm]["chosen"]["b1"]
        assert data["search"][arm]["grid"] == {"train.lr": GRID}
        assert len(chosen) == 2 and all(c["train.lr"] in GRID for c in chosen)
        assert chosen == [r["chosen"] for r in sorted(data["runs"], key=lambda r: r["fold"]) if r["arm"] == arm]
        assert report.chosen[arm]["b1"] == chosen
    md = (out / "report.md").read_text()
    assert "chosen (inner split, per fold) |" in md and "never used to choose (nested cross-validation)" in md
    assert "| scratch | scratch | `timm:test_resnet` (architecture only, random init) | 1 | searched | lr {0.003, 0.03} |" in md
    assert re.search(r"\*\*lr 0\.0?3: [01]\.\d{3}\*\*", md)  # the chosen candidate, with its inner score
    cell = report.chosen_cell("finetune")
    assert cell.startswith("lr ") and cell in report.markdown_table()
    assert report.markdown_table() in ModelCard.load(out / "model" / "README.md").text  # the winner's card shows it
    assert "chosen on each training fold's inner split: scratch lr" in report.summary()


def test_a_search_with_one_candidate_equals_the_unsearched_run(tmp_path, monkeypatch):
    counter = CountTrainings(monkeypatch)
    one = run_study(tiny_study(tmp_path / "one", search={"lr": [0.02]}))
    assert counter.calls == 4  # no inner training: with one candidate there is nothing to choose
    plain = run_study(tiny_study(tmp_path / "plain"), ["base.train.lr=0.02"])
    assert one.scores == plain.scores
    keys = [{r["fold"]: r["key"] for r in json.loads((tmp_path / d / "study.json").read_text())["runs"]}
            for d in ("one", "plain")]
    assert keys[0] == keys[1]  # the same training, so the same record key
    assert one.scores != run_study(tiny_study(tmp_path / "other")).scores  # base lr 0.01: the value mattered


def test_resume_of_a_killed_search(tmp_path, monkeypatch):
    cfg = tiny_study(tmp_path / "s", search={"lr": GRID})
    # Per arm and fold: 2 candidates, then the chosen one on the whole fold: 2 x 2 x 3 = 12 trainings.
    counter = CountTrainings(monkeypatch, stop_after=4)
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)  # scratch fold 0 done (3), fold 1's first candidate done, killed in its second
    assert counter.calls == 4

    counter = CountTrainings(monkeypatch)
    report = run_study(cfg)
    assert counter.calls == 8 and (report.trained, report.skipped) == (8, 4)

    counter = CountTrainings(monkeypatch)
    again = run_study(cfg)
    assert counter.calls == 0 and again.scores == report.scores and again.chosen == report.chosen

    counter = CountTrainings(monkeypatch)
    run_study(cfg, ["study.search.lr=[0.003, 0.01]"])  # lr 0.003's inner runs still apply; 0.01's and the finals not
    assert counter.calls == 2 * 2 + 2 * 2


def test_default_grids_and_a_strategy_that_declares_its_own(tmp_path, monkeypatch):
    from hftl.methods.strategies import LinearProbe

    cfg = study_config_from_dict(tiny_study(tmp_path, arms=["scratch", "linear_probe", "finetune"], search=True))
    grids = {a.name: a.grid for a in cfg.arms}
    assert grids == {"linear_probe": {}, **{name: DEFAULT_GRIDS[name] for name in ("scratch", "finetune")}}
    assert [v for v, _ in cfg.arms[0].candidates] == [{"train.lr": lr} for lr in DEFAULT_GRIDS["scratch"]["train.lr"]]
    assert StudySettings().search is True  # searched unless turned off
    # A strategy that chooses its own regularisation (the solved probe) declares that the study need not search it.
    assert LinearProbe.study_search == {}
    cfg = study_config_from_dict(tiny_study(tmp_path, arms=["scratch", "linear_probe"], search=True))
    assert cfg.arms[1].grid == {} and len(cfg.arms[1].candidates) == 1
    # An arm's own search wins over the study's; YAML's "1e-4" (a string in YAML 1.1) becomes a float.
    arm = {"name": "ft", "strategy": "finetune", "search": {"train.lr": ["1e-4", "1e-3"]}}
    cfg = study_config_from_dict(tiny_study(tmp_path, arms=["scratch", arm]))
    assert cfg.arms[0].grid == {} and [v for v, _ in cfg.arms[1].candidates] == [{"train.lr": 1e-4}, {"train.lr": 1e-3}]


def test_inner_split_is_stratified_seeded_and_inside_the_training_fold():
    labels = np.array([0] * 10 + [1] * 10 + [2] * 4)
    train = [i for i in range(24) if i % 5]  # a training fold: every fifth example is held out elsewhere
    inner_tr, inner_va = inner_split(train, labels, 0.25, seed=[0, 1])
    assert sorted(inner_tr + inner_va) == train and not set(inner_tr) & set(inner_va)
    assert np.bincount(labels[inner_va]).tolist() == [2, 2, 1]  # round(0.25 * count), at least one per class
    assert inner_split(train, labels, 0.25, seed=[0, 1]) == (inner_tr, inner_va)
    assert inner_split(train, labels, 0.25, seed=[0, 2]) != (inner_tr, inner_va)
    with pytest.raises(DataError, match="too small to hold out an inner validation split.*study.search=false"):
        inner_split([0, 10, 20], labels, 0.2, seed=0)  # one example per class: nothing can be held out


def test_a_fold_too_small_to_search_trains_at_the_configured_values(tmp_path):
    report = run_study(tiny_study(tmp_path / "s", search={"lr": GRID}, label_budgets=[0.5, 1.0]))
    # At half of a 6-example fold there is one example per class: no inner split, so no search, for every arm.
    assert report.chosen["scratch"]["b0.5"] == [{}, {}]
    assert all(c["train.lr"] in GRID for c in report.chosen["scratch"]["b1"])
    assert report.chosen_cell("scratch", "b0.5") == "configured values ×2 (too few examples to search)"


def test_a_fold_never_chooses_its_epoch_on_the_held_out_fold(tmp_path):
    """Early stopping or best-epoch restore on a fold's validation data would select on the test fold."""
    from hftl.study import _Study

    raw = tiny_study(tmp_path)
    raw["base"]["train"].update(patience=3, keep_best=True)
    study = _Study(study_config_from_dict(raw))
    fold = study.fold_config(study.cfg.arms[0], 1.0, 0)
    assert fold.train.patience == 0 and fold.train.keep_best is False


def test_a_pool_too_small_to_validate_a_refit_keeps_the_best_fold_and_says_why(tmp_path, caplog):
    # 12 examples of 3 classes: 10% holds out 2, fewer than a stratified split needs (one per class).
    cfg = tiny_study(tmp_path / "s", winner="refit")
    cfg["base"]["data"]["validation_fraction"] = 0.1
    with caplog.at_level("WARNING", logger="hftl.study.runner"):
        report = run_study(cfg)
    assert report.refit is None and report.winner_fold in (0, 1) and (tmp_path / "s" / "model" / "hftl.json").is_file()
    assert "study.winner=refit: data.validation_fraction=0.1 holds out 2 of 12 examples" in caplog.text
    assert "Raise data.validation_fraction to at least 0.25" in caplog.text and "Saving the best fold of" in caplog.text
    assert run_study(cfg).trained == 0  # a rerun resumes: the best fold's weights were kept for this fallback
