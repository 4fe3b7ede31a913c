"""Audio transfer end to end: wav2vec2, HuBERT, AST and Whisper-encoder classifiers on real audio files.

Tiny models are built from configs in code and saved with their feature extractors; the data are
real files (WAV, FLAC, OGG, at several sampling rates, mono and stereo) of tones whose pitch band is
the class, written with soundfile. Everything runs offline on the CPU.
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
from hftl.errors import ModelNotFoundError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

CLASSES = {"low": (200, 400), "mid": (900, 1300), "high": (2500, 3500)}  # pitch band (Hz) per class


def tone(rng: np.random.Generator, band: tuple[int, int], seconds: float, rate: int) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * rng.uniform(*band) * t) + 0.05 * rng.standard_normal(len(t))
    return wave.astype(np.float32)


def write_clips(root: Path, per_class: int, seed: int = 0) -> Path:
    """A class-per-subfolder audio folder with mixed formats, rates, channel counts and lengths."""
    import soundfile as sf

    rng = np.random.default_rng(seed)
    formats = [(".wav", 16000, 1), (".flac", 22050, 2), (".ogg", 8000, 1), (".wav", 44100, 2)]
    for name, band in CLASSES.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            ext, rate, channels = formats[i % len(formats)]
            wave = tone(rng, band, rng.uniform(0.4, 1.2), rate)
            data = np.stack([wave, wave * 0.8], axis=1) if channels == 2 else wave
            sf.write(str(root / name / f"{name}_{i}{ext}"), data, rate)
    return root


def _tiny_models() -> dict:
    from transformers import (
        ASTConfig,
        ASTFeatureExtractor,
        HubertConfig,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        WhisperConfig,
        WhisperFeatureExtractor,
    )

    encoder = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
    conv = dict(conv_dim=(16, 16), conv_stride=(10, 8), conv_kernel=(10, 8), num_conv_pos_embeddings=16,
                num_conv_pos_embedding_groups=2, classifier_proj_size=16)
    wav2vec2_fe = Wav2Vec2FeatureExtractor(sampling_rate=16000, return_attention_mask=True, do_normalize=True)
    return {
        "wav2vec2": (Wav2Vec2Config(**encoder, **conv), wav2vec2_fe),
        "hubert": (HubertConfig(**encoder, **conv), wav2vec2_fe),
        "ast": (ASTConfig(**encoder, patch_size=16, max_length=64, num_mel_bins=32, frequency_stride=10,
                          time_stride=10), ASTFeatureExtractor(num_mel_bins=32, max_length=64)),
        "whisper": (WhisperConfig(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64,
                                  decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64, num_mel_bins=16,
                                  max_source_positions=50, classifier_proj_size=16),
                    WhisperFeatureExtractor(feature_size=16, chunk_length=1, hop_length=160)),
    }


@pytest.fixture(scope="session")
def models(tmp_path_factory) -> dict[str, Path]:
    """Tiny 'pretrained' audio encoders saved as the Hub lays them out (config, safetensors, preprocessor)."""
    from transformers import AutoModel, WhisperForConditionalGeneration

    root = tmp_path_factory.mktemp("audio_models")
    out = {}
    for name, (config, extractor) in _tiny_models().items():
        torch.manual_seed(0)
        # Whisper ships as a speech-recognition model; its encoder is what a classifier reuses.
        net = WhisperForConditionalGeneration(config) if name == "whisper" else AutoModel.from_config(config)
        folder = root / name
        net.save_pretrained(folder)
        extractor.save_pretrained(folder)
        out[name] = folder
    return out


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> Path:
    return write_clips(tmp_path_factory.mktemp("clips") / "tones", per_class=16)


def overrides(model: Path, data: Path, out: Path, **extra) -> list[str]:
    base = {
        "task": "audio_classification",
        "model.id": str(model),
        "data.id": str(data),
        "data.max_duration": 1.0,
        "train.epochs": 4,
        "train.global_batch_size": 8,
        "train.per_device_batch_size": 8,
        "train.lr": 0.003,
        "train.warmup_ratio": 0.0,
        "train.refit": False,  # the saved model is the one the reported metrics scored (tests compare them)
        "train.progress": False,
        "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="module")
def wav2vec2_finetuned(models, clips, tmp_path_factory):
    out = tmp_path_factory.mktemp("w2v_ft") / "run"
    return hftl.train(None, overrides(models["wav2vec2"], clips, out, **{"train.epochs": 6}))


def test_an_audio_classifier_exports_to_onnx(wav2vec2_finetuned, tmp_path):
    from test_export import check_export

    record = check_export(wav2vec2_finetuned.output_dir, tmp_path)
    assert record["inputs"]["input_values"][0] == "batch"


def test_finetune_learns_pitch_classes(wav2vec2_finetuned):
    history = wav2vec2_finetuned.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert wav2vec2_finetuned.metrics["accuracy"] >= 0.6, history  # chance is 1/3


def test_output_loads_with_transformers_and_predicts_the_same(wav2vec2_finetuned, clips):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from hftl.audio import fit_length, read_audio

    out = wav2vec2_finetuned.output_dir
    native = AutoModelForAudioClassification.from_pretrained(out).eval()
    extractor = AutoFeatureExtractor.from_pretrained(out)
    files = sorted(clips.rglob("*.flac"))[:3]
    # hftl crops clips to the run's data.max_duration (1 s here) before the feature extractor.
    waves = [fit_length(read_audio(f, extractor.sampling_rate), 16000) for f in files]
    with torch.no_grad():
        logits = native(**extractor(waves, sampling_rate=16000, return_tensors="pt", padding=True,
                                    return_attention_mask=True)).logits
    ours = hftl.predict(out, [str(f) for f in files], top_k=3)
    for row, top in zip(logits.softmax(-1), ours):
        assert native.config.id2label[int(row.argmax())] == top[0][0]
        assert float(row.max()) == pytest.approx(top[0][1], abs=1e-5)
    assert set(native.config.id2label.values()) == set(CLASSES)
    card = (out / "README.md").read_text()
    check_metadata(ModelCard.load(out / "README.md").data.to_dict())  # what the Hub would accept
    assert "pipeline_tag: audio-classification" in card and 'pipeline("audio-classification"' in card


def test_predict_and_eval_commands(wav2vec2_finetuned, clips, capsys):
    clip = next(clips.glob("high/*.wav"))
    assert cli(["predict", str(wav2vec2_finetuned.output_dir), str(clip), "--top-k", "2"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"{clip}: ") and line.count("(") == 2
    assert cli(["eval", str(wav2vec2_finetuned.output_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(wav2vec2_finetuned.metrics["accuracy"])


def test_feature_encoder_stays_frozen_unless_asked(models, clips, tmp_path):
    from safetensors.torch import load_file

    start = load_file(str(models["wav2vec2"] / "model.safetensors"))
    conv = "feature_extractor.conv_layers.0.conv.weight"
    source = next(v for k, v in start.items() if k.endswith(conv))
    for freeze, changed in (("true", False), ("false", True)):
        out = tmp_path / f"freeze_{freeze}"
        hftl.train(None, overrides(models["wav2vec2"], clips, out, **{
            "strategy.freeze_feature_encoder": freeze, "train.epochs": 1}))
        trained = next(v for k, v in load_file(str(out / "model.safetensors")).items() if k.endswith(conv))
        assert (not torch.equal(trained, source)) == changed
        encoder = next(v for k, v in load_file(str(out / "model.safetensors")).items()
                       if k.endswith("encoder.layers.0.attention.k_proj.weight"))
        assert not torch.equal(encoder, next(v for k, v in start.items()
                                             if k.endswith("encoder.layers.0.attention.k_proj.weight")))


@pytest.mark.parametrize("name,strategy", [("hubert", "linear_probe"), ("ast", "lora"), ("whisper", "gradual_unfreeze"),
                                           ("ast", "partial"), ("whisper", "scratch")])
def test_every_architecture_and_strategy(models, clips, tmp_path, name, strategy):
    extra = {"strategy.name": strategy, "train.epochs": 2}
    if strategy == "linear_probe":
        extra.update({"train.lr": 0.05, "train.epochs": 4, "strategy.probe_solver": "sgd"})  # a training curve
    if strategy == "lora":
        extra.update({"strategy.lora_r": 4, "train.lr": 0.01})
    out = tmp_path / "run"
    result = hftl.train(None, overrides(models[name], clips, out, **extra))
    assert len(result.history) == extra["train.epochs"]
    assert all(np.isfinite(h["train_loss"]) for h in result.history)
    if strategy == "linear_probe":
        assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    # Every output reloads and predicts what the trained model did on the validation clips.
    assert hftl.evaluate(out)["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4, abs=1e-5)
    if strategy == "lora":
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert "classifier" in adapter["modules_to_save"]


def test_unset_rates_give_a_pretrained_audio_encoder_a_lower_rate_than_its_new_head(models, clips, tmp_path):
    """train.lr and train.backbone_lr_scale null: a pretrained audio encoder fine-tunes at 2e-4 under its new head's
    1e-3; from random weights one rate (README, "Learning rate")."""
    def rates(name, **extra):
        base = [o for o in overrides(models["whisper"], clips, tmp_path / name, **{"train.epochs": 1})
                if not o.startswith("train.lr=")]
        result = hftl.train(None, base + [f"{k}={v}" for k, v in extra.items()])
        metrics = json.loads((result.output_dir / "metrics.json").read_text())
        return metrics["lr"], metrics["backbone_lr_scale"], (result.output_dir / "README.md").read_text()

    lr, scale, card = rates("pretrained")
    assert (lr, scale) == (1e-3, 0.2)
    assert "0.0002" in card and "0.001" in card  # the card's rate table: encoder groups and the head
    assert rates("scratch", **{"strategy.name": "scratch"})[:2] == (1e-3, 1.0)


@pytest.mark.parametrize("name", ["wav2vec2", "hubert", "ast", "whisper"])
def test_head_on_features_is_the_forward_pass(models, name):
    """forward_head(forward_features(x)) == forward(x), padding included: what a cached probe relies on.

    For models that project each frame and then average (all but AST), the head is projector +
    classifier, so a linear probe trains both.
    """
    from hftl.backbones import create_model

    model = create_model(str(models[name]), ["a", "b", "c"], task="audio_classification").eval()
    rng = np.random.default_rng(0)
    batch = model.encode_audio([tone(rng, (300, 400), 0.3, 16000), tone(rng, (900, 1000), 0.9, 16000)])
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(batch)), model(batch), atol=1e-5, rtol=1e-4)
    has_projector = name != "ast"
    assert any(n.startswith("projector.") for n in model.head_parameter_names()) == has_projector


def test_linear_probe_trains_projector_and_classifier(models, clips, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "probe"
    hftl.train(None, overrides(models["hubert"], clips, out, **{"strategy.name": "linear_probe", "train.epochs": 2,
                                                                 "train.lr": 0.05}))
    first = hftl.backbones.create_model(str(models["hubert"]), sorted(CLASSES), task="audio_classification")
    trained = load_file(str(out / "model.safetensors"))
    assert not torch.equal(trained["projector.weight"], first.inner.projector.weight.detach())  # trained (not random)
    encoder_key = next(k for k in trained if k.endswith("encoder.layers.0.attention.k_proj.weight"))
    source = load_file(str(models["hubert"] / "model.safetensors"))
    assert torch.equal(trained[encoder_key], source[next(k for k in source if k.endswith(
        "encoder.layers.0.attention.k_proj.weight"))])  # the backbone stayed frozen


@pytest.fixture(scope="module")
def whisper_3s(tmp_path_factory) -> Path:
    """The tiny Whisper with a 3-s window (150 positions): longer than the tones (1.2 s at most)."""
    from transformers import WhisperForConditionalGeneration

    config, extractor = _tiny_models()["whisper"]
    config.max_source_positions, extractor = 150, type(extractor)(feature_size=16, chunk_length=3, hop_length=160)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("whisper_3s")
    WhisperForConditionalGeneration(config).save_pretrained(folder)
    extractor.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("strategy", ["linear_probe", "lora"])
def test_whisper_window_fits_the_clips_and_transformers_reads_it(whisper_3s, clips, tmp_path, strategy):
    from safetensors.torch import load_file
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    from hftl.audio import read_audio

    out = tmp_path / "run"
    extra = {"strategy.name": strategy, "data.max_duration": 10.0, "train.epochs": 2}
    # lora: the base is rebuilt with its full (3-s) window on reload and must be fitted again;
    # the probe keeps its validation split unseen (no refit) so that the reload's score compares.
    extra.update({"strategy.lora_r": 4} if strategy == "lora" else {"strategy.probe_refit": False})
    result = hftl.train(None, overrides(whisper_3s, clips, out, **extra))
    # The longest tone is 1.2 s: a 2-s window (100 positions of 150), the position table's first rows kept.
    assert json.loads((out / "preprocessor_config.json").read_text())["chunk_length"] == 2
    assert hftl.evaluate(out)["loss"] == pytest.approx(result.metrics["loss"], rel=1e-4, abs=1e-5)  # reloads the same
    reloaded = hftl.model.load(out)  # an adapter's base is rebuilt from the 3-s checkpoint, then fitted again
    assert (reloaded.feature_extractor.chunk_length, reloaded.inner.config.max_source_positions) == (2, 100)
    if strategy == "lora":
        return
    net = AutoModelForAudioClassification.from_pretrained(out).eval()
    assert net.config.max_source_positions == 100
    source = load_file(str(whisper_3s / "model.safetensors"))
    key = next(k for k in source if k.endswith("encoder.embed_positions.weight"))
    torch.testing.assert_close(net.encoder.embed_positions.weight, source[key][:100])
    clip = next(clips.glob("mid/*.wav"))
    wave = read_audio(clip, 16000)
    batch = AutoFeatureExtractor.from_pretrained(out)(wave, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        theirs = net(**batch).logits.softmax(-1)[0]
    ours = dict(hftl.predict(out, [str(clip)], top_k=3)[0])
    torch.testing.assert_close(torch.tensor([ours[n] for n in net.config.id2label.values()]), theirs,
                               atol=1e-5, rtol=1e-4)


def test_whisper_encoder_weights_transfer_from_a_speech_recognition_checkpoint(models):
    from safetensors.torch import load_file

    from hftl.backbones import create_model

    model = create_model(str(models["whisper"]), ["a", "b"], task="audio_classification")
    source = load_file(str(models["whisper"] / "model.safetensors"))
    key = next(k for k in source if k.endswith("encoder.layers.1.fc1.weight"))
    torch.testing.assert_close(model.inner.encoder.layers[1].fc1.weight, source[key])
    assert model.head_name == "classifier" and model.num_features == 32  # the encoder's width: the head projects
    groups = model.layer_groups()
    assert len(groups) == 4  # conv/positional embeddings, two layers, the final norm (projector: in the head)
    assert any("conv1" in n for n in groups[0]) and all("layers.1." in n for n in groups[2])


# ------------------------------------------------------------------------------------- bad input

def test_unreadable_and_odd_clips(models, tmp_path):
    import soundfile as sf

    data = write_clips(tmp_path / "odd", per_class=6, seed=3)
    (data / "low" / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt garbage")
    (data / "mid" / "empty.flac").write_bytes(b"")
    sf.write(str(data / "high" / "blip.wav"), np.zeros(40, dtype=np.float32), 16000)  # 2.5 ms: padded
    sf.write(str(data / "high" / "long.wav"), tone(np.random.default_rng(0), CLASSES["high"], 6.0, 16000), 16000)
    out = tmp_path / "run"
    hftl.train(None, overrides(models["wav2vec2"], data, out, **{"train.epochs": 1}))
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["skipped_examples"] == {"unreadable or missing audio": 2}
    assert len(hftl.predict(out, [str(data / "high" / "blip.wav"), str(data / "high" / "long.wav")])) == 2
    with pytest.raises(hftl.errors.DataError, match="could not be decoded as audio"):
        hftl.predict(out, [str(data / "low" / "broken.wav")])


def test_audio_csv_and_bad_columns(models, clips, tmp_path, capsys):
    import pandas as pd

    files = sorted(clips.rglob("*.wav"))
    table = tmp_path / "clips.csv"
    pd.DataFrame({"path": [str(f) for f in files] + ["missing.wav"],
                  "label": [f.parent.name for f in files] + ["low"]}).to_csv(table, index=False)
    out = tmp_path / "csv_run"
    assert cli(["train", *overrides(models["wav2vec2"], table, out, **{"train.epochs": 1})]) == 2
    assert "Column 'audio' is not in" in capsys.readouterr().err  # the default column name
    hftl.train(None, overrides(models["wav2vec2"], table, out, **{"train.epochs": 1, "data.audio_column": "path"}))
    assert json.loads((out / "metrics.json").read_text())["skipped_examples"] == {"unreadable or missing audio": 1}


def test_missing_feature_extractor_is_a_clear_error(models, clips, tmp_path):
    import shutil

    bare = tmp_path / "bare"
    shutil.copytree(models["hubert"], bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="no feature extractor"):
        hftl.train(None, overrides(bare, clips, tmp_path / "run"))


def test_empty_audio_folder_is_a_clear_error(models, tmp_path):
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(hftl.errors.DataError, match="holds no readable audio"):
        hftl.train(None, overrides(models["wav2vec2"], tmp_path / "empty", tmp_path / "run"))


def test_audio_transfer_study(models, clips, tmp_path):
    """A cross-validated study runs on audio like on images and text: same folds for every arm, a verdict."""
    from hftl.study import run_study

    out = tmp_path / "study"
    report = run_study({
        "base": {"task": "audio_classification", "model": {"id": str(models["hubert"])},
                 "data": {"id": str(clips), "max_duration": 0.5},
                 "train": {"epochs": 2, "global_batch_size": 8, "per_device_batch_size": 8, "lr": 0.003,
                           "progress": False}},
        "study": {"arms": ["scratch", "linear_probe"], "folds": 2, "output_dir": str(out)},
    })
    data = json.loads((out / "study.json").read_text())
    assert data["task"] == "audio_classification" and len(data["runs"]) == 2 * 2
    for arm in ("scratch", "linear_probe"):  # 48 clips, the same two stratified folds for each arm
        assert sorted(r["num_validation"] for r in data["runs"] if r["arm"] == arm) == [24, 24]
    c = report.comparisons["linear_probe"]["b1"]  # the verdict follows the paired test on the two arms' folds
    assert c.n == 2 and c.metric == "accuracy"
    expected = "no significant difference" if c.p_value >= 0.05 else \
        ("positive transfer" if c.mean_diff > 0 else "negative transfer")
    assert c.verdict == expected, c
    assert "audio-classification" in (out / "model" / "README.md").read_text()


def test_hub_layout_dataset_with_an_audio_column(models, clips, tmp_path):
    """The layout Hub datasets use (parquet with an Audio feature, bytes inside): decoded without FFmpeg."""
    import datasets

    files = sorted(p for p in clips.rglob("*") if p.suffix in (".wav", ".flac", ".ogg"))
    table = datasets.Dataset.from_dict(
        {"clip": [{"bytes": f.read_bytes(), "path": f.name} for f in files], "kind": [f.parent.name for f in files]},
    ).cast_column("clip", datasets.Audio())  # the stored {bytes, path} struct, typed as audio (no re-encoding)
    folder = tmp_path / "hub_layout"
    (folder / "data").mkdir(parents=True)
    table.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
    out = tmp_path / "run"
    result = hftl.train(None, overrides(models["wav2vec2"], folder, out, **{
        "data.audio_column": "clip", "data.label_column": "kind", "train.epochs": 1}))
    assert len(result.history) == 1
    assert json.loads((out / "hftl.json").read_text())["label_names"] == sorted(CLASSES)
    # Every clip decoded from the parquet bytes: all of them counted, none skipped, a finite loss.
    metrics = json.loads((out / "metrics.json").read_text())
    assert not metrics["skipped_examples"] and np.isfinite(metrics["final"]["loss"])
    assert result.history[0]["train_loss"] > 0


@pytest.mark.slow
def test_recipe_under_accelerate_launch_on_two_processes(models, clips, tmp_path):
    """wav2vec2's LayerDrop skips layers at random: DDP must look for unused parameters or the ranks fall out of step."""
    launch_two_processes(overrides(models["wav2vec2"], clips, tmp_path / "ddp", **{
        "train.epochs": 1, "train.per_device_batch_size": 4}), cwd=tmp_path)


def test_jsonl_random_init_and_wrong_sources(models, clips, tmp_path, capsys):
    """JSON-lines clip lists resolve paths next to the file; random convolutions train; clear errors otherwise."""
    rows = [{"file": str(p.relative_to(clips)), "sound": p.parent.name} for p in sorted(clips.rglob("*.wav"))]
    table = clips / "clips.jsonl"
    table.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "jsonl"
    hftl.train(None, overrides(models["wav2vec2"], table, out, **{
        "data.audio_column": "file", "data.label_column": "sound", "train.epochs": 1, "model.pretrained": "false"}))
    # model.pretrained=false: nothing pretrained to keep, so the (random) convolutional encoder trains too.
    from hftl.backbones import create_model

    for pretrained, frozen in ((True, True), (False, False)):
        model = create_model(str(models["wav2vec2"]), ["a", "b"], task="audio_classification", pretrained=pretrained)
        assert bool(model.feature_encoder_parameter_names()) == frozen

    with pytest.raises(hftl.errors.DataError, match="holds no audio"):
        hftl.train(None, overrides(models["wav2vec2"], "builtin:digits", tmp_path / "digits"))
    assert cli(["predict", str(models["wav2vec2"]), str(next(clips.rglob("*.wav")))]) == 2
    assert "without a classification head" in capsys.readouterr().err
