"""Audio to visual, measured: the study YAML's sources (an AST taught synthetic sounds, a ViT taught digits) start
an image ViT on spectrogram pictures through model.init_from: pretrain:NAME; the verdicts follow the paired test."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import hftl
from hftl.errors import ConfigError
from hftl.study import run_study, study_config_from_dict

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster


@pytest.fixture(scope="module")
def study_yaml():
    from conftest import REPO

    return yaml.safe_load((REPO / "recipes" / "configs" / "study" / "audio_to_visual.yaml").read_text())


def shrunk(raw: dict) -> dict:
    """The shipped study at a test's size: 2 folds, 3 epochs, 4 arms."""
    import copy

    raw = copy.deepcopy(raw)
    raw["study"].update(folds=2, output_dir="outputs/study/a2v")
    raw["study"]["arms"] = raw["study"]["arms"][:2] + raw["study"]["arms"][3:4]  # scratch, finetune / probe from audio
    raw["study"]["pretrain"] = raw["study"]["pretrain"][:1]
    raw["base"]["train"]["epochs"] = 3
    raw["study"]["pretrain"][0]["config"]["train"]["epochs"] = 6
    # The source as its first fit saved it: the reload check compares with its last epoch's validation score.
    raw["study"]["pretrain"][0]["config"]["train"]["refit"] = False
    return raw


@pytest.fixture(scope="module")
def study(study_yaml, tmp_path_factory):
    import os

    import hftl.sounds as sounds

    root = tmp_path_factory.mktemp("a2v")
    before = os.getcwd()
    os.chdir(root)  # the YAML's paths are relative, as when `hftl study` runs from the repository
    try:
        sounds.write_study_inputs("outputs/audio_to_visual/inputs", sounds_per_class=12, pictures_per_class=8)
        report = run_study(shrunk(study_yaml))
    finally:
        os.chdir(before)
    return root, report


def test_the_pictures_are_what_the_ast_hears():
    """A ViT normalising a picture with mean = std = 0.5 reads the AST's own input values (to 8-bit rounding)."""
    import hftl.sounds as sounds

    wave = sounds.make_sound(sounds.PICTURE_SOUNDS["rise_fall"], np.random.default_rng(0))
    extractor = sounds.feature_extractor()
    values = extractor(wave, sampling_rate=sounds.RATE, return_tensors="np")["input_values"][0].T  # (mel, frames)
    picture = np.asarray(sounds.spectrogram_picture(wave, extractor), dtype=np.float64)
    assert picture.shape == (sounds.MEL_BINS, sounds.FRAMES)
    seen = (picture / 255 - 0.5) / 0.5
    inside = np.abs(values) < 1  # values beyond +-1 are clipped to black / white
    assert inside.mean() > 0.9 and np.abs(seen - values)[inside].max() <= 1 / 255 + 1e-6


def test_every_sound_class_differs_and_is_seeded():
    import hftl.sounds as sounds

    rng = np.random.default_rng
    assert not set(sounds.SOURCE_SOUNDS) & set(sounds.PICTURE_SOUNDS)  # the pictures are of sounds never heard
    for kind in [*sounds.SOURCE_SOUNDS.values(), *sounds.PICTURE_SOUNDS.values()]:
        np.testing.assert_array_equal(sounds.make_sound(kind, rng(3)), sounds.make_sound(kind, rng(3)))
        assert np.abs(sounds.make_sound(kind, rng(3))).max() <= 1


def test_the_audio_source_learns_and_reloads(study):
    root, report = study
    source = root / "outputs/study/a2v/sources/ast_sounds"
    history = json.loads((source / "metrics.json").read_text())["history"]
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the AST learnt from the clips
    assert json.loads((source / "config.json").read_text())["model_type"] == "audio-spectrogram-transformer"
    import os

    before = os.getcwd()
    os.chdir(root)
    try:  # reloaded, it scores its validation clips as it did at the end of training
        assert hftl.evaluate(source)["loss"] == pytest.approx(history[-1]["loss"], rel=1e-5)
    finally:
        os.chdir(before)


def test_arms_start_from_the_audio_source_through_init_from(study):
    root, report = study
    study_json = json.loads((root / "outputs/study/a2v/study.json").read_text())
    assert report.arms == ["scratch", "finetune_from_audio", "probe_from_audio"]
    assert study_json["sources"]["ast_sounds"]["classes"] == sorted(__import__("hftl.sounds").sounds.SOURCE_SOUNDS)
    md = (root / "outputs/study/a2v/report.md").read_text()
    assert "+ the weights of `pretrain:ast_sounds`" in md
    for arm in ("finetune_from_audio", "probe_from_audio"):
        for fold in (0, 1):
            run = yaml.safe_load((root / f"outputs/study/a2v/runs/{arm}/b1/fold{fold}/hftl_config.yaml").read_text())
            assert run["model"]["init_from"] == "outputs/study/a2v/sources/ast_sounds"
    scratch = yaml.safe_load((root / "outputs/study/a2v/runs/scratch/b1/fold0/hftl_config.yaml").read_text())
    assert scratch["model"]["init_from"] is None and scratch["model"]["kwargs"] == run["model"]["kwargs"]


def test_the_conversion_copies_every_block_of_the_audio_model(study):
    import timm

    from hftl.convert import transfer_weights

    root, _ = study
    vit = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=5, img_size=32, embed_dim=64,
                            depth=4, num_heads=4, patch_size=8, mlp_ratio=2)
    report = transfer_weights(vit, str(root / "outputs/study/a2v/sources/ast_sounds"), skip=("head.",))
    assert set(report.kept) == {"head.weight", "head.bias"}  # every other tensor came from the AST
    assert set(report.converted) == {"pos_embed", "patch_embed.proj.weight"}  # 1 -> 3 channels; 2 -> 1 prefix tokens
    assert "4x4 grid" in report.converted["pos_embed"]


def test_the_verdict_follows_the_paired_test(study):
    """Each arm's verdict is its paired t-test's (scipy's ttest_rel over the folds, the study's alpha), with the sign
    of the mean difference; identical differences on every fold fall back to the exact sign test, as hftl documents."""
    from scipy.stats import ttest_rel

    _, report = study
    for arm in ("finetune_from_audio", "probe_from_audio"):
        ours = np.asarray(report.scores[arm]["b1"]["accuracy"])
        base = np.asarray(report.scores["scratch"]["b1"]["accuracy"])
        c = report.comparisons[arm]["b1"]
        assert c.mean_diff == pytest.approx(float(np.mean(ours - base)))
        if np.std(ours - base) > 1e-9:
            assert c.p_value == pytest.approx(float(ttest_rel(ours, base).pvalue))
        else:
            assert c.p_value == pytest.approx(2 / 2 ** len(ours) if c.mean_diff else 1.0)
        expected = "no significant difference" if not (c.p_value < 0.05 and c.mean_diff) else (
            "positive transfer" if c.mean_diff > 0 else "negative transfer")
        assert c.verdict == report.verdict(arm) == expected, (arm, ours, base, c)


def test_a_missing_init_from_source_is_one_clear_line(study_yaml):
    raw = shrunk(study_yaml)
    raw["study"]["arms"][1]["config"]["model"]["init_from"] = "pretrain:ast_sound"
    with pytest.raises(ConfigError, match="takes model.init_from 'pretrain:ast_sound', but study.pretrain has no "
                                          "source of that name \\(it has: ast_sounds\\)"):
        study_config_from_dict(raw)
    raw = shrunk(study_yaml)
    raw["study"]["pretrain"][0]["config"]["model"]["init_from"] = "pretrain:ast_sounds"
    with pytest.raises(ConfigError, match="sources are made from their own model"):
        study_config_from_dict(raw)


def test_the_shipped_yaml_validates_and_names_both_sources(study_yaml):
    cfg = study_config_from_dict(study_yaml)
    assert {s.name: s.config.task for s in cfg.pretrain} == {"ast_sounds": "audio_classification",
                                                            "vit_digits": "image_classification"}
    inits = {a.name: a.config.model.init_from for a in cfg.arms}
    assert inits["scratch"] is None and inits["finetune_from_audio"] == "pretrain:ast_sounds"
    assert len({json.dumps(a.config.model.kwargs, sort_keys=True) for a in cfg.arms}) == 1  # one architecture


def test_an_image_smaller_than_a_vit_patch_is_one_clear_line(tmp_path):
    from conftest import tiny_train_overrides

    for size, message in ((8, "data.image_size 8 is smaller than the model's patch size 16"),
                          (36, "data.image_size 36 is not a multiple of the model's patch size 16.*32 or 48")):
        with pytest.raises(ConfigError, match=message):
            hftl.train(None, tiny_train_overrides(tmp_path / "vit", **{
                "model.id": "timm:vit_base_patch16_224", "model.pretrained": False, "data.image_size": size,
                "model.kwargs": "{embed_dim: 32, depth: 1, num_heads: 2}"}))
