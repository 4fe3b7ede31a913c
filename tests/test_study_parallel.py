"""A study's fold trainings at once (study.workers, study.backend): the same records as a serial run, resumable."""

import json
from pathlib import Path

import pytest
import torch
from test_study import tiny_study

from hftl.errors import ConfigError
from hftl.study import run_study, study_config_from_dict
from hftl.study.parallel import plan_slots


def fold_metrics(out: Path) -> dict:
    runs = json.loads((out / "study.json").read_text())["runs"]
    return {(r["arm"], r["fold"]): r["metrics"] for r in runs}


@pytest.fixture(scope="module")
def serial_study(tmp_path_factory):
    """The reference: the tiny study run serially with one torch thread (what each of two workers gets here)."""
    out = tmp_path_factory.mktemp("serial") / "s"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = run_study(tiny_study(out, arms=["scratch", "linear_probe", "finetune"]))
    finally:
        torch.set_num_threads(threads)
    return report, out


def test_two_workers_give_the_serial_study_and_resume(serial_study, tmp_path):
    serial, serial_out = serial_study
    out = tmp_path / "p"
    report = run_study(tiny_study(out, arms=["scratch", "linear_probe", "finetune"], workers=2))
    assert report.trained == 6 and report.skipped == 0
    assert fold_metrics(out) == fold_metrics(serial_out)  # same seeds, same data, same numbers, bit for bit
    assert [r["arm"] for r in json.loads((out / "study.json").read_text())["runs"]] == \
        [r["arm"] for r in json.loads((serial_out / "study.json").read_text())["runs"]]  # the serial order
    assert report.winner == serial.winner and report.winner_fold == serial.winner_fold
    assert (out / "model" / "hftl.json").is_file()
    weights = sorted(p.parent.name for p in (out / "runs").rglob("*.safetensors"))
    assert weights == [f"fold{report.winner_fold}"]  # the other folds were lightened, as serially
    again = run_study(tiny_study(out, arms=["scratch", "linear_probe", "finetune"], workers=2))
    assert again.trained == 0 and again.skipped == 6  # every fold resumed from its record


def test_ray_backend_gives_the_serial_study(serial_study, tmp_path):
    pytest.importorskip("ray")
    import ray

    _, serial_out = serial_study
    out = tmp_path / "r"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)  # a local Ray instance
    try:
        report = run_study(tiny_study(out, arms=["scratch", "linear_probe", "finetune"], workers=2, backend="ray"))
    finally:
        ray.shutdown()
    assert report.trained == 6
    assert fold_metrics(out) == fold_metrics(serial_out)


def test_study_folds_write_no_checkpoints(tmp_path, monkeypatch):
    import hftl.trainer

    def refuse(*args, **kwargs):
        raise AssertionError("a study fold wrote a checkpoint")

    monkeypatch.setattr(hftl.trainer, "save_checkpoint", refuse)
    report = run_study(tiny_study(tmp_path / "s"))
    assert report.trained == 4 and not list((tmp_path / "s").rglob("checkpoints"))


def test_slots_split_the_cores_and_share_the_gpus():
    assert plan_slots(2, [0, 1], 0) == [{"cores": [0], "gpu": None}, {"cores": [1], "gpu": None}]
    assert plan_slots(3, [0, 1, 2, 3], 2) == [{"cores": [0, 1], "gpu": 0}, {"cores": [2], "gpu": 1},
                                              {"cores": [3], "gpu": 0}]
    assert [s["cores"] for s in plan_slots(3, [5], 0)] == [[5], [5], [5]]  # more workers than cores: they share


@pytest.mark.parametrize("study, message", [
    ({"workers": 0}, r"study.workers must be a whole number of workers, at least 1"),
    ({"backend": "dask"}, r"study.backend 'dask' is not known. Valid backends: local, ray"),
])
def test_bad_worker_settings_are_clear_errors(tmp_path, study, message):
    with pytest.raises(ConfigError, match=message):
        study_config_from_dict(tiny_study(tmp_path, **study))


def test_a_run_with_save_checkpoints_false_writes_none(tmp_path):
    from conftest import tiny_train_overrides

    import hftl

    result = hftl.train(None, tiny_train_overrides(tmp_path / "run", **{"train.save_checkpoints": "false"}))
    assert (result.output_dir / "hftl.json").is_file() and not (result.output_dir / "checkpoints").exists()


def test_frozen_features_are_computed_once_per_study_and_change_nothing(tmp_path, monkeypatch, pretrained_folder):
    import hftl.methods.feature_cache as fc
    from hftl.tasks.image_classification import ImageClassification

    calls = []
    compute = fc.compute_features
    monkeypatch.setattr(fc, "compute_features", lambda *a, **k: calls.append(len(a[1])) or compute(*a, **k))
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))

    def study(out):
        cfg = tiny_study(out, arms=["scratch", "linear_probe"], folds=3, max_examples=18)
        cfg["base"]["model"]["id"] = str(pretrained_folder)
        return run_study(cfg)

    study(tmp_path / "once")
    assert calls == [18]  # one pass over the pool, shared by 3 folds x (train, held-out)
    calls.clear()
    monkeypatch.setattr(ImageClassification, "features_per_example", False)  # each split on its own, as before
    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache2"))
    study(tmp_path / "per_fold")
    assert sorted(calls) == [6, 6, 6, 12, 12, 12]
    assert fold_metrics(tmp_path / "once") == fold_metrics(tmp_path / "per_fold")  # the same probes, fold by fold
