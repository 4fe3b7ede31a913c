"""Scale out: the recipe under `accelerate launch --cpu --num_processes 2` trains on two ranks (gloo)."""

from pathlib import Path

import pytest
from conftest import launch_two_processes, tiny_train_overrides

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_cpu_launch_trains_identical_replicas(tmp_path):
    metrics = launch_two_processes(tiny_train_overrides(tmp_path / "ddp", **{
        "train.epochs": 1, "train.global_batch_size": 16, "train.per_device_batch_size": 8}), cwd=tmp_path)
    assert set(metrics["final"]) >= {"accuracy", "f1", "loss"}
    assert metrics["stdout"].count('"output_dir"') == 1  # one summary, from rank 0


def test_tensorboard_tracker_writes_events(tmp_path):
    import hftl

    out = tmp_path / "tb"
    hftl.train(None, tiny_train_overrides(out, **{"train.tracker": "tensorboard", "train.epochs": 1}))
    assert list((out / "logs").rglob("events.out.tfevents*"))


def test_accelerate_configs_are_valid_yaml():
    import yaml

    for path in (REPO / "recipes" / "accelerate_configs").glob("*.yaml"):
        data = yaml.safe_load(path.read_text())
        assert data["distributed_type"] in {"MULTI_GPU", "FSDP", "DEEPSPEED", "MULTI_CPU"}, path
        assert data["num_processes"] >= 2, path
