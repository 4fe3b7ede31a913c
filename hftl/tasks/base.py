"""The Task interface: what differs from one task to the next, and nothing else.

A run (``hftl.run.run``) and an evaluation (``hftl.trainer.evaluate_model``) are the same for every
task; they call these hooks where the task matters:

- ``load_data(cfg, whole)``: the examples, as :class:`hftl.data.LabelledData` (a language model's
  documents, a captioner's pairs, unlabelled images: ``label_names`` is then empty);
- ``build_model(cfg, data)``: the model (a :class:`hftl.backbones.TransferModel`) and its reference;
- ``datasets(cfg, model, data, whole)``: torch datasets and the batch collate;
- ``loss(cfg)``: ``loss(logits, batch) -> tensor``;
- ``predictions(logits)``: what the metrics compare with the labels (None: the task reports its loss only);
- ``card_facts(cfg, model, data, train_ds, eval_ds)``: what the model card says of the data (and of
  the trained model: a captioner's sample captions);
- ``predict(model, inputs, top_k)``: what ``hftl.predict`` returns;
- ``check_evaluable(folder)``: refuse ``hftl eval`` on an output that has nothing to score.

The facts that need no torch (its metrics, which strategies apply, its Hub pipeline tag) are its
:class:`hftl.registry.TaskSpec`; ``task.spec`` reads it. :class:`LabelledTask` implements the hooks
for classifiers and regressors of the data hftl reads, so a new classification task overrides
only what is new.

Example:
    >>> from hftl.tasks import get_task_impl
    >>> task = get_task_impl("text_regression")  # doctest: +SKIP
    >>> task.predictions(torch.tensor([[0.5], [2.0]]))  # doctest: +SKIP
    tensor([0.5000, 2.0000])
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch

from hftl.config import Config
from hftl.errors import ConfigError, DataError
from hftl.registry import TaskSpec

logger = logging.getLogger(__name__)


class Task:
    """One task's hooks on the one run path; subclass it and register it with a TaskSpec.

    Example:
        >>> class Toy(LabelledTask):
        ...     def load_data(self, cfg, whole=False):
        ...         return my_data()  # doctest: +SKIP
        >>> register_task(TaskSpec("toy", "text", ("accuracy",), "text-classification", "Toy",
        ...                        classification=True, implementation=Toy))  # doctest: +SKIP
    """

    # Whether a frozen backbone's features of one example are the same whatever else is in its batch (no padding
    # that a norm sees): then a study computes them once for its whole pool (hftl.methods.feature_cache).
    features_per_example = True

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    # ----------------------------------------------------------------------------- data and model
    def load_data(self, cfg: Config, whole: bool = False):
        raise NotImplementedError(f"Task '{self.name}' does not say how to load its data (load_data).")

    def build_model(self, cfg: Config, data):
        """The model from ``cfg.model`` and its resolved reference; scratch runs get the same architecture,
        randomly initialised; ``model.init_from`` then transfers weights into it."""
        from hftl.backbones.hf_common import refuse_remote_code
        from hftl.refs import resolve_model

        ref = resolve_model(cfg.model.id, revision=cfg.model.revision, allow_pickle=cfg.model.allow_pickle,
                            arch=cfg.model.arch)
        pretrained = cfg.model.pretrained and cfg.strategy.name != "scratch"
        with refuse_remote_code(ref.describe()):
            model = self.create_model(ref, list(data.label_names), pretrained=pretrained, **self.model_kwargs(cfg))
        if cfg.model.init_from:
            if cfg.strategy.name == "scratch":
                raise ConfigError("model.init_from transfers weights; strategy scratch trains from random ones. "
                                  "Drop one.")
            init_weights_from(model, cfg.model.init_from, cfg.model.init_from_revision)
        return model, ref

    def create_model(self, ref, label_names: list[str], *, pretrained: bool = True, **kwargs):
        """The backbone adapter's model for this task from a resolved reference, its head sized to ``label_names``
        (also what rebuilds an adapter's base on loading)."""
        raise ConfigError(f"Task '{self.name}' has no backbone adapter: its Task must say how to build its model "
                          "(create_model or build_model).")

    def model_kwargs(self, cfg: Config) -> dict:
        """Constructor arguments beyond the reference (recorded in hftl.json, so that a base can be rebuilt)."""
        return {**dict(cfg.model.kwargs), "trust_remote_code": cfg.model.trust_remote_code}

    def datasets(self, cfg: Config, model, data, whole: bool = False):
        """(train dataset, evaluation dataset, collate or None)."""
        raise NotImplementedError(f"Task '{self.name}' does not say how to build its datasets (datasets).")

    def plain_train_dataset(self, cfg: Config, model, data, train_ds):
        """The training examples as evaluation shows them (no augmentation): what cached features are of."""
        return train_ds.without_augmentation() if hasattr(train_ds, "without_augmentation") else train_ds

    # ----------------------------------------------------------------------------- training and scoring
    def loss(self, cfg: Config) -> Callable:
        raise NotImplementedError(f"Task '{self.name}' does not say what its loss is (loss).")

    def predictions(self, logits: torch.Tensor) -> torch.Tensor | None:
        """What the metrics compare with ``batch["labels"]``; None: nothing (the loss is the measure)."""
        return None

    def metric_modules(self) -> tuple[str, ...]:
        """The shipped metric modules that compute what the spec reports."""
        from hftl.metrics import metrics_for_task

        return metrics_for_task(self.name)

    # ----------------------------------------------------------------------------- outputs
    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        """What the model card says of the data: sizes and classes; ``task_rows`` ({name: text}) adds table rows."""
        return {"num_train": len(data.train), "num_validation": len(data.validation),
                "num_labels": len(data.label_names)}

    def check_evaluable(self, folder) -> None:
        """Raise a ConfigError when an output of this task has nothing ``hftl eval`` could score."""

    def check_classes(self, data, meta: dict):
        """Raise a DataError when the data to score has other classes than the model (or return the data re-encoded
        to the model's classes; None: as it is)."""

    def predict(self, model, inputs: list, top_k: int = 3) -> list:
        raise ConfigError(f"A {self.name} model does not predict with hftl.predict.")

    def export_module(self, model) -> tuple:
        """(the module an ONNX export traces, taking the batch dict; its output's name): the model and its logits."""
        return model, "logits"

    def export_inputs(self, model, batch_size: int = 2) -> tuple[dict, dict]:
        """(example batch, its dynamic dimensions {input: {axis: name}}) for an ONNX export (hftl.export)."""
        raise ConfigError(f"ONNX export covers image, text and audio classifiers and a captioner's image encoder; a {self.name} model cannot be "
                          "exported yet.")


def init_weights_from(model, model_id: str, revision: str | None = None) -> None:
    """Partial / converted weight transfer from another model (hftl.convert); the report goes on the model."""
    from hftl.convert import transfer_weights

    model.transfer_report = transfer_weights(model.net, model_id, revision, skip=tuple(model.head_parameter_names()))


def library_error(task: str, ref, wants: str, examples: str) -> ConfigError:
    """The one-line error for a model of another library than the task's adapter reads."""
    hint = " (a LoRA output: train from its merged/ folder, strategy.merge_lora=true)" if ref.library == "peft" else ""
    return ConfigError(f"{task} reads {wants} models; '{ref.describe()}' is a {ref.library} model{hint}. Use {examples}.")


class LabelledTask(Task):
    """Classification (or regression) on the data hftl.data reads: what image, text and audio share."""

    def load_data(self, cfg: Config, whole: bool = False):
        from hftl.data import load_labelled_data

        data = load_labelled_data(cfg.data, self.name, cfg.train.seed, whole=whole)
        logger.info("Data: %s", data.summary())
        return data

    def loss(self, cfg: Config) -> Callable:
        from hftl.trainer import classification_loss

        return classification_loss

    def predictions(self, logits: torch.Tensor) -> torch.Tensor:
        if self.spec.regression:  # one output: the value itself is the prediction
            return logits.float().squeeze(-1)
        return logits.argmax(-1)

    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        facts = super().card_facts(cfg, model, data, train_ds, eval_ds)
        return {**facts, "regression_target": data.label_names[0] if data.regression else None}

    def check_classes(self, data, meta: dict) -> None:
        if not data.regression and list(data.label_names) != list(meta["label_names"]):
            raise DataError(f"The data's classes {data.label_names} differ from the model's {meta['label_names']}.")

    def encode(self, model, inputs: list) -> dict:
        """A batch of the model's inputs from what a user passes to predict (files or strings)."""
        raise NotImplementedError(f"Task '{self.name}' does not say how to read inputs to predict (encode).")

    @torch.inference_mode()
    def predict(self, model, inputs: list, top_k: int = 3) -> list[list[tuple[str, float]]]:
        if not model.label_names:
            raise ConfigError("This model has no classes (a self-supervised encoder): train a classifier from it "
                              "first (task image_classification with model.id set to it).")
        model.eval()
        logits = model(self.encode(model, list(inputs))).float()
        if getattr(model, "is_regression", False):
            return [[(model.label_names[0], float(v))] for v in logits[:, 0].tolist()]
        probs = logits.softmax(-1)
        values, indices = probs.topk(min(top_k, probs.shape[-1]), dim=-1)
        return [[(model.label_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
                for vs, ix in zip(values, indices)]
