"""Bad input gets one clear error naming the thing and the fix; local data sources work."""

import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import tiny_train_overrides

import hftl
from hftl.config import DataConfig
from hftl.data import load_labelled_data
from hftl.errors import DataError, ModelNotFoundError, UnsafeWeightsError
from hftl.refs import resolve_model


def _image_folder(root: Path, per_class: int = 6) -> Path:
    from hftl.data import _digits

    images, labels, _ = _digits()
    counts = {}
    for image, label in zip(images, labels):
        if label > 2 or counts.get(label, 0) >= per_class:
            continue
        counts[label] = counts.get(label, 0) + 1
        folder = root / f"class_{label}"
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{counts[label]}.png")
    return root


def test_image_folder_trains_and_counts_corrupt_files(tmp_path):
    root = _image_folder(tmp_path / "images")
    (root / "class_0" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really an image")
    (root / "class_1" / "truncated.jpg").write_bytes((root / "class_1" / "1.png").read_bytes()[:40])
    (root / "class_1" / "notes.txt").write_text("ignored: not an image extension")
    data = load_labelled_data(DataConfig(id=str(root)), "image_classification")
    assert data.label_names == ["class_0", "class_1", "class_2"]
    assert data.skipped == {"corrupt or missing image": 2}
    assert len(data.train) + len(data.validation) == 18
    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"data.id": str(root), "train.epochs": 1}))
    metrics = __import__("json").loads((out / "metrics.json").read_text())
    assert metrics["skipped_examples"] == {"corrupt or missing image": 2}


def test_csv_of_paths_and_labels(tmp_path):
    root = _image_folder(tmp_path / "images")
    rows = ["file,kind"] + [f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(root.rglob("*.png"))]
    (tmp_path / "data.csv").write_text("\n".join(rows))
    data = load_labelled_data(DataConfig(id=str(tmp_path / "data.csv"), image_column="file", label_column="kind"),
                              "image_classification")
    assert data.label_names == ["class_0", "class_1", "class_2"]


def test_missing_label_column_names_the_columns(tmp_path):
    root = _image_folder(tmp_path / "images")
    (tmp_path / "data.csv").write_text("file,kind\n" + "\n".join(
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in root.rglob("*.png")))
    with pytest.raises(DataError, match="Column 'label' is not in .*file, kind"):
        load_labelled_data(DataConfig(id=str(tmp_path / "data.csv"), image_column="file"), "image_classification")


def test_missing_image_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        hftl.train(None, tiny_train_overrides(tmp_path / "run", **{"data.id": str(tmp_path / "nothing/")}))


def test_empty_image_folder(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        load_labelled_data(DataConfig(id=str(tmp_path / "empty")), "image_classification")
    (tmp_path / "empty" / "cats").mkdir()
    with pytest.raises(DataError, match="no readable images"):
        load_labelled_data(DataConfig(id=str(tmp_path / "empty")), "image_classification")


def test_unknown_builtin_set():
    with pytest.raises(DataError, match="Built-in sets: digits"):
        load_labelled_data(DataConfig(id="builtin:nope"), "image_classification")


def test_validation_split_is_seeded_and_stratified():
    a = load_labelled_data(DataConfig(), "image_classification", seed=3)
    b = load_labelled_data(DataConfig(), "image_classification", seed=3)
    assert a.validation["label"] == b.validation["label"]
    counts = __import__("collections").Counter(a.validation["label"])
    assert max(counts.values()) - min(counts.values()) <= 2  # stratified: every class ~ equally held out


def test_unknown_model_id_offline_fails_fast_with_ways_out(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("timm/resnet18.a1_in1k")
    assert time.monotonic() - started < 10
    message = str(e.value)
    assert "timm/resnet18.a1_in1k" in message and "local folder" in message and "HF_HUB_OFFLINE" in message


def test_unreachable_hub_fails_fast_in_a_fresh_process(tmp_path):
    """Not offline, but the endpoint refuses connections: the command stops within seconds."""
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "0",
           "PATH": "/usr/bin:/bin", "HF_HUB_ETAG_TIMEOUT": "3"}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "train", "model.id=someone/does-not-exist",
                           f"output_dir={tmp_path / 'o'}"], capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.monotonic() - started
    assert proc.returncode == 2
    assert "someone/does-not-exist" in proc.stderr and "Traceback" not in proc.stderr
    assert elapsed < 60  # imports included; the Hub part itself gives up at once


def test_missing_model_folder():
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model("./no/such/folder")


def test_pickle_only_weights_are_refused_unless_allowed(tmp_path):
    import timm
    import torch
    from timm.models import save_for_hf

    folder = tmp_path / "pickled"
    save_for_hf(timm.create_model("test_resnet"), str(folder), safe_serialization=False)
    assert (folder / "pytorch_model.bin").is_file()
    with pytest.raises(UnsafeWeightsError, match="allow_pickle"):
        resolve_model(str(folder))
    assert resolve_model(str(folder), allow_pickle=True).library == "timm"
    assert torch is not None


def test_cli_prints_one_line_errors(tmp_path, capsys):
    from hftl.cli import main

    assert main(["train", "train.epoch=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hftl: error: Unknown config key 'train.epoch'") and "Traceback" not in err


def test_train_help_lists_keys(capsys):
    from hftl.cli import main

    assert main(["train", "--help"]) == 0
    assert "strategy.name" in capsys.readouterr().out


def test_import_is_side_effect_free():
    """A notebook's `import hftl` parses no argv, prints nothing and does not load torch."""
    code = ("import sys; sys.argv=['x', '--bogus']; import hftl; "
            "assert 'torch' not in sys.modules; print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout == "ok\n" and proc.returncode == 0
