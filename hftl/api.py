"""What a user calls: train a model from a config, load it, predict, evaluate.

The CLI, the recipes and notebooks all come through here, so every entry point behaves alike.

Example:
    >>> import hftl
    >>> result = hftl.train(None, ["model.id=timm:resnet18", "data.image_size=32", "train.epochs=1"])  # doctest: +SKIP
    >>> hftl.predict(result.output_dir, ["digit.png"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch

from hftl.config import Config, load_config
from hftl.data import ImageDataset, LabelledData, load_labelled_data, to_rgb
from hftl.errors import ConfigError, DataError
from hftl.metrics import metrics_for_task
from hftl.model import META_FILE, build_model, load, read_meta
from hftl.output_dir import check_output_dir, output_lock
from hftl.run import TrainResult, write_outputs
from hftl.run import peak_memory_mb as peak_memory_mb  # re-exported: benchmarks/README.md names it here
from hftl.strategies import get_strategy
from hftl.tasks import (
    LM_TASKS,
    build_datasets,
    causal_lm_loss,
    chain_card_info,
    lm_datasets,
    masked_lm_loss,
    train_language_model,
)

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
    with output_lock(cfg.output_dir):  # one run per folder: a second one started on it fails at once
        return _train(cfg, data, extra_card_info)


def _train(cfg: Config, data: LabelledData | None, extra_card_info: dict | None) -> TrainResult:
    if cfg.multitask.label_columns:
        from hftl.multitask import check_multitask

        check_multitask(cfg)
    # Starting from an hftl output (e.g. a masked-LM adaptation run): the card records that chain.
    extra_card_info = chain_card_info(cfg, extra_card_info)
    if cfg.task in ("causal_lm", "masked_lm"):
        return train_language_model(cfg, extra_card_info)
    if cfg.task == "image_captioning":
        from hftl.captioning import train_captioner

        return train_captioner(cfg, extra_card_info)
    if cfg.task == "simclr":
        from hftl.contrastive import train_simclr

        return train_simclr(cfg, extra_card_info)
    from hftl.trainer import Trainer, classification_loss

    torch.manual_seed(cfg.train.seed)
    data = data or load_labelled_data(cfg.data, cfg.task, cfg.train.seed)
    logger.info("Data: %s", data.summary())
    model, ref = build_model(cfg, data.label_names)
    random_base = ref.source == "arch" and not cfg.model.init_from
    if cfg.strategy.name in ("lora", "linear_probe", "lp_ft", "partial", "gradual_unfreeze") and random_base:
        logger.warning("strategy %s on a randomly initialised %s: nothing pretrained is being transferred",
                       cfg.strategy.name, ref.describe())
    if cfg.strategy.name == "lora" and random_base:
        raise ConfigError(
            f"strategy.name=lora adapts pretrained weights, but model.id '{cfg.model.id}' has none (random init), "
            "and an adapter over random weights could not be reloaded. Give a pretrained model (Hub id or "
            "folder, or model.init_from), or use strategy.name=scratch."
        )
    report = getattr(model, "transfer_report", None)
    unfilled = [n for n in (report.kept if report else []) if n not in set(model.head_parameter_names())]
    if cfg.strategy.name == "lora" and ref.source == "arch" and unfilled:
        raise ConfigError(
            f"strategy.name=lora freezes the base weights, but {len(unfilled)} of them ({', '.join(unfilled[:3])}, ...) "
            f"did not come from model.init_from '{cfg.model.init_from}': they would be drawn anew when the adapter "
            "is reloaded. Use strategy.name=finetune, or a source that fills them."
        )
    strategy = get_strategy(cfg.strategy)
    if cfg.multitask.label_columns:  # the tasks' classes come from the data; the heads then join the model
        from hftl.multitask import MultiTaskModel, add_task_labels, multitask_loss

        train_ds, eval_ds, collate = build_datasets(cfg, model, data)
        model = strategy.prepare(MultiTaskModel(model, add_task_labels(cfg, data, train_ds, eval_ds)))
    else:
        model = strategy.prepare(model)
        train_ds, eval_ds, collate = build_datasets(cfg, model, data)

    trained, train_cfg, probe = model, cfg.train, None
    solved = cfg.strategy.name == "lp_ft" or (cfg.strategy.name == "linear_probe" and cfg.strategy.probe_solver == "lbfgs")
    if cfg.strategy.name == "linear_probe" and cfg.strategy.cache_features:
        trained, probe_train, probe_eval, collate_ = _cached_probe(cfg, model, data, train_ds, eval_ds)
        if solved:  # a convex problem: solved on the features, then scored by the trainer (0 epochs)
            probe = solve_heads(cfg, model, probe_train.features, probe_train.labels, data.regression)
            train_cfg = dataclasses.replace(train_cfg, epochs=0)
        train_ds, eval_ds, collate = probe_train, probe_eval, collate_
    elif cfg.strategy.name == "lp_ft":  # LP-FT: the probe solved on the frozen features first, then all of it trains
        _, probe_train, _, _ = _cached_probe(cfg, model, data, train_ds, eval_ds, validation=False)
        probe = solve_heads(cfg, model, probe_train.features, probe_train.labels, data.regression)
    if probe is not None:
        strategy.probe = probe
    loss_fn = classification_loss
    if cfg.multitask.label_columns:
        loss_fn = multitask_loss(model.slices, cfg.multitask.weights or [1.0] * len(model.slices))
    if cfg.distill.teacher:
        from hftl.distill import WithTeacher, distillation_loss, teacher_logits

        logits, teacher_info = teacher_logits(cfg, data, cfg.train.progress)
        train_ds = WithTeacher(train_ds, logits)
        collate, loss_fn = train_ds.collate, distillation_loss(cfg.distill.temperature, cfg.distill.alpha)
        extra_card_info = {**(extra_card_info or {}), "distillation": teacher_info}
    trainer = Trainer(train_cfg, trained, train_ds, eval_ds, output_dir=cfg.output_dir, strategy=strategy,
                      loss_fn=loss_fn, metrics=metrics_for_task(cfg.task), collate_fn=collate,
                      run_config=cfg.to_dict())
    trainer.num_workers = cfg.data.num_workers
    trainer.tasks = getattr(model, "slices", None)  # multi-task: per-task metrics (also for a cached probe's head)
    metrics = trainer.fit()
    if trainer.accelerator.is_main_process:
        write_outputs(cfg, model, ref, data, strategy, trainer, metrics, extra_card_info)
    return TrainResult(Path(cfg.output_dir), metrics, trainer.history)


def solve_heads(cfg: Config, model, features: torch.Tensor, labels: torch.Tensor, regression: bool) -> dict:
    """Solve the model's head(s) on training features (see hftl.probe); multi-task: one probe per task.

    Example:
        >>> info = solve_heads(cfg, model, train_features, train_labels, regression=False)  # doctest: +SKIP
    """
    from hftl.probe import DEFAULT_GRID, solve_probe

    grid = list(cfg.strategy.probe_l2) or DEFAULT_GRID
    tasks = getattr(model, "slices", None)
    if tasks:
        heads = [model.multi_head.first, *model.multi_head.others.values()]
        return {"tasks": {name: solve_probe(head, features, labels[:, i], grid=grid, seed=cfg.train.seed)
                          for i, ((name, _), head) in enumerate(zip(tasks, heads))}}
    return solve_probe(model.head, features, labels, regression=regression, grid=grid, seed=cfg.train.seed)


def _cached_probe(cfg: Config, model, data: LabelledData, train_ds, eval_ds, validation: bool = True):
    """Swap the backbone for cached features: the head trains on tensors, E epochs cost one backbone pass.

    ``validation=False``: only the training features (LP-FT solves its head on them, then trains the model).
    """
    from accelerate import PartialState

    from hftl.features import FeatureDataset, HeadOnly, cached_features

    if cfg.data.augment and cfg.task in ("image_classification", "audio_classification"):
        logger.info("linear_probe caches features of the un-augmented inputs (augmentation would defeat the cache)")
    # The cached features are those of the eval transform: a random crop per epoch cannot be cached.
    if cfg.task == "image_classification":
        plain_train = ImageDataset(data.train, model.transform(train=False), cfg.train.seed, random=False)
    else:  # audio: clips cropped at the start, not at a random window
        plain_train = train_ds.without_augmentation() if hasattr(train_ds, "without_augmentation") else train_ds
    state = PartialState()
    with state.main_process_first():  # rank 0 fills the cache; the others then read it
        fingerprint = model.fingerprint()  # hashes every backbone weight: once, not per split
        batch = cfg.train.per_device_batch_size  # evaluation batches are made up the same way (padding)
        tr_x, tr_y, _ = cached_features(model, plain_train, data.fingerprint, "train", cfg.train.progress,
                                        fingerprint=fingerprint, batch_size=batch)
        if not validation:
            return None, FeatureDataset(tr_x, tr_y), None, None
        va_x, va_y, _ = cached_features(model, eval_ds, data.fingerprint, "validation", cfg.train.progress,
                                        fingerprint=fingerprint, batch_size=batch)
    return HeadOnly(model.head), FeatureDataset(tr_x, tr_y), FeatureDataset(va_x, va_y), None


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

def _load_images(paths: list[str | Path], transform) -> torch.Tensor:
    from PIL import Image

    images = []
    for p in paths:
        try:
            with Image.open(p) as img:
                images.append(transform(to_rgb(img)))
        except FileNotFoundError as e:
            raise DataError(f"Image '{p}' does not exist.") from e
        except Exception as e:
            raise DataError(f"'{p}' could not be read as an image: {e}") from e
    return torch.stack(images)


@torch.inference_mode()
def predict(model_or_folder, inputs: list, top_k: int = 3) -> list[list[tuple[str, float]]]:
    """Top-k (label, probability) for each input: image or audio file paths, or strings for text.

    A text_regression model gives one pair per input: (its target's name, the predicted value).

    Example:
        >>> predict("outputs/run", ["img1.png"], top_k=2)  # doctest: +SKIP
        [[('7', 0.91), ('1', 0.05)]]
    """
    model = load(model_or_folder) if isinstance(model_or_folder, (str, Path)) else model_or_folder
    model.eval()
    if getattr(model, "kind", None) in ("causal", "masked"):
        raise ConfigError(f"'{model_or_folder}' is a language model, not a classifier: use `hftl generate` "
                          "(causal LMs), or fine-tune it for classification first (task text_classification).")
    if getattr(model, "kind", None) == "captioner":
        raise ConfigError(f"'{model_or_folder}' is an image captioner: use hftl.caption (the CLI's `hftl predict` "
                          "prints captions for it).")
    if not model.label_names:
        raise ConfigError(f"'{model_or_folder}' has no classes (a self-supervised encoder): train a classifier from "
                          "it first (task image_classification with model.id set to it).")
    if model.modality == "image":
        batch = {"pixel_values": _load_images(inputs, model.transform(train=False))}
    elif model.modality == "audio":
        from hftl.audio import fit_length, read_audio

        rate, seconds = model.sampling_rate, model.max_duration or 10.0
        batch = model.encode_audio([fit_length(read_audio(p, rate, max_seconds=seconds), int(seconds * rate))
                                    for p in inputs])
    else:
        batch = model.encode_texts(list(inputs))
    logits = model(batch).float()
    if getattr(model, "is_regression", False):
        return [[(model.label_names[0], float(v))] for v in logits[:, 0].tolist()]
    probs = logits.softmax(-1)
    k = min(top_k, probs.shape[-1])
    values, indices = probs.topk(k, dim=-1)
    return [[(model.label_names[i], float(v)) for v, i in zip(vs.tolist(), ix.tolist())]
            for vs, ix in zip(values, indices)]


# Overrides that name other data than the run's: hftl.evaluate then scores all of it.
OTHER_DATA_KEYS = {"data.id", "data.train_split", "data.validation_split", "data.config_name", "data.revision"}


@torch.inference_mode()
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
    from hftl.trainer import classification_loss

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
    if cfg.task == "simclr":
        raise ConfigError(f"'{folder}' is a self-supervised encoder (task simclr): it has no task to score. Probe or "
                          "fine-tune it (task image_classification, model.id set to it) and evaluate that run.")
    model = load(folder, trust_remote_code=cfg.model.trust_remote_code, allow_pickle=cfg.model.allow_pickle)
    model.eval()
    if cfg.task == "image_captioning":
        from hftl.captioning import caption_datasets, caption_loss, load_caption_data

        _, eval_ds, collate = caption_datasets(cfg, model, load_caption_data(cfg.data, cfg.train.seed))
        return _evaluate_batches(model, eval_ds, collate, caption_loss, ("perplexity",), cfg.train.per_device_batch_size)
    if cfg.task in ("causal_lm", "masked_lm"):
        _, eval_ds, _ = lm_datasets(cfg, model, whole=whole)
        model.set_max_length(cfg.data.block_size)
        loss_fn = causal_lm_loss if cfg.task == "causal_lm" else masked_lm_loss
        return _evaluate_batches(model, eval_ds, None, loss_fn, ("perplexity",), cfg.train.per_device_batch_size)
    data = load_labelled_data(cfg.data, cfg.task, cfg.train.seed, whole=whole)
    if not data.regression and list(data.label_names) != list(meta["label_names"]):
        raise DataError(f"The data's classes {data.label_names} differ from the model's {meta['label_names']}.")
    _, eval_ds, collate = build_datasets(cfg, model, data)
    return _evaluate_batches(model, eval_ds, collate, classification_loss, metrics_for_task(cfg.task),
                             cfg.train.per_device_batch_size)


def _user_flag(overrides: list[str] | None, key: str) -> bool:
    """Whether the user's own overrides set a boolean ``key`` to true."""
    from hftl.config import parse_overrides

    node = parse_overrides([o for o in overrides or [] if o.startswith(f"{key}=")])
    for part in key.split("."):
        node = node.get(part, {}) if isinstance(node, dict) else {}
    return node is True


def _evaluate_batches(model, dataset, collate, loss_fn, metric_names, batch_size: int) -> dict:
    """Mean loss (weighted by each batch's label count, as the trainer does) and the named metrics over a dataset."""
    from hftl.metrics import compute_metrics, perplexity

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate)
    preds, refs, loss_sum, count = [], [], 0.0, 0
    for batch in loader:
        logits = model(batch)
        labels = batch["labels"]
        n = int((labels != -100).sum())  # scored positions, as the trainer counts them: its loss is reproduced
        loss_sum += loss_fn(logits, batch).item() * n
        count += n
        if "regression" in metric_names:
            preds += logits.float()[:, 0].tolist()
            refs += labels.tolist()
        elif "perplexity" not in metric_names:
            preds += logits.argmax(-1).tolist()
            refs += labels.tolist()
    out = {"loss": loss_sum / max(1, count)}
    if "perplexity" in metric_names:
        return {**out, "perplexity": perplexity(out["loss"]), "examples": len(dataset)}
    return {**out, **compute_metrics(metric_names, preds, refs), "examples": len(refs)}
