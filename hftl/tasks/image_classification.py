"""Image classification: a timm backbone with a new head, on an image folder, a CSV, a Hub dataset or a built-in set.

Example:
    >>> hftl.train(None, ["task=image_classification", "model.id=timm/resnet18.a1_in1k", "data.id=builtin:digits"])  # doctest: +SKIP
"""

from __future__ import annotations

import torch

from hftl.errors import DataError
from hftl.tasks.base import LabelledTask, library_error


class ImageClassification(LabelledTask):
    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.timm_vision import TimmModel

        if ref.library != "timm":
            raise library_error(self.name, ref, "timm", "a timm id (timm/resnet18.a1_in1k) or timm:<architecture>")
        return TimmModel.create(ref, label_names, pretrained=pretrained, **kwargs)

    def model_kwargs(self, cfg) -> dict:
        return {**dict(cfg.model.kwargs), "image_size": cfg.data.image_size}  # timm runs no remote code

    def datasets(self, cfg, model, data, whole: bool = False):
        from hftl.images import ImageDataset

        train = ImageDataset(data.train, model.transform(train=True, augment=cfg.data.augment), cfg.train.seed,
                             random=cfg.data.augment)
        validation = ImageDataset(data.validation, model.transform(train=False), cfg.train.seed, random=False)
        return train, validation, None

    def plain_train_dataset(self, cfg, model, data, train_ds):
        from hftl.images import ImageDataset

        # The eval transform: a random crop per epoch cannot be cached.
        return ImageDataset(data.train, model.transform(train=False), cfg.train.seed, random=False)

    def encode(self, model, inputs: list) -> dict:
        return {"pixel_values": load_images(inputs, model.transform(train=False))}

    def export_inputs(self, model, batch_size: int = 2) -> tuple[dict, dict]:
        size = model.data_config()["input_size"]  # what the eval transform makes: (3, H, W)
        gen = torch.Generator().manual_seed(batch_size)
        return {"pixel_values": torch.randn(batch_size, *size, generator=gen)}, {"pixel_values": {0: "batch"}}


def load_images(paths: list, transform) -> torch.Tensor:
    """Image files (or PIL images), each transformed, as one batch tensor; a missing or unreadable file is a DataError."""
    from PIL import Image

    from hftl.images import to_rgb

    images = []
    for p in paths:
        if isinstance(p, Image.Image):
            images.append(transform(to_rgb(p)))
            continue
        try:
            with Image.open(p) as img:
                images.append(transform(to_rgb(img)))
        except FileNotFoundError as e:
            raise DataError(f"Image '{p}' does not exist.") from e
        except Exception as e:
            raise DataError(f"'{p}' could not be read as an image: {e}") from e
    return torch.stack(images)
