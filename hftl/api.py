"""What a user calls: train a model from a config, load it, predict, evaluate.

The CLI, the recipes and notebooks all come through here, so every entry point behaves alike.

Example:
    >>> import hftl
    >>> result = hftl.train(None, ["model.id=timm:resnet18", "data.image_size=32", "train.epochs=1"])  # doctest: +SKIP
    >>> hftl.predict(result.output_dir, ["digit.png"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from pathlib import Path

from hftl.config import Config, load_config
from hftl.console import run_log
from hftl.data import LabelledData
from hftl.errors import ConfigError
from hftl.model import META_FILE, load, read_meta
from hftl.output_dir import check_output_dir, output_lock
from hftl.run import TrainResult, run
from hftl.run import peak_memory_mb as peak_memory_mb  # re-exported: benchmarks/README.md names it here
from hftl.tasks import get_task_impl
from hftl.tasks.language_model import LM_TASKS

logger = logging.getLogger(__name__)


def as_config(config: Config | str | Path | dict | None, overrides: list[str] | None = None) -> Config:
    """Accept a Config, a YAML path, a dict or None (defaults), plus dotted overrides."""
    from hftl.config import _apply, parse_overrides, validate

    if isinstance(config, Config):
        cfg = config
        if overrides:
            _apply(cfg, parse_overrides(overrides))
            validate(cfg)
        return cfg
    if isinstance(config, dict):
        cfg = Config()
        _apply(cfg, config)
        _apply(cfg, parse_overrides(overrides or []))
        validate(cfg)
        return cfg
    return load_config(config, overrides)


def train(config: Config | str | Path | dict | None = None, overrides: list[str] | None = None, *,
          data: LabelledData | None = None, extra_card_info: dict | None = None) -> TrainResult:
    """Train a model by transfer learning as the config says; returns the output folder and metrics.

    ``data`` replaces loading ``cfg.data`` (a study passes its folds this way); ``extra_card_info``
    adds to the model card (a study's table, a pretraining chain).

    Example:
        >>> result = train("recipes/configs/image_classification/resnet18_linear_probe.yaml")  # doctest: +SKIP
    """
    cfg = as_config(config, overrides)
    if cfg.hub.push:  # a missing token or a bad repo id fails now, not after the training
        from hftl.hub import check_push_ready

        check_push_ready(cfg.hub.repo_id)
    check_output_dir(cfg.output_dir, cfg.train.resume)
    # One run per folder: a second one started on it fails at once. Under the command, OUTPUT_DIR/logs/hftl.log
    # keeps the INFO lines the terminal does not show.
    with output_lock(cfg.output_dir), run_log(cfg.output_dir):
        return run(cfg, data, extra_card_info)


def adapt_then_finetune(adapt_config, finetune_config, adapt_overrides: list[str] | None = None,
                        finetune_overrides: list[str] | None = None):
    """Domain-adaptive pretraining, then fine-tuning from its output, in one call; returns both results.

    The first config is a ``masked_lm`` (or ``causal_lm``) run on unlabelled text; the second a
    ``text_classification`` run whose ``model.id`` is set to the first run's output, so its card
    records the chain.

    Example:
        >>> adapt, clf = adapt_then_finetune("recipes/configs/masked_lm/minilm_domain_adapt.yaml",
        ...                                  "recipes/configs/text_classification/minilm_finetune.yaml")  # doctest: +SKIP
    """
    adapt_cfg = as_config(adapt_config, adapt_overrides)
    if adapt_cfg.task not in LM_TASKS:
        raise ConfigError(f"The adaptation run must be task masked_lm or causal_lm, not '{adapt_cfg.task}'.")
    adapted = train(adapt_cfg)
    merged = Path(adapted.output_dir) / "merged"
    start = merged if (Path(adapted.output_dir) / "adapter_config.json").is_file() and merged.is_dir() \
        else adapted.output_dir
    if (Path(start) / "adapter_config.json").is_file():
        raise ConfigError("A LoRA adaptation run must set strategy.merge_lora=true to be fine-tuned from.")
    finetuned = train(finetune_config, [*(finetune_overrides or []), f"model.id={start}"])
    return adapted, finetuned


# ------------------------------------------------------------------------------------- inference

def predict(model_or_folder, inputs: list, top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) for each input: image or audio file paths, or strings for text.

    A text_regression model gives one pair per input: (its target's name, the predicted value).

    Example:
        >>> predict("outputs/run", ["img1.png"], top_k=2)  # doctest: +SKIP
        [[('7', 0.91), ('1', 0.05)]]
    """
    model = load(model_or_folder) if isinstance(model_or_folder, (str, Path)) else model_or_folder
    try:
        return get_task_impl(_task_of(model)).predict(model, list(inputs), top_k=top_k)
    except ConfigError as e:
        raise ConfigError(f"'{model_or_folder}': {e}") from None


def _task_of(model) -> str:
    """The task a model was trained for: hftl.load records it; a model built in code is known by its kind."""
    if getattr(model, "task", None):
        return model.task
    kind = {"causal": "causal_lm", "masked": "masked_lm", "captioner": "image_captioning"}
    return kind.get(getattr(model, "kind", None)) or f"{model.modality}_classification"


# Overrides that name other data than the run's: hftl.evaluate then scores all of it.
OTHER_DATA_KEYS = {"data.id", "data.train_split", "data.validation_split", "data.config_name", "data.revision"}


def evaluate(folder: str | Path, overrides: list[str] | None = None, *, trust_remote_code: bool = False,
             allow_pickle: bool = False) -> dict:
    """Metrics of a trained model on data: its own validation split, or every row of the data overrides name.

    With an override naming other data (``data.id``, a split, a subset or revision), all of that data is
    scored: its validation split if it has one, else every row (``examples`` counts them), and the run's
    ``data.max_eval_samples`` no longer applies. Classifiers report loss, accuracy and macro-F1; text_regression models mse, mae and Pearson
    correlation; language models (causal or masked) and image captioners the held-out loss and perplexity.

    Example:
        >>> evaluate("outputs/run", ["data.id=path/to/images"])  # doctest: +SKIP
    """
    folder = Path(folder)
    if not (folder / "hftl_config.yaml").is_file() or not (folder / META_FILE).is_file():
        raise ConfigError(f"'{folder}' is not an hftl output folder (no hftl_config.yaml / {META_FILE}); "
                          "`hftl eval` needs the folder a run wrote.")
    cfg = as_config(folder / "hftl_config.yaml", overrides)
    # The folder's own config may not switch on code execution or pickles: only the user's overrides can.
    cfg.model.trust_remote_code = _user_flag(overrides, "model.trust_remote_code") or trust_remote_code
    cfg.model.allow_pickle = _user_flag(overrides, "model.allow_pickle") or allow_pickle
    given = {o.split("=", 1)[0].strip() for o in overrides or []}
    whole = bool(given & OTHER_DATA_KEYS)
    if whole and "data.max_eval_samples" not in given:
        cfg.data.max_eval_samples = None  # the run's own subsampling was for its validation split, not for this data
    meta = read_meta(folder)
    task = get_task_impl(cfg.task)
    task.check_evaluable(folder)
    model = load(folder, trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    data = task.load_data(cfg, whole=whole)
    data = task.check_classes(data, meta) or data  # a multi-label set may come back in the model's label order
    _, eval_ds, collate = task.datasets(cfg, model, data, whole=whole)
    from hftl.trainer import evaluate_model

    scored = evaluate_model(cfg, task, model, eval_ds, collate)
    if not whole and _refit_on_validation(folder):
        logger.warning("%s: it was trained again on this validation split too (strategy.probe_refit or train.refit), "
                       "so these metrics are optimistic; score data it has not seen (data.id=...) for an unbiased "
                       "number", folder)
        scored["validation_seen_in_training"] = True
    return scored


def _refit_on_validation(folder: Path) -> bool:
    """Whether the saved weights were trained again on training + validation examples: a solved probe's refit
    or train.refit (metrics.json says so)."""
    import json

    try:
        record = json.loads((folder / "metrics.json").read_text())
    except (OSError, ValueError):
        return False
    probe = record.get("probe") or {}
    probes = [*probe["tasks"].values()] if "tasks" in probe else [probe]
    return bool(record.get("refit")) or any(p.get("refit_examples") for p in probes)


def _user_flag(overrides: list[str] | None, key: str) -> bool:
    """Whether the user's own overrides set a boolean ``key`` to true."""
    from hftl.config import parse_overrides

    node = parse_overrides([o for o in overrides or [] if o.startswith(f"{key}=")])
    for part in key.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node is True
