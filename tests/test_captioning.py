"""Image captioning: a vision encoder pretrained on classification, joined to a text decoder, learns to caption.

The encoder is a tiny ViT trained here to classify digits (its "pretraining"); the decoder a tiny
GPT-2 with a tokenizer made from the captions. The data are PNG files listed in a CSV with captions
("a handwritten three", "the digit three", ...). Everything runs offline on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import launch_two_processes
from huggingface_hub import ModelCard

import hftl
from hftl.card_metadata import check_metadata
from hftl.cli import main as cli
from hftl.errors import ConfigError
from hftl.tasks.image_captioning import DIGIT_TEMPLATES, DIGIT_WORDS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

CLASSES = [0, 1, 2, 3]


@pytest.fixture(scope="module")
def captions_csv(tmp_path_factory) -> Path:
    """PNG digits 0-3 and a caption for each, listed in a CSV (paths relative to it)."""
    import pandas as pd
    from PIL import Image
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("captions")
    (root / "images").mkdir()
    digits = load_digits()
    rows = []
    for i, (img, y) in enumerate(zip(digits.images, digits.target)):
        if y not in CLASSES or len(rows) >= 320:
            continue
        name = f"images/{i}.png"
        Image.fromarray((img * 255 / 16).astype(np.uint8), mode="L").resize((16, 16)).save(root / name)
        rows.append({"file": name, "text": DIGIT_TEMPLATES[i % 2].format(DIGIT_WORDS[y]), "digit": DIGIT_WORDS[y]})
    pd.DataFrame(rows).to_csv(root / "captions.csv", index=False)
    return root / "captions.csv"


@pytest.fixture(scope="module")
def models(tmp_path_factory, captions_csv) -> dict[str, Path]:
    """A ViT pretrained (here, briefly) to classify the digits, and a GPT-2 that knows the caption words."""
    import pandas as pd
    from PIL import Image
    from tokenizers import ByteLevelBPETokenizer
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        GPT2Tokenizer,
        ViTConfig,
        ViTForImageClassification,
        ViTImageProcessor,
    )

    root = tmp_path_factory.mktemp("caption_models")
    torch.manual_seed(0)
    processor = ViTImageProcessor(size={"height": 16, "width": 16})
    vit = ViTForImageClassification(ViTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=2, intermediate_size=64, num_labels=len(CLASSES)))
    table = pd.read_csv(captions_csv)
    images = [Image.open(captions_csv.parent / f).convert("RGB") for f in table["file"]]
    pixels = processor(images=images, return_tensors="pt")["pixel_values"]
    labels = torch.tensor([DIGIT_WORDS.index(d) for d in table["digit"]])
    optimizer = torch.optim.AdamW(vit.parameters(), lr=3e-3)
    for _ in range(15):  # the encoder's "pretraining": digit classification
        for i in range(0, len(labels), 32):
            loss = vit(pixel_values=pixels[i:i + 32], labels=labels[i:i + 32]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    with torch.no_grad():
        assert (vit(pixel_values=pixels).logits.argmax(-1) == labels).float().mean() > 0.9
    vit.save_pretrained(root / "vit")
    processor.save_pretrained(root / "vit")

    corpus = [t.format(w) for t in DIGIT_TEMPLATES for w in DIGIT_WORDS] * 5
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=300, min_frequency=1, special_tokens=["<|endoftext|>"])
    model = json.loads(bpe._tokenizer.to_str())["model"]
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tokenizer = GPT2Tokenizer(vocab=model["vocab"], merges=merges)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=32,
                                      bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id))
    gpt2.save_pretrained(root / "gpt2")
    tokenizer.save_pretrained(root / "gpt2")
    return {"vit": root / "vit", "gpt2": root / "gpt2"}


def overrides(models, data, out, **extra) -> list[str]:
    base = {"task": "image_captioning", "model.id": str(models["vit"]), "model.decoder_id": str(models["gpt2"]),
            "data.id": str(data), "data.image_column": "file", "data.max_length": 12, "train.epochs": 6,
            "train.lr": 0.003, "train.global_batch_size": 16, "train.per_device_batch_size": 16,
            "train.warmup_ratio": 0.05, "train.progress": False, "output_dir": str(out)}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def captioner(models, captions_csv, tmp_path_factory):
    out = tmp_path_factory.mktemp("captioner") / "run"
    return hftl.train(None, overrides(models, captions_csv, out))


def test_captions_name_the_digit(captioner, captions_csv):
    import pandas as pd

    history = captioner.history
    assert history[-1]["perplexity"] < history[0]["perplexity"]
    table = pd.read_csv(captions_csv)
    held_out = table.sample(40, random_state=1)
    captions = hftl.caption(captioner.output_dir, [captions_csv.parent / f for f in held_out["file"]])
    named = [digit in text for digit, text in zip(held_out["digit"], captions)]
    assert np.mean(named) > 0.6, list(zip(held_out["digit"], captions))  # chance: 0.25
    assert all(any(text.startswith(t.split("{}")[0].strip()) for t in DIGIT_TEMPLATES) for text in captions)


def test_output_loads_with_transformers(captioner, captions_csv):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

    out = captioner.output_dir
    model = VisionEncoderDecoderModel.from_pretrained(out).eval()
    processor, tokenizer = AutoImageProcessor.from_pretrained(out), AutoTokenizer.from_pretrained(out)
    image = next(captions_csv.parent.glob("images/*.png"))
    pixels = processor(images=Image.open(image).convert("RGB"), return_tensors="pt").pixel_values
    text = tokenizer.decode(model.generate(pixel_values=pixels, max_new_tokens=12)[0], skip_special_tokens=True)
    assert text.strip() == hftl.caption(out, [image])[0]
    card = (out / "README.md").read_text()
    check_metadata(ModelCard.load(out / "README.md").data.to_dict())  # what the Hub would accept
    assert "pipeline_tag: image-to-text" in card and "Captions of validation images" in card


def test_the_image_encoder_exports_to_onnx_and_matches_pytorch(captioner):
    pytest.importorskip("onnxruntime")
    import onnxruntime as ort
    from PIL import Image

    from hftl.export import export_onnx
    from hftl.model import load

    path = export_onnx(captioner.output_dir)
    record = json.loads((path.parent / "export.json").read_text())
    assert list(record["outputs"]) == ["last_hidden_state"] and record["max_abs_diff_vs_pytorch"] <= 1e-4
    model = load(captioner.output_dir).eval()
    pixels = model.pixel_values([Image.new("RGB", (20, 20), (200, 30, 30))] * 3)  # a third batch size, real pixels
    with torch.inference_mode():
        expected = model.inner.encoder(pixel_values=pixels).last_hidden_state.numpy()
    got = ort.InferenceSession(str(path)).run(None, {"pixel_values": pixels.numpy()})[0]
    assert np.abs(got - expected).max() < 1e-4
    assert "`last_hidden_state`" in (captioner.output_dir / "README.md").read_text()


def test_predict_and_eval_commands(captioner, captions_csv, capsys):
    image = next(captions_csv.parent.glob("images/*.png"))
    assert cli(["predict", str(captioner.output_dir), str(image)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{image}: ") and len(line) > len(str(image)) + 4
    assert cli(["eval", str(captioner.output_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["perplexity"] == pytest.approx(captioner.metrics["perplexity"], rel=1e-5)


def test_frozen_encoder_and_lora(models, captions_csv, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "partial"
    hftl.train(None, overrides(models, captions_csv, out, **{"strategy.name": "partial", "strategy.frozen_groups": 4,
                                                              "train.epochs": 1}))
    source = load_file(str(models["vit"] / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    key = "encoder.encoder.layer.1.attention.attention.query.weight"
    torch.testing.assert_close(trained[key], source["vit." + key.split(".", 1)[1]])  # the encoder stayed frozen
    lora = tmp_path / "lora"
    result = hftl.train(None, overrides(models, captions_csv, lora, **{"strategy.name": "lora", "strategy.lora_r": 4,
                                                                       "train.epochs": 1}))
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert any("crossattention" in m for m in adapter["modules_to_save"])  # new layers saved in full
    assert hftl.evaluate(lora)["perplexity"] == pytest.approx(result.metrics["perplexity"], rel=1e-4)


def test_captioning_errors(models, captions_csv, tmp_path):
    with pytest.raises(ConfigError, match="set model.decoder_id"):
        hftl.train(None, overrides(models, captions_csv, tmp_path / "a", **{"model.decoder_id": "null"}))
    with pytest.raises(ConfigError, match="does not apply to image_captioning"):
        hftl.train(None, overrides(models, captions_csv, tmp_path / "b", **{"strategy.name": "linear_probe"}))
    with pytest.raises(hftl.errors.DataError, match="Column 'picture' is not in"):
        hftl.train(None, overrides(models, captions_csv, tmp_path / "c", **{"data.image_column": "picture"}))


def test_hub_layout_with_several_captions_per_image(models, captions_csv, tmp_path):
    """COCO/Flickr layout (a list of captions per image, in parquet): one training pair per caption."""
    import datasets
    import pandas as pd

    table = pd.read_csv(captions_csv).head(40)
    ds = datasets.Dataset.from_dict({
        "img": [{"bytes": (captions_csv.parent / f).read_bytes(), "path": f} for f in table["file"]],
        "sentences": [[t, t.upper()] for t in table["text"]]}).cast_column("img", datasets.Image())
    folder = tmp_path / "hub_layout"
    (folder / "data").mkdir(parents=True)
    ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    from hftl.config import DataConfig
    from hftl.tasks.image_captioning import load_caption_data

    data = load_caption_data(DataConfig(id=str(folder), image_column="img", text_column="sentences"), seed=0)
    assert len(data.train) + len(data.validation) == 80 and isinstance(data.train[0]["caption"], str)
    with pytest.raises(hftl.errors.DataError, match="Split 'val' is not in"):
        load_caption_data(DataConfig(id=str(folder), image_column="img", text_column="sentences",
                                     validation_split="val"))


def test_scratch_from_an_existing_captioner(captioner, tmp_path):
    result = hftl.train(None, ["task=image_captioning", f"model.id={captioner.output_dir}", "strategy.name=scratch",
                               "data.id=builtin:digits", "data.max_train_samples=32", "data.max_eval_samples=16",
                               "data.max_length=12", "train.epochs=1", "train.progress=false",
                               "train.global_batch_size=16", "train.per_device_batch_size=16",
                               f"output_dir={tmp_path / 'scratch'}"])
    assert len(result.history) == 1


@pytest.mark.slow
def test_recipe_under_accelerate_launch_on_two_processes(models, captions_csv, tmp_path):
    """The ViT's unused pooler must not stall DDP's gradient all-reduce."""
    launch_two_processes(overrides(models, captions_csv, tmp_path / "ddp", **{
        "train.epochs": 1, "train.per_device_batch_size": 8}), cwd=tmp_path)
