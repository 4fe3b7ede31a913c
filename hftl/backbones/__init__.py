"""Backbone adapters, one per source library, all speaking :class:`TransferModel`.

Example:
    >>> from hftl.backbones import create_model
    >>> model = create_model("timm:resnet18", ["a", "b"], image_size=32)  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path

from hftl.backbones.base import TransferModel
from hftl.errors import ConfigError
from hftl.refs import ModelRef, resolve_model

__all__ = ["TransferModel", "create_model", "create_from_ref"]


def create_from_ref(ref: ModelRef, task: str, label_names: list[str], *, pretrained: bool = True,
                    **kwargs) -> TransferModel:
    """Build the task's model from a resolved reference, with its head sized to ``label_names``.

    Which adapter builds it is the task's to say (``Task.create_model`` in hftl.tasks).
    """
    from hftl.tasks import get_task_impl

    return get_task_impl(task).create_model(ref, label_names, pretrained=pretrained, **kwargs)


def create_model(model_id: str, label_names: list[str], *, task: str = "image_classification",
                 revision: str | None = None, pretrained: bool = True, allow_pickle: bool = False,
                 image_size: int | None = None, arch: str | None = None, **kwargs) -> TransferModel:
    """Resolve ``model_id`` (Hub id, folder, ``timm:<arch>``, or a state_dict file with ``arch``) and build the task's model."""
    ref = resolve_model(model_id, revision=revision, allow_pickle=allow_pickle, arch=arch)
    if image_size is not None:
        kwargs["image_size"] = image_size
    return create_from_ref(ref, task, label_names, pretrained=pretrained, **kwargs)


def load_output(folder: str | Path, trust_remote_code: bool = False) -> TransferModel:
    """Load a model from a folder hftl wrote (native library layout).

    ``trust_remote_code`` comes from the caller (the user's flag), never from the folder itself.
    """
    from hftl.refs import detect_library

    folder = Path(folder)
    library = detect_library(folder)
    if library == "timm":
        from hftl.backbones.timm_vision import TimmModel

        return TimmModel.from_output(folder)
    if library == "transformers":
        task = _transformers_task(folder)
        if task == "image_captioning":
            from hftl.backbones.hf_captioning import ImageCaptioner

            return ImageCaptioner.from_output(folder, trust_remote_code)
        if task == "masked_image":
            from hftl.backbones.hf_masked_image import MaskedAutoencoder

            return MaskedAutoencoder.from_output(folder)
        if task == "audio_classification":
            from hftl.backbones.hf_audio import AudioClassifier

            return AudioClassifier.from_output(folder, trust_remote_code)
        from hftl.backbones.hf_text import load_transformers_output

        return load_transformers_output(folder, trust_remote_code)
    raise ConfigError(f"Loading {library} outputs is not supported yet ({folder}).")


def _transformers_task(folder: Path) -> str | None:
    """The task hftl.json records; for a plain save_pretrained folder, captioner or audio model by its model type."""
    import json

    meta = folder / "hftl.json"
    if meta.is_file():
        return json.loads(meta.read_text()).get("task")
    from transformers.models.auto.modeling_auto import MODEL_FOR_AUDIO_CLASSIFICATION_MAPPING_NAMES as AUDIO

    config = folder / "config.json"
    model_type = json.loads(config.read_text()).get("model_type") if config.is_file() else None
    if model_type == "vision-encoder-decoder":
        return "image_captioning"
    if model_type in AUDIO and (folder / "preprocessor_config.json").is_file():
        architectures = json.loads(config.read_text()).get("architectures") or []
        if not any(a.endswith(("ForAudioClassification", "ForSequenceClassification")) for a in architectures):
            raise ConfigError(f"'{folder}' holds an audio model without a classification head "
                              f"({', '.join(architectures) or 'no architectures'}): train a classifier from it "
                              "(task audio_classification, model.id set to it).")
        return "audio_classification"
    return None  # hf_text tells text classifiers and language models apart by their architectures
