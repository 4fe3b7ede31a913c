"""A task that hftl does not ship, added from this file alone: one Task subclass and one registry entry.

The toy task reads a format no built-in task reads (tab-separated ``label<TAB>text`` lines), picks
the backbone adapter its model is built with, trains with its own loss (label-smoothed cross-entropy) and adds its own row to the
card. Through the public API it trains, evaluates, predicts and writes a card, with no change to
library code: the proof that the Task interface holds what a task needs.
"""

from __future__ import annotations

import json
import random

import pytest
import torch
import torch.nn.functional as F

import hftl
from hftl.cli import main as cli_main
from hftl.data import LabelledData
from hftl.errors import DataError
from hftl.registry import TASKS, TaskSpec, register_task
from hftl.tasks import LabelledTask
from hftl.tasks.text_classification import build_text_datasets

GOOD = ["good", "great", "fine", "lovely"]
BAD = ["bad", "awful", "dull", "poor"]
FILLER = ["the", "film", "was", "a", "plot", "really", "story", "quite"]


class TsvIntent(LabelledTask):
    """Intent classification from a ``label<TAB>text`` file: the last fifth of the lines are held out."""

    def load_data(self, cfg, whole=False):
        import datasets

        try:
            lines = [line.split("\t", 1) for line in open(cfg.data.id, encoding="utf-8").read().splitlines() if line]
        except FileNotFoundError as e:
            raise DataError(f"TSV file '{cfg.data.id}' does not exist.") from e
        names = sorted({label for label, _ in lines})
        rows = {"text": [t for _, t in lines], "label": [names.index(label) for label, _ in lines]}
        full = datasets.Dataset.from_dict(rows)
        cut = len(full) * 4 // 5
        train, validation = (full, full) if whole else (full.select(range(cut)), full.select(range(cut, len(full))))
        return LabelledData(train, validation, names, f"tsv:{cfg.data.id}", f"tsv:{cfg.data.id}:{len(full)}")

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_text import TextClassifier

        return TextClassifier.create(ref, label_names, pretrained=pretrained, **kwargs)  # an encoder, a new head

    def datasets(self, cfg, model, data, whole=False):
        return build_text_datasets(cfg, model, data)

    def loss(self, cfg):
        return lambda logits, batch: F.cross_entropy(logits.float(), batch["labels"], label_smoothing=0.1)

    def card_facts(self, cfg, model, data, train_ds, eval_ds):
        return {**super().card_facts(cfg, model, data, train_ds, eval_ds),
                "task_rows": {"Input format": "tab-separated `label<TAB>text` lines"}}

    def encode(self, model, inputs):
        return model.encode_texts([str(t) for t in inputs])


@pytest.fixture
def toy_task():
    spec = register_task(TaskSpec("tsv_intent", "text", metrics=("accuracy", "f1"), pipeline_tag="text-classification",
                                  card_name="TSV Intent", classification=True,
                                  strategies=("finetune", "linear_probe", "scratch"), implementation=TsvIntent))
    try:
        yield spec
    finally:
        TASKS.pop("tsv_intent", None)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("toy_bert")
    vocab = root / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *GOOD, *BAD, *FILLER]))
    torch.manual_seed(0)
    tokenizer = BertTokenizerFast(str(vocab))
    model = BertModel(BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=64, max_position_embeddings=32))
    model.save_pretrained(root / "bert")
    tokenizer.save_pretrained(root / "bert")
    return root / "bert"


@pytest.fixture
def tsv_file(tmp_path):
    rng = random.Random(0)
    lines = []
    for i in range(160):
        label, words = ("happy", GOOD) if i % 2 == 0 else ("unhappy", BAD)
        text = " ".join(rng.sample(FILLER, 3) + [rng.choice(words)] + rng.sample(FILLER, 2))
        lines.append(f"{label}\t{text}")
    path = tmp_path / "intents.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_task_registered_from_outside_trains_evaluates_predicts_and_writes_its_card(toy_task, tiny_bert, tsv_file,
                                                                                     tmp_path, capsys):
    out = tmp_path / "toy"
    result = hftl.train(None, ["task=tsv_intent", f"model.id={tiny_bert}", f"data.id={tsv_file}",
                               "strategy.name=finetune", "train.epochs=12", "train.lr=0.003",
                               "train.global_batch_size=16", "train.per_device_batch_size=16", "train.progress=false",
                               f"output_dir={out}"])
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert result.metrics["accuracy"] >= 0.9  # one keyword decides the class

    meta = json.loads((out / "hftl.json").read_text())
    assert meta["task"] == "tsv_intent" and meta["label_names"] == ["happy", "unhappy"]
    card = (out / "README.md").read_text()
    assert "pipeline_tag: text-classification" in card and "TSV Intent" in card
    assert "| Input format | tab-separated `label<TAB>text` lines |" in card
    assert "128 train / 32 validation examples, 2 classes" in card

    # Evaluation is the trainer's: the folder scores what the run reported for its kept epoch.
    scored = hftl.evaluate(out)
    assert scored["examples"] == 32
    assert scored["accuracy"] == pytest.approx(result.metrics["accuracy"])
    assert scored["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4)

    # Predictions agree with the evaluation: top-1 on the held-out lines is the accuracy it reported.
    held_out = [line.split("\t") for line in tsv_file.read_text().splitlines()[128:]]
    top = hftl.predict(out, [text for _, text in held_out], top_k=1)
    hits = sum(t[0][0] == label for t, (label, _) in zip(top, held_out))
    assert hits / len(held_out) == pytest.approx(scored["accuracy"])
    label, text = held_out[0]
    assert cli_main(["predict", str(out), text]) == 0
    assert capsys.readouterr().out.startswith(f"{text}: {top[0][0][0]} (")


def test_a_registered_task_is_checked_like_a_built_in_one(toy_task, tiny_bert, tsv_file, tmp_path):
    from hftl.errors import ConfigError

    with pytest.raises(ConfigError, match="strategy lora does not apply to tsv_intent"):
        hftl.train(None, ["task=tsv_intent", f"model.id={tiny_bert}", "strategy.name=lora",
                          f"output_dir={tmp_path / 'x'}"])
    with pytest.raises(DataError, match="does not exist"):
        hftl.train(None, ["task=tsv_intent", f"model.id={tiny_bert}", f"data.id={tmp_path / 'missing.tsv'}",
                          f"output_dir={tmp_path / 'y'}"])


def test_a_way_to_transfer_registered_from_outside_changes_the_run_and_its_card(toy_task, tiny_bert, tsv_file,
                                                                                 tmp_path):
    from hftl.methods import METHODS, Method, register_method

    calls = {"train": 0}

    class CountedLoss(Method):
        """Wraps the task's loss; what a new regulariser or an auxiliary loss would do."""

        name, section = "counted_loss", "train"

        def applies(self, cfg):
            return cfg.task == "tsv_intent"

        def after_strategy(self, setup):
            inner = setup.loss_fn

            def loss_fn(logits, batch):
                calls["train"] += torch.is_grad_enabled()
                return inner(logits, batch)

            setup.loss_fn = loss_fn
            setup.card_info["task_rows"] = {"Loss": "counted"}

    method = register_method(CountedLoss())
    try:
        with pytest.raises(ValueError, match="already registered"):
            register_method(CountedLoss())
        out = tmp_path / "counted"
        hftl.train(None, ["task=tsv_intent", f"model.id={tiny_bert}", f"data.id={tsv_file}", "train.epochs=1",
                          "train.global_batch_size=16", "train.per_device_batch_size=16", "train.progress=false",
                          f"output_dir={out}"])
    finally:
        METHODS.remove(method)
    assert calls["train"] == 128 // 16  # every training batch went through it, and no evaluation batch
    assert "| Loss | counted |" in (out / "README.md").read_text()
