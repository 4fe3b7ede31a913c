"""Images in: check image files, read a folder of class subfolders, decode to RGB, and batch them for a model.

A folder ``root/<class>/<image files>`` is read here, its corrupt files skipped and counted (never
a crash mid-epoch); :func:`to_rgb` makes an 8-bit RGB copy of any PIL image (16-bit and float
images scaled, not clipped); :class:`ImageDataset` decodes and transforms examples with randomness
drawn from (seed, epoch, index) alone (:func:`seeded_rng`), so resumed runs and workers see the same
augmentation. :mod:`hftl.data` loads the labelled data these read; :mod:`hftl.audio` is the same for
audio.

Example:
    >>> ds = ImageDataset(data.train, model.transform(train=True), seed=0)  # doctest: +SKIP
    >>> ds[0]["pixel_values"].shape  # doctest: +SKIP
    torch.Size([3, 224, 224])
"""

from __future__ import annotations

import contextlib
import logging
import random
from pathlib import Path

import numpy as np
import torch

from hftl.errors import DataError

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def _verify_image(path: Path) -> bool:
    """Whether ``path`` decodes as an image, in full (a truncated file does not)."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            img.verify()
        with Image.open(path) as img:  # verify() misses truncated data; a full decode does not
            img.load()
        return True
    except Exception:
        return False


def _image_folder(root: Path):
    """(paths, labels, class names, corrupt count) of a folder with one subfolder of images per class."""
    if not root.is_dir():
        raise DataError(f"Image folder '{root}' does not exist. Check data.id.")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise DataError(
            f"Image folder '{root}' has no class subfolders. Expected one subfolder per class: "
            f"{root}/<class_name>/<image files>."
        )
    paths, labels, corrupt = [], [], 0
    for index, name in enumerate(classes):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            if not _verify_image(path):
                logger.warning("Skipping corrupt image %s", path)
                corrupt += 1
                continue
            paths.append(str(path))
            labels.append(index)
    if not paths:
        raise DataError(
            f"Image folder '{root}' holds no readable images ({corrupt} corrupt) in its class subfolders "
            f"({', '.join(classes)}). Supported extensions: {', '.join(sorted(IMAGE_EXTENSIONS))}."
        )
    return paths, labels, classes, corrupt


def check_patch_grid(image_size: int, patch_size: int) -> None:
    """One clear error for an input size that a ViT's patches cannot tile (smaller than a patch, or not a multiple).

    Example:
        >>> check_patch_grid(32, 8)
        >>> check_patch_grid(8, 16)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        hftl.errors.ConfigError: data.image_size 8 is smaller than the model's patch size 16: ...
    """
    from hftl.errors import ConfigError

    size, patch = int(image_size), int(patch_size)
    if size < patch:
        raise ConfigError(f"data.image_size {size} is smaller than the model's patch size {patch}: the image would "
                          f"hold no patch. Set data.image_size to a multiple of {patch} (e.g. {patch * 4}).")
    if size % patch:
        low, high = size // patch * patch, (size // patch + 1) * patch
        raise ConfigError(f"data.image_size {size} is not a multiple of the model's patch size {patch} (the "
                          f"patches must tile the image). Use {low} or {high}.")


# ------------------------------------------------------------------------------ torch-side datasets

def to_rgb(image):
    """An 8-bit RGB copy of any PIL image: 16-bit and float images are scaled, not clipped.

    ``convert("RGB")`` clips a 16-bit PNG (values to 65535) to white and maps a float TIFF (values in
    0..1) to black; scientific and medical images often come this way.

    Example:
        >>> to_rgb(Image.open("scan16.png")).mode  # doctest: +SKIP
        'RGB'
    """
    from PIL import Image

    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float32)
        if image.mode == "F":
            top = 1.0 if np.nanmax(values, initial=0.0) <= 1.0 else 255.0
        else:  # 16-bit (or 32-bit integer holding 16-bit data, as PIL opens many PNGs)
            top = 65535.0 if np.nanmax(values, initial=0.0) > 255 else 255.0
        values = np.nan_to_num(values * (255.0 / top)).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(values, mode="L")
    return image.convert("RGB")


@contextlib.contextmanager
def seeded_rng(seed: int):
    """Run a block under its own torch and Python RNG seed, leaving the global states untouched."""
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        random.seed(seed)
        try:
            yield
        finally:
            random.setstate(state)


class ImageDataset(torch.utils.data.Dataset):
    """Decodes images and applies a transform whose randomness depends only on (seed, epoch, index).

    That makes augmentation identical whether the run is resumed, the data loader prefetches, or
    workers are used: the global RNG is never consumed by data loading.
    """

    def __init__(self, hf_dataset, transform, seed: int = 0, random: bool = True):
        self.ds = hf_dataset
        self.transform = transform
        self.seed = seed
        self.random = random
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        try:
            example = self.ds[int(index)]
            image = to_rgb(example["image"])
        except Exception as e:
            raise DataError(f"Example {index} of the data could not be decoded as an image: {e}") from e
        if self.random:
            with seeded_rng(hash((self.seed, self.epoch, int(index))) & 0x7FFF_FFFF):
                pixels = self.transform(image)
        else:
            pixels = self.transform(image)
        label = example["label"]  # a class index, or a multi-label row of 0/1 floats
        return {"pixel_values": pixels,
                "labels": torch.tensor(label, dtype=torch.float32) if isinstance(label, list) else int(label)}


class SeededImages(torch.utils.data.Dataset):
    """Images of a ``datasets.Dataset`` whose random draws depend only on (seed, epoch, index).

    Resumed runs and worker processes then see the same draws; evaluation (``random=False``) keeps
    epoch 0's. Subclasses draw inside ``seeded_rng(self.draw_seed(index, ...))``.
    """

    def __init__(self, hf_dataset, transform, seed: int, random: bool = True):
        self.ds, self.transform, self.seed, self.random, self.epoch = hf_dataset, transform, seed, random, 0

    def __len__(self) -> int:
        return len(self.ds)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def image(self, index: int):
        try:
            return to_rgb(self.ds[int(index)]["image"])
        except Exception as e:
            raise DataError(f"Example {index} of the data could not be decoded as an image: {e}") from e

    def draw_seed(self, index: int, *extra: int) -> int:
        # Ints only in the tuple: their hash is the same in every process (a str's is salted per process).
        return hash((self.seed, self.epoch if self.random else 0, int(index), *extra)) & 0x7FFF_FFFF
