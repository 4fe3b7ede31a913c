"""Masked image modelling (MAE) on unlabelled images: the loss falls, the encoder loads as a ViT and starts a
classifier (whose card shows the chain), predict draws the inpainting, resume masks alike, bad input is one line."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file

import hftl
from hftl.card_metadata import check_metadata
from hftl.cli import main as cli
from hftl.errors import ConfigError, ModelNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

SIZE, PATCH = 32, 8
TINY = dict(image_size=SIZE, patch_size=PATCH, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2,
            decoder_intermediate_size=64)
# The timm ViT whose architecture the tiny encoder's weights fill (MaskedAutoencoder.timm_equivalent says so too).
TIMM_VIT = {"model.id": "timm:vit_base_patch16_224", "model.pretrained": False, "data.image_size": SIZE,
            "model.kwargs": "{embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, mlp_ratio: 2}"}


def processor():
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": SIZE, "width": SIZE})


@pytest.fixture(scope="module")
def tiny_mae(tmp_path_factory):
    """A tiny ViTMAE (config, random weights and image processor) saved as a Hub download would be."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("source") / "tiny-vit-mae"
    ViTMAEForPreTraining(ViTMAEConfig(**TINY)).save_pretrained(folder)
    processor().save_pretrained(folder)
    return folder


def mae(source, out, **extra) -> list[str]:
    base = {"task": "masked_image", "model.id": source, "data.id": "builtin:digits", "data.max_train_samples": 320,
            "data.max_eval_samples": 64, "data.augment": False, "train.epochs": 4, "train.lr": 0.003,
            "train.global_batch_size": 32, "train.per_device_batch_size": 32, "train.warmup_ratio": 0.0,
            "train.progress": False, "output_dir": str(out)}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def pretrained(tiny_mae, tmp_path_factory):
    return hftl.train(None, mae(tiny_mae, tmp_path_factory.mktemp("mae") / "run"))


def digit_png(folder, index: int = 0):
    from PIL import Image
    from sklearn.datasets import load_digits

    path = folder / f"digit{index}.png"
    Image.fromarray((load_digits().images[index] * 255 / 16).astype("uint8"), mode="L").save(path)
    return path


def test_the_reconstruction_loss_falls(pretrained):
    history = pretrained.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    # Held out, with the same masks every epoch (drawn from epoch 0): the model inpaints unseen images better.
    assert history[-1]["loss"] < history[0]["loss"] - 0.003, history


def test_the_encoder_loads_in_vit_for_image_classification(pretrained, tiny_mae):
    from transformers import ViTForImageClassification, ViTMAEForPreTraining, ViTModel

    out = pretrained.output_dir
    classifier = ViTForImageClassification.from_pretrained(out, num_labels=3)
    trained = ViTMAEForPreTraining.from_pretrained(out / "mae").state_dict()
    encoder = {k: v for k, v in classifier.state_dict().items() if k.startswith("vit.")}
    assert encoder and all(torch.equal(v, trained[k]) for k, v in encoder.items())
    source = ViTMAEForPreTraining.from_pretrained(tiny_mae).state_dict()
    assert not torch.equal(trained["vit.layers.0.mlp.fc1.weight"], source["vit.layers.0.mlp.fc1.weight"])  # it trained
    # MAE's sin-cos position embeddings are constants: hftl's strategies did not train them.
    assert torch.equal(trained["vit.embeddings.position_embeddings"], source["vit.embeddings.position_embeddings"])
    # The adapter's unmasked features are the ViT's [CLS] output.
    model = hftl.load(out)
    pixels = torch.randn(2, 3, SIZE, SIZE)
    vit = ViTModel.from_pretrained(out, add_pooling_layer=False).eval()
    with torch.no_grad():
        assert torch.allclose(model.forward_features({"pixel_values": pixels}),
                              vit(pixel_values=pixels).last_hidden_state[:, 0], atol=1e-5)
    assert json.loads((out / "hftl.json").read_text())["task"] == "masked_image"
    card = ModelCard.load(out / "README.md")
    assert card.data.pipeline_tag == "image-feature-extraction" and "75% of 16 patches" in card.text
    check_metadata(card.data.to_dict())  # what the Hub would accept


def test_the_cards_usage_snippet_loads_the_encoder_and_the_mae(pretrained, tmp_path, monkeypatch):
    """The card's Python, run as written against the output folder: the encoder's [CLS] feature is hftl's."""
    from hftl.cards import USAGE_END, USAGE_START, usage_snippet
    from hftl.tasks.image_classification import load_images

    out = pretrained.output_dir
    card = (out / "README.md").read_text()
    block = card[card.index(USAGE_START):card.index(USAGE_END)]
    assert "ViTModel.from_pretrained" in block and 'subfolder="mae"' in block and "AutoTokenizer" not in block
    assert "image.png" in block and "some text" not in block
    monkeypatch.chdir(tmp_path)
    shutil.copy(digit_png(tmp_path), tmp_path / "image.png")
    scope: dict = {}
    exec(usage_snippet("transformers", "masked_image", str(out), False), scope)
    model = hftl.load(out)
    with torch.no_grad():
        ours = model.forward_features({"pixel_values": load_images(["image.png"], model.transform(train=False))})
    torch.testing.assert_close(scope["features"], ours, atol=1e-5, rtol=1e-4)
    assert scope["classifier"].config.num_labels == 2 and type(scope["mae"]).__name__ == "ViTMAEForPreTraining"


def test_a_timm_classifier_starts_from_it_and_its_card_shows_the_chain(pretrained, tmp_path, tiny_mae):
    from conftest import tiny_train_overrides
    from transformers import ViTModel

    out = pretrained.output_dir
    result = hftl.train(None, tiny_train_overrides(tmp_path / "clf", **TIMM_VIT, **{
        "model.init_from": out, "data.max_train_samples": 64, "data.max_eval_samples": 32, "train.epochs": 1}))
    card = (result.output_dir / "README.md").read_text()
    assert "Steps before this one" in card and f"masked_image (finetune) of `{tiny_mae}`" in card
    # The masked_image card names the timm architecture these weights fill, as TIMM_VIT does.
    assert "embed_dim: 32, depth: 2, num_heads: 2, patch_size: 8, mlp_ratio: 2" in (out / "README.md").read_text()
    # Every encoder tensor went into the timm ViT (q, k, v joined); only the new head kept its initialisation
    # (checked on a fresh copy: the run above has trained since).
    from hftl.backbones import create_model
    from hftl.tasks.base import init_weights_from

    fresh = create_model("timm:vit_base_patch16_224", ["a", "b"], pretrained=False, image_size=SIZE,
                         embed_dim=32, depth=2, num_heads=2, patch_size=8, mlp_ratio=2)
    init_weights_from(fresh, str(out))
    assert sorted(fresh.transfer_report.kept) == ["head.bias", "head.weight"], fresh.transfer_report.kept
    encoder = ViTModel.from_pretrained(out, add_pooling_layer=False)
    assert torch.equal(fresh.net.patch_embed.proj.weight, encoder.embeddings.patch_embeddings.projection.weight)
    assert torch.equal(fresh.net.blocks[1].attn.qkv.weight[:32], encoder.layers[1].attention.q_proj.weight)


def test_predict_draws_masked_reconstruction_and_original(pretrained, tmp_path, capsys):
    from PIL import Image

    image = digit_png(tmp_path)
    assert cli(["predict", str(pretrained.output_dir), str(image)]) == 0
    written = tmp_path / "digit0.inpainting.png"
    assert capsys.readouterr().out.strip() == f"{image}: {written}"
    scale = 128 // SIZE  # small panels are enlarged so that the patches show
    with Image.open(written) as png:
        assert png.size == (3 * SIZE * scale, SIZE * scale)
        panels = torch.from_numpy(np.array(png.convert("RGB")))
    masked = panels[::scale, : SIZE * scale : scale]
    grey = [bool((masked[r:r + PATCH, c:c + PATCH] == 128).all()) for r in range(0, SIZE, PATCH)
            for c in range(0, SIZE, PATCH)]
    assert sum(grey) == 12  # 75% of 16 patches hidden, shown at the mean colour
    assert cli(["predict", str(pretrained.output_dir), str(image), "--output-dir", str(tmp_path / "pics")]) == 0
    assert (tmp_path / "pics" / "digit0.inpainting.png").is_file()
    assert hftl.predict(pretrained.output_dir, [image]) == [str(written)]  # the task's predict hook, same place


def test_eval_reports_the_held_out_loss(pretrained, tmp_path, capsys):
    assert cli(["eval", str(pretrained.output_dir)]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["examples"] == 64
    assert scored["loss"] == pytest.approx(pretrained.metrics["loss"], abs=1e-6)  # the same masks as the run's
    folder = tmp_path / "photos"  # other data, a plain folder of images: every one of them is scored
    folder.mkdir()
    for i in range(5):
        digit_png(folder, i)
    other = hftl.evaluate(pretrained.output_dir, [f"data.id={folder}"])
    assert other["examples"] == 5 and 0 < other["loss"] < 2


def test_resume_draws_the_same_masks(tiny_mae, tmp_path):
    from PIL import Image

    from hftl.refs import resolve_model
    from hftl.tasks import get_task_impl
    from hftl.tasks.masked_image import MaskedImages

    rows = [{"image": Image.new("RGB", (8, 8), (i * 20, 0, 0))} for i in range(4)]
    model = get_task_impl("masked_image").create_model(resolve_model(str(tiny_mae)), [])
    first, again = (MaskedImages(rows, model.transform(train=True), 42, 16) for _ in range(2))
    first.set_epoch(3), again.set_epoch(3)
    assert all(torch.equal(first[i]["noise"], again[i]["noise"]) and
               torch.equal(first[i]["pixel_values"], again[i]["pixel_values"]) for i in range(4))
    again.set_epoch(4)
    assert not torch.equal(first[0]["noise"], again[0]["noise"])  # a new epoch, new masks
    # A run resumed from its first epoch's checkpoint ends with the uninterrupted run's weights, bit for bit.
    quick = {"data.max_train_samples": 96, "data.max_eval_samples": 32, "train.epochs": 2, "data.augment": True}
    whole = hftl.train(None, mae(tiny_mae, tmp_path / "whole", **quick))
    cut = tmp_path / "cut"
    hftl.train(None, mae(tiny_mae, cut, **quick))
    checkpoints = sorted((cut / "checkpoints").iterdir(), key=lambda p: int(p.name.split("-")[1]))
    shutil.rmtree(checkpoints[-1])  # as if killed before the second epoch's checkpoint
    hftl.train(None, mae(tiny_mae, cut, **quick, **{"train.resume": "latest"}))
    a, b = load_file(whole.output_dir / "mae" / "model.safetensors"), load_file(cut / "mae" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_it_starts_from_a_vit_or_from_its_own_output(pretrained, tmp_path):
    from transformers import ViTConfig, ViTModel

    from hftl.backbones.hf_masked_image import MaskedAutoencoder
    from hftl.refs import resolve_model

    torch.manual_seed(1)
    vit_folder = tmp_path / "vit"
    vit = ViTModel(ViTConfig(**{k: v for k, v in TINY.items() if not k.startswith("decoder")}), add_pooling_layer=False)
    vit.save_pretrained(vit_folder)
    processor().save_pretrained(vit_folder)
    model = MaskedAutoencoder.create(resolve_model(str(vit_folder)), decoder_hidden_size=16)
    assert torch.equal(model.inner.vit.layers[1].mlp.fc2.weight, vit.layers[1].mlp.fc2.weight)
    assert "the decoder is new" in model.load_summary and model.config.decoder_hidden_size == 16
    again = MaskedAutoencoder.create(resolve_model(str(pretrained.output_dir)))  # its mae/ folder: decoder too
    saved = hftl.load(pretrained.output_dir)
    assert torch.equal(again.net.decoder.decoder_pred.weight, saved.net.decoder.decoder_pred.weight)
    assert "encoder and decoder" in again.load_summary
    wider = MaskedAutoencoder.create(resolve_model(str(pretrained.output_dir)), image_size=48)  # a 6x6 patch grid
    assert wider.inner.vit.embeddings.position_embeddings.shape == (1, 37, 32)  # its own sin-cos, the rest copied
    assert torch.equal(wider.net.decoder.decoder_pred.weight, saved.net.decoder.decoder_pred.weight)
    groups = again.layer_groups()  # embeddings, each layer, the final norm; the decoder is the head
    assert len(groups) == 4 and all(not n.startswith("decoder") for g in groups for n in g)
    assert again.head_name == "decoder"


def test_bad_input_is_one_clear_line(pretrained, tiny_mae, tmp_path, capsys):
    from transformers import ViTMAEConfig

    for ratio in (0, 1, 1.5, -0.2):
        with pytest.raises(ConfigError, match="masked_image.mask_ratio must be between 0 and 1"):
            hftl.train(None, mae(tiny_mae, tmp_path / "r", **{"masked_image.mask_ratio": ratio}))
    with pytest.raises(ConfigError, match="hides all 16 patches"):
        hftl.train(None, mae(tiny_mae, tmp_path / "r", **{"masked_image.mask_ratio": 0.95}))
    with pytest.raises(ConfigError, match="data.image_size 36 is not a multiple of the model's patch size 8.*32 or 40"):
        hftl.train(None, mae(tiny_mae, tmp_path / "s", **{"data.image_size": 36}))
    with pytest.raises(ConfigError, match="data.image_size 8 is smaller than the model's patch size 16"):
        hftl.train(None, mae(tiny_mae, tmp_path / "s", **{"data.image_size": 8, "model.kwargs": "{patch_size: 16}"}))
    with pytest.raises(ConfigError, match="'decodr_hidden_size' is not a ViTMAE config field"):
        hftl.train(None, mae(tiny_mae, tmp_path / "k", **{"model.kwargs": "{decodr_hidden_size: 16}"}))
    with pytest.raises(ConfigError, match="masked_image reads transformers ViT / ViTMAE models; 'timm:resnet18"):
        hftl.train(None, mae("timm:resnet18", tmp_path / "t"))
    with pytest.raises(ConfigError, match="strategy lora does not apply to masked_image"):
        hftl.train(None, mae(tiny_mae, tmp_path / "l", **{"strategy.name": "lora"}))
    config_only = tmp_path / "config-only"
    ViTMAEConfig(**TINY).save_pretrained(config_only)
    with pytest.raises(ModelNotFoundError, match="has no image processor"):  # pretrained weights need their normalisation
        hftl.train(None, mae(config_only, tmp_path / "c"))
    assert cli(["predict", str(pretrained.output_dir), str(tmp_path / "missing.png")]) == 2
    assert "missing.png' does not exist" in capsys.readouterr().err


def test_scratch_from_a_config_alone(tmp_path):
    from transformers import ViTMAEConfig

    from hftl.backbones.hf_masked_image import MaskedAutoencoder
    from hftl.refs import resolve_model

    folder = tmp_path / "config-only"
    ViTMAEConfig(**TINY).save_pretrained(folder)
    model = MaskedAutoencoder.create(resolve_model(str(folder)), pretrained=False)
    assert list(model.image_processor.image_mean) == [0.5] * 3  # transformers' ViT defaults, as run_mae.py uses
    assert model({"pixel_values": torch.randn(2, 3, SIZE, SIZE)}).ndim == 0


def test_partial_freezes_the_encoder_from_the_input(tiny_mae, tmp_path):
    from transformers import ViTMAEForPreTraining

    out = tmp_path / "partial"  # groups: embeddings, layer 0, layer 1, final norm; the decoder (head) always trains
    hftl.train(None, mae(tiny_mae, out, **{"strategy.name": "partial", "strategy.frozen_groups": 2, "train.epochs": 1,
                                          "data.max_train_samples": 64, "data.max_eval_samples": 32}))
    before = ViTMAEForPreTraining.from_pretrained(tiny_mae).state_dict()
    after = ViTMAEForPreTraining.from_pretrained(out / "mae").state_dict()
    same = {k: torch.equal(before[k], after[k]) for k in ("vit.embeddings.patch_embeddings.projection.weight",
                                                          "vit.layers.0.mlp.fc1.weight", "vit.layers.1.mlp.fc1.weight",
                                                          "decoder.decoder_pred.weight")}
    assert list(same.values()) == [True, True, False, False], same
