"""The solved linear probe, LP-FT, early stopping with best-epoch restore, and eval on whole files."""

import json

import numpy as np
import pytest
import timm
import torch
from conftest import tiny_train_overrides
from PIL import Image
from safetensors.torch import load_file
from torch import nn

import hftl
from hftl import probe
from hftl.cards import probe_text
from hftl.config import load_config
from hftl.errors import ConfigError
from hftl.probe import solve_probe, standardise

pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n: int, d: int, classes: int, noise: float, seed: int, flip: float = 0.0):
    """Gaussian class clusters; ``flip`` of the labels replaced by random ones (label noise)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(classes, d, generator=g)
    y = torch.arange(n) % classes
    x = centers[y] + noise * torch.randn(n, d, generator=g) + 5.0  # off-centre: the folding of the mean matters
    if flip:
        noisy = torch.rand(n, generator=g) < flip
        y = torch.where(noisy, torch.randint(0, classes, (n,), generator=g), y)
    return x, y


def test_solved_probe_matches_scikit_learn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = blobs(240, 32, 4, noise=2.0, seed=0)
    head = nn.Linear(32, 4)
    info = solve_probe(head, x, y)
    xs, mean, scale = standardise(x.double())
    reference = LogisticRegression(C=info["C"], max_iter=10000, tol=1e-10).fit(xs.numpy(), y.numpy())
    test_x, _ = blobs(500, 32, 4, noise=2.0, seed=0)  # same clusters, fresh draws
    test_x = test_x + 0.5 * torch.randn(test_x.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = head(test_x).argmax(-1).numpy()
    theirs = reference.predict(((test_x.double() - mean) / scale).numpy())
    assert (ours == theirs).mean() >= 0.98
    # The head works on raw features: the standardisation is folded into its weight and bias.
    np.testing.assert_allclose(head.weight.detach().double().numpy() * scale.numpy(), reference.coef_, atol=2e-3)


def test_ridge_probe_matches_scikit_learn_ridge():
    from sklearn.linear_model import Ridge

    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=g) * 3 + 2
    y = x[:, :4].sum(1) + torch.randn(120, generator=g)
    head = nn.Linear(16, 1)
    info = solve_probe(head, x, y.float(), regression=True)
    xs, mean, scale = standardise(x.double())
    reference = Ridge(alpha=info["alpha"]).fit(xs.numpy(), y.numpy())
    with torch.no_grad():
        np.testing.assert_allclose(head(x)[:, 0].double().numpy(), reference.predict(xs.numpy()), atol=1e-3)


@pytest.mark.parametrize("features", [16, 48])  # fewer, and more, features than examples
def test_ridge_strength_is_chosen_by_exact_leave_one_out_as_ridgecv(features):
    from sklearn.linear_model import RidgeCV

    from hftl.probe import DEFAULT_GRID, fit_ridge, ridge_loo_mse

    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, features, generator=g).double()
    y = x[:, :3].sum(1) + 2 * torch.randn(40, generator=g).double()
    grid = [1e-3, 1e-1, 10.0]
    brute = []  # 40 fits, each without one example
    for l2 in grid:
        errors = []
        for i in range(40):
            keep = torch.arange(40) != i
            w, b = fit_ridge(x[keep], y[keep], [l2 * 40 / 39])[0]  # the same alpha = n * l2 on 39 examples
            errors.append(float((x[i] @ w[:, 0] + b[0] - y[i]) ** 2))
        brute.append(np.mean(errors))
    np.testing.assert_allclose(ridge_loo_mse(x, y, grid), brute, rtol=1e-8)
    xs, _, _ = standardise(x)
    info = solve_probe(nn.Linear(features, 1), x.float(), y.float(), regression=True)
    reference = RidgeCV(alphas=[v * 40 for v in DEFAULT_GRID]).fit(xs.numpy(), y.numpy())
    assert info["alpha"] == pytest.approx(reference.alpha_)


def test_chosen_regularisation_follows_the_data():
    clean = solve_probe(nn.Linear(64, 5), *blobs(1000, 64, 5, noise=0.8, seed=2))
    noisy = solve_probe(nn.Linear(64, 5), *blobs(40, 64, 5, noise=3.0, seed=2, flip=0.3))
    assert clean["l2"] < noisy["l2"], (clean["l2"], noisy["l2"])
    assert noisy["selection"] and len(noisy["selection"]) == len(noisy["grid"])  # every strength was scored


@pytest.mark.parametrize("width", [8, 3])
def test_two_layer_head_carries_the_solution(width):
    """Audio heads are projector + classifier: wide enough, the pair holds the solved map exactly;
    narrower than the classes, the classifier is solved on the projector's outputs."""
    x, y = blobs(200, 12, 5, noise=1.0, seed=3)
    torch.manual_seed(0)
    pair = nn.Sequential(nn.Linear(12, width), nn.Linear(width, 5))
    before = pair[0].weight.detach().clone()
    solve_probe(pair, x, y)
    single = nn.Linear(12, 5)
    if width >= 5:
        solve_probe(single, x, y)
        with torch.no_grad():
            torch.testing.assert_close(pair(x), single(x), atol=1e-4, rtol=1e-4)
        assert torch.equal(pair[0].weight[5:], before[5:])  # the spare rows keep their start (for LP-FT)
    else:
        assert torch.equal(pair[0].weight, before)
        with torch.no_grad():
            assert (pair(x).argmax(-1) == y).float().mean() > 0.5


def test_probe_run_is_solved_recorded_and_reloads(tmp_path, pretrained_folder):
    out = tmp_path / "probe"
    result = hftl.train(None, tiny_train_overrides(out, **{"model.id": str(pretrained_folder),
                                                            "strategy.name": "linear_probe",
                                                            "strategy.probe_refit": False}))
    record = json.loads((out / "metrics.json").read_text())
    assert record["epochs_planned"] == 0 and len(record["history"]) == 1  # solved, then scored once
    assert record["probe"]["l2"] in record["probe"]["grid"] and record["probe"]["C"] > 0
    assert result.metrics["accuracy"] > 0.3  # 10 classes, random-ish features from a 7-class source
    card = (out / "README.md").read_text()
    assert "Solved, not trained" in card and f"{record['probe']['l2']:.3g}" in card
    assert f"by {record['probe']['chosen_by']} on the training examples" in card  # the card says how it chose
    # What was saved predicts what the trainer scored, through hftl and through plain timm.
    assert hftl.evaluate(out)["loss"] == pytest.approx(result.metrics["loss"], rel=1e-5)
    native = timm.create_model(f"local-dir:{out}", pretrained=True).eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(native(x), hftl.load(out)({"pixel_values": x}))
    source = load_file(str(pretrained_folder / "model.safetensors"))
    trained = load_file(str(out / "model.safetensors"))
    assert all(torch.equal(trained[k], source[k]) for k in trained if not k.startswith("fc."))  # backbone frozen


def test_probe_is_solved_again_on_every_label_when_hftl_held_the_validation_split_out(tmp_path, pretrained_folder):
    import dataclasses

    from hftl.data import load_labelled_data
    from hftl.methods.feature_cache import cached_features
    from hftl.probe import solve_probe
    from hftl.tasks import get_task_impl

    out = tmp_path / "refit"
    overrides = tiny_train_overrides(out, **{"model.id": str(pretrained_folder), "strategy.name": "linear_probe"})
    result = hftl.train(None, overrides)
    record = json.loads((out / "metrics.json").read_text())
    assert record["probe"]["refit_examples"] == 96 + 60  # the training and the held-out examples
    assert "Then solved again on all 156 labelled examples" in (out / "README.md").read_text()
    # The saved head is the probe solved on all 156 features, its strength chosen again by cross-validation on them.
    cfg = load_config(None, overrides)
    model = hftl.load(out)
    task = get_task_impl("image_classification")
    data = task.load_data(cfg)
    train_ds, eval_ds, _ = task.datasets(cfg, model, data)
    feats = [cached_features(model, ds, data.fingerprint, split, False, fingerprint=model.fingerprint(),
                             batch_size=16)[:2] for ds, split in ((task.plain_train_dataset(cfg, model, data, train_ds),
                                                                   "train"), (eval_ds, "validation"))]
    head = nn.Linear(model.head.in_features, 10)
    again = solve_probe(head, torch.cat([f[0] for f in feats]), torch.cat([f[1] for f in feats]), seed=cfg.train.seed)
    assert record["probe"]["refit_l2"] == again["l2"] and f"{again['l2']:.3g}." in (out / "README.md").read_text()
    torch.testing.assert_close(model.head.weight, head.weight, atol=1e-4, rtol=1e-3)
    # Scoring it on the split it has now seen says so; the reported metrics are still the first fit's.
    scored = hftl.evaluate(out)
    assert scored["validation_seen_in_training"] is True
    assert result.metrics == record["final"]
    # A validation split given with the data (a study's fold, a source's own split) is never trained on.
    given = dataclasses.replace(load_labelled_data(cfg.data, cfg.task, cfg.train.seed), carved=False)
    hftl.train(None, tiny_train_overrides(tmp_path / "given", **{"model.id": str(pretrained_folder),
                                                                  "strategy.name": "linear_probe"}), data=given)
    assert "refit_examples" not in json.loads((tmp_path / "given" / "metrics.json").read_text())["probe"]
    assert "validation_seen_in_training" not in hftl.evaluate(tmp_path / "given")


def test_lp_ft_starts_from_the_solved_head_and_trains(tmp_path, pretrained_folder, monkeypatch):
    import hftl.methods.feature_cache as feature_cache
    from hftl.trainer import Trainer

    seen = {}
    solve, fit = feature_cache.solve_heads, Trainer.fit

    def solve_and_keep(cfg, model, *a, **k):
        info = solve(cfg, model, *a, **k)
        seen["solved"] = model.head.weight.detach().clone()
        return info

    def fit_and_look(self):
        seen["start"] = self.model.head.weight.detach().clone()
        return fit(self)

    monkeypatch.setattr(feature_cache, "solve_heads", solve_and_keep)
    monkeypatch.setattr(Trainer, "fit", fit_and_look)
    out = tmp_path / "lpft"
    result = hftl.train(None, tiny_train_overrides(out, **{"model.id": str(pretrained_folder),
                                                            "strategy.name": "lp_ft", "train.epochs": 3,
                                                            "train.lr": 0.003}))
    assert torch.equal(seen["start"], seen["solved"])
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]
    trained = load_file(str(out / "model.safetensors"))
    source = load_file(str(pretrained_folder / "model.safetensors"))
    assert any(not torch.equal(trained[k], source[k]) for k in trained if k.endswith("conv1.weight"))  # backbone moved
    record = json.loads((out / "metrics.json").read_text())
    assert record["probe"]["l2"] > 0
    assert "LP-FT" in (out / "README.md").read_text()


def script_accuracy(monkeypatch, accuracies: list[float], examples: int = 60) -> None:
    """Make each evaluation report the next accuracy, with per-example scores to match: ``examples`` validation
    examples of which the first round(accuracy x examples) are right (what the kept-epoch sign test compares)."""
    from hftl.trainer import Trainer

    scores = iter(accuracies)
    evaluate = Trainer.evaluate

    def scripted(self, model, eval_dl):
        metrics = evaluate(self, model, eval_dl)
        accuracy = next(scores)
        right = round(accuracy * examples)
        self._scores = [1.0] * right + [0.0] * (examples - right)
        return {**metrics, "accuracy": accuracy}

    monkeypatch.setattr(Trainer, "evaluate", scripted)


def test_early_stopping_restores_the_best_epoch(tmp_path, monkeypatch):
    script_accuracy(monkeypatch, [0.3, 0.8, 0.5, 0.4, 0.2, 0.1])  # of 60: 48 right at best, 24 at the last
    out = tmp_path / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 6, "train.patience": 2,
                                                            "train.keep_checkpoints": 10}))
    assert len(result.history) == 4  # epochs 2 and 3 did not beat epoch 1: stopped
    assert result.metrics["accuracy"] == 0.8
    record = json.loads((out / "metrics.json").read_text())
    assert record["kept_epoch"] == 1 and record["epochs_run"] == 4
    assert record["kept_p"] < 1e-6  # 24 examples better at epoch 1, none worse
    checkpoints = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    at_best = load_file(str(checkpoints[1] / "model.safetensors"))  # the end of epoch 1
    saved = load_file(str(out / "model.safetensors"))
    for name, value in saved.items():
        torch.testing.assert_close(value, at_best[f"net.{name}"], rtol=0, atol=0)
    assert "weights of epoch 2 kept (best validation accuracy, better than the last epoch's" in \
        (out / "README.md").read_text()


def test_a_best_epoch_ahead_by_noise_keeps_the_last_epoch(tmp_path, monkeypatch):
    # 16 validation images: the peak got 16 right, the last epoch 15. One image is no evidence (p = 0.5), and the
    # last epoch is the one the schedule annealed to (on quality.py's shapes it scored 0.96 on test, the peak 0.88).
    script_accuracy(monkeypatch, [0.5, 1.0, 0.9375, 0.9375], examples=16)
    out = tmp_path / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 4, "train.keep_checkpoints": 10}))
    record = json.loads((out / "metrics.json").read_text())
    assert record["kept_epoch"] == 3 and record["kept_p"] == 0.5
    assert result.metrics["accuracy"] == 0.9375
    last = sorted((out / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))[-1]
    at_last = load_file(str(last / "model.safetensors"))
    for name, value in load_file(str(out / "model.safetensors")).items():
        torch.testing.assert_close(value, at_last[f"net.{name}"], rtol=0, atol=0)
    assert "weights of the last epoch (4) kept: epoch 2's better validation accuracy was no evidence" in \
        (out / "README.md").read_text()


def test_metrics_json_names_the_trainers_best_epoch_on_a_tie(tmp_path, monkeypatch):
    # Epochs 2 and 3 tie on accuracy: the trainer takes the lower validation loss, and metrics.json must agree.
    script_accuracy(monkeypatch, [0.5, 0.8, 0.8])
    out = tmp_path / "run"
    result = hftl.train(None, tiny_train_overrides(out, **{"train.epochs": 3}))
    tied = result.history[1:]
    expected = min(tied, key=lambda h: h["loss"])["epoch"]
    assert json.loads((out / "metrics.json").read_text())["best"] == {"epoch": expected, "metric": "accuracy",
                                                                     "value": 0.8}


def test_the_sign_test_weighs_examples_not_averages():
    from hftl.metrics import better_beyond_noise, example_scores

    right = example_scores("accuracy", [0, 1, 2, 2], [0, 1, 2, 1])
    assert right == [1.0, 1.0, 1.0, 0.0] and example_scores("f1", [0], [0]) is None  # F1 is no mean over examples
    assert better_beyond_noise([1.0] * 40, [1.0] * 37 + [0.0] * 3, lower_is_better=False) == 0.125
    assert better_beyond_noise([1.0] * 40, [0.0] * 40, lower_is_better=False) < 1e-9
    # Errors: lower is better. Smaller errors on 8 examples of 8 is p = 1/256; swapped, no evidence at all.
    small, large = example_scores("mse", [1.0] * 8, [1.1] * 8), example_scores("mse", [1.0] * 8, [2.0] * 8)
    assert better_beyond_noise(small, large, lower_is_better=True) == 1 / 256
    assert better_beyond_noise(large, small, lower_is_better=True) == 1.0


def test_the_terminal_says_where_training_stopped_and_which_epoch_was_kept(tmp_path, monkeypatch, capsys):
    from hftl.cli import main as cli_main

    script_accuracy(monkeypatch, [0.3, 0.8, 0.5, 0.4, 0.2, 0.1])
    overrides = tiny_train_overrides(tmp_path / "run", **{"train.epochs": 6, "train.patience": 2,
                                                          "train.progress": "true"})
    assert cli_main(["train", *overrides]) == 0
    out, err = capsys.readouterr()
    assert "4 epochs of 6, stopped early; kept epoch 2 (accuracy 0.8)" in err  # the progress bar's last words
    summary = json.loads(out[out.index("{"):])
    assert summary["epochs"] == {"planned": 6, "run": 4, "stopped_early": True, "kept": 2}
    assert "INFO" not in err  # INFO lines go to the run's log file, not the terminal
    assert "Training 6 epochs" in (tmp_path / "run" / "logs" / "hftl.log").read_text()


def test_epochs_follow_min_steps_when_unset(tmp_path):
    base = tiny_train_overrides(tmp_path / "a", **{"train.epochs": "null", "train.min_steps": 20,
                                                   "strategy.name": "linear_probe", "strategy.probe_solver": "sgd"})
    result = hftl.train(None, base)
    assert len(result.history) == 4  # 96 examples / 16 = 6 steps an epoch: 4 epochs reach 20 steps


def test_early_stopping_waits_for_min_steps(tmp_path, monkeypatch):
    from hftl.trainer import Trainer

    monkeypatch.setattr(Trainer, "evaluate", lambda self, model, dl: {"loss": 1.0, "accuracy": 0.1})  # never improves
    overrides = {"train.epochs": "null", "train.min_steps": 30, "train.patience": 1,
                 "strategy.name": "linear_probe", "strategy.probe_solver": "sgd"}
    result = hftl.train(None, tiny_train_overrides(tmp_path / "a", **overrides))
    assert len(result.history) == 5  # 6 steps an epoch: patience 1 may stop it only once 30 steps are done
    result = hftl.train(None, tiny_train_overrides(tmp_path / "b", **{**overrides, "train.epochs": 8}))
    assert len(result.history) == 2  # epochs set: no floor, patience 1 stops after the second epoch


def test_eval_on_a_file_scores_every_row(tmp_path, pretrained_folder):
    from hftl.data import _digits

    out = tmp_path / "probe"
    hftl.train(None, tiny_train_overrides(out, **{"model.id": str(pretrained_folder), "strategy.name": "linear_probe"}))
    images, labels, _ = _digits()
    rows = ["image,label"]
    for i in range(37):  # every class present, 37 rows in all
        Image.fromarray(np.asarray(images[i])).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{labels[i]}")
    (tmp_path / "test.csv").write_text("\n".join(rows) + "\n")
    assert hftl.evaluate(out, [f"data.id={tmp_path / 'test.csv'}"])["examples"] == 37
    assert hftl.evaluate(out)["examples"] == 60  # no data override: the run's own validation split


@pytest.mark.parametrize("override,key", [("train.patience=-1", "train.patience"), ("train.min_steps=-5", "train.min_steps"),
                                          ("strategy.probe_solver=adam", "strategy.probe_solver"),
                                          ("strategy.probe_l2=[0.1, -1]", "strategy.probe_l2"),
                                          ("train.backbone_lr_scale=-1", "train.backbone_lr_scale")])
def test_new_fields_are_range_checked(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, ["strategy.name=linear_probe", override])


def test_solved_probe_needs_cached_features():
    with pytest.raises(ConfigError, match="cache_features"):
        load_config(None, ["strategy.name=linear_probe", "strategy.cache_features=false"])
    assert load_config(None, ["strategy.name=linear_probe", "strategy.cache_features=false",
                              "strategy.probe_solver=sgd"]).strategy.probe_solver == "sgd"


def test_the_record_says_how_the_strength_was_chosen(monkeypatch):
    """The card quotes ``chosen_by``: folds as many as the smallest class allows, one share on large data."""
    x, y = blobs(30, 8, 3, noise=1.0, seed=3)
    assert solve_probe(nn.Linear(8, 3), x, y)["chosen_by"] == "5-fold cross-validation"
    keep = torch.cat([(y != 2).nonzero().flatten(), (y == 2).nonzero().flatten()[:3]])  # a class of 3: 3 folds
    assert solve_probe(nn.Linear(8, 3), x[keep], y[keep])["chosen_by"] == "3-fold cross-validation"
    monkeypatch.setattr(probe, "HOLDOUT_ABOVE", 20)
    assert solve_probe(nn.Linear(8, 3), x, y)["chosen_by"] == "one held-out 20% share"
    assert solve_probe(nn.Linear(8, 1), x, y.float(), regression=True)["chosen_by"] == "leave-one-out cross-validation"
    assert solve_probe(nn.Linear(8, 3), x, y, grid=[1e-3])["chosen_by"] is None
    few = solve_probe(nn.Linear(8, 3), x[:3], y[:3])  # a grid, but too few examples to hold any out
    assert few["chosen_by"] is None and "too few training examples" in probe_text(few)
    assert "as given (no search)" in probe_text(solve_probe(nn.Linear(8, 3), x, y, grid=[1e-3]))


def test_a_handful_of_examples_still_solves():
    x, y = blobs(6, 4, 3, noise=0.5, seed=5)  # 20% held out is one example, fewer than the classes
    info = solve_probe(nn.Linear(4, 3), x, y)
    assert info["l2"] in info["grid"]
