"""Masked autoencoders (MAE): transformers' ``ViTMAEForPreTraining`` behind hftl's interface.

A ViT encoder sees a random quarter of an image's patches; a small decoder reconstructs the pixels
of the hidden ones (He et al., 2022). :meth:`MaskedAutoencoder.create` starts from

- a ViTMAE checkpoint (``facebook/vit-mae-base``, or a folder ``save_pretrained`` wrote): encoder
  and decoder;
- a ViT checkpoint (``google/vit-base-patch16-224-in21k``): the encoder; the decoder is new (ViTMAE's
  default size, 8 layers of width 512, unless ``model.kwargs`` sets ``decoder_hidden_size`` ...);
- a ``masked_image`` output: its ``mae/`` folder, encoder and decoder;
- either one's config alone with ``pretrained=False`` (strategy scratch): random weights.

The decoder is the "head" (trained with the encoder, like SimCLR's projector): ``layer_groups`` are
the encoder's (embeddings, each layer, its final norm), so ``strategy.partial`` freezes from the input.
``save`` writes the encoder in transformers' ViT layout at the top of the folder
(``ViTForImageClassification.from_pretrained(out)`` and ``model.init_from`` into a timm ViT start
from it) and the whole masked autoencoder in ``mae/`` (``ViTMAEForPreTraining.from_pretrained``),
which ``hftl predict`` reads to show the inpainting.

Example:
    >>> mae = MaskedAutoencoder.create(resolve_model("facebook/vit-mae-base"))  # doctest: +SKIP
    >>> mae({"pixel_values": torch.randn(2, 3, 224, 224)})  # the loss on the masked patches  # doctest: +SKIP
    tensor(0.83, grad_fn=...)
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import torch
from torch import nn

from hftl.backbones.hf_common import (
    TransformersModel,
    config_kwargs,
    from_pretrained_or_config,
    load_preprocessing,
)
from hftl.errors import ConfigError
from hftl.refs import ModelRef

logger = logging.getLogger(__name__)

MAE_FOLDER = "mae"  # inside an output: the whole masked autoencoder, decoder included
SOURCE_TYPES = ("vit_mae", "vit")
# The ViT config fields a ViTMAE config shares (the encoder's architecture).
ENCODER_FIELDS = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
                  "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range", "layer_norm_eps",
                  "image_size", "patch_size", "num_channels", "qkv_bias")


def _model_type(folder: Path) -> str:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("model_type", "") if config.is_file() else ""


def mae_source(ref: ModelRef) -> tuple[ModelRef, str]:
    """Where the weights to start from are, and their model type; a masked_image output's ``mae/`` folder first."""
    nested = ref.path / MAE_FOLDER if ref.path is not None else None
    if nested is not None and _model_type(nested) == "vit_mae":
        return dataclasses.replace(ref, path=nested), "vit_mae"
    model_type = _model_type(ref.path) if ref.path is not None else ""
    if ref.library != "transformers" or model_type not in SOURCE_TYPES:
        what = f"a {ref.library} model" if ref.library != "transformers" else f"model type '{model_type}'"
        raise ConfigError(f"masked_image pretrains transformers ViT encoders; '{ref.describe()}' is {what}. Use a "
                          "ViTMAE or ViT checkpoint (facebook/vit-mae-base, google/vit-base-patch16-224-in21k) or a "
                          "folder holding a ViTMAE config (strategy.name=scratch trains it from random weights).")
    return ref, model_type


def mae_config(source: Path, model_type: str, image_size: int | None, mask_ratio: float, norm_pix_loss: bool,
               overrides: dict):
    """The ViTMAE config to build: the source's (a ViT's encoder fields), at ``image_size``, with the run's masking."""
    from transformers import ViTConfig, ViTMAEConfig

    if model_type == "vit_mae":
        config = ViTMAEConfig.from_pretrained(str(source))
    else:
        vit = ViTConfig.from_pretrained(str(source))
        config = ViTMAEConfig(**{k: getattr(vit, k) for k in ENCODER_FIELDS})
    for key, value in {**overrides, "mask_ratio": mask_ratio, "norm_pix_loss": norm_pix_loss}.items():
        if not hasattr(config, key):  # a config takes any attribute: a typo would otherwise change nothing
            raise ConfigError(f"model.kwargs: '{key}' is not a ViTMAE config field (e.g. hidden_size, "
                              "decoder_hidden_size, decoder_num_hidden_layers, patch_size).")
        setattr(config, key, value)
    config.image_size = image_size or config.image_size
    check_patches(config)
    return config


def check_patches(config) -> None:
    """One clear error for an input size the patches cannot tile, or a mask that leaves no patch visible.

    Example:
        >>> check_patches(ViTMAEConfig(image_size=30, patch_size=8))  # doctest: +SKIP
        Traceback (most recent call last):
        hftl.errors.ConfigError: data.image_size 30 is not a multiple of the model's patch size 8 ...
    """
    from hftl.images import check_patch_grid

    size, patch = int(config.image_size), int(config.patch_size)
    check_patch_grid(size, patch)
    patches = (size // patch) ** 2
    if int(patches * (1 - config.mask_ratio)) < 1:
        raise ConfigError(f"masked_image.mask_ratio {config.mask_ratio} hides all {patches} patches of a "
                          f"{size}-px image: the encoder would see none. Lower it, or use more patches.")


def _fix_position_embeddings(net: nn.Module) -> None:
    """MAE's sin-cos position embeddings are constants; hftl's strategies train every parameter, so make them buffers.

    Their names (and the saved files) are unchanged: ``from_pretrained`` reads them as before.
    """
    for module, name in ((net.vit.embeddings, "position_embeddings"), (net.decoder, "decoder_pos_embed")):
        value = getattr(module, name).detach().clone()
        delattr(module, name)
        module.register_buffer(name, value)


def copy_matching(net: nn.Module, state: dict, skip: set[str]) -> list[str]:
    """Copy every tensor of ``state`` with a name and shape of ``net`` (``skip``: untrained in the source);
    returns the names left at their initialisation."""
    target = net.state_dict()
    take = {k: v for k, v in state.items() if k in target and k not in skip and v.shape == target[k].shape}
    net.load_state_dict(take, strict=False)
    return [k for k in target if k not in take]


class MaskedAutoencoder(TransformersModel):
    """A ViTMAE: ``forward`` returns its reconstruction loss on the masked patches; the decoder is the head."""

    modality = "image"
    kind = "masked_image"

    def __init__(self, net: nn.Module, image_processor):
        super().__init__(net, [])
        self.image_processor = image_processor
        self.load_summary = "random initialisation"

    @classmethod
    def create(cls, ref: ModelRef, pretrained: bool = True, image_size: int | None = None, mask_ratio: float = 0.75,
               norm_pix_loss: bool = True, **kwargs) -> MaskedAutoencoder:
        """A masked autoencoder from a ViTMAE or ViT reference (see the module docs); ``kwargs`` set config fields."""
        from transformers import ViTMAEForPreTraining

        _, overrides = config_kwargs(kwargs)  # built-in architectures: no remote code to trust
        source, model_type = mae_source(ref)
        config = mae_config(source.path, model_type, image_size, mask_ratio, norm_pix_loss, overrides)
        net = ViTMAEForPreTraining(config)
        _fix_position_embeddings(net)
        model = cls(net, _image_processor(source, pretrained))
        if pretrained:
            model.load_summary = model._load_weights(source, model_type)
        return model

    def _load_weights(self, source: ModelRef, model_type: str) -> str:
        """Copy the source's weights that fit (position embeddings of another grid stay the new grid's sin-cos)."""
        from transformers import ViTConfig, ViTMAEConfig, ViTMAEForPreTraining, ViTModel

        if model_type == "vit_mae":
            src, missing = from_pretrained_or_config(ViTMAEForPreTraining, source,
                                                     ViTMAEConfig.from_pretrained(str(source.path)), True, False)
            state = src.state_dict()
        else:
            src, missing = from_pretrained_or_config(ViTModel, source, ViTConfig.from_pretrained(str(source.path)),
                                                     True, False)
            state, missing = {f"vit.{k}": v for k, v in src.state_dict().items()}, {f"vit.{k}" for k in missing}
        new = copy_matching(self.net, state, missing)
        decoder_new = all(n in new for n in self.net.state_dict() if n.startswith("decoder."))
        encoder_new = [n for n in new if not n.startswith("decoder.")]
        summary = f"{model_type} `{source.describe()}`: encoder" + (" and decoder" if not decoder_new else
                                                                     " (the decoder is new)")
        if encoder_new:
            summary += f"; {len(encoder_new)} encoder tensors kept their initialisation ({', '.join(encoder_new[:3])})"
        logger.info("Masked autoencoder from %s", summary)
        return summary

    @classmethod
    def from_output(cls, folder: Path) -> MaskedAutoencoder:
        """Load the masked autoencoder a ``masked_image`` run saved (its ``mae/`` folder)."""
        from transformers import ViTMAEForPreTraining

        mae = Path(folder) / MAE_FOLDER
        if _model_type(mae) != "vit_mae":
            raise ConfigError(f"'{folder}' has no masked autoencoder in {MAE_FOLDER}/ (only a masked_image run writes "
                              "one); copy the whole output folder.")
        net = ViTMAEForPreTraining.from_pretrained(str(mae), dtype=torch.float32)
        _fix_position_embeddings(net)
        return cls(net, load_preprocessing(_auto_processor(), mae, (mae / "preprocessor_config.json").is_file(),
                                           "image processor", "preprocessor_config.json is missing"))

    # -- structure -------------------------------------------------------------------------------
    @property
    def config(self):
        return self.inner.config

    @property
    def image_size(self) -> int:
        return int(self.config.image_size)

    @property
    def num_patches(self) -> int:
        return (self.image_size // int(self.config.patch_size)) ** 2

    def _find_head(self) -> str:
        return "decoder"

    @property
    def num_features(self) -> int:
        return int(self.config.hidden_size)

    def input_keys(self) -> tuple[str, ...]:
        return ("pixel_values", "noise")

    def default_lora_targets(self) -> list[str]:
        raise ConfigError("masked_image trains the encoder itself: LoRA does not apply.")

    # -- the forward pass ----------------------------------------------------------------------------
    def forward(self, batch: dict) -> torch.Tensor:
        """ViTMAE's own loss: mean squared error on the masked patches (per-patch normalised with norm_pix_loss).

        ``batch["noise"]`` (one number per patch) picks the masked patches: the lowest kept, as in
        transformers; drawn by the dataset from (seed, epoch, index), so resumed runs mask alike.
        """
        return self.net(pixel_values=batch["pixel_values"], noise=batch.get("noise")).loss

    def forward_features(self, batch: dict) -> torch.Tensor:
        """The encoder's [CLS] feature over every patch (no masking): what a classifier started from it reads."""
        pixels = batch["pixel_values"]
        in_order = torch.arange(self.num_patches, device=pixels.device).expand(len(pixels), -1)
        ratio = self.config.mask_ratio
        self.config.mask_ratio = 0.0  # the embeddings read it on each call
        try:
            return self.inner.vit(pixel_values=pixels, noise=in_order).last_hidden_state[:, 0]
        finally:
            self.config.mask_ratio = ratio

    @torch.inference_mode()
    def reconstruct(self, pixels: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """(batch, 3 panels, channels, H, W) in [0, 1]: the masked input, the reconstruction, the original.

        The reconstruction shows the visible patches as given and the decoder's prediction in the
        masked ones (as MAE's figures do). With norm_pix_loss the decoder predicts each patch's
        normalised pixels, so a masked patch is shown at the true patch's mean and spread: its
        brightness is the original's, its structure the model's.
        """
        self.eval()
        out = self.net(pixel_values=pixels, noise=noise)
        target = self.inner.patchify(pixels)
        pred = out.logits
        if self.config.norm_pix_loss:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            pred = pred * (var + 1e-6) ** 0.5 + mean
        hidden = out.mask.unsqueeze(-1)  # 1: masked
        panels = [target * (1 - hidden), target * (1 - hidden) + pred * hidden, target]  # masked: 0 = the mean colour
        mean = torch.tensor(self.image_processor.image_mean, device=pixels.device).view(1, -1, 1, 1)
        std = torch.tensor(self.image_processor.image_std, device=pixels.device).view(1, -1, 1, 1)
        images = [(self.inner.unpatchify(p) * std + mean).clamp(0, 1) for p in panels]
        return torch.stack(images, dim=1)

    # -- preprocessing -----------------------------------------------------------------------------
    def transform(self, train: bool):
        """run_mae.py's training transform (random resized crop of 20-100% of the area, flip), else a resize;
        both normalised with the image processor's mean and std."""
        from torchvision import transforms as T

        size = self.image_size
        normalise = [T.ToTensor(), T.Normalize(self.image_processor.image_mean, self.image_processor.image_std)]
        if train:
            return T.Compose([T.RandomResizedCrop(size, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                              T.RandomHorizontalFlip(), *normalise])
        return T.Compose([T.Resize((size, size), interpolation=T.InterpolationMode.BICUBIC), *normalise])

    # -- saving --------------------------------------------------------------------------------
    def encoder(self):
        """The encoder as a transformers ``ViTModel`` (no pooler), the same weights."""
        from transformers import ViTConfig, ViTModel

        vit = ViTModel(ViTConfig(**{k: getattr(self.config, k) for k in ENCODER_FIELDS}), add_pooling_layer=False)
        vit.load_state_dict(self.inner.vit.state_dict(), strict=True)
        return vit.eval()

    def save(self, folder: str | Path) -> None:
        """The encoder in ViT layout at the top; the whole masked autoencoder in ``mae/``; the image processor in both."""
        folder = Path(folder)
        self.encoder().save_pretrained(str(folder), safe_serialization=True)
        self.inner.save_pretrained(str(folder / MAE_FOLDER), safe_serialization=True)
        self.save_preprocessing(folder)
        self.save_preprocessing(folder / MAE_FOLDER)

    def save_preprocessing(self, folder: str | Path) -> None:
        processor = self.image_processor
        processor.size = {"height": self.image_size, "width": self.image_size}  # what the weights were trained at
        if hasattr(processor, "resample"):  # as transform() resizes (run_mae.py's bicubic): the card's snippet then
            from transformers.image_utils import PILImageResampling  # computes the features hftl does

            processor.resample = PILImageResampling.BICUBIC
        processor.save_pretrained(str(folder))

    def fingerprint(self) -> str:
        h = self.weights_digest()
        h.update(self.image_processor.to_json_string().encode())
        return h.hexdigest()[:24]

    def timm_equivalent(self) -> str:
        """The timm ViT overrides whose architecture this encoder's weights fill (``model.init_from``).

        Example:
            >>> mae.timm_equivalent()  # doctest: +SKIP
            'model.id=timm:vit_base_patch16_224 model.kwargs={embed_dim: 32, depth: 2, ...} data.image_size=32'
        """
        c = self.config
        kwargs = (f"{{embed_dim: {c.hidden_size}, depth: {c.num_hidden_layers}, num_heads: {c.num_attention_heads}, "
                  f"patch_size: {c.patch_size}, mlp_ratio: {c.intermediate_size / c.hidden_size:g}}}")
        return f"model.id=timm:vit_base_patch16_224 model.kwargs=\"{kwargs}\" data.image_size={c.image_size}"


def _auto_processor():
    from transformers import AutoImageProcessor

    return AutoImageProcessor


def _image_processor(source: ModelRef, pretrained: bool):
    """The source's image processor; a config-only random start gets transformers' ViT defaults (mean = std = 0.5),
    as run_mae.py does. Pretrained weights without one are an error: their normalisation is unknown."""
    present = (source.path / "preprocessor_config.json").is_file()
    if present or pretrained:
        return load_preprocessing(_auto_processor(), source.path, present, "image processor",
                                  "preprocessor_config.json is missing", name=source.describe())
    from transformers import ViTImageProcessor

    logger.info("%s has no image processor: random weights, normalised with ViT's defaults (mean = std = 0.5)",
                source.describe())
    return ViTImageProcessor()
