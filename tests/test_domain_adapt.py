"""Transductive transfer (domain_adapt.*): the CORAL loss, AdaBN, the runs, the study and the errors.

Models are tiny (timm test_resnet at 16 px), data a slice of the shifted built-in digits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from hftl import api
from hftl.config import load_config
from hftl.errors import ConfigError, DataError
from hftl.methods.domain_adapt import adapt_batch_norm, coral_loss, load_target
from hftl.study import load_study_config, run_study
from hftl.study.stats import compare_paired, selection_metric

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[1]
RECIPE = REPO / "recipes" / "configs" / "study" / "digits_domain_shift.yaml"


def overrides(out: Path, method: str, **extra) -> list[str]:
    base = {
        "model.id": "timm:test_resnet", "strategy.name": "scratch",
        "data.id": "builtin:digits_a", "data.image_size": 16, "data.augment": False,
        "data.max_train_samples": 80, "data.max_eval_samples": 40,
        "domain_adapt.target": "builtin:digits_b_blurred", "domain_adapt.method": method,
        "domain_adapt.max_target_samples": 64,
        "train.epochs": 3, "train.global_batch_size": 16, "train.per_device_batch_size": 16, "train.lr": 0.01,
        "train.progress": False, "train.save_checkpoints": False, "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def weights(folder: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(next(folder.glob("*.safetensors"))))


# ------------------------------------------------------------------------------------------ CORAL loss

def test_coral_loss_is_its_formula():
    rng = np.random.default_rng(0)
    xs, xt = rng.normal(size=(7, 4)), rng.normal(size=(5, 4)) * 2 + 1

    def cov(x):  # Sun & Saenko 2016, eq. 2 and 3, written out
        n = len(x)
        ones = np.ones((1, n))
        return (x.T @ x - (ones @ x).T @ (ones @ x) / n) / (n - 1)

    expected = np.sum((cov(xs) - cov(xt)) ** 2) / (4 * 4 ** 2)
    got = coral_loss(torch.tensor(xs, dtype=torch.float32), torch.tensor(xt, dtype=torch.float32))
    assert float(got) == pytest.approx(expected, rel=1e-5)
    assert np.allclose(cov(xs), np.cov(xs, rowvar=False))


def test_coral_loss_is_zero_for_identical_statistics():
    x = torch.randn(16, 6)
    assert float(coral_loss(x, x)) == pytest.approx(0.0, abs=1e-9)
    assert float(coral_loss(x, x[torch.randperm(16)] + 3.0)) == pytest.approx(0.0, abs=1e-6)  # order, mean: no part of it
    assert float(coral_loss(x, 2 * x)) > 0
    with pytest.raises(ValueError, match="at least 2"):
        coral_loss(x[:1], x)


# ------------------------------------------------------------------------------------------ AdaBN

class TinyNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(4, 2)

    def forward(self, batch):
        x = torch.relu(self.bn(self.conv(batch["pixel_values"])))
        return self.fc(self.drop(x.mean((2, 3))))


class Images(torch.utils.data.Dataset):
    def __init__(self, x):
        self.x = x

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": 0}


def test_adabn_sets_batch_norm_statistics_to_the_targets_and_leaves_weights_alone():
    torch.manual_seed(0)
    net = TinyNet()
    source = torch.randn(32, 3, 8, 8)
    net.train()
    for _ in range(5):
        net({"pixel_values": source})  # running stats of the source
    net.eval()
    target = torch.randn(24, 3, 8, 8) * 3 + 2  # another domain: other mean and scale
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert adapt_batch_norm(net, Images(target), batch_size=24) == 1
    with torch.no_grad():
        z = net.conv(target)
    assert torch.allclose(net.bn.running_mean, z.mean((0, 2, 3)), atol=1e-5)
    assert torch.allclose(net.bn.running_var, z.var((0, 2, 3), unbiased=True), rtol=1e-4)
    assert not torch.allclose(net.bn.running_mean, before["bn.running_mean"])
    for name, p in net.named_parameters():  # weights untouched
        assert torch.equal(p, before[name]), name
    assert not net.training and not net.bn.training and net.bn.momentum == 0.1  # modes and momentum restored


def test_adabn_run_differs_from_source_only_only_in_batch_norm_statistics(tmp_path):
    plain = api.train(None, overrides(tmp_path / "plain", "source_only"))
    adabn = api.train(None, overrides(tmp_path / "adabn", "adabn"))
    a, b = weights(tmp_path / "plain"), weights(tmp_path / "adabn")
    assert a.keys() == b.keys()
    stats = [k for k in a if k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert stats
    for k in a:
        if k in stats:
            continue
        assert torch.equal(a[k], b[k]), k  # same training: the same weights
    assert all(not torch.equal(a[k], b[k]) for k in stats)  # every statistic re-estimated on the target
    for result in (plain, adabn):
        assert {"target_accuracy", "target_f1", "target_loss", "accuracy"} <= set(result.metrics)
    assert plain.metrics["target_accuracy"] != adabn.metrics["target_accuracy"]
    card = (tmp_path / "adabn" / "README.md").read_text()
    assert "target_accuracy" in card
    assert "## Domain adaptation" in card and "`builtin:digits_b_blurred`" in card and "AdaBN" in card
    assert card.index("## Domain adaptation") < card.index("## How to use")


# ------------------------------------------------------------------------------------------ runs

def test_coral_loss_falls_and_reload_predicts_the_same(tmp_path):
    out = tmp_path / "coral"
    result = api.train(None, overrides(out, "coral", **{"train.epochs": 4}))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0]
    record = json.loads((out / "metrics.json").read_text())
    assert record["final"]["target_accuracy"] == result.metrics["target_accuracy"]
    # Reloaded from disk, the model scores the source and the target exactly as the run reported.
    assert api.evaluate(out)["accuracy"] == pytest.approx(result.metrics["accuracy"])
    from hftl.model import load
    from hftl.tasks import get_task_impl
    from hftl.trainer import evaluate_model

    cfg = load_config(out / "hftl_config.yaml")
    model = load(out)
    target = load_target(cfg, model.label_names, read_labels=False)
    task = get_task_impl(cfg.task)
    _, target_eval, collate = task.datasets(cfg, model, target)
    scored = evaluate_model(cfg, task, model, target_eval, collate)
    assert scored["accuracy"] == pytest.approx(result.metrics["target_accuracy"])
    assert scored["loss"] == pytest.approx(result.metrics["target_loss"], rel=1e-5)
    assert not model.net.get_submodule(model.head_name)._forward_pre_hooks  # the feature tap is gone


def test_adabn_reload_keeps_the_adapted_statistics(tmp_path):
    out = tmp_path / "adabn"
    result = api.train(None, overrides(out, "adabn", **{"train.epochs": 1}))
    # The source metrics describe the saved (adapted) model, not the one before AdaBN.
    assert api.evaluate(out)["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_no_target_label_is_read_for_selection(tmp_path, monkeypatch):
    """The target's class names renamed (each image's label moved to the next class): the split is the same,
    every choice (history on the source, kept epoch, weights) is the same; only the target score changes."""
    from hftl import data as data_module

    real = data_module.BUILTIN["digits_b_blurred"]
    runs = {}
    for name, shift in (("true", 0), ("wrong", 1)):
        def relabelled(shift=shift):
            images, labels, names = real()
            return images, [(v + shift) % 10 for v in labels], names

        monkeypatch.setitem(data_module.BUILTIN, "digits_b_blurred", relabelled)
        out = tmp_path / name
        runs[name] = (api.train(None, overrides(out, "coral", **{"train.keep_best": True, "train.patience": 2})), out)
        read = load_target(load_config(out / "hftl_config.yaml"), [str(i) for i in range(10)], read_labels=False)
        assert set(read.train["label"]) == {0}  # the adaptation split carries no label at all
    (true, t_out), (wrong, w_out) = runs["true"], runs["wrong"]
    assert [{k: v for k, v in h.items()} for h in true.history] == [{k: v for k, v in h.items()} for h in wrong.history]
    kept = [json.loads((o / "metrics.json").read_text())["kept_epoch"] for o in (t_out, w_out)]
    assert kept[0] == kept[1]
    a, b = weights(t_out), weights(w_out)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert true.metrics["target_accuracy"] != wrong.metrics["target_accuracy"]


# ------------------------------------------------------------------------------------------ the study

def test_the_recipe_loads_and_names_both_domains():
    cfg = load_study_config(RECIPE)
    assert cfg.base.data.id == "builtin:digits_a" and cfg.base.domain_adapt.target == "builtin:digits_b_blurred"
    assert {a.name: a.config.domain_adapt.method for a in cfg.arms} == {
        "source_only": "source_only", "adabn": "adabn", "coral": "coral", "oracle": "oracle"}
    assert cfg.study.metric == "target_accuracy" and cfg.study.baseline == "source_only"


def test_selection_never_uses_a_target_metric():
    assert selection_metric("target_accuracy") == "accuracy"
    assert selection_metric("target_loss") == "loss"
    assert selection_metric("accuracy") == "accuracy"


def test_study_verdict_follows_its_test_and_the_oracle_stands_apart(tmp_path):
    study = {
        "base": {
            "model": {"id": "timm:test_resnet"}, "strategy": {"name": "scratch"},
            "data": {"id": "builtin:digits_a", "classes": ["0", "1", "2"], "image_size": 16, "augment": False},
            "domain_adapt": {"target": "builtin:digits_b_blurred"},
            "train": {"epochs": 1, "global_batch_size": 8, "per_device_batch_size": 8, "lr": 0.01, "progress": False},
        },
        "study": {"arms": [{"name": "source_only", "strategy": "scratch"},
                           {"name": "adabn", "strategy": "scratch", "config": {"domain_adapt": {"method": "adabn"}}},
                           {"name": "oracle", "strategy": "scratch", "config": {"domain_adapt": {"method": "oracle"}}}],
                  "baseline": "source_only", "folds": 2, "max_examples": 16, "metric": "target_accuracy",
                  "search": False, "output_dir": str(tmp_path / "study")},
    }
    # The source has 3 classes; so must the target: its other classes are dropped (data.classes is the source's).
    study["base"]["domain_adapt"]["target"] = "builtin:digits_b_blurred"
    with pytest.raises(ConfigError, match="classes the source"):
        run_study(study)
    study["base"]["domain_adapt"]["target"] = str(three_class_folder(tmp_path / "target"))
    report = run_study(study)
    scores = report.scores
    tag = report.full_budget
    expected = compare_paired(scores["adabn"][tag]["target_accuracy"], scores["source_only"][tag]["target_accuracy"])
    assert report.verdict("adabn") == expected.verdict
    assert report.comparisons["adabn"][tag].p_value == pytest.approx(expected.p_value)
    assert report.verdict("oracle") is None and report.references == ["oracle"]
    assert report.winner != "oracle"
    rows = report.table_rows()
    assert rows[-1]["arm"] == "oracle" and rows[-1]["verdict"] == "ceiling (reported apart)"
    md = (tmp_path / "study" / "report.md").read_text()
    assert "never on a target label" in md and "ceiling (reported apart)" in md


def three_class_folder(folder: Path) -> Path:
    """Blurred digits 0-2 of the target half as an image folder (one subfolder per class)."""
    from hftl.data import BUILTIN

    images, labels, names = BUILTIN["digits_b_blurred"]()
    for i, (img, label) in enumerate(zip(images, labels)):
        if label < 3 and i < 300:
            (folder / names[label]).mkdir(parents=True, exist_ok=True)
            img.save(folder / names[label] / f"{i}.png")
    return folder


# ------------------------------------------------------------------------------------------ bad input

def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert "\n" not in text
    return text


def test_target_with_classes_the_source_lacks(tmp_path):
    with pytest.raises(ConfigError) as e:
        api.train(None, overrides(tmp_path / "o", "coral", **{"data.classes": "[0,1,2]"}))
    assert "classes the source" in one_line(e) and "domain_adapt.target" in one_line(e)


def test_target_with_no_images(tmp_path):
    (tmp_path / "empty" / "0").mkdir(parents=True)
    with pytest.raises(DataError) as e:
        api.train(None, overrides(tmp_path / "o", "adabn", **{"domain_adapt.target": str(tmp_path / "empty")}))
    assert "domain_adapt.target" in one_line(e)


@pytest.mark.parametrize("extra, match", [
    ({"domain_adapt.method": "coral", "strategy.name": "linear_probe"}, "nothing to align"),
    ({"domain_adapt.method": "dann"}, "domain_adapt.method must be one of"),
    ({"domain_adapt.target": "builtin:digits_a"}, "is the source data itself"),
    ({"domain_adapt.target": "", "domain_adapt.method": "adabn"}, "needs a target domain"),
    ({"domain_adapt.coral_weight": -1}, "domain_adapt.coral_weight must be"),
    ({"task": "text_classification", "data.id": "x.jsonl", "model.id": "bert-base-uncased"}, "image_classification"),
])
def test_bad_settings_are_one_line_errors(tmp_path, extra, match):
    args = overrides(tmp_path / "o", "source_only")
    args = [a for a in args if a.split("=")[0] not in extra] + [f"{k}={v}" for k, v in extra.items()]
    with pytest.raises(ConfigError) as e:
        load_config(None, args)
    assert match in one_line(e)


def test_adabn_on_a_model_without_batch_norm(tmp_path):
    with pytest.raises(ConfigError) as e:
        api.train(None, overrides(tmp_path / "o", "adabn", **{"model.id": "timm:test_vit", "data.image_size": 32}))
    assert "no batch-norm layers" in one_line(e)


def test_study_metric_on_the_target_needs_a_target():
    with pytest.raises(ConfigError, match="target"):
        load_study_config(RECIPE, ["base.domain_adapt.target=null", "base.domain_adapt.method=source_only"])
