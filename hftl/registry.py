"""Tasks and ways to transfer, by name: the one list that config, metrics, cards, studies and the CLI read.

Each task's facts (what it reports, which strategies apply to it, how the Hub names it, which
transformers class loads it, which :class:`hftl.tasks.base.Task` runs it) are one :class:`TaskSpec`,
so they cannot disagree from one module to the next. A new task is its Task subclass plus one
:func:`register_task` call. This module imports nothing heavy (no torch; a built-in task names its
class as "module:Class", imported on first use) and sits below ``hftl.config`` in the import graph:
config imports it, never the reverse.

Example:
    >>> from hftl.registry import get_task
    >>> spec = get_task("text_regression")
    >>> spec.metrics, spec.metric, spec.pipeline_tag
    (('mse', 'mae', 'pearson'), 'mse', 'text-classification')
"""

from __future__ import annotations

from dataclasses import dataclass

from hftl.errors import ConfigError

# The ways to transfer (hftl.methods.strategies.STRATEGIES holds their classes, under these names).
STRATEGIES = ("linear_probe", "finetune", "lp_ft", "gradual_unfreeze", "partial", "lora", "scratch")
MODALITIES = ("image", "text", "audio", "image-text")


@dataclass(frozen=True)
class TaskSpec:
    """What hftl knows about one task, in one place.

    Example:
        >>> TaskSpec("image_classification", "image", metrics=("accuracy", "f1"), pipeline_tag="image-classification",
        ...          card_name="Image Classification", classification=True, implementation=_impl("image_classification:ImageClassification")).metric
        'accuracy'
    """

    name: str
    modality: str  # one of MODALITIES: what the inputs are
    metrics: tuple[str, ...]  # what an evaluation reports (besides the loss, which it always reports), headline first
    pipeline_tag: str  # the Hub's pipeline_tag (a card's front matter, its model-index)
    card_name: str  # the model-index task name on a card
    metric: str = ""  # the default train.metric (empty: the headline, metrics[0])
    higher_is_better: bool = True  # the direction of the default metric
    classification: bool = False  # predicts one of the data's classes (distillation, studies, predict's labels)
    regression: bool = False  # predicts one real value per example (MSE loss, regression metrics)
    multi_label: bool = False  # predicts a set of the data's labels per example (sigmoid head, BCE loss)
    auto_class: str | None = None  # the transformers class a card's loading snippet uses, where one applies
    strategies: tuple[str, ...] = STRATEGIES  # the strategy.name values that apply
    strategy_note: str = ""  # why the others do not (the error message says it)
    # The hftl.tasks.base.Task subclass that runs it: the class, or "module:Class" (imported on first use, so
    # reading the registry never imports torch).
    implementation: object = None

    def __post_init__(self):
        if not self.metric:
            object.__setattr__(self, "metric", self.metrics[0] if self.metrics else "")

    @property
    def labelled(self) -> bool:
        """Whether the task learns from labelled examples (classes or values): what a study compares."""
        return self.classification or self.regression

    def check_strategy(self, strategy: str) -> None:
        """Raise one ConfigError when ``strategy`` does not apply to this task, naming the ones that do.

        Example:
            >>> get_task("simclr").check_strategy("lora")
            Traceback (most recent call last):
            ...
            hftl.errors.ConfigError: strategy lora does not apply to simclr (self-supervised pretraining trains the encoder itself). Use finetune, scratch or partial.
        """
        if strategy not in self.strategies:
            why = f" ({self.strategy_note})" if self.strategy_note else ""
            raise ConfigError(f"strategy {strategy} does not apply to {self.name}{why}. Use {_or(self.strategies)}.")


def _or(names: tuple[str, ...]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"


TASKS: dict[str, TaskSpec] = {}


def register_task(spec: TaskSpec, *, replace: bool = False) -> TaskSpec:
    """Add a task to the registry (config then accepts ``task: <name>``); returns the spec.

    Example:
        >>> register_task(TaskSpec("toy", "text", metrics=("accuracy",), pipeline_tag="text-classification",
        ...                        card_name="Toy", classification=True, implementation=ToyTask))  # doctest: +SKIP
    """
    if not isinstance(spec, TaskSpec):
        raise TypeError(f"register_task takes a TaskSpec, not {type(spec).__name__}.")
    if not spec.name.isidentifier():
        raise ValueError(f"A task name is an identifier (e.g. text_classification), not {spec.name!r}.")
    if spec.name in TASKS and not replace:
        raise ValueError(f"Task '{spec.name}' is already registered; pass replace=True to replace it.")
    if spec.modality not in MODALITIES:
        raise ValueError(f"Task '{spec.name}': modality '{spec.modality}' is not one of {', '.join(MODALITIES)}.")
    if not spec.metrics or spec.metric not in spec.metrics:
        raise ValueError(f"Task '{spec.name}': the default metric '{spec.metric}' is not among its metrics {spec.metrics}.")
    unknown = [s for s in spec.strategies if s not in STRATEGIES]
    if unknown or not spec.strategies:
        raise ValueError(f"Task '{spec.name}': strategies {unknown or '()'} are not known; valid: {', '.join(STRATEGIES)}.")
    if sum((spec.classification, spec.regression, spec.multi_label)) > 1:
        raise ValueError(f"Task '{spec.name}' is at most one of classification, regression and multi_label.")
    if spec.implementation is None:
        raise ValueError(f"Task '{spec.name}' needs an implementation: a hftl.tasks.base.Task subclass.")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """The spec of a registered task, or one ConfigError that lists the valid tasks.

    Example:
        >>> get_task("simclr").metrics
        ('loss',)
    """
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise ConfigError(f"task '{name}' is not known. Valid tasks: {', '.join(TASKS)}.") from None


def task_names(**facts) -> tuple[str, ...]:
    """The registered tasks whose attributes equal ``facts`` (all of them with none given), in order.

    Example:
        >>> task_names(regression=True)
        ('text_regression',)
    """
    return tuple(n for n, s in TASKS.items() if all(getattr(s, k) == v for k, v in facts.items()))


def _impl(name: str) -> str:
    return f"hftl.tasks.{name}"


_NO_PROBE = ("finetune", "lora", "partial", "gradual_unfreeze", "scratch")
_LM_NOTE = "there is no new head to probe"
_MULTI_LABEL = ("linear_probe", "finetune", "gradual_unfreeze", "partial", "lora", "scratch")
_MULTI_LABEL_NOTE = "LP-FT's first stage is a multinomial probe, solved; a multi-label head is trained (BCE)"

for _spec in (
    TaskSpec("image_classification", "image", metrics=("accuracy", "f1"), pipeline_tag="image-classification",
             card_name="Image Classification", classification=True, implementation=_impl("image_classification:ImageClassification")),
    TaskSpec("text_classification", "text", metrics=("accuracy", "f1"), pipeline_tag="text-classification",
             card_name="Text Classification", classification=True, auto_class="AutoModelForSequenceClassification",
             implementation=_impl("text_classification:TextClassification")),
    TaskSpec("image_multilabel", "image", metrics=("f1_micro", "f1_macro", "map"), pipeline_tag="image-classification",
             card_name="Multi-label Image Classification", multi_label=True, strategies=_MULTI_LABEL,
             strategy_note=_MULTI_LABEL_NOTE, implementation=_impl("multi_label:MultiLabelImages")),
    TaskSpec("text_multilabel", "text", metrics=("f1_micro", "f1_macro", "map"), pipeline_tag="text-classification",
             card_name="Multi-label Text Classification", multi_label=True, strategies=_MULTI_LABEL,
             strategy_note=_MULTI_LABEL_NOTE, auto_class="AutoModelForSequenceClassification",
             implementation=_impl("multi_label:MultiLabelTexts")),
    TaskSpec("text_regression", "text", metrics=("mse", "mae", "pearson"), pipeline_tag="text-classification",
             card_name="Text Regression", higher_is_better=False, regression=True,
             auto_class="AutoModelForSequenceClassification", implementation=_impl("text_classification:TextClassification")),
    TaskSpec("audio_classification", "audio", metrics=("accuracy", "f1"), pipeline_tag="audio-classification",
             card_name="Audio Classification", classification=True, auto_class="AutoModelForAudioClassification",
             implementation=_impl("audio_classification:AudioClassification")),
    TaskSpec("image_captioning", "image-text", metrics=("perplexity",), pipeline_tag="image-to-text",
             card_name="Image Captioning", higher_is_better=False, auto_class="VisionEncoderDecoderModel",
             strategies=("finetune", "partial", "lora", "scratch"),
             strategy_note="a captioner's new cross-attention sits inside the decoder, not in a head on top; "
                           "partial with strategy.frozen_groups freezes the image encoder",
             implementation=_impl("image_captioning:ImageCaptioning")),
    TaskSpec("simclr", "image", metrics=("loss",), pipeline_tag="image-feature-extraction",
             card_name="Self-supervised Image Pretraining", higher_is_better=False,
             strategies=("finetune", "scratch", "partial"),
             strategy_note="self-supervised pretraining trains the encoder itself", implementation=_impl("simclr:SimCLR")),
    TaskSpec("masked_image", "image", metrics=("loss",), pipeline_tag="image-feature-extraction",
             card_name="Masked Image Modelling", higher_is_better=False, auto_class="AutoModel",
             strategies=("finetune", "scratch", "partial"),
             strategy_note="self-supervised pretraining trains the encoder itself",
             implementation=_impl("masked_image:MaskedImage")),
    TaskSpec("causal_lm", "text", metrics=("perplexity",), pipeline_tag="text-generation", card_name="Text Generation",
             higher_is_better=False, auto_class="AutoModelForCausalLM", strategies=_NO_PROBE, strategy_note=_LM_NOTE,
             implementation=_impl("language_model:LanguageModelTask")),
    TaskSpec("masked_lm", "text", metrics=("perplexity",), pipeline_tag="fill-mask", card_name="Fill-Mask",
             higher_is_better=False, auto_class="AutoModelForMaskedLM", strategies=_NO_PROBE, strategy_note=_LM_NOTE,
             implementation=_impl("language_model:LanguageModelTask")),
):
    register_task(_spec)
del _spec

__all__ = ["STRATEGIES", "TASKS", "TaskSpec", "get_task", "register_task", "task_names"]
