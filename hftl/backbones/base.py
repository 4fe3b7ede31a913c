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
