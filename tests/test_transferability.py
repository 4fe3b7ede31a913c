"""Transferability scores against their papers' formulas, computed directly on small known inputs."""

import json

import numpy as np
import pytest
from conftest import tiny_train_overrides
from scipy.stats import multivariate_normal

from hftl.cli import main as cli_main
from hftl.errors import ConfigError
from hftl.transferability import _evidence, h_score, knn_accuracy, leep, logme, nce, rank, scores, trust


def data(n=48, d=6, classes=3, signal=2.0, seed=0):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    centers = rng.normal(size=(classes, d)) * signal
    return centers[y] + rng.normal(size=(n, d)), y


def test_logme_evidence_is_the_marginal_likelihood_and_its_maximum():
    f, y = data(n=30, d=5)
    target = (y == 1).astype(float)
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = _evidence(f, target, u, s, vh, max_iter=500, tol=1e-10)

    def brute(a, b):  # y ~ N(0, F F^T / alpha + I / beta): the model's marginal likelihood, directly
        return multivariate_normal(np.zeros(len(f)), f @ f.T / a + np.eye(len(f)) / b).logpdf(target)

    assert evidence == pytest.approx(brute(alpha, beta), rel=1e-8)
    for a, b in ((alpha * 2, beta), (alpha / 2, beta), (alpha, beta * 1.5), (alpha, beta / 1.5)):
        assert brute(a, b) < evidence  # the fixed point is the maximum


def test_logme_when_features_outnumber_examples():
    f, y = data(n=12, d=40)
    target = (y == 0).astype(float)
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    evidence, alpha, beta = _evidence(f, target, u, s, vh, max_iter=500, tol=1e-10)
    brute = multivariate_normal(np.zeros(12), f @ f.T / alpha + np.eye(12) / beta).logpdf(target)
    assert evidence == pytest.approx(brute, rel=1e-8)


def test_leep_and_nce_follow_their_definitions():
    rng = np.random.default_rng(1)
    theta = rng.dirichlet(np.ones(4), size=40)  # a source head over 4 classes, on 40 target examples
    y = rng.integers(0, 3, size=40)
    joint = np.array([[theta[y == c, z].sum() / 40 for z in range(4)] for c in range(3)])
    cond = joint / joint.sum(0)
    direct = np.mean([np.log(sum(cond[y[i], z] * theta[i, z] for z in range(4))) for i in range(40)])
    assert leep(theta, y) == pytest.approx(direct)
    z = theta.argmax(1)
    pz = {k: np.mean(z == k) for k in set(z)}
    pyz = {(c, k): np.mean((y == c) & (z == k)) for c in range(3) for k in set(z)}
    direct_nce = sum(p * np.log(p / pz[k]) for (c, k), p in pyz.items() if p > 0)
    assert nce(z, y) == pytest.approx(direct_nce)
    assert nce(y, y) == 0.0  # a source that predicts the target exactly leaves no uncertainty


def test_h_score_follows_its_definition():
    f, y = data()
    centred = f - f.mean(0)
    cov = np.cov(centred.T, bias=True)
    class_means = np.stack([centred[y == k].mean(0) for k in y])
    between = np.cov(class_means.T, bias=True)
    assert h_score(f, y) == pytest.approx(np.trace(np.linalg.inv(cov) @ between))


def test_every_score_prefers_features_that_carry_the_labels():
    good, y = data(signal=3.0)
    noise = np.random.default_rng(5).normal(size=good.shape)
    s_good, s_noise = scores(good, y), scores(noise, y)
    assert all(s_good[k] > s_noise[k] for k in s_good)
    assert knn_accuracy(good, y) > 0.9 and logme(good, y) > logme(noise, y)


def test_hftl_rank_puts_a_source_trained_on_the_task_above_random_weights(tmp_path, capsys):
    import hftl

    trained = tmp_path / "source"  # the same digits, trained for a few epochs: its features carry the classes
    hftl.train(None, tiny_train_overrides(trained, **{"train.epochs": 6, "data.max_train_samples": 200}))
    overrides = tiny_train_overrides(tmp_path / "unused")
    rows = rank(None, ["timm:test_resnet", str(trained)], overrides)
    assert [r["candidate"] for r in rows] == [str(trained), "timm:test_resnet"]  # best first, by LogME
    assert rows[0]["knn_accuracy"] > rows[1]["knn_accuracy"] and rows[0]["h_score"] > rows[1]["h_score"]
    assert all(r["examples"] == 96 for r in rows)
    # The trained folder has its source head (digits): LEEP and NCE from its softmax; random weights have none.
    assert {"leep", "nce"} <= set(rows[0]) and "leep" not in rows[1] and rows[0]["leep"] < 0
    again = rank(None, ["timm:test_resnet"], overrides)[0]
    assert again["logme"] == rows[1]["logme"]  # random init is seeded: the same score on every call
    out = tmp_path / "rank"
    assert cli_main(["rank", *overrides, "--candidates", str(trained), "timm:test_resnet",
                     "--output-dir", str(out)]) == 0
    assert f"Recommended (highest LogME): {trained}" in capsys.readouterr().out
    assert json.loads((out / "rank.json").read_text())["recommended"] == str(trained)
    assert (out / "rank.png").read_bytes()[:4] == b"\x89PNG" and "| candidate |" in (out / "rank.md").read_text()


def test_rank_finetune_check_measures_the_ranking_against_fine_tuning(tmp_path, capsys):
    overrides = tiny_train_overrides(tmp_path / "unused", **{"data.max_train_samples": 48, "train.epochs": 1})
    candidates = ["timm:test_resnet", "timm:test_efficientnet", "timm:test_vit"]
    out = tmp_path / "rank"
    assert cli_main(["rank", *overrides, "--candidates", *candidates, "--finetune", "--output-dir", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tune / rank time" in printed and "Kendall's tau" in printed
    summary = json.loads((out / "rank.json").read_text())
    assert {r["candidate"] for r in summary["candidates"]} == set(candidates)
    for row in summary["candidates"]:  # each was really fine-tuned, into its own folder, and timed
        assert 0 <= row["finetuned"] <= 1 and row["finetune_seconds"] > 0 and row["finetune_metric"] == "accuracy"
    assert len(list((out / "finetune").glob("*/hftl.json"))) == 3
    assert set(summary["trust"]) >= {"logme", "h_score", "knn_accuracy"}


def test_trust_is_kendalls_tau_between_score_and_fine_tuned_metric():
    rows = [{"logme": s, "finetuned": f} for s, f in [(1, 0.1), (2, 0.3), (3, 0.2), (4, 0.4)]]
    t = trust(rows)["logme"]
    assert t["tau"] == pytest.approx(4 / 6)  # 5 concordant pairs, 1 discordant, of 6
    assert t["candidates"] == 4 and -1 <= t["weighted_tau"] <= 1
    assert "leep" not in trust(rows)  # a score no candidate has is left out, not guessed


def test_rank_refuses_what_it_cannot_score(tmp_path):
    with pytest.raises(ConfigError, match="classification tasks"):
        rank(None, ["x"], ["task=causal_lm", "model.id=x"])
    with pytest.raises(ConfigError, match="at least one candidate"):
        rank(None, [], tiny_train_overrides(tmp_path))


def test_rank_reads_the_source_head_of_a_text_folder_hftl_trained(tmp_path):
    """LEEP/NCE for any modality: a text classifier hftl saved is scored through its own softmax too."""
    from test_study import TOPICS, tiny_bert, topic_rows

    import hftl

    bert = tiny_bert(tmp_path / "bert", [r["text"] for r in topic_rows()])
    text = ["task=text_classification", f"data.id={TOPICS}", "data.max_length=24", "data.max_train_samples=48",
            "train.epochs=1", "train.global_batch_size=8", "train.per_device_batch_size=8", "train.progress=false"]
    source = tmp_path / "source"
    hftl.train(None, [*text, f"model.id={bert}", f"output_dir={source}"])
    rows = {r["candidate"]: r for r in rank(None, [str(bert), str(source)], [*text, f"model.id={bert}"])}
    assert {"leep", "nce"} <= set(rows[str(source)]) and "leep" not in rows[str(bert)]
    assert rows[str(source)]["leep"] <= 0 and rows[str(source)]["examples"] == rows[str(bert)]["examples"]
