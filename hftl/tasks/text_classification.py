"""Text classification and text regression: a transformers encoder (BERT, RoBERTa, a sentence-transformers model) with a head.

Texts come from ``data.text_column`` (and ``data.text_pair_column`` for pairs), tokenized once
with the model's tokenizer and padded per batch. ``text_regression`` predicts one real value
(MSE loss; mse, mae and Pearson correlation).

Example:
    >>> hftl.train(None, ["task=text_classification", "model.id=FacebookAI/roberta-base", "data.id=reviews.csv"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging

import torch

from hftl.config import Config, DataConfig
from hftl.errors import DataError
from hftl.tasks.base import LabelledTask, library_error

logger = logging.getLogger(__name__)


class TextClassification(LabelledTask):
    """``text_classification`` and ``text_regression`` (the spec's ``regression`` tells them apart)."""

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_text import TextClassifier

        if ref.library != "transformers":
            raise library_error(self.name, ref, "transformers", "a Hub id (FacebookAI/roberta-base), a "
                                "save_pretrained folder or python-package:<module>/<folder>")
        if self.spec.regression or self.spec.multi_label:  # what transformers' pipelines read (no softmax over labels)
            kwargs["problem_type"] = "regression" if self.spec.regression else "multi_label_classification"
        return TextClassifier.create(ref, label_names, pretrained=pretrained, **kwargs)

    def build_model(self, cfg, data):
        model, ref = super().build_model(cfg, data)
        if self.spec.regression:  # train as on standardised targets (see TransferModel.scale_head_to_targets)
            model.scale_head_to_targets(list(data.train["label"]))
        return model, ref

    def model_kwargs(self, cfg) -> dict:
        extra = super().model_kwargs(cfg)
        return {**extra, "pooling": cfg.model.pooling} if cfg.model.pooling != "auto" else extra

    def datasets(self, cfg, model, data, whole: bool = False):
        return build_text_datasets(cfg, model, data)

    def encode(self, model, inputs: list) -> dict:
        return model.encode_texts([str(t) for t in inputs])

    def export_inputs(self, model, batch_size: int = 2) -> tuple[dict, dict]:
        words = "a short example text that the exported model reads".split()
        batch = model.encode_texts([" ".join(words[: 3 + 2 * i]) for i in range(batch_size)])
        batch = {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}
        return batch, {k: {0: "batch", 1: "sequence"} for k in batch}


class TextDataset(torch.utils.data.Dataset):
    """Tokenized texts (or pairs) with their labels; ``collate`` pads each batch to its longest row.

    Tokenized once up front (texts are short next to the model's cost), truncated to the model's
    ``max_length``. ``collate`` is an attribute so that hftl.methods.feature_cache can batch it for cached probes.
    """

    def __init__(self, rows: list[dict], labels: list, model):
        self.rows = rows
        self.labels = labels
        self.model = model

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], "labels": self.labels[index]}

    def collate(self, examples: list[dict]) -> dict:
        batch = self.model.pad([{k: v for k, v in e.items() if k != "labels"} for e in examples])
        labels = [e["labels"] for e in examples]
        first = labels[0][0] if isinstance(labels[0], list) and labels[0] else labels[0]
        dtype = torch.float32 if isinstance(first, float) else torch.long  # regression and multi-label: floats
        batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def _column(ds, name: str, split: str, cfg: DataConfig) -> list:
    if name not in ds.column_names:
        raise DataError(
            f"Column '{name}' is not in the {split} split of '{cfg.id}'. Its columns are: "
            f"{', '.join(ds.column_names)}. Set data.text_column / data.text_pair_column."
        )
    return ds[name]


def _labels(ds, split: str, names: list[str], regression: bool) -> list:
    labels = list(ds["label"])
    if regression:  # hftl.data checked that every target is a finite number
        return [float(v) for v in labels]
    if labels and isinstance(labels[0], list):  # multi-label 0/1 float rows, or multi-task class indices
        return [[type(x)(x) for x in row] for row in labels]
    bad = [v for v in labels if v is None or not 0 <= int(v) < len(names)]
    if bad:
        raise DataError(
            f"The {split} split holds {len(bad)} label(s) outside the {len(names)} training classes "
            f"({', '.join(names[:10])}): e.g. {bad[0]!r}. Every {split} label must be one of the training classes."
        )
    return [int(v) for v in labels]


_POOL_TOKENS: dict = {}  # a study's pool, tokenized once: key -> rows (the last few pools only)


def _pool_rows(model, data, split: str, dc) -> list[dict] | None:
    """A study fold's rows of its pool, tokenized once per study (and tokenizer); None outside a study."""
    origin = getattr(data, "origin", None)
    if origin is None or split not in origin.indices or not len(origin.indices[split]):
        return None
    tok = model.tokenizer
    key = (origin.pool.fingerprint, type(tok).__name__, tok.name_or_path, len(tok), model.max_length,
           dc.text_column, dc.text_pair_column)
    if key not in _POOL_TOKENS:
        pool = origin.pool.train
        pairs = _column(pool, dc.text_pair_column, "pool", dc) if dc.text_pair_column else None
        if len(_POOL_TOKENS) >= 4:
            _POOL_TOKENS.clear()
        _POOL_TOKENS[key] = model.tokenize(list(_column(pool, dc.text_column, "pool", dc)),
                                           None if pairs is None else list(pairs))
    rows = _POOL_TOKENS[key]
    return [rows[i] for i in origin.indices[split]]


def build_text_datasets(cfg: Config, model, data):
    """Tokenized (train, validation, collate) for text classification, with the model's tokenizer.

    Texts come from ``data.text_column`` (and ``data.text_pair_column`` for pairs); each is
    truncated to ``data.max_length`` tokens (or the model's maximum, if smaller); batches are padded
    to their longest row. Missing texts count as empty; labels outside the training classes are a
    DataError.

    Example:
        >>> train_ds, eval_ds, collate = build_text_datasets(cfg, model, data)  # doctest: +SKIP
        >>> collate([train_ds[0], train_ds[1]])["input_ids"].shape  # doctest: +SKIP
        torch.Size([2, 12])
    """
    dc = cfg.data
    max_length = model.set_max_length(dc.max_length)
    model.preprocess_key = f"{dc.text_column}|{dc.text_pair_column}"
    regression = getattr(model, "is_regression", False)
    if regression != data.regression:
        kind = "one real-valued output (text_regression)" if regression else f"{len(model.label_names)} classes"
        raise DataError(f"The model has {kind}, but the data holds "
                        f"{'real-valued targets' if data.regression else 'class labels'}. Set task to match.")
    names = data.label_names
    datasets_ = []
    for split, ds in (("train", data.train), ("validation", data.validation)):
        texts = _column(ds, dc.text_column, split, dc)
        pairs = _column(ds, dc.text_pair_column, split, dc) if dc.text_pair_column else None
        empty = sum(1 for t in texts if t is None or str(t).strip() == "")
        if empty:
            logger.warning("%d %s text(s) are empty or missing; they are kept as empty inputs", empty, split)
        rows = _pool_rows(model, data, split, dc) or model.tokenize(list(texts), None if pairs is None else list(pairs))
        datasets_.append(TextDataset(rows, _labels(ds, split, names, regression), model))
    logger.info("Tokenized %d train / %d validation texts (max %d tokens)", len(datasets_[0]), len(datasets_[1]),
                max_length)
    return datasets_[0], datasets_[1], datasets_[0].collate
