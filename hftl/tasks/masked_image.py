"""Masked image modelling: self-supervised pretraining by inpainting (MAE), then classification from the encoder.

``task: masked_image`` hides ``masked_image.mask_ratio`` (0.75) of each image's patches from a ViT
encoder and trains a small decoder to reconstruct their pixels (He et al., 2022), with transformers'
``ViTMAEForPreTraining`` as its ``examples/pytorch/image-pretraining/run_mae.py`` runs it: the
loss on the masked patches with ``norm_pix_loss``, random resized crops of 20-100% of the image and
flips, normalised with the image processor's mean and std. Labels are not read: ``data.id`` is any
image source hftl reads, or a plain folder of images. The mask of each image is drawn, with its
crop, from (seed, epoch, index), so a resumed run masks exactly as an uninterrupted one; the
held-out loss uses epoch 0's masks every epoch, so epochs compare.

The output folder holds the encoder in transformers' ViT layout (``ViTForImageClassification.
from_pretrained(out)``; a timm ViT of the same shape starts from it with ``model.init_from=out``,
and that run's card records this one) and the whole masked autoencoder in ``mae/``.
``hftl predict out image.png`` writes ``image.inpainting.png``: the masked input, the reconstruction
and the original side by side. ``hftl eval out`` reports the held-out loss.

Example:
    >>> hftl.train("recipes/configs/masked_image/vit_mae_base_finetune.yaml")  # doctest: +SKIP
    >>> hftl.predict("outputs/vit_mae_base_finetune", ["photo.png"])  # doctest: +SKIP
    ['photo.inpainting.png']
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import torch

from hftl.config import Config
from hftl.data import LabelledData
from hftl.errors import ConfigError
from hftl.images import SeededImages, seeded_rng
from hftl.tasks.base import Task, library_error

logger = logging.getLogger(__name__)

PNG_SUFFIX = ".inpainting.png"
MIN_PANEL = 128  # pixels: smaller panels are enlarged (nearest neighbour) so that the patches can be seen


class MaskedImages(SeededImages):
    """Each image transformed and its mask noise drawn from (seed, epoch, index); evaluation keeps epoch 0's.

    Example:
        >>> ds = MaskedImages(data.train, model.transform(train=True), seed=42, num_patches=16)  # doctest: +SKIP
        >>> ds[0]["noise"].shape  # doctest: +SKIP
        torch.Size([16])
    """

    def __init__(self, hf_dataset, transform, seed: int, num_patches: int, random: bool = True):
        super().__init__(hf_dataset, transform, seed, random)
        self.num_patches = num_patches

    def __getitem__(self, index: int) -> dict:
        image = self.image(index)
        with seeded_rng(self.draw_seed(index)):
            pixels = self.transform(image)
            noise = torch.rand(self.num_patches)  # ViTMAE keeps the patches with the lowest noise
        return {"pixel_values": pixels, "noise": noise, "labels": torch.tensor(0)}


def mae_loss(loss: torch.Tensor, batch: dict) -> torch.Tensor:
    """The model's forward already is ViTMAE's loss (its own code, so hftl's number is transformers' number)."""
    return loss


class MaskedImage(Task):
    """Inpainting pretraining: the metric is the held-out reconstruction loss; the output is the encoder (+ mae/)."""

    def load_data(self, cfg: Config, whole: bool = False) -> LabelledData:
        from hftl.tasks.simclr import load_unlabelled_images

        data = dataclasses.replace(load_unlabelled_images(cfg), label_names=[])  # the encoder predicts no classes
        if whole:  # other data to score (hftl eval data.id=...): every image of it
            import datasets

            data = dataclasses.replace(data, validation=datasets.concatenate_datasets([data.train, data.validation]))
        return data

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_masked_image import MaskedAutoencoder

        if ref.library != "transformers":
            raise library_error(self.name, ref, "transformers ViT / ViTMAE",
                                "facebook/vit-mae-base, google/vit-base-patch16-224-in21k or a folder with a ViTMAE "
                                "config (strategy.name=scratch)")
        return MaskedAutoencoder.create(ref, pretrained=pretrained, **kwargs)

    def model_kwargs(self, cfg: Config) -> dict:
        m = cfg.masked_image
        return {**super().model_kwargs(cfg), "image_size": cfg.data.image_size, "mask_ratio": m.mask_ratio,
                "norm_pix_loss": m.norm_pix_loss}

    def datasets(self, cfg: Config, model, data, whole: bool = False):
        seed, patches = cfg.train.seed, model.num_patches
        train = MaskedImages(data.train, model.transform(train=cfg.data.augment), seed, patches, random=True)
        held_out = MaskedImages(data.validation, model.transform(train=False), seed, patches, random=False)
        logger.info("masked_image on %s: %d train / %d held-out images, %d patches, %.0f%% masked", data.source,
                    len(train), len(held_out), patches, 100 * model.config.mask_ratio)
        return train, held_out, None

    def loss(self, cfg: Config):
        return mae_loss

    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        c = model.config
        rows = {
            "Masking": f"{c.mask_ratio:.0%} of {model.num_patches} patches ({c.patch_size} px) of {c.image_size}-px "
                       f"images; loss on the masked patches, {'per-patch normalised pixels' if c.norm_pix_loss else 'pixels'}",
            "Started from": model.load_summary,
            "Outputs": "the encoder in transformers' ViT layout (`ViTForImageClassification.from_pretrained`); the "
                       "masked autoencoder in `mae/` (`ViTMAEForPreTraining`); `hftl predict <folder> image.png` "
                       f"writes the inpainting as image{PNG_SUFFIX}",
            "A timm classifier from it": f"`hftl train <config> task=image_classification {model.timm_equivalent()} "
                                         "model.pretrained=false model.init_from=<this folder>`",
        }
        return {**super().card_facts(cfg, model, data, train_ds, eval_ds), "num_labels": "no (self-supervised)",
                "task_rows": rows}

    def predict(self, model, inputs: list, top_k: int = 3) -> list[str]:
        """The PNG written beside each input (see :func:`inpaint`)."""
        return [str(p) for p in inpaint(model, inputs)]


@torch.inference_mode()
def inpaint(model, inputs: list, output_dir: str | Path | None = None, seed: int = 0) -> list[Path]:
    """For each image, a PNG of the masked input, the reconstruction and the original side by side; returns the paths.

    Written beside each input as ``<name>.inpainting.png`` (into ``output_dir`` when given). The masks
    are drawn from ``seed``: the same call draws the same picture.

    Example:
        >>> inpaint(hftl.load("outputs/mae_digits"), ["digit.png"])  # doctest: +SKIP
        [PosixPath('digit.inpainting.png')]
    """
    from PIL import Image

    from hftl.tasks.image_classification import load_images

    if getattr(model, "kind", None) != "masked_image":
        raise ConfigError("This model is not a masked autoencoder (task masked_image): it draws no inpainting.")
    targets = _png_paths(inputs, output_dir)
    pixels = load_images(list(inputs), model.transform(train=False))
    noise = torch.rand(len(pixels), model.num_patches, generator=torch.Generator().manual_seed(seed))
    panels = model.reconstruct(pixels, noise)  # (batch, 3, channels, H, W) in [0, 1]
    scale = max(1, MIN_PANEL // model.image_size)
    for picture, target in zip(panels, targets):
        strip = torch.cat(list(picture), dim=-1)  # masked | reconstruction | original
        array = (strip.permute(1, 2, 0).cpu().numpy() * 255).round().astype("uint8")
        image = Image.fromarray(array)
        image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.tmp")
        image.save(partial, format="PNG")
        os.replace(partial, target)  # never a half-written picture under the final name
    return targets


def _png_paths(inputs: list, output_dir: str | Path | None) -> list[Path]:
    """Where each input's picture goes; two inputs with one name in one folder get numbered ones."""
    paths: list[Path] = []
    for i, item in enumerate(inputs):
        if not isinstance(item, (str, Path)):
            if output_dir is None:
                raise ConfigError("An image given as a PIL image has no folder to write beside: pass output_dir.")
            name = f"image{i}"
        else:
            name = Path(item).stem
        folder = Path(output_dir) if output_dir is not None else Path(item).parent
        path = folder / f"{name}{PNG_SUFFIX}"
        if path in paths:
            path = folder / f"{name}-{i}{PNG_SUFFIX}"
        paths.append(path)
    return paths
