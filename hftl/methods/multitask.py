"""Multi-task learning: one shared pretrained backbone, one head per label column, trained together.

Set ``multitask.label_columns: [topic, sentiment]`` on a text classification run whose data has
those columns (a CSV / JSON-lines file, a Hub dataset or a folder of split files). Every example
carries every label. The backbone's own final projection serves the first column; each other
column gets a linear head on the same features (``forward_features``: exactly what the final
projection sees). The loss is the weighted sum of the tasks' cross-entropies
(``multitask.weights``, default 1 each); evaluation reports ``accuracy/<column>`` and
``f1/<column>`` for each task, and their means as ``accuracy`` and ``f1``.

Outputs: the output folder holds the first task's model in the library's layout (as any run), and
``tasks/<column>/`` a complete model for each task (the shared backbone with that task's head,
``AutoModelForSequenceClassification``-loadable), so each task is predicted, evaluated, pushed and
loaded on its own.

Example:
    >>> hftl.train("recipes/configs/text_classification/minilm_multitask.yaml")  # doctest: +SKIP
    >>> hftl.predict("outputs/minilm_multitask/tasks/sentiment", ["a fine film"])  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hftl.backbones.base import TransferModel
from hftl.errors import ConfigError, DataError
from hftl.methods.base import Method, Setup

logger = logging.getLogger(__name__)


class MultiHead(nn.Module):
    """The tasks' heads side by side: features -> the tasks' logits, concatenated in column order."""

    def __init__(self, first: nn.Module, others: nn.ModuleDict):
        super().__init__()
        self.first, self.others = first, others

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.first(features), *(head(features) for head in self.others.values())], dim=-1)


class MultiTaskModel(TransferModel):
    """A single-task model (its head serves the first task) plus a linear head per further task."""

    def __init__(self, base: TransferModel, tasks: dict[str, list[str]]):
        columns = list(tasks)
        extra = nn.ModuleDict({c: nn.Linear(base.num_features, len(tasks[c])) for c in columns[1:]})
        # New heads start like the backbone's own new head (transformers: N(0, 0.02)); PyTorch's default
        # init is ~10x larger and lets the other tasks' gradients swamp the first one's at the start.
        scale = float(base.head.weight.detach().std()) if getattr(base.head, "weight", None) is not None else 0.02
        for head in extra.values():
            nn.init.normal_(head.weight, std=scale)
            nn.init.zeros_(head.bias)
        super().__init__(nn.ModuleDict({"base": base.net, "heads": extra}), tasks[columns[0]])
        object.__setattr__(self, "base", base)  # shares net["base"]; not registered twice
        self.tasks = tasks
        self.library, self.modality = base.library, base.modality
        object.__setattr__(self, "multi_head", MultiHead(base.head, extra))  # its weights live in net
        sizes = [len(names) for names in tasks.values()]
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.slices = [(c, slice(a, a + n)) for c, a, n in zip(columns, starts, sizes)]

    @property
    def head(self) -> nn.Module:
        return self.multi_head

    @property
    def num_features(self) -> int:
        return self.base.num_features

    def head_parameter_names(self) -> list[str]:
        return [f"base.{n}" for n in self.base.head_parameter_names()] + \
            [f"heads.{n}" for n, _ in self.net["heads"].named_parameters()]

    def layer_groups(self) -> list[list[str]]:
        return [[f"base.{n}" for n in group] for group in self.base.layer_groups()]

    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.base.forward_features(batch)

    def forward(self, batch: dict) -> torch.Tensor:
        return self.multi_head(self.base.forward_features(batch))

    def fingerprint(self) -> str:
        return self.base.fingerprint()

    def save(self, folder: str | Path) -> None:
        """The first task's model at ``folder``; every task's complete model under ``folder/tasks/<column>``."""
        folder = Path(folder)
        self.base.save(folder)
        for column in self.tasks:
            self.task_model(column).save(folder / "tasks" / column)

    def task_model(self, column: str) -> TransferModel:
        """A single-task copy: the shared backbone with ``column``'s head as its final projection."""
        if column == next(iter(self.tasks)):
            return self.base
        model = copy.deepcopy(self.base)
        head = copy.deepcopy(self.net["heads"][column])
        parent_name, _, leaf = model.head_name.rpartition(".")
        parent = model.inner.get_submodule(parent_name) if parent_name else model.inner
        setattr(parent, leaf, head)
        names = self.tasks[column]
        model.label_names = list(names)
        config = getattr(model.inner, "config", None)
        if config is not None and hasattr(config, "id2label"):  # transformers: the config describes the head
            config.num_labels = len(names)
            config.id2label, config.label2id = dict(enumerate(names)), {n: i for i, n in enumerate(names)}
        if hasattr(model.net, "num_classes"):  # timm
            model.net.num_classes = len(names)
        return model


def multitask_loss(slices: list[tuple[str, slice]], weights: list[float]):
    """``loss_fn(logits, batch)``: the weighted sum of each task's cross-entropy on its slice of the logits."""

    def loss_fn(logits: torch.Tensor, batch: dict) -> torch.Tensor:
        labels = batch["labels"]
        return sum(w * F.cross_entropy(logits[:, s].float(), labels[:, i])
                   for i, ((_, s), w) in enumerate(zip(slices, weights)))

    return loss_fn


def add_task_labels(cfg, data, train_ds, eval_ds) -> dict[str, list[str]]:
    """Encode every label column; each example's labels become a list (one class index per task).

    Returns the tasks: column -> class names, the first being ``data.label_names``.
    """
    from hftl.data import encode_class_values

    columns = list(cfg.multitask.label_columns)
    tasks = {columns[0]: list(data.label_names)}
    per_split = {"train": [list(train_ds.labels)], "validation": [list(eval_ds.labels)]}
    for column in columns[1:]:
        for split, ds in (("train", data.train), ("validation", data.validation)):
            if column not in ds.column_names:
                raise DataError(f"multitask.label_columns names '{column}', which is not in the {split} split of "
                                f"'{data.source}'. Its columns are: {', '.join(ds.column_names)}.")
        values, names = encode_class_values(data.train, column)
        tasks[column] = names
        per_split["train"].append(values)
        per_split["validation"].append(encode_class_values(data.validation, column, names)[0])
    train_ds.labels = [list(row) for row in zip(*per_split["train"])]
    eval_ds.labels = [list(row) for row in zip(*per_split["validation"])]
    return tasks


class MultiTask(Method):
    """``multitask.label_columns``: one head per column on the shared backbone, their losses summed."""

    name, section = "multitask", "multitask"

    def applies(self, cfg) -> bool:
        return bool(cfg.multitask.label_columns)

    def check(self, cfg) -> None:
        check_multitask(cfg)

    def before_strategy(self, setup: Setup) -> None:
        # The tasks' classes come from the data; the heads then join the model, before the strategy freezes it.
        model = MultiTaskModel(setup.model, add_task_labels(setup.cfg, setup.data, setup.train_ds, setup.eval_ds))
        slices = model.slices
        setup.model = model
        setup.loss_fn = multitask_loss(slices, setup.cfg.multitask.weights or [1.0] * len(slices))
        setup.predictions = lambda logits: torch.stack([logits[:, s].argmax(-1) for _, s in slices], dim=-1)
        setup.score = per_task_score([column for column, _ in slices])

    def write_outputs(self, folder, model, meta: dict, info: dict) -> None:
        """Each task's folder (``tasks/<column>``) gets its hftl.json, config and card: it loads, predicts and
        evaluates alone."""
        from hftl.cards import render_card

        write_task_meta(folder, meta, model.tasks, info["run_config"])
        for task in model.tasks:
            task_metrics = {k.split("/")[0]: v for k, v in info["metrics"].items() if k.endswith(f"/{task}")}
            render_card({**info, "model_name": f"{info['model_name']}-{task}", "metrics": task_metrics,
                         "num_labels": len(model.tasks[task]),
                         "summary": f"{info['summary']} Task `{task}` of a multi-task run ({', '.join(model.tasks)}) "
                                    "sharing one backbone."}).save(folder / "tasks" / task / "README.md")


def per_task_score(columns: list[str]):
    """``score(names, predictions, references)`` for rows of one class per task: each task's metrics
    (``accuracy/<column>``), and their mean under the plain name (``accuracy``)."""
    from hftl.metrics import compute_metrics

    def score(names, predictions, references) -> dict:
        per_task = {c: compute_metrics(names, [p[i] for p in predictions], [r[i] for r in references])
                    for i, c in enumerate(columns)}
        out = {}
        for key in per_task[columns[0]]:
            out[key] = sum(m[key] for m in per_task.values()) / len(per_task)
            out.update({f"{key}/{c}": m[key] for c, m in per_task.items()})
        return out

    return score


def check_multitask(cfg) -> None:
    m = cfg.multitask
    if len(m.label_columns) < 2:
        raise ConfigError("multitask.label_columns needs two or more label columns (one is a single task: use "
                          "data.label_column).")
    if cfg.task != "text_classification":
        raise ConfigError(f"multitask works for text_classification runs for now, not {cfg.task}.")
    if m.weights and len(m.weights) != len(m.label_columns):
        raise ConfigError(f"multitask.weights has {len(m.weights)} values for {len(m.label_columns)} label columns.")
    if cfg.distill.teacher:
        raise ConfigError("multitask with distill.teacher is not supported: a teacher predicts one task.")
    if cfg.strategy.name == "lora":
        raise ConfigError("multitask with strategy lora is not supported yet: use finetune, partial, "
                          "gradual_unfreeze, linear_probe or scratch.")
    if cfg.data.label_column != m.label_columns[0]:
        cfg.data.label_column = m.label_columns[0]  # the first task's column is the one the split stratifies by


def write_task_meta(folder: Path, meta: dict, tasks: dict[str, list[str]], run_config: dict) -> None:
    """Each ``tasks/<column>`` folder gets its hftl.json and a single-task config, so hftl loads and evaluates it."""
    import yaml

    for column, names in tasks.items():
        task_dir = folder / "tasks" / column
        (task_dir / "hftl.json").write_text(json.dumps({**meta, "label_names": names, "multitask_column": column},
                                                       indent=2))
        config = copy.deepcopy(run_config)
        config["data"]["label_column"], config["multitask"]["label_columns"] = column, []
        (task_dir / "hftl_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
