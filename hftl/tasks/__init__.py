"""One module per task, each a :class:`hftl.tasks.base.Task`: the hooks the one run path calls.

- ``image_classification``: timm backbones on images;
- ``text_classification`` (and ``text_regression``): transformers encoders on texts or pairs;
- ``audio_classification``: transformers audio encoders on clips;
- ``language_model``: ``causal_lm`` and ``masked_lm`` on documents packed into blocks;
- ``image_captioning``: a vision encoder joined to a text decoder;
- ``simclr``: contrastive self-supervised pretraining of an image encoder;
- ``masked_image``: self-supervised pretraining of a ViT encoder by inpainting (MAE).

A new task is a Task subclass plus a :func:`hftl.registry.register_task` entry naming it
(``implementation=``); config validation, metrics, cards, studies and the CLI then accept it.

Example:
    >>> from hftl.tasks import get_task_impl
    >>> get_task_impl("masked_lm").name  # doctest: +SKIP
    'masked_lm'
"""

from __future__ import annotations

import importlib

from hftl.registry import get_task
from hftl.tasks.base import LabelledTask, Task

__all__ = ["LabelledTask", "Task", "get_task_impl"]


def get_task_impl(name: str) -> Task:
    """The Task object that runs the registered task ``name`` (an unknown name: one ConfigError listing the known)."""
    spec = get_task(name)
    impl = spec.implementation
    if isinstance(impl, str):
        module, _, attr = impl.partition(":")
        impl = getattr(importlib.import_module(module), attr)
    if not (isinstance(impl, type) and issubclass(impl, Task)):
        raise TypeError(f"Task '{name}': its implementation {impl!r} is not a hftl.tasks.base.Task subclass.")
    return impl(spec)
