"""Multi-label classification: several labels per image or text (``image_multilabel``, ``text_multilabel``).

The same backbones, data sources and strategies as single-label classification, with what
multi-label changes: a label column that lists each example's labels (a JSON list, or text joined
by ``data.label_separator``; an image folder's ``metadata.csv``), a sigmoid per label with a binary
cross-entropy loss, micro and macro F1 and mean average precision (mAP), and a decision threshold
per label chosen on the validation split (:mod:`hftl.methods.thresholds`). ``hftl.predict``
returns every label whose score passes its threshold.

Example:
    >>> hftl.train(None, ["task=image_multilabel", "model.id=timm/resnet18.a1_in1k",
    ...                   "data.id=photos/metadata.csv"])  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hftl.errors import DataError
from hftl.tasks.image_classification import ImageClassification
from hftl.tasks.text_classification import TextClassification


def multi_label_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Binary cross-entropy of each label's sigmoid against the example's 0/1 row."""
    return F.binary_cross_entropy_with_logits(logits.float(), batch["labels"].float())


def multi_label_metrics(probs, references) -> dict:
    """Micro and macro F1 at 0.5 and mAP: the shipped ``multilabel`` metric module (hftl/metrics/multilabel).

    Example:
        >>> multi_label_metrics([[0.9, 0.2], [0.4, 0.8]], [[1, 0], [0, 1]])["f1_micro"]
        1.0
    """
    from hftl.metrics import compute_metrics

    return compute_metrics(["multilabel"], [list(map(float, r)) for r in probs], [list(map(float, r)) for r in references])


class MultiLabel:
    """What a multi-label task changes of its single-label sibling (mixed in before it)."""

    def loss(self, cfg):
        return multi_label_loss

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid()  # scores; the metrics threshold them (and rank them, for mAP)

    def card_facts(self, cfg, model, data, train_ds, eval_ds) -> dict:
        facts = super().card_facts(cfg, model, data, train_ds, eval_ds)
        rows = np.asarray(data.train["label"], dtype=float)
        rows_text = {"Labels per example": f"{rows.sum(1).mean():.2f} on average in training (of {rows.shape[1]}); "
                                           "a sigmoid per label, binary cross-entropy"}
        thresholds = getattr(model, "label_thresholds", None)
        if thresholds:
            rows_text["Decision thresholds"] = (
                "chosen per label on the validation split (best F1) and folded into the head's bias, so a label is "
                "predicted when sigmoid(logit) > 0.5 in any library: "
                + ", ".join(f"{name} {t:.2f}" for name, t in thresholds.items()))
        return {**facts, "multi_label": True, "task_rows": {**facts.get("task_rows", {}), **rows_text}}

    def check_classes(self, data, meta: dict):
        """Data to score may hold fewer labels than the model (rows re-encoded to the model's order), never others."""
        import dataclasses

        model_names, names = list(meta["label_names"]), list(data.label_names)
        unknown = sorted(set(names) - set(model_names))
        if unknown:
            raise DataError(f"The data holds {len(unknown)} label(s) the model does not have: {', '.join(unknown[:5])}. "
                            f"The model's labels are {', '.join(model_names)}. Fix or drop those rows.")
        if names == model_names:
            return None
        where = [model_names.index(n) for n in names]

        def reorder(ds):
            rows = []
            for row in ds["label"]:
                new = [0.0] * len(model_names)
                for value, j in zip(row, where):
                    new[j] = value
                rows.append(new)
            return ds.remove_columns("label").add_column("label", rows)

        return dataclasses.replace(data, train=reorder(data.train), validation=reorder(data.validation),
                                   label_names=model_names)

    @torch.inference_mode()
    def predict(self, model, inputs: list, top_k: int = 3) -> list[list[tuple[str, float]]]:
        """Every label whose score passes 0.5 (the thresholds are in the head's bias), best first; ``top_k`` is ignored."""
        model.eval()
        scores = model(self.encode(model, list(inputs))).float().sigmoid()
        return [sorted(((model.label_names[j], float(s)) for j, s in enumerate(row.tolist()) if s > 0.5),
                       key=lambda pair: -pair[1]) for row in scores]


class MultiLabelImages(MultiLabel, ImageClassification):
    """``image_multilabel``: timm backbones; data: a CSV or an image folder with ``metadata.csv``."""


class MultiLabelTexts(MultiLabel, TextClassification):
    """``text_multilabel``: transformers encoders; the saved config says ``multi_label_classification``."""
