"""Self-supervised pretraining of an image encoder on unlabelled images (SimCLR), then fine-tuning.

``task: simclr`` trains a timm backbone so that two random augmentations of the same image map
close together and other images far apart (Chen et al., 2020: NT-Xent loss over a projection
head). Labels are not read: ``data.id`` may be any image source hftl reads, or a plain folder of
images with no class subfolders. The output is the backbone alone in timm's layout (the projection
head is dropped, as the paper does), so an ``image_classification`` run starts from it with
``model.id=<output>``; that run's model card records the chain.

Each view's augmentation (random resized crop, flip, colour jitter, grayscale, blur, on the
backbone's own input size and normalisation) is drawn from (seed, epoch, index, view), so resumed
runs see the same views. Negatives are the other images of the same per-process batch.

Example:
    >>> hftl.train("recipes/configs/simclr/resnet18_digits.yaml")  # doctest: +SKIP
    >>> hftl.train("recipes/configs/image_classification/resnet18_linear_probe.yaml",
    ...            ["model.id=outputs/simclr_resnet18_digits"])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hftl.backbones.base import TransferModel
from hftl.config import Config
from hftl.data import LabelledData
from hftl.errors import ConfigError, DataError
from hftl.images import IMAGE_EXTENSIONS, SeededImages, _verify_image, seeded_rng
from hftl.tasks.base import Task

logger = logging.getLogger(__name__)


def nt_xent_loss(temperature: float):
    """``loss_fn(z, batch)`` for ``z`` = projections of view 1 then view 2 (2N rows): each row's positive is its pair.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])  # the views agree
        >>> round(nt_xent_loss(0.1)(z, {}).item(), 4)
        0.0001
    """

    def loss_fn(z: torch.Tensor, batch: dict) -> torch.Tensor:
        z = F.normalize(z.float(), dim=-1)
        n = z.shape[0] // 2
        similarity = z @ z.T / temperature
        similarity = similarity.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
        positives = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
        return F.cross_entropy(similarity, positives)

    return loss_fn


class SimCLRModel(TransferModel):
    """A timm encoder with a projection MLP as its "head" (trained with the encoder, dropped on saving)."""

    library = "timm"
    modality = "image"

    def __init__(self, encoder, projection_dim: int):
        width = encoder.num_features
        projector = nn.Sequential(nn.Linear(width, width), nn.ReLU(inplace=True), nn.Linear(width, projection_dim))
        super().__init__(nn.ModuleDict({"encoder": encoder.net, "projector": projector}))
        # The TimmModel (its groups, preprocessing, saving) shares net["encoder"]; kept out of the module
        # tree so that its weights are not registered, and checkpointed, twice.
        object.__setattr__(self, "encoder", encoder)

    @property
    def head(self) -> nn.Module:
        return self.net["projector"]

    @property
    def head_name(self) -> str:
        return "projector"

    @property
    def num_features(self) -> int:
        return self.encoder.num_features

    def layer_groups(self) -> list[list[str]]:
        return [[f"encoder.{n}" for n in group] for group in self.encoder.layer_groups()]

    def forward_features(self, batch: dict) -> torch.Tensor:
        return self.encoder.forward_features(batch)

    def forward(self, batch: dict) -> torch.Tensor:
        """Projections of both views, view 1's rows first."""
        pixels = torch.cat([batch["view1"], batch["view2"]])
        return self.head(self.encoder.forward_features({"pixel_values": pixels}))

    def save(self, folder: str | Path) -> None:
        """The encoder alone, in timm's layout (``timm.create_model("local-dir:<folder>")`` loads it)."""
        self.encoder.save(folder)

    def fingerprint(self) -> str:
        return self.encoder.fingerprint()


def simclr_transform(data_config: dict):
    """SimCLR's augmentation at the backbone's input size and normalisation."""
    from torchvision import transforms as T

    size = data_config["input_size"][-1]
    blur = max(3, (size // 10) | 1)  # an odd kernel, about a tenth of the image
    return T.Compose([
        T.RandomResizedCrop(size, scale=(0.2, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        T.RandomApply([T.GaussianBlur(blur, sigma=(0.1, 2.0))], p=0.5),
        T.ToTensor(),
        T.Normalize(data_config["mean"], data_config["std"]),
    ])


class TwoViews(SeededImages):
    """Two augmented views of each image, drawn from (seed, epoch, index, view); evaluation keeps epoch 0's."""

    def __getitem__(self, index: int) -> dict:
        image = self.image(index)
        views = []
        for view in (1, 2):
            with seeded_rng(self.draw_seed(index, view)):
                views.append(self.transform(image))
        return {"view1": views[0], "view2": views[1], "labels": torch.tensor(0)}


def load_unlabelled_images(cfg: Config) -> LabelledData:
    """Images from any source hftl reads; a folder of images without class subfolders too (labels unused)."""
    import datasets

    from hftl.data import load_labelled_data

    root = Path(cfg.data.id)
    if root.is_dir() and not any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir()):
        files = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths = [str(p) for p in files if _verify_image(p)]
        if not paths:
            raise DataError(f"Folder '{root}' holds no readable images.")
        full = datasets.Dataset.from_dict({"image": paths, "label": [0] * len(paths)},
                                          features=datasets.Features({"image": datasets.Image(),
                                                                      "label": datasets.Value("int64")}))
        order = torch.randperm(len(full), generator=torch.Generator().manual_seed(cfg.train.seed)).tolist()
        n_val = max(1, round(len(full) * cfg.data.validation_fraction))
        skipped = {"corrupt image": len(files) - len(paths)} if len(files) > len(paths) else {}
        return LabelledData(full.select(sorted(order[n_val:])), full.select(sorted(order[:n_val])), ["unlabelled"],
                            str(root), f"flat:{root}:{len(paths)}", skipped)
    return load_labelled_data(cfg.data, "image_classification", cfg.train.seed)


class SimCLR(Task):
    """Contrastive pretraining: the metric is the held-out NT-Xent loss; the output is the encoder alone."""

    def load_data(self, cfg: Config, whole: bool = False) -> LabelledData:
        data = load_unlabelled_images(cfg)
        return dataclasses.replace(data, label_names=[])  # the encoder predicts no classes

    def build_model(self, cfg: Config, data):
        from hftl.backbones.timm_vision import TimmModel
        from hftl.refs import resolve_model

        ref = resolve_model(cfg.model.id, revision=cfg.model.revision, allow_pickle=cfg.model.allow_pickle)
        if ref.library != "timm":
            raise ConfigError(f"simclr pretrains timm image encoders; '{ref.describe()}' is a {ref.library} model.")
        encoder = TimmModel.create(ref, [], pretrained=cfg.model.pretrained and cfg.strategy.name != "scratch",
                                   image_size=cfg.data.image_size, **dict(cfg.model.kwargs))
        return SimCLRModel(encoder, cfg.contrastive.projection_dim), ref

    def datasets(self, cfg: Config, model, data, whole: bool = False):
        transform = simclr_transform(model.encoder.data_config())
        train_ds = TwoViews(data.train, transform, cfg.train.seed, random=True)
        eval_ds = TwoViews(data.validation, transform, cfg.train.seed, random=False)
        logger.info("simclr on %s: %d train / %d held-out images", data.source, len(train_ds), len(eval_ds))
        return train_ds, eval_ds, None

    def loss(self, cfg: Config):
        return nt_xent_loss(cfg.contrastive.temperature)

    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        return {**super().card_facts(cfg, model, data, train_ds, eval_ds), "num_labels": "no (self-supervised)"}

    def check_evaluable(self, folder) -> None:
        raise ConfigError(f"'{folder}' is a self-supervised encoder (task simclr): it has no task to score. Probe or "
                          "fine-tune it (task image_classification, model.id set to it) and evaluate that run.")

    def predict(self, model, inputs: list, top_k: int = 3) -> list:
        raise ConfigError("This model has no classes (a self-supervised encoder): train a classifier from it first "
                          "(task image_classification with model.id set to it).")
