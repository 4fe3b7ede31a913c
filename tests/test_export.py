"""ONNX export: the exported graph gives PyTorch's logits under onnxruntime, at any batch size."""

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from conftest import tiny_train_overrides

import hftl
from hftl.cli import main as cli_main
from hftl.errors import ConfigError
from hftl.export import export_onnx

pytestmark = pytest.mark.usefixtures("one_thread")


def check_export(folder, tmp_path) -> dict:
    """Export a copy of ``folder``; assert onnxruntime matches hftl's model on a batch of another size."""
    import onnxruntime

    from hftl.api import _task_of
    from hftl.tasks import get_task_impl

    copy = tmp_path / "exported"
    shutil.copytree(folder, copy)
    path = export_onnx(copy)
    assert path == copy / "onnx" / "model.onnx"
    record = json.loads((copy / "onnx" / "export.json").read_text())
    assert record["max_abs_diff_vs_pytorch"] <= 1e-4 and record["opset"] == 18
    model = hftl.load(copy)
    batch, _ = get_task_impl(_task_of(model)).export_inputs(model, batch_size=5)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in batch.items()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, model(batch).numpy(), atol=1e-4)
    card = (copy / "README.md").read_text()
    assert card.count("<!-- hftl:onnx -->") == 1 and "opset 18" in card
    return record


def test_an_image_classifier_exports_and_matches_pytorch(tmp_path, capsys):
    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1}))
    record = check_export(out, tmp_path)
    assert record["inputs"] == {"pixel_values": ["batch", 3, 32, 32]}
    # Again, from the command line: the file and the card's block are replaced, not added to.
    assert cli_main(["export", str(tmp_path / "exported"), "--format", "onnx"]) == 0
    assert capsys.readouterr().out.strip().endswith("model.onnx")
    assert (tmp_path / "exported" / "README.md").read_text().count("<!-- hftl:onnx -->") == 1


def test_export_without_onnxruntime_says_what_to_install(tmp_path, monkeypatch):
    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1}))
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import then fails, as when it is not installed
    with pytest.raises(ConfigError, match=r"pip install 'hftl\[onnx\]'"):
        export_onnx(out)
    assert not (out / "onnx").exists()
