"""train.mixed_precision=auto: bf16 where supported (CUDA) or measured faster (CPU probe, cached), else fp32."""

import json
import logging

import pytest
import torch
from conftest import tiny_train_overrides

import hftl
from hftl import precision
from hftl.errors import ConfigError


@pytest.fixture
def probe(tmp_path, monkeypatch):
    """A fake CPU probe (returns ``probe.speedup``, counts its calls) and a fresh cache folder."""
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HFTL_CPU_BF16", raising=False)  # conftest sets it for the other tests

    class Probe:
        speedup, calls = 0.42, 0

        def __call__(self):
            self.calls += 1
            return {"speedup": self.speedup, "fp32_ms": 1.0, "bf16_ms": 1.0 / self.speedup, "rounds": 3}

    fake = Probe()
    monkeypatch.setattr(precision, "measure_cpu_bf16", fake)
    return fake


@pytest.mark.parametrize("speedup, expected", [(0.42, "no"), (1.8, "bf16")])
def test_auto_on_cpu_picks_what_the_probe_measured(probe, speedup, expected):
    probe.speedup = speedup
    used, reason = precision.resolve_precision("auto", "cpu")
    assert used == expected
    assert reason == (f"auto: {'fp32' if expected == 'no' else 'bf16'}, bf16 measured {speedup:.2f}x of fp32 on "
                      f"{precision.cpu_name()}")


def test_probe_result_is_cached_per_machine(probe):
    precision.resolve_precision("auto", "cpu")
    precision.resolve_precision("auto", "cpu")
    assert probe.calls == 1
    cache = json.loads(precision.cache_file().read_text())
    assert cache[precision.machine_key()]["speedup"] == 0.42
    before = torch.get_num_threads()
    try:  # another thread count is another key: measured again
        torch.set_num_threads(1 if before != 1 else 2)
        precision.resolve_precision("auto", "cpu")
    finally:
        torch.set_num_threads(before)
    assert probe.calls == 2 and len(json.loads(precision.cache_file().read_text())) == 2


@pytest.mark.parametrize("content", ["{not json", "[1, 2]", '{"KEY": "garbage"}', '{"KEY": {"speedup": "fast"}}'])
def test_corrupt_cache_is_measured_again_and_rewritten(probe, content):
    path = precision.cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("KEY", precision.machine_key()))
    assert precision.resolve_precision("auto", "cpu")[0] == "no"
    assert probe.calls == 1
    assert json.loads(path.read_text())[precision.machine_key()]["speedup"] == 0.42


def test_unwritable_cache_is_no_error(probe, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "a_file"))  # its "folder" is a file: nothing can be written
    assert precision.resolve_precision("auto", "cpu")[0] == "no"


def test_explicit_choices_are_honoured_without_probing(probe):
    assert precision.resolve_precision("bf16", "cpu")[0] == "bf16"
    assert precision.resolve_precision("no", "cpu") == ("no", "fp32 (train.mixed_precision=no)")
    assert precision.resolve_precision("fp16", "cuda")[0] == "fp16"
    assert probe.calls == 0


def test_fp16_on_cpu_is_refused(probe, tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        precision.resolve_precision("fp16", "cpu")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        hftl.train(None, tiny_train_overrides(tmp_path / "x", **{"train.mixed_precision": "fp16", "train.cpu": True}))


def test_auto_on_cuda_follows_bf16_support(probe, monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert precision.resolve_precision("auto", "cuda") == ("bf16", "auto: bf16, supported by Fake GPU")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert precision.resolve_precision("auto", "cuda") == ("no", "auto: fp32, Fake GPU has no bf16")
    assert probe.calls == 0


def test_the_reason_is_logged_once(probe, caplog):
    probe.speedup = 0.31  # a reason no other test logged
    with caplog.at_level(logging.INFO, logger="hftl.precision"):
        precision.resolve_precision("auto", "cpu")
        precision.resolve_precision("auto", "cpu")
    assert sum("0.31x" in r.getMessage() for r in caplog.records) == 1


def test_env_answers_without_probing(probe, monkeypatch):
    monkeypatch.setenv("HFTL_CPU_BF16", "1")
    assert precision.resolve_precision("auto", "cpu") == ("bf16", "auto: bf16, HFTL_CPU_BF16=1 (not measured)")
    monkeypatch.setenv("HFTL_CPU_BF16", "0")
    assert precision.resolve_precision("auto", "cpu")[0] == "no"
    assert probe.calls == 0


def test_real_probe_measures_both():
    result = precision.measure_cpu_bf16()
    assert result["speedup"] > 0 and result["rounds"] >= 2


@pytest.mark.parametrize("requested, used", [("auto", "no"), ("bf16", "bf16")])
def test_choice_and_reason_land_in_metrics_and_card(probe, tmp_path, requested, used):
    out = tmp_path / requested
    overrides = {"train.epochs": 1, "train.cpu": True}
    overrides["train.mixed_precision"] = requested
    hftl.train(None, tiny_train_overrides(out, **overrides))
    record = json.loads((out / "metrics.json").read_text())["precision"]
    assert record["requested"] == requested and record["used"] == used
    if requested == "auto":
        assert record["reason"].startswith("auto: fp32, bf16 measured 0.42x of fp32 on ")
    else:
        assert record["reason"] == "bf16 (train.mixed_precision=bf16)"
    card_row = next(line for line in (out / "README.md").read_text().splitlines() if "Mixed precision" in line)
    assert record["reason"] in card_row
