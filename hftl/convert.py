"""Weights across architectures: partial transfer and conversion between libraries and modalities.

``model.init_from=<model id, folder or state_dict file>`` copies into the run's model (``model.id``, usually an
architecture such as ``timm:vit_small_patch16_224``) every weight of another model that fits:

1. The source is loaded with its own library (timm, or transformers' ``AutoModel``, which also
   reads older checkpoint layouts) and its names are converted to the target's where hftl knows
   the mapping: transformers ViT / DeiT / AST (audio spectrogram transformer) to timm's
   VisionTransformer (q/k/v joined into ``qkv``, ``layernorm_before`` to ``norm1``, ...).
   Otherwise names are matched as they are (timm to timm, transformers to transformers, with the
   base-model prefix aligned).
2. A tensor with the target's name and shape is copied. Two kinds are converted: a ViT's position
   embeddings are resampled to the target's patch grid (their class/distillation tokens matched),
   and a patch embedding or first convolution gets the target's input channels and kernel size
   (timm's ``adapt_input_conv`` / ``resample_patch_embed``): an AST that heard 1-channel
   spectrograms can start an RGB image model (audio-to-visual transfer).
3. Everything else keeps its initialisation (the new head, layers the source lacks, tensors of
   another shape) and is listed, with what was copied and converted, in the model card.

Example:
    >>> hftl.train(None, ["model.id=timm:vit_small_patch16_224", "model.pretrained=false",
    ...                   "model.init_from=MIT/ast-finetuned-audioset-10-10-0.4593"])  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import re

import torch

from hftl.errors import ConfigError
from hftl.state_dict import TransferReport, load_into

logger = logging.getLogger(__name__)

VIT_FAMILY = {"vit", "deit", "audio-spectrogram-transformer"}


def load_source(model_id: str, revision: str | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """The source's weights (by name, as its library names them today) and what the conversion needs to know."""
    from hftl.refs import resolve_model

    ref = resolve_model(model_id, revision=revision)
    if ref.library == "timm":
        import timm

        net = timm.create_model(f"local-dir:{ref.path}", pretrained=True) if ref.source != "arch" else \
            timm.create_model(ref.name, pretrained=False)
        return net.state_dict(), {"library": "timm", "describe": ref.describe()}
    if ref.library == "transformers":
        from transformers import AutoConfig, AutoModel

        from hftl.backbones.hf_common import refuse_remote_code

        with refuse_remote_code(ref.describe()):  # init_from never runs a source folder's code
            config = AutoConfig.from_pretrained(str(ref.path), trust_remote_code=False)
            net = AutoModel.from_pretrained(str(ref.path), dtype=torch.float32, trust_remote_code=False)
        info = {"library": "transformers", "model_type": config.model_type, "config": config,
                "describe": ref.describe()}
        return net.state_dict(), info
    raise ConfigError(f"model.init_from: '{ref.describe()}' is a {ref.library} folder; give a timm or transformers "
                      "model (for a LoRA output, its merged/ folder).")


def transformers_vit_to_timm(state: dict, config) -> tuple[dict, dict]:
    """Rename a transformers ViT/DeiT/AST state dict to timm's VisionTransformer names; q, k, v become qkv.

    Returns (state, layout) where layout gives the position-embedding grid and prefix-token count.
    """
    out = {}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.distillation_token": "dist_token",
              "embeddings.position_embeddings": "pos_embed", "layernorm.weight": "norm.weight",
              "layernorm.bias": "norm.bias", "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias"}
    inner = {"attention.o_proj": "attn.proj", "layernorm_before": "norm1", "layernorm_after": "norm2",
             "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
    for name, tensor in state.items():
        if name in simple:
            out[simple[name]] = tensor
            continue
        match = re.fullmatch(r"layers\.(\d+)\.(.+)\.(weight|bias)", name)
        if match and match.group(2) in inner:
            out[f"blocks.{match.group(1)}.{inner[match.group(2)]}.{match.group(3)}"] = tensor
    for i in range(config.num_hidden_layers):
        for kind in ("weight", "bias"):
            parts = [state.get(f"layers.{i}.attention.{p}_proj.{kind}") for p in "qkv"]
            if all(p is not None for p in parts):
                out[f"blocks.{i}.attn.qkv.{kind}"] = torch.cat(parts)
    if config.model_type == "audio-spectrogram-transformer":
        grid = ((config.num_mel_bins - config.patch_size) // config.frequency_stride + 1,
                (config.max_length - config.patch_size) // config.time_stride + 1)
    else:
        side = config.image_size // config.patch_size
        grid = (side, side)
    prefix = 1 + int("embeddings.distillation_token" in state)
    return out, {"grid": grid, "prefix_tokens": prefix}


def _align_prefix(source: dict, target_names: set[str], base_prefix: str) -> dict:
    """transformers: a base model's names (``encoder.layer.0...``) inside a task model (``bert.encoder...``)."""
    if not base_prefix or any(n in target_names for n in source):
        return source
    return {f"{base_prefix}.{k}": v for k, v in source.items()}


def _resample_pos_embed(pos: torch.Tensor, target: torch.Tensor, layout: dict, target_prefix: int,
                        target_grid: tuple[int, int]) -> torch.Tensor:
    from timm.layers import resample_abs_pos_embed

    src_prefix = layout.get("prefix_tokens", target_prefix)
    grid = layout.get("grid")
    if grid is None:  # timm sources: a square grid after the prefix tokens
        patches = pos.shape[1] - src_prefix
        side = math.isqrt(patches)
        if side * side != patches:
            raise ConfigError(f"model.init_from: cannot tell the source's patch grid from {patches} position embeddings "
                              "(not a square); use a source with a square grid or the same input size.")
        grid = (side, side)
    patches = resample_abs_pos_embed(pos[:, src_prefix:], new_size=list(target_grid), old_size=list(grid),
                                     num_prefix_tokens=0)
    prefix = target[:, :target_prefix].clone()
    shared = min(src_prefix, target_prefix)
    prefix[:, :shared] = pos[:, :shared]
    return torch.cat([prefix, patches.to(pos.dtype)], dim=1)


def _convert_conv(weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A first convolution / patch embedding with the target's input channels and kernel size."""
    from timm.layers import resample_patch_embed
    from timm.models._manipulate import adapt_input_conv

    channels = target.shape[1]
    if weight.shape[1] == 1 and channels > 1:  # mono -> colour: each channel gets a share (gray in, same out)
        weight = weight.repeat(1, channels, 1, 1) / channels
    elif weight.shape[1] != channels:  # colour -> mono (summed) or 3 -> N (timm's rule)
        weight = adapt_input_conv(channels, weight)
    if weight.shape[2:] != target.shape[2:]:
        weight = resample_patch_embed(weight, list(target.shape[2:]))
    return weight


def transfer_weights(target_net: torch.nn.Module, model_id: str, revision: str | None = None,
                     skip: tuple[str, ...] = ()) -> TransferReport:
    """Copy (and where needed convert) every tensor of ``model_id`` that fits into ``target_net``, in place.

    ``skip``: target names never filled (the new head). Raises ConfigError when nothing fits.

    Example:
        >>> transfer_weights(timm.create_model("vit_tiny_patch16_224"), "google/vit-base-patch16-224").summary()  # doctest: +SKIP
    """
    from hftl.refs import state_dict_path

    file = state_dict_path(model_id)
    if file is not None:  # a bare state_dict: matched by name, then by order and shape (hftl.state_dict)
        return load_into(target_net, file, source_name=model_id, head=skip, strict=False, fill_head=False)
    source, info = load_source(model_id, revision)
    target = target_net.state_dict()
    layout: dict = {}
    is_timm_vit = "pos_embed" in target and "patch_embed.proj.weight" in target
    if info["library"] == "transformers" and info.get("model_type") in VIT_FAMILY and is_timm_vit:
        source, layout = transformers_vit_to_timm(source, info["config"])
    elif info["library"] == "transformers":
        source = _align_prefix(source, set(target), getattr(target_net, "base_model_prefix", ""))
    report = TransferReport(info["describe"])
    new_state = {}
    for name, tensor in target.items():
        src = source.get(name)
        if name.startswith(skip) or src is None:
            report.kept.append(name)
        elif src.shape == tensor.shape:
            new_state[name] = src
            report.copied.append(name)
        elif name == "pos_embed" and is_timm_vit and src.dim() == 3 and src.shape[-1] == tensor.shape[-1]:
            grid = tuple(target_net.patch_embed.grid_size)
            new_state[name] = _resample_pos_embed(src, tensor, layout, target_net.num_prefix_tokens, grid)
            report.converted[name] = f"{src.shape[1]} positions resampled to {tensor.shape[1]} ({grid[0]}x{grid[1]} grid)"
        elif src.dim() == 4 and tensor.dim() == 4 and src.shape[0] == tensor.shape[0]:
            new_state[name] = _convert_conv(src, tensor)
            report.converted[name] = f"conv {tuple(src.shape[1:])} -> {tuple(tensor.shape[1:])} (input channels, kernel)"
        else:
            report.kept.append(name)
    used = set(new_state)
    report.unused = sorted(k for k in source if k not in used)
    if not new_state:
        raise ConfigError(f"model.init_from: no tensor of '{info['describe']}' fits the target architecture (no names "
                          "and shapes in common, and no conversion for this pair of architectures).")
    target_net.load_state_dict({**target, **new_state}, strict=True)
    logger.info("Weights from %s: %s", info["describe"], report.summary())
    return report
