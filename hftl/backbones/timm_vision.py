"""timm image models (ResNet, VGG, ViT, ... any timm architecture) behind hftl's interface."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from torch import nn

from hftl.backbones.base import TransferModel
from hftl.refs import ModelRef

SMALL_IMAGE = 64  # pixels: at this side and below, training augmentation is a mild random shift


class TimmModel(TransferModel):
    """A timm classifier whose head is sized to the data's labels.

    Example:
        >>> m = TimmModel.create(resolve_model("timm:resnet18"), ["cat", "dog"])  # doctest: +SKIP
        >>> m(dict(pixel_values=torch.randn(2, 3, 32, 32))).shape  # doctest: +SKIP
        torch.Size([2, 2])
    """

    library = "timm"
    modality = "image"

    @classmethod
    def create(cls, ref: ModelRef, label_names: list[str], pretrained: bool = True,
               image_size: int | None = None, **kwargs) -> TimmModel:
        import timm

        num_classes = len(label_names)
        if ref.source == "state_dict":
            return cls._from_state_dict(ref, label_names, pretrained, image_size, **kwargs)
        # local-dir: reads config.json (architecture, preprocessing) and model.safetensors; timm drops the
        # source classifier when num_classes differs, so the new head starts fresh.
        name, load = (ref.name, False) if ref.source == "arch" else (f"local-dir:{ref.path}", pretrained)
        net = timm.create_model(name, pretrained=load, num_classes=num_classes, **kwargs)
        patch_embed = getattr(net, "patch_embed", None)
        if image_size and "img_size" not in kwargs and patch_embed is not None and \
                tuple(getattr(patch_embed, "img_size", None) or ()) not in ((image_size, image_size), ()):
            # ViT-style models take one input size: build it for data.image_size (timm resamples the
            # pretrained position embeddings to the new patch grid).
            net = timm.create_model(name, pretrained=load, num_classes=num_classes, img_size=image_size, **kwargs)
        if image_size and patch_embed is not None and getattr(patch_embed, "patch_size", None):
            from hftl.images import check_patch_grid

            check_patch_grid(image_size, max(patch_embed.patch_size))  # timm would fail deep in a convolution
        model = cls(net, label_names)
        model.image_size = image_size
        return model

    @classmethod
    def _from_state_dict(cls, ref: ModelRef, label_names: list[str], pretrained: bool, image_size: int | None,
                         **kwargs) -> TimmModel:
        """The architecture ``ref.arch`` with the file's weights (hftl.state_dict): its head too when it fits."""
        import timm

        from hftl.state_dict import load_into

        net = timm.create_model(ref.arch, pretrained=False, num_classes=len(label_names), **kwargs)
        model = cls(net, label_names)
        model.image_size = image_size
        if pretrained:
            model.transfer_report = load_into(net, ref.path, source_name=ref.describe(),
                                              head=tuple(model.head_parameter_names()))
        return model

    @classmethod
    def from_output(cls, folder: Path) -> TimmModel:
        """Load a folder hftl (or timm's save_for_hf) wrote."""
        import timm

        net = timm.create_model(f"local-dir:{folder}", pretrained=True)
        config = json.loads((folder / "config.json").read_text())
        names = config.get("label_names") or [str(i) for i in range(net.num_classes)]
        model = cls(net, list(names))
        input_size = net.pretrained_cfg.get("input_size")
        model.image_size = input_size[-1] if input_size else None
        return model

    def __init__(self, net: nn.Module, label_names: list[str] | None = None):
        super().__init__(net, label_names)
        self.image_size: int | None = None

    def input_keys(self) -> tuple[str, ...]:
        return ("pixel_values",)

    def forward_features(self, batch: dict) -> torch.Tensor:
        x = self.net.forward_features(batch["pixel_values"])
        return self.net.forward_head(x, pre_logits=True)

    @property
    def head_name(self) -> str:
        return self.net.pretrained_cfg.get("classifier", "fc")

    @property
    def head(self) -> nn.Module:
        return self.net.get_submodule(self.head_name)

    @property
    def num_features(self) -> int:
        return self.head.in_features if isinstance(self.head, nn.Linear) else self.net.num_features

    def layer_groups(self) -> list[list[str]]:
        from timm.models import group_parameters

        head = set(self.head_parameter_names())
        groups = group_parameters(self.net, self.net.group_matcher(coarse=True))
        ordered = [[n for n in groups[k] if n not in head] for k in sorted(groups)]
        return [g for g in ordered if g]

    def default_lr(self, from_scratch: bool) -> float:
        """3e-3 for a convolutional network from scratch, as CIFAR-style recipes train them (random-init
        ResNet-18, 160 glyphs at 32 px: 0.805 at 1e-3, 0.918 at 3e-3, where a plain AdamW + OneCycle loop
        at 3e-3 with the same shift reached 0.925); 1e-3 otherwise. A timm network with attention blocks
        keeps 1e-3 from scratch: a MiniLM-shaped transformer collapsed at 3e-3; timm ViTs were not measured."""
        convolutional = not any("Attention" in type(m).__name__ for m in self.net.modules())
        return 3e-3 if from_scratch and convolutional else super().default_lr(from_scratch)

    def default_lora_targets(self) -> list[str]:
        names = []
        for name, module in self.net.named_modules():
            if name == self.head_name or name.startswith(self.head_name + "."):
                continue
            if isinstance(module, nn.Linear) or (isinstance(module, nn.Conv2d) and module.groups == 1):
                names.append(name)
        return names

    # -- preprocessing -------------------------------------------------------------------------
    def data_config(self) -> dict:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=self.net)
        if self.image_size:
            cfg["input_size"] = (3, self.image_size, self.image_size)
            cfg["crop_pct"] = 1.0
        return cfg

    def transform(self, train: bool, augment: bool = True):
        """timm's train (augmenting) or eval transform for this backbone's pretrained config.

        At 64 px and below the training transform is the eval one plus a random shift (zero-padded by 1/8 of
        the side, then cropped back, as CIFAR training does) and no flip: timm's ImageNet augmentation (random
        resized crops down to 8% of the area) leaves a few pixels of a 32-px image, and cost a random-init
        ResNet-18 on the built-in digits at 32 px 0.99 -> 0.66 validation accuracy.
        """
        from timm.data import create_transform

        cfg = self.data_config()
        size = cfg["input_size"][-1]
        if not (train and augment) or size > SMALL_IMAGE:
            return create_transform(**cfg, is_training=train and augment)
        from torchvision import transforms

        plain = create_transform(**cfg, is_training=False)  # resize, centre crop, to tensor, normalise
        steps = list(plain.transforms)
        at = next((i + 1 for i, t in enumerate(steps) if isinstance(t, transforms.CenterCrop)), 0)
        steps.insert(at, transforms.RandomCrop(size, padding=max(1, size // 8)))
        return transforms.Compose(steps)

    # -- saving --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        from timm.models import save_for_hf

        cfg = self.data_config()
        save_for_hf(
            self.net,
            str(folder),
            model_config={"label_names": self.label_names},
            safe_serialization=True,
            data_config={"input_size": cfg["input_size"], "crop_pct": cfg["crop_pct"]},
        )

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        h.update(self.net.pretrained_cfg.get("architecture", type(self.net).__name__).encode())
        head = set(self.head_parameter_names())
        for name, tensor in self.net.state_dict().items():
            if name in head:
                continue
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        h.update(repr(self.transform(train=False)).encode())
        return h.hexdigest()[:24]
