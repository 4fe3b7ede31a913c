"""Test-wide settings: offline, every cache in a temporary folder, tiny models built in code.

Environment variables are set here, at import, because huggingface_hub and datasets read them
when they are first imported.
"""

import os
import tempfile
from pathlib import Path

_ROOT = Path(tempfile.mkdtemp(prefix="hftl-tests-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["HF_HOME"] = str(_ROOT / "hf_home")
os.environ["HF_DATASETS_CACHE"] = str(_ROOT / "hf_datasets")
os.environ["HFTL_CACHE"] = str(_ROOT / "hftl_cache")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("OMP_NUM_THREADS", "2")
# train.mixed_precision=auto without its CPU probe: fp32 on every CPU, so that results do not depend on which
# CPU runs the suite (tests/test_precision.py clears it). On a GPU, auto still picks bf16.
os.environ.setdefault("HFTL_CPU_BF16", "0")

# The fake Hub (tests/hub_server.py) needs HF_ENDPOINT fixed before huggingface_hub is imported; with no
# server running, any stray Hub call is refused at once on 127.0.0.1 instead of reaching out.
from hub_server import configure_hub_env  # noqa: E402

configure_hub_env()

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run several times faster on one thread (two threads mostly wait on each other).

    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def launch_two_processes(overrides: list[str], cwd: Path) -> dict:
    """``accelerate launch --cpu --num_processes 2 recipes/train.py``; returns the run's metrics.json.

    Asserts what every such run must show: two ranks, and identical weights on both (DDP kept them in step).
    """
    import json
    import subprocess
    import sys

    accelerate = Path(sys.executable).parent / "accelerate"
    cmd = [str(accelerate), "launch", "--cpu", "--num_processes", "2", str(REPO / "recipes" / "train.py"), *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS="1"),
                          timeout=600, cwd=cwd)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = next(o.split("=", 1)[1] for o in overrides if o.startswith("output_dir="))
    metrics = json.loads((Path(out) / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    assert metrics["rank_weight_checksums"][0] == metrics["rank_weight_checksums"][1]
    metrics["stdout"] = proc.stdout
    return metrics


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def cache_root() -> Path:
    return _ROOT


def tiny_train_overrides(out, **extra) -> list[str]:
    """Overrides for a fast image run: tiny timm ResNet at 32 px on a slice of the built-in digits."""
    base = {
        "model.id": "timm:test_resnet",
        "data.id": "builtin:digits",
        "data.image_size": 32,
        "data.max_train_samples": 96,
        "data.max_eval_samples": 60,
        "data.augment": False,
        "train.epochs": 2,
        "train.global_batch_size": 16,
        "train.per_device_batch_size": 16,
        "train.lr": 0.01,
        "train.refit": False,  # a second training per run would double the suite; tests of the refit switch it on
        "train.progress": False,
        "output_dir": str(out),
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


@pytest.fixture(scope="session")
def pretrained_folder(tmp_path_factory) -> Path:
    """A tiny timm model in the Hub layout (config.json + model.safetensors), standing in for a Hub download."""
    import timm
    import torch
    from timm.models import save_for_hf

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("pretrained") / "test_resnet_src"
    save_for_hf(timm.create_model("test_resnet", num_classes=7), str(folder), safe_serialization=True)
    return folder
