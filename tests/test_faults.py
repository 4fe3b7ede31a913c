"""Faults: a run killed mid-epoch resumes bit for bit; NaN stops the run and keeps the last good checkpoint."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import tiny_train_overrides
from safetensors.torch import load_file

import hftl
from hftl.errors import CheckpointError, ConfigError, NonFiniteLossError

RESUMABLE = {"train.epochs": 3, "train.checkpoint_every": 2, "train.keep_checkpoints": 50,
             "train.global_batch_size": 16, "train.per_device_batch_size": 8, "data.augment": True}


def _weights(folder: Path) -> dict:
    return load_file(str(folder / "model.safetensors"))


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def _train_in_subprocess(out: Path, *extra: str) -> subprocess.Popen:
    """A run in its own process with one thread: bit-exact comparisons need identical kernels and threading."""
    cmd = [sys.executable, "-m", "hftl.cli", "train", *tiny_train_overrides(out, **RESUMABLE), *extra]
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("full") / "run"
    proc = _train_in_subprocess(out)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
    return out


def test_sigkill_mid_epoch_then_resume_matches_uninterrupted_run(tmp_path, uninterrupted):
    out = tmp_path / "run"
    proc = _train_in_subprocess(out)
    deadline = time.time() + 300
    # Kill as soon as a mid-epoch checkpoint exists (18 steps in all; 6 per epoch; checkpoint every 2).
    while time.time() < deadline and proc.poll() is None:
        done = [p for p in (out / "checkpoints").glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if any(int(p.name.split("-")[1]) >= 4 for p in done):
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    assert not (out / "model.safetensors").exists()
    latest = max(int(p.name.split("-")[1]) for p in (out / "checkpoints").glob("checkpoint-*")
                 if (p / "trainer_state.json").is_file())
    assert latest < 18
    resumed = _train_in_subprocess(out, "train.resume=latest")
    assert resumed.wait(timeout=600) == 0, resumed.stderr.read().decode()[-2000:]
    _assert_same_weights(_weights(out), _weights(uninterrupted))
    full, again = (json.loads((folder / "metrics.json").read_text()) for folder in (uninterrupted, out))
    assert again["final"]["accuracy"] == pytest.approx(full["final"]["accuracy"])
    # The kept epoch's sign test reads the best epoch's per-example scores, which the checkpoint carries.
    assert (again["kept_epoch"], again["kept_p"]) == (full["kept_epoch"], full["kept_p"])


def test_resume_from_every_checkpoint_is_exact(tmp_path, uninterrupted):
    """From a mid-epoch checkpoint and from an epoch boundary alike."""
    import shutil

    runs = {}
    for step in (2, 6):  # 2: mid epoch 0; 6: the end of epoch 0
        out = tmp_path / f"from{step}"
        (out / "checkpoints").mkdir(parents=True)
        shutil.copytree(uninterrupted / "checkpoints" / f"checkpoint-{step}", out / "checkpoints" / f"checkpoint-{step}")
        runs[out] = _train_in_subprocess(out, "train.resume=latest")
    for out, proc in runs.items():
        assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-2000:]
        _assert_same_weights(_weights(out), _weights(uninterrupted))


def test_half_written_checkpoint_is_never_picked(tmp_path, uninterrupted):
    import shutil

    out = tmp_path / "run"
    (out / "checkpoints").mkdir(parents=True)
    shutil.copytree(uninterrupted / "checkpoints" / "checkpoint-4", out / "checkpoints" / "checkpoint-4")
    # What a crash during a write leaves: a temporary folder, and a folder without its state file.
    shutil.copytree(uninterrupted / "checkpoints" / "checkpoint-6", out / "checkpoints" / ".tmp-checkpoint-6")
    broken = out / "checkpoints" / "checkpoint-8"
    shutil.copytree(uninterrupted / "checkpoints" / "checkpoint-8", broken)
    (broken / "trainer_state.json").unlink()
    from hftl.checkpoint import find_checkpoint

    assert find_checkpoint(out, "latest").name == "checkpoint-4"


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    """One bad batch (its loss NaN) at step 5: the run stops before the weights change."""
    real = torch.nn.functional.cross_entropy
    calls = {"n": 0}

    def poisoned(logits, labels, *args, **kwargs):
        loss = real(logits, labels, *args, **kwargs)
        if torch.is_grad_enabled():  # training batches only
            calls["n"] += 1
            if calls["n"] == 5:
                return loss * float("nan")
        return loss

    monkeypatch.setattr(torch.nn.functional, "cross_entropy", poisoned)
    out = tmp_path / "run"
    overrides = tiny_train_overrides(out, **{"train.checkpoint_every": 2, "train.keep_checkpoints": 10})
    with pytest.raises(NonFiniteLossError) as e:
        hftl.train(None, overrides)
    message = str(e.value)
    assert "NaN/inf" in message and "step 4" in message and "checkpoint-4" in message and "train.lr" in message
    assert not (out / "model.safetensors").exists()  # no poisoned final weights
    kept = sorted(p.name for p in (out / "checkpoints").glob("checkpoint-*"))
    assert kept == ["checkpoint-2", "checkpoint-4"]
    for tensor in load_file(str(out / "checkpoints" / "checkpoint-4" / "model.safetensors")).values():
        assert torch.isfinite(tensor.float()).all()
    # ... and the run resumes from it once the cause is gone.
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", real)
    result = hftl.train(None, overrides + ["train.resume=latest"])
    assert (out / "model.safetensors").is_file() and result.metrics["loss"] == result.metrics["loss"]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        hftl.train(None, tiny_train_overrides(tmp_path / "empty", **{"train.resume": "latest"}))


def test_existing_run_is_not_overwritten(tmp_path, uninterrupted):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(uninterrupted, out)
    with pytest.raises(ConfigError, match="train.resume=latest"):
        hftl.train(None, tiny_train_overrides(out))


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="bf16"):
        hftl.train(None, tiny_train_overrides(tmp_path / "x", **{"train.mixed_precision": "fp16"}))


def test_bf16_trains_on_cpu(tmp_path):
    result = hftl.train(None, tiny_train_overrides(tmp_path / "bf16", **{"train.mixed_precision": "bf16",
                                                                          "train.channels_last": True,
                                                                          "train.epochs": 1}))
    assert result.metrics["loss"] == result.metrics["loss"]  # finite, not NaN


def test_global_batch_must_divide(tmp_path):
    with pytest.raises(ConfigError, match="multiple"):
        hftl.train(None, tiny_train_overrides(tmp_path / "x", **{"train.global_batch_size": 20,
                                                                  "train.per_device_batch_size": 8}))
