"""Nothing lost, every fault one line: output folders, configs, data files and damaged folders."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_overrides
from PIL import Image

import hftl
from hftl.cli import main as cli
from hftl.errors import ConfigError, DataError, ModelNotFoundError, OutputError

pytestmark = pytest.mark.usefixtures("one_thread")

QUICK = {"train.epochs": 1, "data.max_train_samples": 32}


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hftl: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"
    hftl.train(None, tiny_train_overrides(out, **QUICK))
    return out


# ------------------------------------------------------------------------------ output folders

def test_a_second_run_on_a_locked_folder_fails_at_once(tmp_path):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from hftl.output_dir import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.time()
        with pytest.raises(ConfigError, match="in use by another hftl run \\(pid"):
            hftl.train(None, tiny_train_overrides(out, **QUICK))
        assert time.time() - started < 30
        assert not (out / "log.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    hftl.train(None, tiny_train_overrides(out, **QUICK))  # the lock went with its process
    assert (out / "model.safetensors").is_file()


def test_a_folder_of_the_users_files_is_never_written_into(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "README.md").write_text("my notes")
    with pytest.raises(ConfigError, match="not an hftl run \\(it holds README.md\\)"):
        hftl.train(None, tiny_train_overrides(out, **QUICK))
    assert (out / "README.md").read_text() == "my notes"


def test_an_empty_output_dir_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="output_dir is empty"):
        hftl.train(None, tiny_train_overrides("", **QUICK))
    assert list(tmp_path.iterdir()) == []


def test_a_finished_model_is_not_replaced_even_without_checkpoints(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    shutil.rmtree(out / "checkpoints")  # as after a run with few checkpoints kept
    before = (out / "model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match="already holds a trained model"):
        hftl.train(None, tiny_train_overrides(out, **QUICK))
    assert (out / "model.safetensors").read_bytes() == before


def test_a_full_disk_during_a_checkpoint_is_one_line_and_leaves_no_temporary_folder(tmp_path, monkeypatch):
    from accelerate import Accelerator

    def full_disk(self, output_dir, **kwargs):
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        (Path(output_dir) / "model.safetensors").write_bytes(b"\0" * 100)
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos; basic_ios::clear: iostream error")

    monkeypatch.setattr(Accelerator, "save_state", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OutputError, match="could not be written.*Free disk space"):
        hftl.train(None, tiny_train_overrides(out, **QUICK))
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_a_full_disk_in_the_final_save_says_how_to_finish(finished, tmp_path, monkeypatch):
    import hftl.model
    import hftl.run

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hftl.model, "save_output", full_disk)
    monkeypatch.setattr(hftl.run, "save_output", full_disk)
    with pytest.raises(OutputError, match="No space left on device.*train.resume=latest"):
        hftl.train(None, tiny_train_overrides(tmp_path / "run", **QUICK))


# ------------------------------------------------------------------------------ configs

@pytest.mark.parametrize("override, key", [
    ("train.max_grad_norm=-1", "train.max_grad_norm"), ("train.backbone_lr_scale=-0.5", "train.backbone_lr_scale"),
    ("strategy.layer_decay=-0.7", "strategy.layer_decay"), ("train.lr=0", "train.lr"), ("train.lr=-1", "train.lr"),
    ("data.image_size=0", "data.image_size"), ("data.image_size=-5", "data.image_size"),
    ("train.warmup_ratio=5", "train.warmup_ratio"), ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"), ("train.weight_decay=-1", "train.weight_decay"),
    ("strategy.lora_r=0", "strategy.lora_r"), ("data.num_workers=-2", "data.num_workers"),
    ("train.seed=-1", "train.seed"), ("train.seed=99999999999", "train.seed"),
    ("data.max_train_samples=0", "data.max_train_samples"),
])
def test_out_of_range_values_are_one_line_errors(override, key, capsys):
    assert cli(["train", override]) == 2
    one_line_error(capsys, key)


def test_yaml_with_tabs_bad_bytes_or_an_alias_bomb_is_one_line(tmp_path, capsys):
    tabs = tmp_path / "tabs.yaml"
    tabs.write_text("train:\n\tepochs: 2\n")
    bad = tmp_path / "bytes.yaml"
    bad.write_bytes(b"train:\n  epochs: 2 # caf\xe9\n")
    bomb = tmp_path / "bomb.yaml"
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]" for i in range(8)]
    bomb.write_text("\n".join(levels) + "\ndata:\n  classes: *i\n")
    for path, needle in ((tabs, "never tabs"), (bad, "not UTF-8"), (bomb, "expands to more than")):
        assert cli(["train", str(path)]) == 2
        one_line_error(capsys, str(path), needle)


def test_a_tracker_that_is_not_installed_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="trackio is not installed"):
        hftl.train(None, tiny_train_overrides(tmp_path / "run", **QUICK, **{"train.tracker": "trackio"}))


def test_top_k_must_be_positive(finished, capsys):
    for value in ("-3", "0"):
        with pytest.raises(SystemExit):
            cli(["predict", str(finished), "x.png", "--top-k", value])
        assert "must be a whole number of 1 or more" in capsys.readouterr().err


# ------------------------------------------------------------------------------ data

def test_sixteen_bit_and_float_images_keep_their_contrast(tmp_path):
    from hftl.images import to_rgb

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    png = tmp_path / "deep.png"
    Image.fromarray((ramp * 65535).astype(np.uint16)).save(png)
    tiff = tmp_path / "float.tif"
    Image.fromarray(ramp, mode="F").save(tiff)
    for path in (png, tiff):
        with Image.open(path) as img:
            values = np.asarray(to_rgb(img))[..., 0].astype(int)
        assert values.min() == 0 and values.max() == 255, path  # not saturated, not black
        assert len(np.unique(values)) > 50


def _image_csv(tmp_path: Path, labels: list) -> Path:
    for i in range(len(labels)):
        Image.new("RGB", (16, 16), (i * 20 % 255, 0, 0)).save(tmp_path / f"{i}.png")
    import pandas as pd

    path = tmp_path / "images.csv"
    pd.DataFrame({"image": [f"{i}.png" for i in range(len(labels))], "label": labels}).to_csv(path, index=False)
    return path


def test_empty_or_fractional_image_labels_are_clear_errors(tmp_path):
    from hftl.config import DataConfig
    from hftl.data import load_labelled_data

    empty = _image_csv(tmp_path, ["cat", None, "dog", "cat", "dog", "cat"])
    with pytest.raises(DataError, match="6 empty values|1 empty values"):
        load_labelled_data(DataConfig(id=str(empty)), "image_classification")
    floats = _image_csv(tmp_path, [0.1, 0.37, 0.5, 0.1, 0.37, 0.5])
    with pytest.raises(DataError, match="not classes"):
        load_labelled_data(DataConfig(id=str(floats)), "image_classification")


@pytest.mark.parametrize("content, needle", [(b"", "is empty"), (b"text,label\ncaf\xe9 au lait,a\n", "not UTF-8")])
def test_empty_or_non_utf8_text_files_are_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "texts.csv"
    path.write_bytes(content)
    assert cli(["train", "task=text_classification", f"data.id={path}", "model.id=timm:resnet18",
                f"output_dir={tmp_path / 'out'}"]) == 2
    one_line_error(capsys, str(path), needle)


# ------------------------------------------------------------------------------ damaged folders

@pytest.mark.parametrize("damaged", ["hftl.json", "config.json", "model.safetensors"])
def test_a_damaged_output_folder_names_the_file(finished, tmp_path, capsys, damaged):
    folder = tmp_path / "copy"
    shutil.copytree(finished, folder)
    (folder / damaged).write_bytes(b"\x00garbage{")
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32)).save(image)
    assert cli(["predict", str(folder), str(image)]) == 2
    one_line_error(capsys, str(folder))
    with pytest.raises(ModelNotFoundError):
        hftl.load(folder)


def test_an_adapter_whose_base_folder_is_gone(tmp_path, pretrained_folder):
    base = tmp_path / "base"
    shutil.copytree(pretrained_folder, base)
    out = tmp_path / "lora"
    hftl.train(None, tiny_train_overrides(out, **QUICK, **{"model.id": str(base), "strategy.name": "lora"}))
    shutil.rmtree(base)
    with pytest.raises(ModelNotFoundError, match="no longer exists"):
        hftl.load(out)


def test_debug_shows_the_traceback(tmp_path):
    env = dict(os.environ, HFTL_DEBUG="1")
    proc = subprocess.run([sys.executable, "-m", "hftl.cli", "train", "train.lr=-1"], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "train.lr" in proc.stderr


def test_a_validation_fraction_too_small_for_the_classes_is_one_line(capsys, tmp_path):
    assert cli(["train", "data.validation_fraction=0.0001", f"output_dir={tmp_path / 'run'}"]) == 2
    one_line_error(capsys, "data.validation_fraction=0.0001", "10 classes")


def test_a_study_yaml_bomb_is_one_line(tmp_path, capsys):
    bomb = tmp_path / "study.yaml"
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"] + [
        f"{chr(98 + i)}: &{chr(98 + i)} [" + ", ".join([f"*{chr(97 + i)}"] * 9) + "]" for i in range(8)]
    bomb.write_text("\n".join(levels) + "\nstudy:\n  arms: *i\n")
    assert cli(["study", str(bomb)]) == 2
    one_line_error(capsys, "expands to more than")


# ------------------------------------------------------------------------------ feature cache

class _Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.ones(1))

    def forward_features(self, batch):
        return batch["x"] * 2

    def forward(self, batch):
        return self.forward_features(batch)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int):
        from datasets import Dataset

        self.ds = Dataset.from_dict({"label": [i % 3 for i in range(n)]})
        self.x = torch.arange(n * 4, dtype=torch.float32).reshape(n, 4)

    def __len__(self):
        return len(self.ds)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.ds[i]["label"]}


def _cache_file(cache_root: Path, before: set) -> Path:
    return next(p for p in (cache_root / "hftl_cache" / "features").glob("*.safetensors") if p not in before)


@pytest.mark.parametrize("damage", ["truncated", "empty", "random", "wrong labels", "wrong shape"])
def test_a_damaged_or_altered_feature_cache_is_recomputed(cache_root, damage, caplog):
    from safetensors.torch import save_file

    from hftl.methods.feature_cache import cached_features

    root = cache_root / "hftl_cache" / "features"
    before = set(root.glob("*.safetensors")) if root.is_dir() else set()
    data, key = _Rows(9), f"reliability-{damage}"
    feats, labels, hit = cached_features(_Tiny(), data, key, "train", False, fingerprint="fp")
    assert not hit
    path = _cache_file(cache_root, before)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:40])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "random":
        path.write_bytes(os.urandom(500))
    elif damage == "wrong labels":  # valid file, right shape, labels of another split
        save_file({"features": feats, "labels": (labels + 1) % 3}, str(path))
    else:
        save_file({"features": feats[:5], "labels": labels[:5]}, str(path))
    again, again_labels, hit = cached_features(_Tiny(), data, key, "train", False, fingerprint="fp")
    assert not hit and torch.equal(again, feats) and torch.equal(again_labels, labels)
    assert cached_features(_Tiny(), data, key, "train", False, fingerprint="fp")[2]  # rewritten whole: a hit


def test_an_unwritable_feature_cache_runs_uncached(monkeypatch, caplog):
    import safetensors.torch

    from hftl.methods.feature_cache import cached_features

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    feats, labels, hit = cached_features(_Tiny(), _Rows(6), "reliability-full", "train", False, fingerprint="fp")
    assert not hit and feats.shape == (6, 4)
    assert "running without it" in caplog.text


def test_a_read_only_output_folder_is_one_line(tmp_path, monkeypatch, capsys):
    # Root ignores permission bits, so the refusal the kernel would give is simulated at the point hftl opens it.
    import builtins

    real_open = builtins.open

    def read_only(path, *args, **kwargs):
        if str(path).endswith(".hftl.lock"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", read_only)
    assert cli(["train", *tiny_train_overrides(tmp_path / "run", **QUICK)]) == 2
    one_line_error(capsys, "cannot be written (Permission denied)")


def test_a_checkpoint_missing_its_weights_is_one_line(finished, tmp_path):
    from hftl.errors import CheckpointError

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    (next((out / "checkpoints").glob("checkpoint-*")) / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="incomplete \\(no model.safetensors\\)"):
        hftl.train(None, tiny_train_overrides(out, **QUICK, **{"train.resume": "latest"}))


def test_a_checkpoint_whose_weights_changed_is_refused_by_its_checksum(finished, tmp_path):
    from hftl.errors import CheckpointError

    out = tmp_path / "run"
    shutil.copytree(finished, out)
    weights = next((out / "checkpoints").glob("checkpoint-*")) / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in a tensor: the file still loads, with wrong weights
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its checksums \\(model.safetensors changed"):
        hftl.train(None, tiny_train_overrides(out, **QUICK, **{"train.resume": "latest"}))


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    from hftl.errors import HftlError

    assert cli(["predict", str(tmp_path / "nothing-here"), "x.png"]) == 2
    one_line_error(capsys, "nothing-here")
    with pytest.raises(HftlError):
        cli(["--debug", "predict", str(tmp_path / "nothing-here"), "x.png"])


def test_an_audio_clip_with_nan_samples_is_skipped_and_named(tmp_path, caplog):
    import soundfile as sf

    from hftl.audio import audio_folder

    for label in ("yes", "no"):
        (tmp_path / label).mkdir()
        for i in range(2):
            sf.write(tmp_path / label / f"{i}.wav", np.sin(np.arange(1600) * (i + 1) / 10).astype(np.float32), 16000,
                     subtype="FLOAT")
    bad = np.zeros(1600, dtype=np.float32)
    bad[100] = np.nan
    sf.write(tmp_path / "yes" / "nan.wav", bad, 16000, subtype="FLOAT")
    paths, labels, names, skipped = audio_folder(tmp_path)
    assert skipped == 1 and len(paths) == 4 and names == ["no", "yes"]
    assert "nan.wav" in caplog.text


def test_checking_a_long_recording_does_not_decode_it_whole(tmp_path):
    import tracemalloc

    import soundfile as sf

    from hftl.audio import is_readable_audio

    path = tmp_path / "long.wav"
    with sf.SoundFile(path, "w", samplerate=16000, channels=1, subtype="PCM_16") as f:
        for _ in range(20):  # 20 minutes: 76 MB as float32 if decoded at once
            f.write(np.zeros(16000 * 60, dtype=np.float32))
    tracemalloc.start()
    assert is_readable_audio(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 8 * 2**20, peak


def test_a_crash_while_writing_the_outputs_leaves_no_half_model(tmp_path, monkeypatch):
    import hftl.cards

    def crash(info):
        raise OSError(5, "Input/output error")  # after the weights and hftl.json were written (into staging)

    monkeypatch.setattr(hftl.cards, "render_card", crash)
    out = tmp_path / "run"
    with pytest.raises(OutputError, match="train.resume=latest"):
        hftl.train(None, tiny_train_overrides(out, **QUICK))
    assert not (out / "model.safetensors").exists() and not (out / "hftl.json").exists()
    assert not list(out.glob(".tmp-outputs-*"))
    monkeypatch.undo()
    result = hftl.train(None, tiny_train_overrides(out, **QUICK, **{"train.resume": "latest"}))
    assert (out / "hftl.json").is_file() and result.metrics["accuracy"] >= 0
