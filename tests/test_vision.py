"""Vision transfer end to end: every strategy, outputs that timm/peft load, predict/eval, the cache."""

import json
from pathlib import Path

import pytest
import timm
import torch
from conftest import tiny_train_overrides
from safetensors.torch import load_file

import hftl
from hftl.backbones import create_model
from hftl.cli import main as cli
from hftl.images import ImageDataset


def _save_digit_pngs(folder: Path, n: int = 3) -> list[Path]:
    from hftl.data import _digits

    images, labels, _ = _digits()
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"digit{i}_{labels[i]}.png"
        images[i].resize((32, 32)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    out = tmp_path_factory.mktemp("finetune") / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 3, "strategy.layer_decay": 0.8}))
    return result


def test_finetune_learns_and_writes_every_output(finetuned):
    out = finetuned.output_dir
    history = finetuned.history
    assert history[-1]["train_loss"] < history[0]["train_loss"]  # the loss falls
    assert finetuned.metrics["accuracy"] > 0.2  # 10 classes: chance is 0.1
    for name in ("model.safetensors", "config.json", "hftl.json", "hftl_config.yaml", "metrics.json",
                 "README.md", "log.jsonl"):
        assert (out / name).is_file(), name
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pth"))  # safetensors only
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["final"]["accuracy"] == pytest.approx(finetuned.metrics["accuracy"])
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any("eval/accuracy" in r for r in rows)


def test_timm_loads_the_output_and_predicts_the_same(finetuned):
    out = finetuned.output_dir
    native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    ours = hftl.load(out)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(native(x), ours({"pixel_values": x}))
    assert native.pretrained_cfg["label_names"] == [str(i) for i in range(10)]
    assert native.pretrained_cfg["input_size"] == (3, 32, 32)


def test_card_records_the_transfer(finetuned):
    from huggingface_hub import ModelCard

    card = ModelCard.load(finetuned.output_dir / "README.md")
    assert card.data.library_name == "timm"
    assert card.data.pipeline_tag == "image-classification"
    text = card.text
    assert "finetune" in text and "timm:test_resnet" in text and "accuracy" in text
    assert "group0" in text  # the learning-rate groups of layer decay
    accuracy = card.data.eval_results[0].metric_value
    assert accuracy == pytest.approx(finetuned.metrics["accuracy"])


def test_predict_and_eval_commands(finetuned, tmp_path, capsys):
    images = _save_digit_pngs(tmp_path)
    assert cli(["predict", str(finetuned.output_dir), *map(str, images), "--top-k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and all("(" in line for line in lines)
    assert cli(["eval", str(finetuned.output_dir)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["accuracy"] == pytest.approx(finetuned.metrics["accuracy"], abs=1e-6)


def test_layer_decay_scales_learning_rates():
    from hftl.config import StrategyConfig
    from hftl.methods.strategies import get_strategy

    model = create_model("timm:test_resnet", ["a", "b"], image_size=32)
    groups = get_strategy(StrategyConfig(name="finetune", layer_decay=0.5)).param_groups(model, 1.0, 0.0)
    lrs = sorted({g["lr"] for g in groups})
    n = len(model.layer_groups())
    assert lrs == pytest.approx(sorted(0.5 ** k for k in range(n + 1)))


def _initial_weights() -> dict:
    """The random init a tiny run starts from (api.train seeds torch with train.seed=42 before building)."""
    torch.manual_seed(42)
    return create_model("timm:test_resnet", [str(i) for i in range(10)], image_size=32).net.state_dict()


def test_partial_keeps_the_first_groups_frozen(tmp_path):
    out = tmp_path / "run"
    hftl.train(None, tiny_train_overrides(out, **{"strategy.name": "partial", "strategy.frozen_groups": 2,
                                                   "train.epochs": 1}))
    trained = load_file(str(out / "model.safetensors"))
    initial = _initial_weights()
    groups = create_model("timm:test_resnet", ["a"], image_size=32).layer_groups()
    frozen = [n for g in groups[:2] for n in g]
    for name in frozen:
        torch.testing.assert_close(trained[name], initial[name])
    for name in groups[-1] + ["fc.weight"]:
        assert not torch.equal(trained[name], initial[name]), name


def test_gradual_unfreeze_thaws_top_groups_first():
    from hftl.config import StrategyConfig
    from hftl.methods.strategies import get_strategy

    model = create_model("timm:test_resnet", ["a", "b"], image_size=32)
    strategy = get_strategy(StrategyConfig(name="gradual_unfreeze", unfreeze_every=1))
    strategy.prepare(model)
    groups = model.layer_groups()
    params = dict(model.net.named_parameters())

    def trainable(i):
        return all(params[n].requires_grad for n in groups[i])

    assert not any(trainable(i) for i in range(len(groups)))
    assert all(p.requires_grad for p in model.head.parameters())
    strategy.on_epoch_start(model, 1)
    assert trainable(len(groups) - 1) and not trainable(0)
    strategy.on_epoch_start(model, len(groups))
    assert all(trainable(i) for i in range(len(groups)))


def test_gradual_unfreeze_trains_end_to_end(tmp_path):
    result = hftl.train(None, tiny_train_overrides(tmp_path / "run", **{"strategy.name": "gradual_unfreeze"}))
    assert result.metrics["accuracy"] >= 0.0 and (tmp_path / "run" / "model.safetensors").is_file()


def test_lora_adapter_reloads_with_identical_predictions(tmp_path, pretrained_folder, monkeypatch):
    import hftl.run

    out = tmp_path / "lora"
    probe = {"pixel_values": torch.randn(3, 3, 32, 32)}
    before = {}
    real_write = hftl.run.write_outputs

    def predict_then_write(cfg, model, *args, **kwargs):
        model.eval()
        with torch.no_grad():  # what the trained model predicts before anything is saved
            before["logits"] = model(probe)
        real_write(cfg, model, *args, **kwargs)

    monkeypatch.setattr(hftl.run, "write_outputs", predict_then_write)
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(pretrained_folder), "strategy.name": "lora",
                                                   "strategy.merge_lora": True, "train.epochs": 1,
                                                   "train.lr": 0.005}))
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA" and "fc" in adapter["modules_to_save"]
    saved = load_file(str(out / "adapter_model.safetensors"))
    assert any("fc" in k for k in saved)  # the new head is in the adapter file (peft #310/#577/#1070)
    reloaded = hftl.load(out)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(probe), before["logits"])  # exactly what it predicted before saving
        merged = timm.create_model(f"local-dir:{out / 'merged'}", pretrained=True).eval()
        torch.testing.assert_close(merged(probe["pixel_values"]), before["logits"], rtol=1e-4, atol=1e-4)


def test_lora_on_random_weights_is_refused(tmp_path):
    from hftl.errors import ConfigError

    with pytest.raises(ConfigError, match="pretrained"):
        hftl.train(None, tiny_train_overrides(tmp_path / "x", **{"strategy.name": "lora"}))


def test_lora_trains_only_adapters_and_head():
    from hftl.config import StrategyConfig
    from hftl.methods.strategies import get_strategy

    model = create_model("timm:resnet18", ["a", "b"], image_size=32)
    get_strategy(StrategyConfig(name="lora")).prepare(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert 0 < trainable / total < 0.05


def test_linear_probe_caches_features_and_never_serves_stale(tmp_path, cache_root, monkeypatch):
    import hftl.methods.feature_cache as features

    monkeypatch.setenv("HFTL_CACHE", str(tmp_path / "cache"))
    computed = []
    real = features.compute_features
    monkeypatch.setattr(features, "compute_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    probe = {"strategy.name": "linear_probe", "train.epochs": 3}
    hftl.train(None, tiny_train_overrides(tmp_path / "a", **probe))
    assert len(computed) == 2  # train + validation, once for three epochs
    hftl.train(None, tiny_train_overrides(tmp_path / "b", **probe))
    assert len(computed) == 2  # a second run reuses the cache
    hftl.train(None, tiny_train_overrides(tmp_path / "c", **probe, **{"data.image_size": 40}))
    assert len(computed) == 4  # preprocessing changed: recomputed
    hftl.train(None, tiny_train_overrides(tmp_path / "d", **probe, **{"data.max_train_samples": 80}))
    assert len(computed) == 6  # data changed: recomputed
    hftl.train(None, tiny_train_overrides(tmp_path / "e", **probe, **{"train.seed": 7}))
    assert len(computed) == 8  # different random weights (and split): recomputed


def test_linear_probe_output_keeps_backbone_and_learns(tmp_path, pretrained_folder):
    out = tmp_path / "probe"
    result = hftl.train(None, tiny_train_overrides(out, **{"model.id": str(pretrained_folder), "train.epochs": 5,
                                                            "strategy.name": "linear_probe", "train.lr": 0.05,
                                                            "strategy.probe_solver": "sgd"}))
    source = load_file(str(pretrained_folder / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    for name in trained:
        if not name.startswith("fc."):
            assert torch.equal(trained[name], source[name]), name  # frozen backbone untouched, buffers too
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


@pytest.mark.parametrize("arch", ["resnet18", "resnet50", "vgg11", "vgg16"])
def test_named_architectures_train_a_step(arch):
    """ResNet 18/50 and VGG 11/16 with random weights: head resized, one step lowers the loss on a batch."""
    model = create_model(f"timm:{arch}", ["a", "b", "c"], image_size=32)
    x = torch.randn(4, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 0])
    assert model({"pixel_values": x}).shape == (4, 3)
    assert len(model.layer_groups()) >= 5
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    model.train()
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model({"pixel_values": x}), y)
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0]


class _InMemory(torch.utils.data.Dataset):
    """Images and labels as hftl's datasets yield them."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"pixel_values": self.images[i], "labels": self.labels[i]}


def test_second_fit_of_the_same_model_trains_in_its_own_precision(tmp_path):
    """Two fits of one model object in a row (as probe-then-fine-tune does): bf16, then fp32.

    The first fit used to leave Accelerate's 'prepared' mark and its autocast forward on the model, so the
    second fit skipped prepare and silently ran in bf16.
    """
    from hftl.config import TrainConfig
    from hftl.trainer import Trainer

    g = torch.Generator().manual_seed(0)
    data = _InMemory(torch.randn(64, 3, 32, 32, generator=g), torch.randint(0, 4, (64,), generator=g))
    torch.manual_seed(0)
    model = create_model("timm:test_resnet", ["a", "b", "c", "d"], image_size=32)
    dtypes = []
    model.head.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    for run, precision in enumerate(("bf16", "no")):
        before = {k: v.clone() for k, v in model.state_dict().items()}
        cfg = TrainConfig(epochs=2, global_batch_size=16, per_device_batch_size=16, lr=0.01, progress=False,
                          mixed_precision=precision)
        dtypes.clear()
        trainer = Trainer(cfg, model, data, data, output_dir=tmp_path / f"fit{run}")
        trainer.fit()
        assert trainer.model is model
        assert set(dtypes) == {torch.bfloat16 if precision == "bf16" else torch.float32}, precision
        assert trainer.history[-1]["train_loss"] < trainer.history[0]["train_loss"], precision
        assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items()), precision
        dtypes.clear()
        with torch.no_grad():
            model({"pixel_values": data.images[:2]})
        assert dtypes == [torch.float32]  # after training, the model runs in the precision it is called in


def test_local_hub_layout_folder_as_source(tmp_path):
    """A folder in timm's Hub layout (as save_for_hf/push_to_hub write it) is a pretrained source."""
    from timm.models import save_for_hf

    source = timm.create_model("test_resnet", num_classes=5)
    save_for_hf(source, str(tmp_path / "src"), safe_serialization=True)
    model = create_model(str(tmp_path / "src"), ["x", "y"], image_size=32)
    assert model.head.out_features == 2
    ours, theirs = model.net.state_dict(), source.state_dict()
    for name in theirs:
        if not name.startswith("fc."):
            torch.testing.assert_close(ours[name], theirs[name])  # every backbone weight transferred


def test_augmentation_is_a_function_of_seed_epoch_index():
    from hftl.config import DataConfig
    from hftl.data import load_labelled_data

    data = load_labelled_data(DataConfig(max_train_samples=20), "image_classification")
    model = create_model("timm:test_resnet", data.label_names, image_size=32)
    ds = ImageDataset(data.train, model.transform(train=True), seed=1)
    a = ds[3]["pixel_values"]
    torch.rand(10)  # the global RNG moves on: augmentation must not care
    assert torch.equal(ds[3]["pixel_values"], a)
    ds.set_epoch(1)
    assert not torch.equal(ds[3]["pixel_values"], a)


def test_default_lr_suits_the_network_and_its_start():
    """train.lr null: 3e-3 for a CNN from random weights, 1e-3 for a pretrained one and for a transformer
    from scratch (measured: README, "Learning rate")."""
    cnn = create_model("timm:test_resnet", ["a", "b"], image_size=32)
    vit = create_model("timm:test_vit", ["a", "b"], image_size=32)
    assert cnn.default_lr(from_scratch=True) == 3e-3 and cnn.default_lr(from_scratch=False) == 1e-3
    assert vit.default_lr(from_scratch=True) == 1e-3


def test_unset_lr_follows_the_start_and_a_set_one_wins(tmp_path):
    from safetensors.torch import save_file

    weights = tmp_path / "w.safetensors"  # a pretrained start: a state_dict file read into the architecture
    save_file(create_model("timm:test_resnet", ["a"], image_size=32).net.state_dict(), str(weights))

    def used_lr(name, *extra):
        overrides = [o for o in tiny_train_overrides(tmp_path / name, **{"train.epochs": 1}) if not o.startswith("train.lr=")]
        hftl.train(None, overrides + list(extra))
        return json.loads((tmp_path / name / "metrics.json").read_text())["lr"]

    assert used_lr("scratch", "strategy.name=scratch") == 3e-3
    assert used_lr("arch_only", "strategy.name=finetune") == 3e-3  # timm:test_resnet alone is random weights
    assert used_lr("pretrained", f"model.id={weights}", "model.arch=timm:test_resnet") == 1e-3
    assert used_lr("set", "strategy.name=scratch", "train.lr=0.02") == 0.02


def test_refit_trains_the_saved_model_again_on_every_label_for_the_same_epochs(tmp_path):
    import dataclasses

    from hftl.config import load_config
    from hftl.data import load_labelled_data, merged_for_refit

    settings = {"train.epochs": 3, "train.patience": 0}
    once = hftl.train(None, tiny_train_overrides(tmp_path / "once", **settings))
    refit = hftl.train(None, tiny_train_overrides(tmp_path / "refit", **settings, **{"train.refit": True}))
    record = json.loads((tmp_path / "refit" / "metrics.json").read_text())
    assert record["refit"]["examples"] == 96 + 60 and record["refit"]["epochs"] == record["kept_epoch"] + 1 == 3
    assert refit.metrics == once.metrics  # what is reported is the first fit's, on examples it did not train on
    assert "Then trained again from the same start on all 156 labelled examples" in \
        (tmp_path / "refit" / "README.md").read_text()
    # The saved weights are exactly those of a run on all 156 examples for the same epochs.
    cfg = load_config(None, tiny_train_overrides(tmp_path / "all", **settings, **{"train.keep_best": False}))
    merged = merged_for_refit(load_labelled_data(cfg.data, cfg.task, cfg.train.seed))
    hftl.train(None, tiny_train_overrides(tmp_path / "all", **settings, **{"train.keep_best": False}), data=merged)
    saved, plain = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("refit", "all"))
    assert all(torch.equal(saved[k], plain[k]) for k in plain)
    assert not all(torch.equal(saved[k], v) for k, v in load_file(str(tmp_path / "once" / "model.safetensors")).items())
    # It learned the validation examples it now trains on; scoring them says they were seen.
    scored = hftl.evaluate(tmp_path / "refit")
    assert scored["validation_seen_in_training"] is True and scored["loss"] < once.metrics["loss"]
    # A validation split given with the data (a study's fold, a source's own split) is never trained on.
    given = dataclasses.replace(load_labelled_data(cfg.data, cfg.task, cfg.train.seed), carved=False)
    hftl.train(None, tiny_train_overrides(tmp_path / "given", **settings, **{"train.refit": True}), data=given)
    assert json.loads((tmp_path / "given" / "metrics.json").read_text())["refit"] is None


def test_a_first_fit_that_kept_an_earlier_epoch_is_saved_as_it_is(tmp_path, monkeypatch):
    """An epoch chosen on the validation split is a choice a refit on that split could not repeat."""
    from hftl.trainer import Trainer

    # The first fit keeps its second epoch of four (as where it beats the last beyond noise).
    def kept(self):
        self.kept_p = 0.01
        return 1

    monkeypatch.setattr(Trainer, "_best_index", lambda self: min(1, len(self.history) - 1))
    monkeypatch.setattr(Trainer, "_kept_index", kept)
    overrides = tiny_train_overrides(tmp_path / "run", **{"train.epochs": 4, "train.patience": 0, "train.refit": True})
    result = hftl.train(None, overrides)
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["kept_epoch"] == 1 and record["refit"] is None and not (tmp_path / "run" / "refit").exists()
    assert hftl.evaluate(tmp_path / "run")["loss"] == pytest.approx(result.metrics["loss"], rel=1e-5)  # the kept one
