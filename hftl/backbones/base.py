"""The one interface every backbone speaks, whatever its library or modality.

Like timm's models, code above this never asks what it holds: the trainer, the strategies, the
feature cache and the cards use only these methods. ``net`` is the library's own classifier model
(a timm model, a transformers ``AutoModelFor...``), so outputs save and load in that library's layout.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class TransferModel(nn.Module):
    """A pretrained (or random) network with a task head, seen through a uniform interface.

    Subclasses set ``self.net`` and implement the abstract methods. ``forward(batch)`` takes the
    batch dict the task's collate function makes and returns logits.
    """

    library: str = ""
    modality: str = ""

    def __init__(self, net: nn.Module, label_names: list[str] | None = None):
        super().__init__()
        self.net = net
        self.label_names = list(label_names or [])
        # Batch-norm running statistics are buffers, not parameters: a strategy that freezes the backbone
        # (LoRA) must also freeze them, or the saved adapter (which holds no buffers) reloads differently.
        self.freeze_norm_stats = False
        # Regression: the training targets' standard deviation (scale_head_to_targets); the head's rate scales by it.
        self.target_scale = 1.0

    def scale_head_to_targets(self, targets: list[float]) -> None:
        """Regression: start the (new) head at the targets' mean and spread, and have the strategies scale its
        learning rate by their standard deviation (``target_scale``). Under Adam this takes the steps that training
        on standardised targets takes, as a careful practitioner trains, while the saved head stays a plain linear
        layer in the targets' own units. Without it a head at lr 1e-3 must climb to, say, temperatures in tens of
        degrees one 1e-3 step at a time: R^2 0.09 on weather_heat (benchmarks/quality.py), where the plain loop on
        standardised targets reached 0.95."""
        values = torch.tensor([float(v) for v in targets], dtype=torch.float64)
        std = float(values.std(unbiased=False)) if len(values) > 1 else 0.0
        linear = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        scale = std if std > 0 else 1.0
        with torch.no_grad():
            linear.weight.mul_(scale)
            if linear.bias is not None:
                linear.bias.fill_(float(values.mean()) if len(values) else 0.0)
        self.target_scale = scale

    def train(self, mode: bool = True):
        super().train(mode)
        if mode and self.freeze_norm_stats:
            for module in self.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()
        return self

    # -- the forward pass, split where transfer needs it --------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        return self.forward_head(self.forward_features(batch))

    def forward_features(self, batch: dict) -> torch.Tensor:
        """Pooled features (batch, num_features): what the head sees; what a linear probe caches."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(features)

    @property
    def head(self) -> nn.Module:
        """The classifier module that maps features to logits."""
        raise NotImplementedError

    @property
    def head_name(self) -> str:
        """Name of the head inside ``net`` (peft's ``modules_to_save`` needs it)."""
        raise NotImplementedError

    @property
    def num_features(self) -> int:
        raise NotImplementedError

    def input_keys(self) -> tuple[str, ...]:
        """Batch keys forward_features reads (the rest, like labels, is for the loss)."""
        raise NotImplementedError

    # -- structure for the strategies ----------------------------------------------------------
    def layer_groups(self) -> list[list[str]]:
        """Parameter names of ``net`` grouped by depth, from the input up, head excluded."""
        raise NotImplementedError

    def head_parameter_names(self) -> list[str]:
        return [f"{self.head_name}.{n}" for n, _ in self.head.named_parameters()]

    def default_lr(self, from_scratch: bool) -> float:
        """The peak learning rate ``train.lr: null`` means for this network, from random weights or not: 1e-3
        (AdamW's usual rate for a fresh head on a pretrained network, and for a small transformer from
        scratch: all-MiniLM-L6's architecture from scratch on 96 tickets reached 0.994 at 1e-3 and
        collapsed to chance at 3e-3). A backbone overrides it where its own kind measured better."""
        return 1e-3

    # The backbone's rate as a multiple of its new head's, for a pretrained backbone: 1 (one rate for the whole
    # network) unless a kind of backbone measured better with a lower one (see default_backbone_lr_scale).
    pretrained_backbone_lr_scale = 1.0

    def default_backbone_lr_scale(self, from_scratch: bool) -> float:
        """The backbone's rate as a multiple of the head's when neither ``train.lr`` nor ``train.backbone_lr_scale``
        is set: ``pretrained_backbone_lr_scale`` for pretrained weights, 1 from random weights (nothing to keep)."""
        return 1.0 if from_scratch else self.pretrained_backbone_lr_scale

    def default_lora_targets(self) -> list[str]:
        """Module names (inside ``net``) that LoRA adapts by default."""
        raise NotImplementedError

    # -- saving --------------------------------------------------------------------------------
    def save(self, folder: str | Path) -> None:
        """Write weights (safetensors) and config in the layout ``net``'s library loads."""
        raise NotImplementedError

    def fingerprint(self) -> str:
        """What identifies the backbone's weights and preprocessing (part of the feature-cache key)."""
        raise NotImplementedError
