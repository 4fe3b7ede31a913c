"""Weights across architectures: converted exactly, resampled where shapes differ, partial where depths differ."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_train_overrides

import hftl
from hftl.convert import transfer_weights
from hftl.errors import ConfigError

TINY_VIT = {"embed_dim": 32, "depth": 2, "num_heads": 2, "mlp_ratio": 2.0}


def timm_vit(img_size: int = 32, patch_size: int = 8, **kw):
    import timm

    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=3, img_size=img_size,
                             patch_size=patch_size, **{**TINY_VIT, **kw})


@pytest.fixture(scope="module")
def hf_vit(tmp_path_factory):
    """A transformers ViT (saved as save_pretrained writes it) with timm's layer-norm epsilon."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf_vit")
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64, layer_norm_eps=1e-6)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def hf_ast(tmp_path_factory):
    """An audio spectrogram transformer: 1-channel 16x16 patches on a 3x5 grid, class + distillation tokens."""
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf_ast")
    ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       patch_size=16, num_mel_bins=36, max_length=56, frequency_stride=10, time_stride=10,
                       layer_norm_eps=1e-6)).save_pretrained(folder)
    return folder


def test_transformers_vit_converts_exactly_to_timm(hf_vit):
    from transformers import ViTModel

    target = timm_vit().eval()
    report = transfer_weights(target, str(hf_vit), skip=("head.",))
    assert not report.converted and report.kept == ["head.weight", "head.bias"]
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        theirs = ViTModel.from_pretrained(hf_vit).eval()(pixel_values=x).last_hidden_state
        ours = target.forward_features(x)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)  # the same network, renamed


def test_position_embeddings_resample_to_another_grid(hf_vit):
    target = timm_vit(img_size=48)  # a 6x6 patch grid instead of 4x4
    report = transfer_weights(target, str(hf_vit), skip=("head.",))
    assert "4x4" not in report.converted["pos_embed"] and "6x6 grid" in report.converted["pos_embed"]
    assert target.pos_embed.shape == (1, 37, 32)
    from transformers import ViTModel

    hf = ViTModel.from_pretrained(hf_vit)  # the class token and its position are copied as they are
    torch.testing.assert_close(target.pos_embed[:, :1], hf.embeddings.position_embeddings[:, :1])
    torch.testing.assert_close(target.cls_token, hf.embeddings.cls_token)


def test_audio_transformer_starts_an_image_model(hf_ast, tmp_path):
    """Audio-to-visual transfer: the AST's blocks move into a timm ViT; patches go from 1 to 3 channels."""
    from transformers import ASTModel

    target = timm_vit(img_size=32, patch_size=16)
    report = transfer_weights(target, str(hf_ast), skip=("head.",))
    assert set(report.converted) == {"pos_embed", "patch_embed.proj.weight"}
    ast = ASTModel.from_pretrained(hf_ast)
    attention = ast.layers[1].attention
    torch.testing.assert_close(target.blocks[1].attn.qkv.weight, torch.cat(
        [attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight]))
    # One input channel spread over three: the same response to a gray image.
    torch.testing.assert_close(target.patch_embed.proj.weight.sum(1),
                               ast.embeddings.patch_embeddings.projection.weight[:, 0])
    assert "dist_token" in report.unused  # timm's plain ViT has one prefix token

    out = tmp_path / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{
        "model.id": "timm:vit_tiny_patch16_224", "model.kwargs": json.dumps({**TINY_VIT, "patch_size": 16}),
        "model.init_from": str(hf_ast), "train.epochs": 1}))
    card = (result.output_dir / "README.md").read_text()
    assert f"Weights transferred from | `{hf_ast}`" in card and "2 converted" in card
    assert f"(weights from `{hf_ast}`)" in card and "random init" not in card  # not an untrained architecture
    assert "license: unknown" in card  # the transferred weights' license is not ours to set


def test_partial_transfer_between_depths_and_lora_reload(tmp_path):
    from timm.models import save_for_hf

    shallow = timm_vit(depth=1)
    save_for_hf(shallow, str(tmp_path / "shallow"), safe_serialization=True)
    deep = timm_vit(depth=3)
    report = transfer_weights(deep, str(tmp_path / "shallow"), skip=("head.",))
    assert any(n.startswith("blocks.0.") for n in report.copied)
    assert all(not n.startswith("blocks.0.") for n in report.kept) and any(n.startswith("blocks.2.") for n in report.kept)
    torch.testing.assert_close(deep.blocks[0].attn.qkv.weight, shallow.blocks[0].attn.qkv.weight)

    # LoRA freezes the base: its unfilled (random) block could not be rebuilt on reload, so it is refused...
    lora = {"model.id": "timm:vit_tiny_patch16_224", "model.init_from": str(tmp_path / "shallow"),
            "strategy.name": "lora", "train.epochs": 1}
    with pytest.raises(ConfigError, match="did not come from model.init_from"):
        hftl.train(None, tiny_train_overrides(tmp_path / "refused", **lora,
                                              **{"model.kwargs": json.dumps({**TINY_VIT, "depth": 3})}))
    # ...and an adapter on fully transferred weights reloads onto the same transferred base.
    out = tmp_path / "lora"
    result = hftl.train(None, tiny_train_overrides(out, **lora, **{"model.kwargs": json.dumps({**TINY_VIT, "depth": 1})}))
    reloaded = hftl.load(out)
    assert reloaded.net.base_model.model.blocks[0].attn.qkv.base_layer.weight.equal(shallow.blocks[0].attn.qkv.weight)
    assert hftl.evaluate(out)["loss"] == pytest.approx(result.metrics["loss"], rel=1e-5)


def test_nothing_fits_is_a_clear_error(tmp_path):
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("test_resnet", num_classes=0), str(tmp_path / "resnet"), safe_serialization=True)
    with pytest.raises(ConfigError, match="no tensor of .* fits the target"):
        transfer_weights(timm_vit(), str(tmp_path / "resnet"), skip=("head.",))
    with pytest.raises(ConfigError, match="strategy scratch"):
        hftl.train(None, tiny_train_overrides(tmp_path / "x", **{"model.init_from": str(tmp_path / "resnet"),
                                                                  "strategy.name": "scratch"}))
