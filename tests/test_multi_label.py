"""Multi-label classification end to end: data with label sets, BCE training, thresholds, metrics, predict, card, push."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_overrides
from hub_server import FakeHub, fake_hub  # noqa: F401  (fake_hub is a fixture)
from test_study import tiny_bert

import hftl
from hftl.errors import ConfigError, DataError
from hftl.methods.thresholds import choose_thresholds
from hftl.tasks.multi_label import multi_label_metrics


def digit_labels(d: int) -> list[str]:
    """Three overlapping labels of a digit; 7 has none of them."""
    return [name for name, yes in (("even", d % 2 == 0), ("small", d < 5), ("round", d in (0, 6, 8, 9))) if yes]


def digit_folder(root: Path, n: int, offset: int = 0, labels=digit_labels) -> Path:
    """A multi-label image folder in Hugging Face imagefolder's layout: PNGs and a metadata.csv of their labels."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    root.mkdir(parents=True, exist_ok=True)
    rows = ["file_name,label"]
    for i in range(offset, offset + n):
        name = f"d{i}.png"
        Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8)).save(root / name)
        rows.append(f"{name},{'|'.join(labels(int(digits.target[i])))}")
    (root / "metadata.csv").write_text("\n".join(rows) + "\n")
    return root


def overrides(out: Path, data: Path, **extra) -> list[str]:
    base = {"task": "image_multilabel", "data.id": str(data), "train.epochs": 8, "data.max_train_samples": "null",
            "data.max_eval_samples": "null"}
    return tiny_train_overrides(out, **{**base, **extra})


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    train, test = digit_folder(root / "train", 240), digit_folder(root / "test", 120, offset=1000)
    result = hftl.train(None, overrides(root / "run", train))
    return result, train, test


def test_training_learns_label_sets(image_run):
    result, _, _ = image_run
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0] * 0.7  # BCE falls
    assert set(result.metrics) >= {"f1_micro", "f1_macro", "map", "loss"}
    assert result.metrics["map"] > 0.7 and result.metrics["f1_micro"] > 0.6  # chance mAP is each label's share (~0.5)
    assert json.loads((result.output_dir / "hftl.json").read_text())["task"] == "image_multilabel"


def test_eval_scores_the_saved_model_as_plain_code_would(image_run):
    from hftl.model import load

    result, _, test = image_run
    metrics = hftl.evaluate(result.output_dir, [f"data.id={test}"])
    assert metrics["examples"] == 120
    model = load(result.output_dir).eval()
    task = hftl.tasks.get_task_impl("image_multilabel")
    paths = sorted(test.glob("*.png"), key=lambda p: int(p.stem[1:]))
    rows = dict(line.split(",") for line in (test / "metadata.csv").read_text().splitlines()[1:])
    with torch.inference_mode():
        probs = model(task.encode(model, [str(p) for p in paths])).sigmoid().numpy()
    truth = [[float(n in rows[p.name].split("|")) for n in model.label_names] for p in paths]
    direct = multi_label_metrics(probs, truth)  # sklearn's F1 and average precision on the same scores
    for name in ("f1_micro", "f1_macro", "map"):
        assert metrics[name] == pytest.approx(direct[name], abs=1e-6)


def test_thresholds_are_chosen_folded_and_predicted(image_run):
    from hftl.model import load

    result, _, test = image_run
    card = (result.output_dir / "README.md").read_text()
    assert "Decision thresholds" in card and re.search(r"even 0\.\d\d", card)
    assert "pipeline_tag: image-classification" in card and "f1_micro" in card
    model = load(result.output_dir)
    images = [str(p) for p in sorted(test.glob("*.png"))[:12]]
    predicted = hftl.predict(model, images)
    task = hftl.tasks.get_task_impl("image_multilabel")
    with torch.inference_mode():
        above = model(task.encode(model, images)).sigmoid() > 0.5  # the saved model alone, at 0.5
    assert [sorted(n for n, _ in p) for p in predicted] == [
        sorted(n for n, keep in zip(model.label_names, row) if keep) for row in above.tolist()]
    assert all(s > 0.5 for p in predicted for _, s in p) and any(len(p) >= 2 for p in predicted)


def test_choose_thresholds_prefers_the_best_f1_and_keeps_half_without_positives():
    probs = np.array([[0.30, 0.9], [0.20, 0.8], [0.10, 0.7]])
    labels = np.array([[1, 0], [1, 0], [0, 0]])
    assert choose_thresholds(probs, labels) == [0.15, 0.5]


def test_linear_probe_trains_a_sigmoid_head_and_lbfgs_says_why_not(tmp_path, pretrained_folder):
    data = digit_folder(tmp_path / "d", 80)
    result = hftl.train(None, overrides(tmp_path / "probe", data, **{"strategy.name": "linear_probe",
                                                                        "model.id": str(pretrained_folder)}))
    assert "probe_solver: sgd" in (result.output_dir / "hftl_config.yaml").read_text()  # auto: sgd for multi-label
    assert result.metrics["map"] > 0.4
    with pytest.raises(ConfigError, match="probe_solver=lbfgs solves a multinomial probe.*probe_solver=sgd"):
        hftl.train(None, overrides(tmp_path / "x", data, **{"strategy.name": "linear_probe",
                                                               "strategy.probe_solver": "lbfgs"}))


def test_bad_multi_label_data_gets_one_clear_error(tmp_path):
    train = digit_folder(tmp_path / "train", 40)
    val = digit_folder(tmp_path / "val", 20, offset=500, labels=lambda d: ["even", "prime"] if d == 2 else [])
    with pytest.raises(DataError, match=r"no metadata.csv.*file_name and label"):
        hftl.train(None, overrides(tmp_path / "a", tmp_path))
    with pytest.raises(DataError, match=r"built-in set 'digits' has one label per image"):
        hftl.train(None, overrides(tmp_path / "b", "builtin:digits"))
    with pytest.raises(ConfigError, match=r"data.classes picks single-label classes"):
        hftl.train(None, overrides(tmp_path / "c", train, **{"data.classes": "[even]"}))
    run = hftl.train(None, overrides(tmp_path / "d", train, **{"train.epochs": 1}))
    with pytest.raises(DataError, match=r"1 label\(s\) the model does not have: prime.*even, round, small"):
        hftl.evaluate(run.output_dir, [f"data.id={val}"])
    fewer = digit_folder(tmp_path / "fewer", 20, offset=600, labels=lambda d: ["small"] if d < 5 else [])
    assert hftl.evaluate(run.output_dir, [f"data.id={fewer}"])["examples"] == 20  # a subset of its labels: scored


def test_text_multilabel_saves_what_transformers_pipelines_read(tmp_path):
    from transformers import pipeline

    topics = {"sport": ["goal", "match", "team"], "weather": ["rain", "sunny", "wind"], "food": ["pizza", "soup"]}
    rng = np.random.default_rng(0)
    rows = []
    for _ in range(160):
        chosen = sorted(rng.choice(list(topics), size=rng.integers(0, 3), replace=False).tolist())
        words = [w for t in chosen for w in rng.choice(topics[t], 2).tolist()] or ["nothing", "today"]
        rows.append({"text": " ".join(rng.permutation(words).tolist()), "label": chosen})
    data = tmp_path / "texts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    bert = tiny_bert(tmp_path / "bert", [r["text"] for r in rows])
    result = hftl.train(None, ["task=text_multilabel", f"model.id={bert}", f"data.id={data}", "data.max_length=16",
                               "train.epochs=20", "train.lr=0.01", "train.progress=false",
                               f"output_dir={tmp_path / 'run'}"])
    assert result.metrics["map"] > 0.8
    config = json.loads((result.output_dir / "config.json").read_text())
    assert config["problem_type"] == "multi_label_classification"
    texts = ["goal rain", "pizza soup", "nothing today"]
    classify = pipeline("text-classification", model=str(result.output_dir), top_k=None)
    ours = hftl.predict(hftl.load(result.output_dir), texts)
    for scored, mine in zip(classify(texts), ours):
        theirs = sorted(s["label"] for s in scored if s["score"] > 0.5)  # the pipeline applies a sigmoid per label
        assert theirs == sorted(n for n, _ in mine)
    assert any(ours)  # some label passes its threshold


def test_push_carries_the_multi_label_card(image_run, fake_hub: FakeHub, monkeypatch):  # noqa: F811
    import timm
    from huggingface_hub import hf_hub_download

    from hftl.hub import push

    result, _, _ = image_run
    monkeypatch.setenv("HF_TOKEN", fake_hub.token)
    push(result.output_dir, "fake-user/multi-digits")
    readme = Path(hf_hub_download("fake-user/multi-digits", "README.md")).read_text()
    assert "pipeline_tag: image-classification" in readme and "Decision thresholds" in readme
    assert "sigmoid" in readme  # the usage snippet reads several labels, not one softmax class
    pulled = timm.create_model("hf-hub:fake-user/multi-digits", pretrained=True).eval()
    assert pulled.num_classes == 3
