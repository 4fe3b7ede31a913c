"""Transductive transfer: the same task in another domain, from a labelled source and an unlabelled target.

Set ``domain_adapt.target`` (the target domain's data, any form ``data.id`` takes) on an
image-classification run whose ``data.id`` is the labelled source. ``domain_adapt.method`` says how:

- ``source_only``: train on the source as usual; the target is only scored.
- ``adabn`` (Li et al. 2016, "Revisiting batch normalization for practical domain adaptation"): train
  on the source, then re-estimate every batch-norm layer's running mean and variance on the target's
  unlabelled training images; no weight changes.
- ``coral`` (Deep CORAL, Sun & Saenko 2016): each training batch of source examples is joined by as
  many unlabelled target images; one forward pass computes both domains' features (what the head
  sees, ``forward_features``), and the loss adds ``coral_weight * 1/(4 d^2) ||C_s - C_t||_F^2``
  (``C``: the features' covariance) to the cross-entropy on the source rows. Both domains share one
  batch, as in DomainBed's implementation, so batch-norm layers normalise by the mixed batch.
- ``oracle``: train on the target's labelled training split instead: the ceiling, never a choice.

Whatever the method, the Trainer evaluates each epoch on the SOURCE validation split: the kept epoch,
early stopping and a study's search never see a target label. The target's training split is read
without its labels (``source_only``, ``adabn``, ``coral``: they are replaced by 0 before a dataset is
built from it). After training (and AdaBN), the saved model is scored on the target's validation split:
``target_accuracy``, ``target_f1``, ``target_loss`` join the run's metrics (metrics.json, the card, a
study's folds); the source metrics are measured again on the model as saved.

Example:
    >>> hftl.train(None, ["data.id=builtin:digits_a", "domain_adapt.target=builtin:digits_b_blurred",
    ...                   "domain_adapt.method=coral", "model.id=timm:resnet10t", "strategy.name=scratch"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from hftl.errors import ConfigError, DataError
from hftl.methods.base import Method, Setup

logger = logging.getLogger(__name__)

TRANSDUCTIVE = ("source_only", "adabn", "coral")  # the methods that may not read the target's training labels


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Sun & Saenko's CORAL loss: ``||C_s - C_t||_F^2 / (4 d^2)`` between the two sets of ``d`` features.

    ``C = (X^T X - (1^T X)^T (1^T X) / n) / (n - 1)``: each domain's feature covariance (rows are examples).

    Example:
        >>> x = torch.randn(8, 3)
        >>> float(coral_loss(x, x))
        0.0
    """
    if source.shape[0] < 2 or target.shape[0] < 2:
        raise ValueError("CORAL needs at least 2 examples of each domain in a batch (a covariance of one is undefined).")
    d = source.shape[1]
    cs, ct = _covariance(source.float()), _covariance(target.float())
    return ((cs - ct) ** 2).sum() / (4 * d * d)


def _covariance(x: torch.Tensor) -> torch.Tensor:
    centred = x - x.mean(0, keepdim=True)
    return centred.T @ centred / (x.shape[0] - 1)


class FeatureTap:
    """Keeps the input of the model's head (the pooled features) from the latest forward pass."""

    def __init__(self, head: nn.Module):
        self.features: torch.Tensor | None = None
        self.handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args):
        self.features = args[0]

    def take(self) -> torch.Tensor:
        features, self.features = self.features, None
        if features is None:
            raise RuntimeError("domain_adapt.method=coral: the model's head did not run in this forward pass")
        return features


def coral_training_loss(base_loss, tap: FeatureTap, weight: float):
    """``loss_fn(logits, batch)``: the task's loss on the source rows plus ``weight`` x CORAL(source, target features).

    A training batch holds ``batch["source_rows"]`` source examples followed by as many target images (the
    logits and the features cover both); evaluation batches (no ``source_rows``) get the task's loss alone.
    """

    def loss_fn(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        n = batch.get("source_rows")
        if n is None:
            tap.features = None
            return base_loss(logits, batch)
        n = int(n)
        features = tap.take()
        return base_loss(logits[:n], batch) + weight * coral_loss(features[:n], features[n:])

    return loss_fn


class WithTarget(torch.utils.data.Dataset):
    """The source training set, each example paired with an unlabelled target image (reshuffled each epoch)."""

    def __init__(self, source, target, input_keys: tuple[str, ...], seed: int):
        if len(target) == 0:
            raise DataError("domain_adapt.target has no training images to adapt to.")
        self.source, self.target, self.input_keys, self.seed = source, target, tuple(input_keys), seed
        self.inner_collate = getattr(source, "collate", None)
        self.set_epoch(0)

    def __len__(self) -> int:
        return len(self.source)

    def set_epoch(self, epoch: int) -> None:
        for ds in (self.source, self.target):
            if hasattr(ds, "set_epoch"):
                ds.set_epoch(epoch)
        gen = torch.Generator().manual_seed(self.seed * 1000 + epoch)  # a function of (seed, epoch): exact resume
        self.order = torch.randperm(len(self.target), generator=gen).tolist()

    def __getitem__(self, index: int) -> dict:
        return {"example": self.source[index], "target": self.target[self.order[index % len(self.order)]]}

    def collate(self, items: list[dict]) -> dict:
        """A source batch whose input tensors are followed by the target images' (``source_rows`` says where they
        start); the trainer's evaluation batches (plain source examples) pass through unchanged."""
        inner = self.inner_collate or torch.utils.data.default_collate
        if "target" not in items[0]:
            return inner(items)
        batch = inner([item["example"] for item in items])
        target = inner([item["target"] for item in items])  # its labels (zeros) are dropped here
        for key in self.input_keys:
            batch[key] = torch.cat([batch[key], target[key]])
        batch["source_rows"] = len(items)
        return batch


def load_target(cfg, source_names: list[str], read_labels: bool):
    """The target domain as LabelledData, its classes mapped onto the source's (by name).

    ``read_labels`` False (the transductive methods): the training split's labels are replaced by 0 here, before
    anything else sees them; only the validation split (what ``target_*`` scores) keeps its labels.
    """
    import math

    import numpy as np

    from hftl.data import load_labelled_data

    d = cfg.domain_adapt
    tcfg = copy.deepcopy(cfg.data)
    tcfg.id, tcfg.classes, tcfg.train_split, tcfg.validation_split = d.target, [], "train", None
    tcfg.max_train_samples, tcfg.max_eval_samples = None, None
    try:  # whole: nothing held out by class; the split below is drawn without the labels
        target = load_labelled_data(tcfg, cfg.task, cfg.train.seed, whole=True)
    except DataError as e:
        raise DataError(f"domain_adapt.target '{d.target}': {e}") from e
    # A seeded permutation, not a stratified split: which images adapt and which are scored must not depend on
    # the target's labels either.
    rng = np.random.default_rng(cfg.train.seed)
    if target.train is target.validation:  # no validation split given: hold out data.validation_fraction
        order = rng.permutation(len(target.train)).tolist()
        cut = math.ceil(cfg.data.validation_fraction * len(order)) if len(order) > 1 else 0
        train_idx, val_idx = order[cut:], sorted(order[:cut])
        full = target.train
        target.validation = full.select(val_idx)
    else:
        full, train_idx = target.train, rng.permutation(len(target.train)).tolist()
    target.train = full.select(sorted(train_idx[:d.max_target_samples] if d.max_target_samples else train_idx))
    extra = [n for n in target.label_names if n not in source_names]
    if extra:
        raise ConfigError(
            f"domain_adapt.target '{d.target}' has classes the source '{cfg.data.id}' lacks: {', '.join(extra[:5])}. "
            f"A model trained on the source predicts only {', '.join(source_names)}: drop those classes from the "
            "target, or add them to the source.")
    if len(target.train) == 0 or len(target.validation) == 0:
        raise DataError(f"domain_adapt.target '{d.target}' has no images in its "
                        f"{'training' if len(target.train) == 0 else 'validation'} split.")
    index = [source_names.index(n) for n in target.label_names]

    def remap(ds, keep: bool):
        labels = [index[v] for v in ds["label"]] if keep else [0] * len(ds)
        return ds.remove_columns("label").add_column("label", labels)

    target.train = remap(target.train, read_labels)
    target.validation = remap(target.validation, True)
    target.label_names = list(source_names)
    return target


def batch_norm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adapt_batch_norm(model: nn.Module, dataset, batch_size: int = 256, collate=None) -> int:
    """AdaBN: every batch-norm layer's running statistics re-estimated on ``dataset`` (target images, no labels).

    The statistics are reset and then averaged over the batches (``momentum=None``: a plain mean, each batch
    weighted alike); the weights, and every layer's mode, are left as they were. Returns the layers adapted.

    Example:
        >>> adapt_batch_norm(model, target_images)  # doctest: +SKIP
        20
    """
    layers = batch_norm_layers(model)
    if not layers:
        return 0
    was_training = {m: m.training for m in model.modules()}
    momenta = [m.momentum for m in layers]
    device = next(model.parameters()).device
    try:
        model.eval()  # dropout and the like stay off; only the batch-norm layers collect statistics
        for m in layers:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                             collate_fn=collate or torch.utils.data.default_collate)
        for batch in loader:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items() if k != "labels"}
            model(batch)
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        for m, mode in was_training.items():
            m.training = mode
    return len(layers)


class DomainAdapt(Method):
    """``domain_adapt.target``: a labelled source, an unlabelled target; adabn, coral, or the oracle; scored on the target."""

    name, section = "domain_adapt", "domain_adapt"

    def applies(self, cfg) -> bool:
        return bool(cfg.domain_adapt.target)

    def after_strategy(self, setup: Setup) -> None:
        d = setup.cfg.domain_adapt
        model = setup.model
        self.target = load_target(setup.cfg, list(setup.data.label_names), read_labels=d.method == "oracle")
        plain = copy.deepcopy(setup.cfg)
        plain.data.augment = False
        # The target's images as the model sees them in training (augmented like the source) and in evaluation.
        target_train, _, _ = setup.task.datasets(setup.cfg, model, self.target)
        _, self.target_plain, self.collate = setup.task.datasets(plain, model, _with_split(self.target, "train"))
        _, self.target_eval, _ = setup.task.datasets(plain, model, self.target)
        _, self.source_eval, _ = setup.task.datasets(plain, model, setup.data)  # images, even when the head trains on cached features
        info = {"source": setup.data.source, "target": str(d.target), "method": d.method, "target_train_images": len(self.target.train),
                "target_scored_images": len(self.target.validation)}
        if d.method == "adabn" and not batch_norm_layers(model):
            raise ConfigError(f"domain_adapt.method=adabn re-estimates batch-norm statistics, but {setup.cfg.model.id} "
                              "has no batch-norm layers (a ViT normalises with LayerNorm): use coral or source_only.")
        if d.method == "oracle":
            setup.train_ds = target_train  # labelled target data: the ceiling
        elif d.method == "coral":
            head = getattr(model, "head", None)
            if setup.trained is not model or not isinstance(head, nn.Module):
                raise ConfigError(f"domain_adapt.method=coral needs the features the head of {setup.cfg.model.id} "
                                  "sees, trained end to end; this run trains something else (cached features?). "
                                  "Use strategy finetune, scratch, partial or gradual_unfreeze.")
            tap = self.tap = FeatureTap(head)
            setup.train_ds = WithTarget(setup.train_ds, target_train, model.input_keys(), setup.cfg.train.seed)
            setup.collate = setup.train_ds.collate
            setup.loss_fn = coral_training_loss(setup.loss_fn, tap, d.coral_weight)
            info["coral_weight"] = d.coral_weight
        setup.card_info["domain_adaptation"] = info
        self.info = info

    def after_fit(self, setup: Setup, trainer) -> dict:
        from hftl.trainer import evaluate_model

        d = setup.cfg.domain_adapt
        metrics: dict = {}
        if getattr(self, "tap", None) is not None:
            self.tap.handle.remove()  # the saved model carries no hook
            self.tap = None
        if d.method == "adabn":
            layers = adapt_batch_norm(setup.model, self.target_plain, d.adabn_batch_size, self.collate)
            self.info["adabn_layers"] = layers
            logger.info("AdaBN: %d batch-norm layers re-estimated on %d target images", layers, len(self.target_plain))
            # The saved model is the adapted one: its source metrics are measured again (the kept epoch was chosen
            # before, on the source, by the unadapted model's).
            source = evaluate_model(setup.cfg, setup.task, setup.model, self.source_eval, self.collate)
            metrics.update({k: v for k, v in source.items() if k != "examples"})
        scored = evaluate_model(setup.cfg, setup.task, setup.model, self.target_eval, self.collate)
        metrics.update({f"target_{k}": v for k, v in scored.items() if k != "examples"})
        logger.info("Target domain %s (%s): accuracy %.4f on %d images", d.target, d.method,
                    metrics.get("target_accuracy", float("nan")), scored["examples"])
        return metrics

    def write_outputs(self, folder, model, meta: dict, info: dict) -> None:
        """The card gets a "Domain adaptation" section (before "How to use"): what was adapted to, and how."""
        card = folder / "README.md"
        text = card.read_text()
        section = card_section(self.info, info.get("metrics", {}))
        at = text.find("## How to use")
        card.write_text(text[:at] + section + text[at:] if at != -1 else text.rstrip() + "\n\n" + section)


def card_section(info: dict, metrics: dict) -> str:
    """The model card's words on the domain adaptation: source, target, method and the target's scores."""
    how = {"source_only": "trained on the source only", "adabn": "trained on the source, then its batch-norm "
           "statistics re-estimated on the target's unlabelled training images (AdaBN)",
           "coral": f"trained on the source with the Deep CORAL loss (weight {info.get('coral_weight')}) aligning "
           "source and target feature covariances", "oracle": "trained on the target's labelled training images "
           "(the oracle: a ceiling, not a domain adaptation)"}[info["method"]]
    scores = ", ".join(f"{k} {metrics[k]:.4f}" for k in ("target_accuracy", "target_f1", "target_loss") if k in metrics)
    return (f"## Domain adaptation\n\nSource `{info['source']}`, target `{info['target']}`: {how}; "
            f"{info['target_train_images']} target training images. On {info['target_scored_images']} held-out target "
            f"images: {scores}. The epoch was chosen on the source's validation split; no target label chose "
            "anything.\n\n")


def _with_split(data, split: str):
    """``data`` whose validation split is its ``split`` split (to build a plain, un-augmented dataset of it)."""
    out = copy.copy(data)
    out.validation = getattr(data, split)
    return out
