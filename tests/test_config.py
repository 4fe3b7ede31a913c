"""Configs: YAML + dotted overrides, errors that name the key, every shipped YAML validated."""

from pathlib import Path

import pytest
import yaml

from hftl.config import Config, help_text, load_config, parse_overrides
from hftl.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_overrides_are_typed_and_nested(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  id: timm:resnet18\ntrain:\n  epochs: 1\n")
    cfg = load_config(
        path,
        [
            "train.epochs=3",
            "model.id=timm/vgg16.tv_in1k",
            "train.lr=1e-4",
            "train.max_grad_norm=null",
            "strategy.lora_target_modules=[qkv,proj]",
        ],
    )
    assert cfg.train.epochs == 3 and isinstance(cfg.train.epochs, int)
    assert cfg.model.id == "timm/vgg16.tv_in1k"
    assert cfg.train.lr == pytest.approx(1e-4)
    assert cfg.train.max_grad_norm is None
    assert cfg.strategy.lora_target_modules == ["qkv", "proj"]


def test_int_is_accepted_where_float_is_expected():
    assert load_config(None, ["train.lr=1"]).train.lr == 1.0


def test_lists_of_numbers_read_exponents_like_scalars(tmp_path):
    # PyYAML follows YAML 1.1, where 1e-4 (no dot) is a string: lists must get the scalar's float coercion.
    assert load_config(None, ["strategy.probe_l2=[1e-4, 1e2]"]).strategy.probe_l2 == [1e-4, 100.0]
    path = tmp_path / "c.yaml"
    path.write_text("multitask:\n  weights: [1, 5e-1]\n")
    assert load_config(path).multitask.weights == [1.0, 0.5]
    with pytest.raises(ConfigError, match=r"strategy\.probe_l2"):
        load_config(None, ["strategy.probe_l2=[small]"])


def test_unknown_key_names_key_and_lists_valid_ones():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.epoch=3"])
    assert "train.epoch" in str(e.value) and "train.epochs" in str(e.value)


def test_unknown_key_in_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("modle:\n  id: x\n")
    with pytest.raises(ConfigError, match="modle"):
        load_config(path)


def test_wrong_type_names_key():
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, ["train.epochs=three"])


def test_unknown_strategy_lists_valid():
    with pytest.raises(ConfigError, match="linear_probe"):
        load_config(None, ["strategy.name=magic"])


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("nope.yaml")


def test_override_without_equals():
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["train.epochs"])


def test_help_lists_every_key_with_help():
    text = help_text(Config())
    for key in ("model.id", "train.global_batch_size", "strategy.layer_decay", "data.label_column"):
        assert key in text
    assert "Examples per optimizer step" in text


ALL_YAMLS = sorted((REPO / "recipes" / "configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", ALL_YAMLS, ids=lambda p: str(p.relative_to(REPO / "recipes" / "configs")))
def test_every_shipped_yaml_loads(path):
    """litgpt's rule: every YAML in the repo is validated against the code that reads it."""
    raw = yaml.safe_load(path.read_text())
    from hftl.rl.config import is_rl_config

    if is_rl_config(raw):  # RL studies (source/target/ppo sections) have their own loader, which asks gymnasium
        from hftl.rl.config import load_rl_study_config

        load_rl_study_config(path)
    elif "study" in raw:  # study configs are checked by their own loader
        from hftl.study import load_study_config

        load_study_config(path)
    else:
        load_config(path)


def test_there_are_shipped_yamls():
    assert len(ALL_YAMLS) >= 6


def test_yaml_bare_no_is_read_as_the_string_no():
    assert load_config(None, ["train.mixed_precision=no"]).train.mixed_precision == "no"


def test_malformed_override_value_is_a_config_error():
    with pytest.raises(ConfigError, match="not valid YAML"):
        parse_overrides(["strategy.lora_target_modules=[qkv,{a:"])
