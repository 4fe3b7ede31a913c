"""How a pretrained model is transferred: which parameters train, at which learning rate, and when.

A strategy is a small object the trainer calls at three points: ``prepare`` (freeze or wrap the
model once), ``param_groups`` (the optimizer's groups), and ``on_epoch_start`` (schedules such as
gradual unfreezing). Schedules are functions of the epoch alone, so they survive checkpoint/resume.

Example:
    >>> from hftl.config import StrategyConfig
    >>> strategy = get_strategy(StrategyConfig(name="partial", frozen_groups=2))
    >>> strategy.name
    'partial'
"""

from __future__ import annotations

import logging
import re

from torch import nn

from hftl.backbones.base import TransferModel
from hftl.config import StrategyConfig
from hftl.errors import ConfigError

logger = logging.getLogger(__name__)

def _head_rate(model: TransferModel, lr: float, weight_decay: float) -> tuple[float, float]:
    """The head's rate and decay: scaled by a regression head's target spread (TransferModel.scale_head_to_targets),
    its decay divided by it, so that AdamW shrinks the head as it would on standardised targets."""
    scale = getattr(model, "target_scale", 1.0)
    return lr * scale, weight_decay / scale


def _split_decay(params: list[tuple[str, nn.Parameter]], lr: float, weight_decay: float, label: str) -> list[dict]:
    """Norm weights and biases (1-d) get no weight decay, as in timm and transformers."""
    decay = [p for n, p in params if p.ndim > 1]
    no_decay = [p for n, p in params if p.ndim <= 1]
    groups = []
    if decay:
        groups.append({"params": decay, "lr": lr, "weight_decay": weight_decay, "name": label})
    if no_decay:
        groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0, "name": f"{label}/no_decay"})
    return groups


class Strategy:
    """Full fine-tuning (the base every other strategy narrows); optional layer-wise LR decay."""

    name = "finetune"

    def __init__(self, cfg: StrategyConfig):
        self.cfg = cfg
        self.lr_table: list[dict] = []

    def prepare(self, model: TransferModel) -> TransferModel:
        for p in model.parameters():
            p.requires_grad_(True)
        _freeze_fixed(model, self)
        return model

    def fixed_parameter_names(self, model: TransferModel) -> set[str]:
        """Parameters no schedule thaws: a pretrained audio model's convolutional feature encoder."""
        if self.name == "scratch" or not self.cfg.freeze_feature_encoder:
            return set()
        names = getattr(model, "feature_encoder_parameter_names", None)
        return names() if names else set()

    def group_lrs(self, num_groups: int, lr: float, backbone_scale: float) -> list[float]:
        """Learning rate per backbone group, input first; layer_decay shrinks it with depth."""
        decay = self.cfg.layer_decay or 1.0
        return [lr * backbone_scale * decay ** (num_groups - i) for i in range(num_groups)]

    def param_groups(self, model: TransferModel, lr: float, weight_decay: float,
                     backbone_scale: float = 1.0) -> list[dict]:
        fixed = self.fixed_parameter_names(model)
        named = {n: p for n, p in model.net.named_parameters() if n not in fixed}
        layer_groups = [g for g in ([n for n in names if n in named] for names in model.layer_groups()) if g]
        lrs = self.group_lrs(len(layer_groups), lr, backbone_scale)
        groups, self.lr_table = [], []
        for i, (names, group_lr) in enumerate(zip(layer_groups, lrs)):
            params = [(n, named[n]) for n in names if n in named]
            groups += _split_decay(params, group_lr, weight_decay, f"group{i}")
            self.lr_table.append({"group": f"group{i} ({names[0].split('.')[0]})", "lr": group_lr,
                                  "params": sum(p.numel() for _, p in params)})
        head = [(n, named[n]) for n in model.head_parameter_names()]
        head_lr, head_decay = _head_rate(model, lr, weight_decay)
        groups += _split_decay(head, head_lr, head_decay, "head")
        self.lr_table.append({"group": "head", "lr": head_lr, "params": sum(p.numel() for _, p in head)})
        return groups

    def on_epoch_start(self, model: TransferModel, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based), also after a resume."""

    def frozen_groups(self, model: TransferModel, epoch: int | None = None) -> list[int]:
        return []

    def describe(self, model: TransferModel) -> dict:
        info = {"strategy": self.name, "layer_decay": self.cfg.layer_decay,
                "frozen_groups": self.frozen_groups(model), "num_groups": len(model.layer_groups()),
                "lr_groups": self.lr_table}
        if getattr(self, "probe", None):  # the head was solved (hftl.probe): which L2 strength was chosen
            info["probe"] = self.probe
        return info


class Scratch(Strategy):
    """Train every weight from a random initialisation (the baseline transfer must beat)."""

    name = "scratch"


def _freeze_fixed(model: TransferModel, strategy: Strategy) -> None:
    fixed = strategy.fixed_parameter_names(model)
    for name, p in model.net.named_parameters():
        if name in fixed:
            p.requires_grad_(False)


def _set_trainable(model: TransferModel, frozen: list[int], strategy: Strategy) -> None:
    groups = model.layer_groups()
    frozen_names = {n for i in frozen for n in groups[i]} | strategy.fixed_parameter_names(model)
    for name, p in model.net.named_parameters():
        p.requires_grad_(name not in frozen_names)


class Partial(Strategy):
    """The first ``frozen_groups`` layer groups (from the input) stay frozen; the rest fine-tunes."""

    name = "partial"

    def prepare(self, model: TransferModel) -> TransferModel:
        n = len(model.layer_groups())
        if not 0 <= self.cfg.frozen_groups <= n:
            raise ConfigError(f"strategy.frozen_groups must be between 0 and {n} for this backbone.")
        _set_trainable(model, self.frozen_groups(model), self)
        return model

    def frozen_groups(self, model: TransferModel, epoch: int | None = None) -> list[int]:
        return list(range(self.cfg.frozen_groups))

    def param_groups(self, model, lr, weight_decay, backbone_scale=1.0):
        groups = super().param_groups(model, lr, weight_decay, backbone_scale)
        return [g for g in groups if all(p.requires_grad for p in g["params"])]


class GradualUnfreeze(Strategy):
    """Head first; then one more layer group from the top every ``unfreeze_every`` epochs (ULMFiT).

    All groups are in the optimizer from the start: a frozen parameter has no gradient, so AdamW
    leaves it (and its state) untouched until it thaws. The schedule depends on the epoch only.
    """

    name = "gradual_unfreeze"

    def prepare(self, model):
        self.on_epoch_start(model, 0)
        return model

    def frozen_groups(self, model, epoch: int | None = None) -> list[int]:
        n = len(model.layer_groups())
        thawed = min(n, (epoch or 0) // max(1, self.cfg.unfreeze_every))
        return list(range(n - thawed))

    def on_epoch_start(self, model, epoch):
        self._epoch = epoch
        _set_trainable(model, self.frozen_groups(model, epoch), self)

    def describe(self, model):
        info = super().describe(model)
        info["schedule"] = f"one more group every {self.cfg.unfreeze_every} epoch(s), top first"
        return info


class LinearProbe(Strategy):
    """Backbone frozen; only the head trains (on cached features when strategy.cache_features)."""

    name = "linear_probe"
    # Studies search nothing for it: the solved probe (the default) picks its own L2 strength by cross-validation
    # on the training features. An arm with probe_solver=sgd can still name a grid (search: {lr: [...]}).
    study_search: dict = {}

    def prepare(self, model):
        for p in model.net.parameters():
            p.requires_grad_(False)
        for p in model.head.parameters():
            p.requires_grad_(True)
        model.freeze_norm_stats = True  # a frozen backbone keeps its batch-norm statistics too
        return model

    def frozen_groups(self, model, epoch=None):
        return list(range(len(model.layer_groups())))

    def param_groups(self, model, lr, weight_decay, backbone_scale=1.0):
        head = list(model.head.named_parameters())
        head_lr, head_decay = _head_rate(model, lr, weight_decay)
        self.lr_table = [{"group": "head", "lr": head_lr, "params": sum(p.numel() for _, p in head)}]
        return _split_decay(head, head_lr, head_decay, "head")


class LpFt(Strategy):
    """LP-FT (Kumar et al. 2022): solve the linear probe on the frozen features, then fine-tune everything from it.

    A random head's large early gradients distort good pretrained features; starting from the solved
    head, fine-tuning moves the backbone only as far as the task needs (better in and out of distribution
    than fine-tuning alone in the paper). The solving happens before training (``hftl.api.train``); this
    strategy then trains the whole model at the network's rates (one rate, or a lower one for a pretrained
    text encoder: ``train.backbone_lr_scale``).
    """

    name = "lp_ft"


class Lora(Strategy):
    """peft LoRA adapters on the backbone; the new head is trained and saved in full (modules_to_save)."""

    name = "lora"

    def prepare(self, model):
        from peft import LoraConfig, get_peft_model

        targets = list(self.cfg.lora_target_modules) or model.default_lora_targets()
        if not targets:
            raise ConfigError("strategy.lora_target_modules is empty and this backbone has no default targets.")
        self.targets = targets
        # Without modules_to_save the new head is neither trained nor saved (peft issues #310, #577, #1070).
        # An adapter may widen it and set peft's task type (text: SEQ_CLS / CAUSAL_LM) with lora_options().
        options = {"modules_to_save": [model.head_name], **getattr(model, "lora_options", dict)()}
        config = LoraConfig(
            r=self.cfg.lora_r,
            lora_alpha=self.cfg.lora_alpha,
            lora_dropout=self.cfg.lora_dropout,
            target_modules=targets,
            **options,
        )
        model.net = get_peft_model(model.net, config)
        model.freeze_norm_stats = True  # the adapter file holds no buffers; keep the source's statistics
        return model

    def param_groups(self, model, lr, weight_decay, backbone_scale=1.0):
        params = [(n, p) for n, p in model.net.named_parameters() if p.requires_grad]
        if getattr(model, "target_scale", 1.0) == 1.0:
            self.lr_table = [{"group": "lora+head", "lr": lr, "params": sum(p.numel() for _, p in params)}]
            return _split_decay(params, lr, weight_decay, "lora")
        # A regression head keeps its own rate (_head_rate); peft trains the head's copy under modules_to_save.
        def plain(name):  # the name without peft's prefix and its modules_to_save copy
            return re.sub(r"^base_model\.model\.|modules_to_save\.[^.]+\.", "", name)

        wanted = {f"{model.head_name}.{plain(n)}" for n, _ in model.head.named_parameters()}
        head = [(n, p) for n, p in params if plain(n) in wanted]
        rest = [(n, p) for n, p in params if all(n != h for h, _ in head)]
        head_lr, head_decay = _head_rate(model, lr, weight_decay)
        self.lr_table = [{"group": "lora", "lr": lr, "params": sum(p.numel() for _, p in rest)},
                         {"group": "head", "lr": head_lr, "params": sum(p.numel() for _, p in head)}]
        return _split_decay(rest, lr, weight_decay, "lora") + _split_decay(head, head_lr, head_decay, "head")

    def describe(self, model):
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        total = sum(p.numel() for p in model.parameters())
        return {"strategy": self.name, "lora_r": self.cfg.lora_r, "lora_alpha": self.cfg.lora_alpha,
                "lora_dropout": self.cfg.lora_dropout, "target_modules": len(getattr(self, "targets", [])),
                "trainable_params": trainable, "total_params": total, "lr_groups": self.lr_table}


STRATEGIES = {cls.name: cls for cls in (Strategy, Scratch, Partial, GradualUnfreeze, LinearProbe, LpFt, Lora)}


def get_strategy(cfg: StrategyConfig) -> Strategy:
    """The strategy object for ``cfg.name``."""
    if cfg.name not in STRATEGIES:
        raise ConfigError(f"strategy.name '{cfg.name}' is not known. Valid: {', '.join(STRATEGIES)}.")
    return STRATEGIES[cfg.name](cfg)


def check_base(cfg, model: TransferModel, ref) -> None:
    """Warn when a strategy transfers nothing (a random base); refuse LoRA over weights a reload would redraw."""
    random_base = ref.source == "arch" and not cfg.model.init_from
    name = cfg.strategy.name
    if name in ("lora", "linear_probe", "lp_ft", "partial", "gradual_unfreeze") and random_base:
        logger.warning("strategy %s on a randomly initialised %s: nothing pretrained is being transferred",
                       name, ref.describe())
    if name != "lora":
        return
    if random_base:
        raise ConfigError(
            f"strategy.name=lora adapts pretrained weights, but model.id '{cfg.model.id}' has none (random init), "
            "and an adapter over random weights could not be reloaded. Give a pretrained model (Hub id or "
            "folder, or model.init_from), or use strategy.name=scratch."
        )
    report = getattr(model, "transfer_report", None)
    unfilled = [n for n in (report.kept if report else []) if n not in set(model.head_parameter_names())]
    if ref.source == "arch" and unfilled:
        raise ConfigError(
            f"strategy.name=lora freezes the base weights, but {len(unfilled)} of them ({', '.join(unfilled[:3])}, ...) "
            f"did not come from model.init_from '{cfg.model.init_from}': they would be drawn anew when the adapter "
            "is reloaded. Use strategy.name=finetune, or a source that fills them."
        )
