"""Unsupervised transfer (hftl cluster): k-means on a self-supervised encoder's frozen features of unlabelled
images, scored against held-back labels; the scores are scikit-learn's, a rerun reads the same, bad k is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import hftl
from hftl.cli import main as cli
from hftl.cluster import check_k, cluster, cluster_table, kmeans_scores, matched_accuracy
from hftl.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread is faster

DATA = ["data.image_size=24", "data.max_train_samples=160", "data.max_eval_samples=40"]  # 200 digits


@pytest.fixture(scope="module")
def simclr(tmp_path_factory):
    """A tiny SimCLR encoder pretrained on 480 unlabelled digits (the images only)."""
    out = tmp_path_factory.mktemp("simclr") / "run"
    return hftl.train(None, ["task=simclr", "model.id=timm:test_resnet", "data.id=builtin:digits",
                             "data.image_size=24", "data.max_train_samples=480", "data.max_eval_samples=64",
                             "train.epochs=4", "train.lr=0.003", "train.global_batch_size=64",
                             "train.per_device_batch_size=64", "train.warmup_ratio=0.0", "train.progress=false",
                             f"output_dir={out}"])


@pytest.fixture(scope="module")
def mae(tmp_path_factory):
    """A tiny ViTMAE trained from random weights (a config alone) for 2 epochs on unlabelled digits."""
    from transformers import ViTMAEConfig

    root = tmp_path_factory.mktemp("mae")
    ViTMAEConfig(image_size=24, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                 intermediate_size=64, decoder_hidden_size=32, decoder_num_hidden_layers=1,
                 decoder_num_attention_heads=2, decoder_intermediate_size=64).save_pretrained(root / "config")
    return hftl.train(None, ["task=masked_image", f"model.id={root / 'config'}", "strategy.name=scratch",
                             "data.id=builtin:digits", "data.image_size=24", "data.max_train_samples=160",
                             "data.max_eval_samples=32", "data.augment=false", "train.epochs=2",
                             "train.global_batch_size=32", "train.per_device_batch_size=32", "train.progress=false",
                             f"output_dir={root / 'run'}"])


def test_pretraining_loss_falls(simclr, mae):
    for run in (simclr, mae):
        assert run.history[-1]["train_loss"] < run.history[0]["train_loss"]


def test_scores_are_scikit_learns_on_the_cached_features(simclr, tmp_path):
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    from hftl.api import as_config
    from hftl.cluster import encoder_features, load_images

    report = cluster(str(simclr.output_dir), "builtin:digits", overrides=DATA, output_dir=tmp_path / "c")
    assert report["k"] == 10 and report["examples"] == 200 and [r["name"] for r in report["rows"]] == [
        "model", "random_init", "pixels"]
    cfg = as_config(None, [*DATA, f"model.id={simclr.output_dir}", "data.id=builtin:digits"])
    images = load_images(cfg)
    labels = np.asarray(images.train["label"])
    feats, _, _ = encoder_features(cfg, images)  # the cache's copy, as cluster read it
    x = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    direct = KMeans(n_clusters=10, n_init=10, random_state=cfg.train.seed).fit_predict(x)
    row = report["rows"][0]
    assert row["clusters"] == direct.tolist()
    assert row["nmi"] == pytest.approx(normalized_mutual_info_score(labels, direct), abs=1e-12)
    assert row["ari"] == pytest.approx(adjusted_rand_score(labels, direct), abs=1e-12)
    assert sum(row["sizes"]) == 200 and 0 <= row["matched_accuracy"] <= 1

    # The files: the table printed, the JSON read back equals the report, one CSV row per image.
    saved = json.loads((tmp_path / "c" / "cluster.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(report["rows"]))
    assert cluster_table(report) in (tmp_path / "c" / "cluster.md").read_text()
    csv = (tmp_path / "c" / "clusters.csv").read_text().splitlines()
    assert csv[0] == "index,path,label,cluster_model,cluster_random_init,cluster_pixels" and len(csv) == 201


def test_a_rerun_reads_the_cache_and_scores_the_same(simclr, caplog):
    first = cluster(str(simclr.output_dir), "builtin:digits", overrides=DATA, baselines=["random_init"])
    with caplog.at_level("INFO", logger="hftl.methods.feature_cache"):
        again = cluster(str(simclr.output_dir), "builtin:digits", overrides=DATA, baselines=["random_init"])
    assert "Cache hit" in caplog.text
    assert [r["clusters"] for r in again["rows"]] == [r["clusters"] for r in first["rows"]]


def test_the_random_init_baseline_is_the_same_architecture_with_random_weights(simclr):
    import timm

    from hftl.api import as_config
    from hftl.cluster import encoder_features, load_images

    cfg = as_config(None, [*DATA, f"model.id={simclr.output_dir}", "data.id=builtin:digits"])
    images = load_images(cfg)
    trained, _, _ = encoder_features(cfg, images)
    random1, what, _ = encoder_features(cfg, images, random_init=True)
    random2, _, _ = encoder_features(cfg, images, random_init=True)
    assert trained.shape == random1.shape and not np.allclose(trained, random1)
    np.testing.assert_array_equal(random1, random2)  # seeded: the same baseline every time
    assert "(random init)" in what
    assert timm.create_model(f"local-dir:{simclr.output_dir}").num_features == trained.shape[1]


def test_a_masked_image_encoder_clusters_too(mae, tmp_path, capsys):
    assert cli(["cluster", str(mae.output_dir), "data=builtin:digits", *DATA, "--k", "10",
                "--output-dir", str(tmp_path / "c")]) == 0
    out = capsys.readouterr().out
    assert "| model |" in out and "| random_init |" in out and "| pixels |" in out and "cluster.json" in out
    report = json.loads((tmp_path / "c" / "cluster.json").read_text())
    assert report["rows"][0]["features"] == 32  # the ViT's [CLS] feature, hidden size 32
    assert report["rows"][2]["features"] == 3 * 24 * 24


def test_an_unlabelled_folder_is_clustered_without_scores(simclr, tmp_path):
    from PIL import Image
    from sklearn.datasets import load_digits

    folder = tmp_path / "unlabelled"
    folder.mkdir()
    for i, image in enumerate(load_digits().images[:30]):
        Image.fromarray((image * 255 / 16).astype("uint8"), mode="L").save(folder / f"{i}.png")
    report = cluster(str(simclr.output_dir), str(folder), k=3, overrides=["data.image_size=24"],
                     output_dir=tmp_path / "c")
    assert report["classes"] is None and all("nmi" not in r and sum(r["sizes"]) == 30 for r in report["rows"])
    assert "no scores" in (tmp_path / "c" / "cluster.md").read_text()
    rows = (tmp_path / "c" / "clusters.csv").read_text().splitlines()[1:]
    assert len(rows) == 30 and all(row.split(",")[1].endswith(".png") for row in rows)
    with pytest.raises(ConfigError, match="no classes to take k from"):
        cluster(str(simclr.output_dir), str(folder), overrides=["data.image_size=24"])


def test_kmeans_scores_and_matched_accuracy():
    y = np.repeat([0, 1, 2], 10)
    x = np.eye(3)[y] * 4 + np.random.default_rng(0).normal(scale=0.1, size=(30, 3))
    scores = kmeans_scores(x, y, k=3)
    assert scores["nmi"] == pytest.approx(1.0) and scores["ari"] == pytest.approx(1.0)
    assert matched_accuracy(y, np.r_[np.zeros(20), np.ones(10)].astype(int)) == pytest.approx(20 / 30)
    assert "nmi" not in kmeans_scores(x, None, k=3)


def test_bad_k_is_one_clear_line(simclr, capsys):
    with pytest.raises(ConfigError, match=r"--k 201 asks for more clusters than the 200 images .*at most 200"):
        cluster(str(simclr.output_dir), "builtin:digits", k=201, overrides=DATA)
    for bad in (1, 0, -3):
        with pytest.raises(ConfigError, match=f"--k {bad}: clustering needs at least 2 clusters"):
            check_k(bad, 10, "x")
    with pytest.raises(ConfigError, match="whole number"):
        check_k(2.5, 10, "x")
    assert cli(["cluster", str(simclr.output_dir), "data=builtin:digits", *DATA, "--k", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "at least 2 clusters" in err
    with pytest.raises(ConfigError, match="Baseline 'labels' is not known"):
        cluster(str(simclr.output_dir), "builtin:digits", baselines=["labels"], overrides=DATA)
    with pytest.raises(ConfigError, match="normalize 'cosine' is not known"):
        cluster(str(simclr.output_dir), "builtin:digits", normalize="cosine", overrides=DATA)


def test_a_model_that_is_no_image_encoder_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=100)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ConfigError, match="hftl cluster reads image encoders.*no ViT / ViTMAE"):
        cluster(str(tmp_path / "bert"), "builtin:digits", overrides=DATA)
