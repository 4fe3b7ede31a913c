"""Multi-label metrics (micro and macro F1 at a 0.5 threshold, mean average precision), shipped inside hftl."""

import datasets
import evaluate
import numpy as np


class Multilabel(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Micro and macro F1 of the labels whose score passes 0.5, and the mean over labels (those with "
                        "a positive example) of the average precision of the scores.",
            citation="",
            inputs_description="predictions: per example, a score in [0, 1] per label; references: per example, 0/1 "
                               "per label.",
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64")),
                                        "references": datasets.Sequence(datasets.Value("float64"))}),
        )

    def _compute(self, predictions, references):
        from sklearn.metrics import average_precision_score, f1_score

        p, y = np.asarray(predictions, dtype=float), np.asarray(references, dtype=float).round().astype(int)
        if p.size == 0:
            return {"f1_micro": float("nan"), "f1_macro": float("nan"), "map": float("nan")}
        pred = (p > 0.5).astype(int)
        present = [j for j in range(y.shape[1]) if y[:, j].any()]  # AP is undefined for a label nobody has
        ap = [average_precision_score(y[:, j], p[:, j]) for j in present]
        return {"f1_micro": float(f1_score(y, pred, average="micro", zero_division=0)),
                "f1_macro": float(f1_score(y, pred, average="macro", zero_division=0)),
                "map": float(np.mean(ap)) if ap else float("nan")}
