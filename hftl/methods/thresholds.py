"""Per-label decision thresholds for multi-label tasks, chosen on the validation split and folded into the head.

A sigmoid at 0.5 suits a label only when it is as frequent as not; rare labels want a lower
threshold. After the fit, each label's threshold is the one (from 0.05 to 0.95) with the best F1 on
the validation split; a label with no positive validation example keeps 0.5. The threshold ``t``
is then folded into the head's bias (``b - logit(t)``), so that "sigmoid(logit) > 0.5" is the tuned
rule for every library that loads the saved model (timm, transformers, ONNX), and mAP (a ranking
per label) does not change. The run's reported metrics stay those at 0.5, before the tuning;
``hftl eval`` on other data scores the tuned model.

Example:
    >>> choose_thresholds(np.array([[0.3], [0.2], [0.1]]), np.array([[1], [1], [0]]))
    [0.15]
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch

from hftl.methods.base import Method, Setup

logger = logging.getLogger(__name__)

GRID = np.round(np.linspace(0.05, 0.95, 19), 2)


def choose_thresholds(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """Each label's threshold with the best F1 on (probs, labels); ties go to the one nearest 0.5."""
    def f1(scores: np.ndarray, y: np.ndarray, t: float) -> float:
        pred = scores > t
        tp = float((pred & y).sum())
        return 2 * tp / (pred.sum() + y.sum()) if tp else 0.0

    out = []
    for j in range(labels.shape[1]):
        y, scores = labels[:, j] > 0.5, probs[:, j]
        out.append(float(max(GRID, key=lambda t: (round(f1(scores, y, t), 12), -abs(t - 0.5)))) if y.any() else 0.5)
    return out


@torch.inference_mode()
def _validation_scores(model, dataset, collate, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                         collate_fn=collate or getattr(dataset, "collate", None))
    model.eval()
    device = next(model.parameters()).device
    probs, labels = [], []
    for batch in loader:
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        probs.append(model(batch).float().sigmoid().cpu())
        labels.append(batch["labels"].float().cpu())
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


class LabelThresholds(Method):
    """Multi-label tasks: thresholds per label, chosen on the validation split after the fit."""

    name, section = "label_thresholds", "task"

    def applies(self, cfg) -> bool:
        from hftl.registry import get_task

        return get_task(cfg.task).multi_label

    def after_fit(self, setup: Setup, trainer) -> None:
        from hftl.probe import _linear_parts

        if not len(setup.eval_ds):
            return
        probs, labels = _validation_scores(trainer.model, setup.eval_ds, setup.collate,
                                           setup.cfg.train.per_device_batch_size)
        thresholds = choose_thresholds(probs, labels)
        _, linear = _linear_parts(setup.model.head)
        if linear.bias is None:  # nowhere to fold them: the model predicts at 0.5, as trained
            logger.warning("The head has no bias to hold per-label thresholds; predictions use 0.5 for every label")
            return
        with torch.no_grad():
            linear.bias -= torch.tensor([math.log(t / (1 - t)) for t in thresholds], dtype=linear.bias.dtype,
                                        device=linear.bias.device)
        setup.model.label_thresholds = dict(zip(setup.model.label_names, thresholds))
        logger.info("Thresholds per label (best validation F1), folded into the head's bias: %s",
                    ", ".join(f"{n} {t:.2f}" for n, t in setup.model.label_thresholds.items()))
