"""Untrusted folders: nothing read from a model folder, an output folder or a checkpoint may run code,
unpickle, or carry a token onward. Each test plants a payload that would leave a marker file if it ran.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_overrides

import hftl
from hftl.cli import main as cli
from hftl.errors import CheckpointError, ConfigError, UnsafeWeightsError

pytestmark = pytest.mark.usefixtures("one_thread")

TOKEN = "hf_" + "S3cr3tT0kenValue" * 3  # shaped like a real Hugging Face token


class Payload:
    """Unpickling this runs ``touch marker``: the proof that a pickle was loaded with full pickle."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def evil_pickle(path: Path, marker: Path) -> None:
    with open(path, "wb") as f:
        pickle.dump({"state": Payload(marker)}, f)


def plant_remote_code(folder: Path, marker: Path) -> None:
    """Make ``folder``'s config.json need the folder's own Python code (auto_map), which touches ``marker``."""
    (folder / "evil.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\n"
                                    "from transformers import BertConfig as EvilConfig\n"
                                    "from transformers import BertForSequenceClassification as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="evil-bert", auto_map={"AutoConfig": "evil.EvilConfig",
                                                    "AutoModelForSequenceClassification": "evil.EvilModel"})
    (folder / "config.json").write_text(json.dumps(config))


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory) -> Path:
    """A tiny BERT encoder with its tokenizer, saved as transformers does."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("bert")
    words = ["good", "great", "bad", "awful", "the", "film", "was", "a"]
    (root / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    torch.manual_seed(0)
    folder = root / "bert"
    BertModel(BertConfig(vocab_size=13, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)
    BertTokenizerFast(str(root / "vocab.txt")).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def texts_csv(tmp_path_factory) -> Path:
    import pandas as pd

    path = tmp_path_factory.mktemp("texts") / "texts.csv"
    good, bad = ["the film was good", "a great film"], ["the film was bad", "a awful film"]
    pd.DataFrame({"text": (good + bad) * 6, "label": (["pos"] * 2 + ["neg"] * 2) * 6}).to_csv(path, index=False)
    return path


def text_run(model: Path, data: Path, out: Path, **extra) -> list[str]:
    base = {"task": "text_classification", "model.id": str(model), "data.id": str(data), "train.epochs": 1,
            "train.global_batch_size": 8, "train.per_device_batch_size": 8, "train.progress": False,
            "output_dir": str(out)}
    return [f"{k}={v}" for k, v in {**base, **extra}.items()]


@pytest.fixture(scope="module")
def lora_output(bert_folder, texts_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lora") / "run"
    hftl.train(None, text_run(bert_folder, texts_csv, out, **{"strategy.name": "lora", "strategy.lora_r": 2}))
    return out


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert err.startswith("hftl: error: ") and "Traceback" not in err and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err, err
    return err


# ------------------------------------------------------------------------------ remote code

def test_an_adapter_folder_cannot_switch_on_remote_code(lora_output, bert_folder, texts_csv, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    base = tmp_path / "evil_base"
    shutil.copytree(bert_folder, base)
    plant_remote_code(base, marker)
    received = tmp_path / "received"
    shutil.copytree(lora_output, received)
    meta = json.loads((received / "hftl.json").read_text())
    meta.update(base_model=str(base), model_kwargs={**meta["model_kwargs"], "trust_remote_code": True})
    (received / "hftl.json").write_text(json.dumps(meta))
    config = (received / "hftl_config.yaml").read_text().replace("trust_remote_code: false", "trust_remote_code: true")
    (received / "hftl_config.yaml").write_text(config)

    assert cli(["predict", str(received), "a good film"]) == 2
    one_line_error(capsys, "model.trust_remote_code=true")
    assert cli(["eval", str(received)]) == 2
    one_line_error(capsys, "--trust-remote-code")
    with pytest.raises(ConfigError, match="never runs a model folder's code"):
        hftl.train(None, text_run(bert_folder, texts_csv, tmp_path / "student", **{"distill.teacher": str(received)}))
    assert not marker.exists()


def test_a_model_folder_needing_its_own_code_is_refused(bert_folder, texts_csv, tmp_path, capsys):
    marker = tmp_path / "code-ran"
    model = tmp_path / "custom"
    shutil.copytree(bert_folder, model)
    plant_remote_code(model, marker)
    assert cli(["train", *text_run(model, texts_csv, tmp_path / "out")]) == 2
    one_line_error(capsys, "auto_map", "model.trust_remote_code=true")
    assert not marker.exists()


def test_trust_remote_code_is_always_passed_explicitly():
    """Unset, transformers asks on a terminal, and a 'y' would run the code against the user's config."""
    from hftl.backbones.hf_common import remote_kwargs

    assert remote_kwargs(False) == {"trust_remote_code": False}
    assert remote_kwargs(True) == {"trust_remote_code": True}


# ------------------------------------------------------------------------------ resume

@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("image") / "run"
    hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1, "data.max_train_samples": 32}))
    return out


def test_resume_refuses_a_checkpoint_folder_from_elsewhere(image_run, tmp_path):
    marker = tmp_path / "unpickled"
    crafted = tmp_path / "crafted"
    shutil.copytree(next((image_run / "checkpoints").glob("checkpoint-*")), crafted)
    evil_pickle(crafted / "custom_checkpoint_0.pkl", marker)
    with pytest.raises(CheckpointError, match="not a checkpoint of this run"):
        hftl.train(None, tiny_train_overrides(tmp_path / "new", **{"train.resume": str(crafted)}))
    assert not marker.exists()


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin"])
def test_resume_never_unpickles_what_a_checkpoint_holds(image_run, tmp_path, planted):
    marker = tmp_path / "unpickled"
    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    checkpoint = next((out / "checkpoints").glob("checkpoint-*"))
    evil_pickle(checkpoint / planted, marker)
    overrides = tiny_train_overrides(out, **{"train.epochs": 1, "data.max_train_samples": 32,
                                             "train.resume": "latest"})
    # a replaced file fails its checksum before anything reads it; an extra one is never read at all
    with pytest.raises(CheckpointError, match="does not match its checksums" if planted != "custom_checkpoint_0.pkl"
                       else "files hftl never writes"):
        hftl.train(None, overrides)
    assert not marker.exists()


def test_resume_refuses_a_checkpoint_of_another_shape(image_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    with pytest.raises(CheckpointError, match="global_batch_size 16 \\(now 8\\)"):
        hftl.train(None, tiny_train_overrides(out, **{
            "train.epochs": 1, "data.max_train_samples": 32, "train.resume": "latest",
            "train.global_batch_size": 8, "train.per_device_batch_size": 8}))
    with pytest.raises(CheckpointError, match="train_examples"):
        hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1, "train.resume": "latest"}))


def test_resume_after_a_crash_in_the_final_save_reports_the_metrics(image_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(image_run, out)
    for name in ("model.safetensors", "metrics.json", "README.md"):  # as if killed while writing the outputs
        (out / name).unlink()
    result = hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 1, "data.max_train_samples": 32,
                                                           "train.resume": "latest"}))
    assert result.metrics["accuracy"] == json.loads((image_run / "metrics.json").read_text())["final"]["accuracy"]
    assert json.loads((out / "metrics.json").read_text())["final"]["accuracy"] == result.metrics["accuracy"]


# ------------------------------------------------------------------------------ secrets

def test_a_token_given_as_a_model_argument_is_never_written(bert_folder, texts_csv, tmp_path):
    out = tmp_path / "run"
    hftl.train(None, text_run(bert_folder, texts_csv, out, **{"model.kwargs": f"{{token: {TOKEN}}}",
                                                              "train.tracker": "tensorboard"}))
    written = [p for p in out.rglob("*") if p.is_file()]
    assert any(p.name == "hftl.json" for p in written) and any("events" in p.name for p in written)
    for path in written:
        assert TOKEN.encode() not in path.read_bytes(), path
    assert hftl.evaluate(out)["examples"] > 0  # the run still reloads without it


def test_push_refuses_a_folder_holding_a_token(image_run, tmp_path):
    from hftl.errors import HubError
    from hftl.hub import plan_push

    folder = tmp_path / "run"
    shutil.copytree(image_run, folder)
    (folder / "notes.txt").write_text(f"my token is {TOKEN}\n")
    with pytest.raises(HubError, match="token"):
        plan_push(folder)


# ------------------------------------------------------------------------------ one pickle rule

def pickled_output(image_run: Path, folder: Path, marker: Path, decoy: bool = False) -> Path:
    """An image output whose weights a loader would read from pytorch_model.bin, a malicious pickle."""
    shutil.copytree(image_run, folder)
    (folder / "model.safetensors").unlink()
    evil_pickle(folder / "pytorch_model.bin", marker)
    if decoy:  # a safetensors file no loader reads must not make the pickle look safe
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(1)}, str(folder / "decoy.safetensors"))
    return folder


@pytest.mark.parametrize("decoy", [False, True])
def test_predict_and_eval_refuse_pickle_weights_without_the_flag(image_run, tmp_path, capsys, decoy):
    marker = tmp_path / "unpickled"
    folder = pickled_output(image_run, tmp_path / "received", marker, decoy)
    image = tmp_path / "digit.png"
    from PIL import Image

    Image.new("RGB", (32, 32)).save(image)
    assert cli(["predict", str(folder), str(image)]) == 2
    one_line_error(capsys, "pytorch_model.bin", "--allow-pickle")
    assert cli(["eval", str(folder)]) == 2
    one_line_error(capsys, "pytorch_model.bin")
    with pytest.raises(UnsafeWeightsError):
        hftl.load(folder)
    assert not marker.exists()


def test_a_pickled_adapter_is_refused(lora_output, tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "adapter"
    shutil.copytree(lora_output, folder)
    (folder / "adapter_model.safetensors").unlink()
    evil_pickle(folder / "adapter_model.bin", marker)
    with pytest.raises(UnsafeWeightsError, match="adapter_model.bin"):
        hftl.load(folder)
    assert not marker.exists()


def test_a_pickle_beside_its_safetensors_twin_is_never_read(image_run, tmp_path):
    marker = tmp_path / "unpickled"
    folder = tmp_path / "both"
    shutil.copytree(image_run, folder)
    evil_pickle(folder / "pytorch_model.bin", marker)  # loaders read model.safetensors first
    assert hftl.load(folder).label_names
    assert not marker.exists()
