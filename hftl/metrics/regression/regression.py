"""Regression metrics (mean squared / absolute error, Pearson correlation), shipped inside hftl so they load offline."""

import datasets
import evaluate
import numpy as np


class Regression(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean squared error, mean absolute error and Pearson correlation of predicted values.",
            citation="",
            inputs_description="predictions and references: lists of real numbers.",
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        p, r = np.asarray(predictions, dtype=np.float64), np.asarray(references, dtype=np.float64)
        if len(r) == 0:
            return {"mse": float("nan"), "mae": float("nan"), "pearson": float("nan")}
        # Pearson is undefined when either side is constant (e.g. an untrained head): reported as 0, no warning.
        spread = p.std() * r.std()
        pearson = float(((p - p.mean()) * (r - r.mean())).mean() / spread) if spread > 0 else 0.0
        return {"mse": float(((p - r) ** 2).mean()), "mae": float(np.abs(p - r).mean()), "pearson": pearson}
