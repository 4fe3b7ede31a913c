"""Unsupervised transfer: cluster unlabelled images on a frozen encoder's features, scored against held-back labels.

A self-supervised source (a ``simclr`` or ``masked_image`` output, or any timm / transformers ViT
image encoder) meets an unlabelled target task: :func:`cluster` runs k-means (scikit-learn,
``n_init=10``, seeded) on the frozen encoder's features of every image of ``data.id`` and, when
the data has classes (class subfolders, a CSV, a Hub dataset), scores the clusters against those
labels, which never reach the features or k-means: NMI (normalised mutual information), ARI
(adjusted Rand index) and the accuracy of the best one-to-one match of clusters to classes. The
same is done for the baselines that say what the source is worth: ``random_init`` (the same
architecture, random weights, seeded) and ``pixels`` (the encoder's own input, flattened). Each
representation is L2-normalised first (``normalize``), as k-means on embeddings usually is.

Features come through hftl's feature cache (:mod:`hftl.methods.feature_cache`; the frozen encoder,
un-augmented inputs, its own eval preprocessing), as ``hftl rank``'s do. The report is
``cluster.json`` (every score, the config, each example's cluster), ``cluster.md`` (the table) and
``clusters.csv`` (each image, its label when known, its cluster under the model).

Example:
    >>> report = cluster("outputs/simclr_resnet18_digits", data="builtin:digits", k=10)  # doctest: +SKIP
    >>> report["rows"][0]["nmi"] > report["rows"][1]["nmi"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import copy
import json
import logging
import time
from pathlib import Path

import numpy as np

from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

BASELINES = ("random_init", "pixels")
NORMALIZE = ("l2", "standard", "none")
UNLABELLED = ["unlabelled"]  # hftl.tasks.simclr's name for the one "class" of a flat folder


def check_k(k, n_examples: int, source: str) -> int:
    """k as a number of clusters that the data can hold: at least 2 and at most the number of examples.

    Example:
        >>> check_k(3, 10, "imgs/")
        3
        >>> check_k(11, 10, "imgs/")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        hftl.errors.ConfigError: --k 11 asks for more clusters than the 10 images of 'imgs/' ...
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
        raise ConfigError(f"--k must be a whole number of clusters (at least 2), not {k!r}.")
    if k < 2:
        raise ConfigError(f"--k {k}: clustering needs at least 2 clusters (one cluster says nothing). Use --k 2 or "
                          "more, e.g. the number of classes you expect.")
    if k > n_examples:
        raise ConfigError(f"--k {k} asks for more clusters than the {n_examples} images of '{source}' (each cluster "
                          f"needs an image). Lower --k to at most {n_examples}, or give more images.")
    return int(k)


def normalise(features: np.ndarray, how: str = "l2") -> np.ndarray:
    """Features as k-means sees them: ``l2`` (unit rows), ``standard`` (zero mean, unit variance) or ``none``.

    Example:
        >>> normalise(np.array([[3.0, 4.0]])).tolist()
        [[0.6, 0.8]]
    """
    x = np.asarray(features, dtype=np.float64)
    if how == "l2":
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if how == "standard":
        return (x - x.mean(0)) / np.maximum(x.std(0), 1e-12)
    if how == "none":
        return x
    raise ConfigError(f"normalize '{how}' is not known. Use one of: {', '.join(NORMALIZE)}.")


def matched_accuracy(labels: np.ndarray, clusters: np.ndarray) -> float:
    """The accuracy of the best one-to-one match of clusters to classes (Hungarian; unmatched clusters count wrong).

    Example:
        >>> matched_accuracy(np.array([0, 0, 1, 1]), np.array([1, 1, 0, 0]))
        1.0
    """
    from scipy.optimize import linear_sum_assignment

    _, y = np.unique(labels, return_inverse=True)
    _, c = np.unique(clusters, return_inverse=True)
    counts = np.zeros((c.max() + 1, y.max() + 1))
    np.add.at(counts, (c, y), 1)
    rows, cols = linear_sum_assignment(-counts)
    return float(counts[rows, cols].sum() / len(labels))


def kmeans_scores(features: np.ndarray, labels: np.ndarray | None, k: int, seed: int = 0,
                  normalize: str = "l2") -> dict:
    """k-means (scikit-learn, n_init 10, ``seed``) on the normalised features; NMI, ARI and matched accuracy
    against ``labels`` (None: the clusters only).

    Example:
        >>> y = np.arange(40) % 2
        >>> kmeans_scores(np.c_[y * 5.0, np.ones(40)], y, k=2, normalize="none")["nmi"]
        1.0
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    x = normalise(features, normalize)
    clusters = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    out = {"clusters": clusters.tolist(), "sizes": np.bincount(clusters, minlength=k).tolist()}
    if labels is not None:
        out.update(nmi=float(normalized_mutual_info_score(labels, clusters)),
                   ari=float(adjusted_rand_score(labels, clusters)),
                   matched_accuracy=matched_accuracy(labels, clusters))
    return out


def _encoder_task(model_id: str) -> str:
    """Which task's adapter reads the encoder: timm models as image classifiers, transformers ViT / ViTMAE as MAEs."""
    from hftl.backbones.hf_masked_image import mae_source
    from hftl.refs import resolve_model

    ref = resolve_model(model_id)
    if ref.library == "timm":
        return "image_classification"
    what = f"a {ref.library} model"
    if ref.library == "transformers":
        try:
            mae_source(ref)  # a ViT or ViTMAE (or a masked_image output): hftl.backbones.hf_masked_image reads it
            return "masked_image"
        except ConfigError:
            what = "a transformers model, but no ViT / ViTMAE"
    raise ConfigError(f"hftl cluster reads image encoders: timm models (e.g. a simclr output) or transformers "
                      f"ViT / ViTMAE (e.g. a masked_image output); '{ref.describe()}' is {what} (for a LoRA output, "
                      "its merged/ folder).")


def load_images(cfg):
    """Every image of ``cfg.data`` as one LabelledData split (train and validation pooled, as a study's pool)."""
    import dataclasses

    import datasets

    from hftl.tasks.simclr import load_unlabelled_images

    data = load_unlabelled_images(cfg)  # a flat folder of images, or any source with classes
    pool = datasets.concatenate_datasets([data.train, data.validation]) if len(data.validation) else data.train
    return dataclasses.replace(data, train=pool, validation=pool.select([]), fingerprint=f"{data.fingerprint}|pool")


def pixel_features(dataset) -> np.ndarray:
    """The encoder's input, flattened: the raw-pixel baseline (no weights)."""
    import torch

    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=False)
    return torch.cat([b["pixel_values"].flatten(1) for b in loader]).numpy()


def encoder_features(cfg, data, random_init: bool = False, progress: bool = False):
    """(features, the encoder's description, the eval dataset it read) of every image of ``data``, through the
    feature cache. ``random_init``: the same architecture with random weights (seeded by ``cfg.train.seed``)."""
    from hftl.images import ImageDataset, seeded_rng
    from hftl.methods.feature_cache import cached_features
    from hftl.tasks import get_task_impl

    cfg = copy.deepcopy(cfg)
    cfg.task = _encoder_task(cfg.model.id)
    cfg.strategy.name, cfg.data.augment = ("scratch" if random_init else "linear_probe"), False
    task = get_task_impl(cfg.task)
    with seeded_rng(cfg.train.seed):  # the random-init baseline is the same network on every call
        model, ref = task.build_model(cfg, data)
    model.eval()
    dataset = ImageDataset(data.train, model.transform(train=False), cfg.train.seed, random=False)
    feats, _, _ = cached_features(model, dataset, data.fingerprint, "cluster", progress,
                                  batch_size=cfg.train.per_device_batch_size)
    what = ref.describe()
    if random_init and "(random init)" not in what:
        what += " (random init)"
    return feats.numpy(), what, dataset


def cluster(model: str, data: str | None = None, k: int | None = None, *, overrides: list[str] | None = None,
            baselines: tuple[str, ...] | list[str] = BASELINES, normalize: str = "l2", seed: int | None = None,
            output_dir: str | Path | None = None, progress: bool = False) -> dict:
    """Cluster ``data``'s images with k-means on ``model``'s frozen features (and the baselines'); returns the report.

    ``k`` defaults to the data's number of classes (an unlabelled folder needs it). ``overrides``: run
    config keys (``data.image_size=32``, ``data.max_train_samples=500``, ``model.kwargs=...``). The
    report's ``rows`` list the model first, then each baseline, with NMI / ARI / matched accuracy when
    the data has labels. ``output_dir`` also writes cluster.json, cluster.md and clusters.csv there.

    Example:
        >>> report = cluster("outputs/mae_digits", "digits/", k=10, overrides=["data.image_size=32"])  # doctest: +SKIP
        >>> print(cluster_table(report))  # doctest: +SKIP
    """
    from hftl.api import as_config

    unknown = [b for b in baselines if b not in BASELINES]
    if unknown:
        raise ConfigError(f"Baseline '{unknown[0]}' is not known. Baselines: {', '.join(BASELINES)} (or none).")
    normalise(np.zeros((1, 1)), normalize)  # an unknown normalisation fails before any feature is computed
    cfg = as_config(None, [*(overrides or []), f"model.id={model}", *([f"data.id={data}"] if data else [])])
    if seed is not None:
        cfg.train.seed = seed
    images = load_images(cfg)
    labelled = list(images.label_names) != UNLABELLED
    labels = np.asarray(images.train["label"]) if labelled else None
    if k is None:
        if not labelled:
            raise ConfigError(f"'{images.source}' has no classes to take k from: give the number of clusters "
                              "(--k K, at least 2).")
        k = len(images.label_names)
    k = check_k(k, len(images.train), images.source)

    rows, started = [], time.perf_counter()
    feats, what, dataset = encoder_features(cfg, images, progress=progress)
    rows.append(_row("model", what, feats, labels, k, cfg.train.seed, normalize, started))
    if "random_init" in baselines:
        started = time.perf_counter()
        feats, what, _ = encoder_features(cfg, images, random_init=True, progress=progress)
        rows.append(_row("random_init", what, feats, labels, k, cfg.train.seed, normalize, started))
    if "pixels" in baselines:
        started = time.perf_counter()
        feats = pixel_features(dataset)
        rows.append(_row("pixels", f"the encoder's input, flattened ({feats.shape[1]} values)", feats, labels, k,
                         cfg.train.seed, normalize, started))
    report = {"model": model, "data": images.source, "examples": len(images.train), "k": k,
              "classes": list(images.label_names) if labelled else None, "normalize": normalize,
              "seed": cfg.train.seed, "kmeans": {"n_init": 10, "library": "scikit-learn"}, "rows": rows,
              "paths": _paths(images.train),
              "labels": [images.label_names[y] for y in labels] if labelled else None}
    logger.info("Clustered %d images of %s into %d clusters: %s", len(images.train), images.source, k,
                "; ".join(f"{r['name']} NMI {r['nmi']:.3f}" for r in rows if "nmi" in r) or "no labels to score")
    if output_dir is not None:
        report["files"] = {n: str(p) for n, p in write_cluster_report(report, output_dir).items()}
    return report


def _row(name: str, what: str, feats: np.ndarray, labels, k: int, seed: int, normalize: str, started: float) -> dict:
    return {"name": name, "representation": what, "features": int(feats.shape[1]),
            **kmeans_scores(feats, labels, k, seed, normalize), "seconds": round(time.perf_counter() - started, 2)}


def _paths(ds) -> list:
    """Each example's image file where it has one (None for images held in memory, e.g. the built-in digits)."""
    import datasets

    if "image" not in ds.column_names:
        return [None] * len(ds)
    column = ds.cast_column("image", datasets.Image(decode=False))["image"]
    return [c.get("path") if isinstance(c, dict) else None for c in column]


def cluster_table(report: dict) -> str:
    """The markdown table of a :func:`cluster` report: one row per representation.

    Example:
        >>> print(cluster_table({"rows": [{"name": "model", "representation": "x", "features": 8, "nmi": .5,
        ...                                "ari": .4, "matched_accuracy": .6, "seconds": 1.0}]}).splitlines()[2])
        | model | x | 8 | 0.500 | 0.400 | 0.600 | 1.0 |
    """
    scored = any("nmi" in r for r in report["rows"])
    head = "| k-means on | representation | features |" + (" NMI | ARI | matched accuracy |" if scored else
                                                          " cluster sizes |") + " seconds |"
    lines = [head, "|---|---|---|" + ("---|---|---|" if scored else "---|") + "---|"]
    for r in report["rows"]:
        cells = f" {r['nmi']:.3f} | {r['ari']:.3f} | {r['matched_accuracy']:.3f} |" if scored else \
            f" {' '.join(map(str, r['sizes']))} |"
        lines.append(f"| {r['name']} | {r['representation']} | {r['features']} |{cells} {r['seconds']} |")
    return "\n".join(lines)


def write_cluster_report(report: dict, output_dir: str | Path) -> dict:
    """cluster.json, cluster.md and clusters.csv in ``output_dir`` (each written whole, then renamed); their paths.

    Example:
        >>> write_cluster_report(report, "outputs/cluster")["table"]  # doctest: +SKIP
        PosixPath('outputs/cluster/cluster.md')
    """
    import csv
    import io
    import os

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "cluster.json", "table": out / "cluster.md", "assignments": out / "clusters.csv"}
    labels = report["classes"]
    title = (f"# k-means, k = {report['k']}, on {report['examples']} images of `{report['data']}`\n\n"
             f"Model: `{report['model']}`; features {report['normalize']}-normalised; scikit-learn KMeans "
             f"(n_init 10, seed {report['seed']}).")
    title += (" Labels held back from the features and k-means; NMI, ARI and matched accuracy compare the "
              f"clusters with the {len(labels)} classes.\n\n" if labels else " The data has no labels: no scores.\n\n")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["index", "path", "label", *[f"cluster_{r['name']}" for r in report["rows"]]])
    clusters = [r["clusters"] for r in report["rows"]]
    truth = report["labels"]
    for i, path in enumerate(report["paths"]):
        writer.writerow([i, path or "", truth[i] if truth else "", *[c[i] for c in clusters]])
    for path, text in ((files["json"], json.dumps(report, indent=2) + "\n"),
                       (files["table"], title + cluster_table(report) + "\n"), (files["assignments"], buffer.getvalue())):
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    return files
