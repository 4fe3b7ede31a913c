"""Cached backbone features for linear probes: compute once, reuse across epochs and runs.

As a way to transfer (:class:`FeatureCache`): a linear probe with ``strategy.cache_features``
trains (or, with ``strategy.probe_solver=lbfgs``, solves) its head on the frozen backbone's
features, so E epochs cost one backbone pass; LP-FT solves its probe on them before fine-tuning.

The cache key covers everything that changes the features: the backbone's weights and eval
preprocessing (``TransferModel.fingerprint``) and the exact examples (the data fingerprint and
split). Change any of them and the key changes, so a stale cache is never served. Files are
safetensors, written to a temporary name and renamed into place.

Example:
    >>> fingerprint = model.fingerprint()  # doctest: +SKIP
    >>> feats, labels, hit = cached_features(model, dataset, "abc", "train", fingerprint=fingerprint)  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from pathlib import Path

import torch
from torch import nn

from hftl.methods.base import Method, Setup

logger = logging.getLogger(__name__)


def cache_dir() -> Path:
    """``$HFTL_CACHE`` or ``~/.cache/hftl``: where cached features live."""
    return Path(os.environ.get("HFTL_CACHE", Path.home() / ".cache" / "hftl")) / "features"


def feature_key(model_fingerprint: str, data_key: str, split: str, output: str = "features") -> str:
    extra = "" if output == "features" else f"|{output}"  # keys of feature files predate the option
    return hashlib.sha256(f"{model_fingerprint}|{data_key}|{split}{extra}".encode()).hexdigest()[:32]


@torch.inference_mode()
def compute_features(model, dataset, batch_size: int = 64, progress: bool = True,
                     output: str = "features") -> tuple[torch.Tensor, torch.Tensor]:
    """Run the frozen model over ``dataset`` once; returns (features, labels) on the CPU.

    ``output="logits"`` keeps the whole model's outputs instead (a distillation teacher's predictions).
    """
    from tqdm.auto import tqdm

    model.eval()
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=getattr(dataset, "collate", None))
    feats, labels = [], []
    for batch in tqdm(loader, desc=output, disable=not progress, leave=False):
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        feats.append((model(batch) if output == "logits" else model.forward_features(batch)).float().cpu())
        labels.append(batch["labels"].cpu())
    return torch.cat(feats), torch.cat(labels)


def cached_features(model, dataset, data_key: str, split: str, progress: bool = True, *,
                    fingerprint: str | None = None, output: str = "features",
                    batch_size: int = 64) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Features for ``dataset`` from the cache, or computed and stored; returns (features, labels, hit).

    ``fingerprint``: ``model.fingerprint()`` if the caller has it. It hashes every backbone weight, so a
    caller caching several splits of one model computes it once and passes it to each call.
    ``batch_size``: use the evaluation's, so that padded batches are made up as they would be there.
    """
    from safetensors.torch import save_file

    # The batch size is in the key: padded inputs (audio clips) pass group norms whose statistics see the padding.
    key = feature_key(fingerprint or model.fingerprint(), f"{data_key}|{batch_size}", split, output)
    path = cache_dir() / f"{key}.safetensors"
    stored = _read_cache(path, key, len(dataset), known_labels(dataset)) if path.is_file() else None
    if stored is not None:
        logger.info("Cache hit for the %s %s (%s)", split, output, path)
        return stored[0], stored[1], True
    feats, labels = compute_features(model, dataset, batch_size=batch_size, progress=progress, output=output)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"features": feats.contiguous(), "labels": labels.contiguous()}, str(tmp),
                  metadata={"key": key, "examples": str(len(labels)), "sha256": _digest(feats, labels)})
        os.replace(tmp, path)
    except OSError as e:  # a read-only or full cache costs speed, never the run
        tmp.unlink(missing_ok=True)
        logger.warning("Could not write the feature cache %s (%s); running without it. Set HFTL_CACHE to a "
                       "writable folder to reuse features across runs.", path.parent, e.strerror or e)
    return feats, labels, False


def split_features(model, dataset, data, split: str, make_pool_dataset, progress: bool = True, *,
                   fingerprint: str | None = None, output: str = "features", batch_size: int = 64,
                   per_example: bool = True) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """Like :func:`cached_features` for one split of ``data``; a study's fold computes them once for the study.

    A fold of a study (``data.origin``: the study's pool and this fold's indices into it) takes its rows
    of the whole pool's features, which are computed, and cached, on the first fold: every fold, arm
    and search candidate then reuses them. ``make_pool_dataset(pool)`` builds the pool's torch dataset
    as ``dataset`` was built. ``per_example=False`` (features that depend on the batch, e.g. padded
    audio through group norms) computes each split's own, as a run outside a study would.
    """
    origin = getattr(data, "origin", None)
    if origin is None or not per_example or split not in origin.indices:
        return cached_features(model, dataset, data.fingerprint, split, progress, fingerprint=fingerprint,
                               output=output, batch_size=batch_size)
    feats, labels, hit = cached_features(model, make_pool_dataset(origin.pool), origin.pool.fingerprint, "pool",
                                         progress, fingerprint=fingerprint, output=output, batch_size=batch_size)
    rows = torch.as_tensor(origin.indices[split], dtype=torch.long)
    feats, labels = feats[rows], labels[rows]
    expected = known_labels(dataset)
    if len(rows) != len(dataset) or (expected is not None and not torch.equal(labels.long(), expected.long())):
        logger.warning("The %s split does not match its study pool's rows; computing its features on their own", split)
        return cached_features(model, dataset, data.fingerprint, split, progress, fingerprint=fingerprint,
                               output=output, batch_size=batch_size)
    return feats, labels, hit


def _digest(feats: torch.Tensor, labels: torch.Tensor) -> str:
    h = hashlib.sha256()
    for t in (feats, labels):
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def known_labels(dataset) -> torch.Tensor | None:
    """The dataset's labels when it holds them as a column (images, audio): checked against a cache file."""
    ds = getattr(dataset, "ds", None)
    columns = getattr(ds, "column_names", None) or []
    return torch.as_tensor(ds["label"]) if "label" in columns else None


def _read_cache(path: Path, key: str, examples: int, labels: torch.Tensor | None):
    """(features, labels) from a cache file that verifies, or None (then recomputed): a truncated, empty, foreign
    or altered file is never trusted and never a traceback."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {name: f.get_tensor(name) for name in f.keys()}
        feats, stored_labels = stored["features"], stored["labels"]
        ok = (meta.get("key") == key and meta.get("examples") == str(examples) and feats.shape[0] == examples
              and stored_labels.shape[0] == examples and meta.get("sha256") == _digest(feats, stored_labels)
              and (labels is None or torch.equal(stored_labels.long(), labels.long())))
    except Exception as e:  # safetensors raises its own error types on damaged files
        logger.warning("Feature cache file %s is unreadable (%s); computing the features again.", path, e)
        return None
    if not ok:
        logger.warning("Feature cache file %s does not match its data; computing the features again.", path)
        return None
    return feats, stored_labels


class FeatureDataset(torch.utils.data.Dataset):
    """Cached features as a dataset of ``{"features", "labels"}`` dicts."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor):
        self.features, self.labels = features, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict:
        return {"features": self.features[i], "labels": self.labels[i]}


class HeadOnly(nn.Module):
    """The classifier head, fed cached features: what a cached linear probe trains."""

    def __init__(self, head: nn.Module):
        super().__init__()
        self.head = head

    def forward(self, batch: dict) -> torch.Tensor:
        return self.head(batch["features"])


class FeatureCache(Method):
    """A cached linear probe (``strategy.cache_features``), the solved probe, and LP-FT's first stage."""

    name, section = "feature_cache", "strategy"

    def applies(self, cfg) -> bool:
        s = cfg.strategy
        return (s.name == "linear_probe" and s.cache_features) or s.name == "lp_ft"

    def after_strategy(self, setup: Setup) -> None:
        cfg, model, strategy = setup.cfg, setup.model, setup.strategy
        if cfg.strategy.name == "lp_ft":  # the probe solved on the frozen features first, then all of it trains
            train, _ = cached_probe_data(setup, validation=False)
            strategy.probe = solve_heads(cfg, model, train.features, train.labels, setup.data.regression)
            return
        if cfg.data.augment and setup.task.spec.modality in ("image", "audio"):
            logger.info("linear_probe caches features of the un-augmented inputs (augmentation would defeat the cache)")
        probe_train, probe_eval = cached_probe_data(setup)
        setup.trained, setup.train_ds, setup.eval_ds, setup.collate = HeadOnly(model.head), probe_train, probe_eval, None
        if cfg.strategy.probe_solver == "lbfgs":  # a convex problem: solved on the features, then scored (0 epochs)
            strategy.probe = solve_heads(cfg, model, probe_train.features, probe_train.labels, setup.data.regression)
            setup.train_cfg = dataclasses.replace(setup.train_cfg, epochs=0)

    def after_fit(self, setup: Setup, trainer) -> None:
        """Refit a solved probe on training + validation features, when hftl itself held the validation split out."""
        cfg, probe = setup.cfg, getattr(setup.strategy, "probe", None)
        if not (cfg.strategy.name == "linear_probe" and probe and cfg.strategy.probe_refit and setup.data.carved):
            return
        train, held = setup.train_ds, setup.eval_ds  # FeatureDatasets
        features, labels = torch.cat([train.features, held.features]), torch.cat([train.labels, held.labels])
        # The strength is chosen again, by cross-validation on all of them, as LogisticRegressionCV and RidgeCV do on
        # the data they are given: the first choice saw 80% of the labels, and on small sets that choice is noisy.
        refit = solve_heads(cfg, setup.model, features, labels, setup.data.regression)
        pairs = ([(probe["tasks"][n], r) for n, r in refit["tasks"].items()] if "tasks" in probe
                 else [(probe, refit)])
        for record, again in pairs:  # what the card says of the head
            record.update(refit_examples=len(labels), refit_l2=again["l2"],
                          **{f"refit_{k}": again[k] for k in ("C", "alpha") if k in again})
        logger.info("probe refitted on %d training + validation examples (l2 chosen again by cross-validation on "
                    "them); the reported metrics are the first fit's, on the %d held-out ones", len(labels), len(held))


def cached_probe_data(setup: Setup, validation: bool = True):
    """(train, validation) FeatureDatasets of the frozen backbone; ``validation=False``: (train, None)."""
    from accelerate import PartialState

    cfg, model = setup.cfg, setup.model
    plain_train = setup.task.plain_train_dataset(cfg, model, setup.data, setup.train_ds)
    with PartialState().main_process_first():  # rank 0 fills the cache; the others then read it
        fingerprint = model.fingerprint()  # hashes every backbone weight: once, not per split
        batch = cfg.train.per_device_batch_size  # evaluation batches are made up the same way (padding)
        task = setup.task

        def pool_dataset(pool):  # a study's whole pool, as the training split is shown here (no augmentation)
            return task.plain_train_dataset(cfg, model, pool, task.datasets(cfg, model, pool)[0])

        common = {"fingerprint": fingerprint, "batch_size": batch, "per_example": task.features_per_example}
        tr_x, tr_y, _ = split_features(model, plain_train, setup.data, "train", pool_dataset, cfg.train.progress,
                                       **common)
        if not validation:
            return FeatureDataset(tr_x, tr_y), None
        va_x, va_y, _ = split_features(model, setup.eval_ds, setup.data, "validation", pool_dataset,
                                       cfg.train.progress, **common)
    return FeatureDataset(tr_x, tr_y), FeatureDataset(va_x, va_y)


def solve_heads(cfg, model, features: torch.Tensor, labels: torch.Tensor, regression: bool,
                grid: list | dict | None = None) -> dict:
    """Solve the model's head(s) on training features (see hftl.probe); multi-task: one probe per task.

    ``grid``: the L2 strengths to choose from (default: ``strategy.probe_l2`` or hftl.probe's grid);
    multi-task: a grid per task, by name.

    Example:
        >>> info = solve_heads(cfg, model, train_features, train_labels, regression=False)  # doctest: +SKIP
    """
    from hftl.probe import DEFAULT_GRID, solve_probe

    grid = grid or list(cfg.strategy.probe_l2) or DEFAULT_GRID
    tasks = getattr(model, "slices", None)
    if tasks:
        heads = [model.multi_head.first, *model.multi_head.others.values()]
        return {"tasks": {name: solve_probe(head, features, labels[:, i], seed=cfg.train.seed,
                                            grid=grid[name] if isinstance(grid, dict) else grid)
                          for i, ((name, _), head) in enumerate(zip(tasks, heads))}}
    return solve_probe(model.head, features, labels, regression=regression, grid=grid, seed=cfg.train.seed)
