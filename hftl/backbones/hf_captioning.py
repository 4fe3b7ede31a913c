"""Image captioners: a transformers vision encoder joined to a text decoder (``VisionEncoderDecoderModel``).

Two ways to start:

- from an existing captioner (a ``vision-encoder-decoder`` folder or Hub id, e.g.
  ``nlpconnect/vit-gpt2-image-captioning``): every weight is pretrained;
- from two pretrained models, ``model.id`` a vision encoder (ViT, DeiT, BEiT, Swin, ...: any
  ``AutoModel`` with an image processor) and ``model.decoder_id`` a text decoder (GPT-2 family,
  BERT-style ...): the decoder gets new cross-attention layers (randomly initialised, always
  trained, saved in full by LoRA), everything else is transferred.

``save`` writes ``save_pretrained`` plus the image processor and the tokenizer, so an output loads
with ``VisionEncoderDecoderModel.from_pretrained(out)``, ``AutoImageProcessor`` and ``AutoTokenizer``.

Layer groups, from the input up: the encoder's (patch embeddings, each layer, its final norm),
then the decoder's (embeddings, each layer with its cross-attention, final norm).

Example:
    >>> captioner = ImageCaptioner.create(resolve_model("google/vit-base-patch16-224-in21k"),
    ...                                   decoder_id="openai-community/gpt2")  # doctest: +SKIP
    >>> captioner.caption([image])  # doctest: +SKIP
    ['a dog running on the beach']
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from hftl.backbones.hf_common import (
    TransformersModel,
    config_kwargs,
    from_pretrained_or_config,
    group_parameter_names,
    load_preprocessing,
    new_modules,
    remote_kwargs,
)
from hftl.backbones.hf_text import load_tokenizer
from hftl.errors import ConfigError
from hftl.images import to_rgb
from hftl.refs import ModelRef

IMAGE_PROCESSOR_FILE = "preprocessor_config.json"


def load_image_processor(folder: str | Path, name: str | None = None):
    """The image processor saved in a model folder; a clear error when the folder has none."""
    from transformers import AutoImageProcessor

    present = (Path(folder) / IMAGE_PROCESSOR_FILE).is_file()
    return load_preprocessing(AutoImageProcessor, folder, present, "image processor",
                              f"{IMAGE_PROCESSOR_FILE} is missing", name=name)


def _model_type(folder: Path) -> str:
    config = folder / "config.json"
    return json.loads(config.read_text()).get("model_type", "") if config.is_file() else ""


class ImageCaptioner(TransformersModel):
    """A vision encoder + text decoder that writes a caption for an image."""

    modality = "image"
    kind = "captioner"

    def __init__(self, net: nn.Module, image_processor=None, tokenizer=None):
        super().__init__(net, [])
        self.image_processor = image_processor
        self.tokenizer = tokenizer
        self.max_length = 32  # caption tokens; set from data.max_length

    @classmethod
    def create(cls, ref: ModelRef, pretrained: bool = True, decoder_id: str | None = None,
               decoder_revision: str | None = None, **kwargs) -> ImageCaptioner:
        """A captioner from one captioner reference, or from an encoder reference plus ``decoder_id``."""
        from transformers import (
            AutoConfig,
            AutoModel,
            AutoModelForCausalLM,
            VisionEncoderDecoderConfig,
            VisionEncoderDecoderModel,
        )

        from hftl.refs import resolve_model

        trust, kwargs = config_kwargs(kwargs)
        processor = load_image_processor(ref.path, ref.describe())
        if _model_type(ref.path) == "vision-encoder-decoder":
            tokenizer = load_tokenizer(ref.path, trust, ref.describe())
            config = AutoConfig.from_pretrained(str(ref.path), **remote_kwargs(trust), **kwargs)
            if pretrained:
                net, missing = from_pretrained_or_config(VisionEncoderDecoderModel, ref, config, True, trust)
            else:  # the same captioner architecture, randomly initialised (it has no from_config)
                net, missing = VisionEncoderDecoderModel(config=config), set()
        else:
            if not decoder_id:
                raise ConfigError(
                    f"'{ref.describe()}' is a vision encoder, not a captioner: set model.decoder_id to the text decoder "
                    "to join to it (e.g. openai-community/gpt2), or give a vision-encoder-decoder model as model.id.")
            dref = resolve_model(decoder_id, revision=decoder_revision)
            tokenizer = load_tokenizer(dref.path, trust, dref.describe())
            encoder_config = AutoConfig.from_pretrained(str(ref.path), **remote_kwargs(trust), **kwargs)
            decoder_config = AutoConfig.from_pretrained(str(dref.path), **remote_kwargs(trust))
            decoder_config.is_decoder, decoder_config.add_cross_attention = True, True
            if pretrained:
                encoder, missing_enc = from_pretrained_or_config(AutoModel, ref, encoder_config, True, trust)
                decoder, missing_dec = from_pretrained_or_config(AutoModelForCausalLM, dref, decoder_config, True, trust)
                net = VisionEncoderDecoderModel(encoder=encoder, decoder=decoder)
                missing = {f"encoder.{k}" for k in missing_enc} | {f"decoder.{k}" for k in missing_dec}
                # A projection joins encoder and decoder when their widths differ: new as well.
                missing |= {n for n, _ in net.named_parameters() if n.startswith("enc_to_dec_proj.")}
            else:
                net = VisionEncoderDecoderModel(
                    config=VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder_config, decoder_config))
                missing = set()
        model = cls(net, processor, tokenizer)
        model._set_special_tokens()
        # The encoder's pooler (when it has one) is never used by the decoder: not a layer to train or save.
        model.new_modules = [m for m in new_modules(net, missing) if not m.startswith("encoder.pooler")]
        return model

    @property
    def ddp_find_unused_parameters(self) -> bool:
        """An encoder's pooler gets no gradient (the decoder reads every token): DDP must not wait for it."""
        return getattr(self.inner.encoder, "pooler", None) is not None

    @classmethod
    def from_output(cls, folder: Path, trust_remote_code: bool = False) -> ImageCaptioner:
        """Load a folder hftl (or ``save_pretrained``) wrote for a vision-encoder-decoder captioner."""
        from transformers import VisionEncoderDecoderModel

        net = VisionEncoderDecoderModel.from_pretrained(str(folder), dtype=torch.float32,
                                                        **remote_kwargs(trust_remote_code))
        model = cls(net, load_image_processor(folder), load_tokenizer(folder, trust_remote_code))
        model._set_special_tokens()
        model.restore_settings(folder)
        return model

    def _set_special_tokens(self) -> None:
        """Padding, the token a caption starts from and the one that ends it, in the config and for generate."""
        tok = self.tokenizer
        if tok.pad_token is None:  # GPT-style tokenizers: pad with EOS (padded positions carry no loss)
            tok.pad_token = tok.eos_token or tok.sep_token or tok.unk_token
        end = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        start = next((t for t in (tok.bos_token_id, tok.cls_token_id, end) if t is not None), 0)
        for config in (self.inner.config, self.inner.generation_config):
            config.decoder_start_token_id, config.pad_token_id, config.eos_token_id = start, tok.pad_token_id, end

    # -- structure -------------------------------------------------------------------------------
    def input_keys(self) -> tuple[str, ...]:
        return ("pixel_values", "decoder_input_ids", "decoder_attention_mask")

    def _find_head(self) -> str:
        out = self.inner.get_output_embeddings()
        for name, module in self.inner.named_modules():
            if module is out:
                return name
        raise ConfigError(f"Cannot find the decoder's output layer in {type(self.inner).__name__}.")

    def layer_groups(self) -> list[list[str]]:
        names = [n for n, _ in self.net.named_parameters()]
        head = set(self.head_parameter_names())
        # Encoder and decoder number their layers from 0 each: group them apart (peft prefixes the names).
        part = {p: [n for n in names if n.removeprefix("base_model.model.").split(".")[0] == p]
                for p in ("encoder", "enc_to_dec_proj", "decoder")}
        bridge = [part["enc_to_dec_proj"]] if part["enc_to_dec_proj"] else []
        return group_parameter_names(part["encoder"], head) + bridge + group_parameter_names(part["decoder"], head)

    def lora_options(self) -> dict:
        """peft settings: the new cross-attention layers (and any encoder-decoder projection) trained and saved in full."""
        return {"modules_to_save": list(self.new_modules) or None, "fan_in_fan_out": self._fan_in_fan_out()}

    def forward(self, batch: dict) -> torch.Tensor:
        """Next-token logits for each caption position, given the image (teacher forcing)."""
        return self.net(**self._inputs(batch)).logits

    def forward_features(self, batch: dict) -> torch.Tensor:
        """The encoder's image tokens: what the decoder's cross-attention reads."""
        return self.inner.encoder(pixel_values=batch["pixel_values"]).last_hidden_state

    # -- images in, captions out ---------------------------------------------------------------------
    def pixel_values(self, images: list) -> torch.Tensor:
        return self.image_processor(images=[to_rgb(img) for img in images], return_tensors="pt")["pixel_values"]

    def caption_ids(self, caption: str) -> list[int]:
        """Token ids of a caption, truncated to ``max_length``, ending with the end-of-caption token."""
        end = self.inner.config.eos_token_id
        ids = self.tokenizer(str(caption or ""), add_special_tokens=False, truncation=True,
                             max_length=max(1, self.max_length - 1))["input_ids"]
        return [*ids, end]

    @torch.inference_mode()
    def caption(self, images: list, max_new_tokens: int | None = None, num_beams: int = 1) -> list[str]:
        """Captions for PIL images (greedy by default; ``num_beams`` > 1 for beam search).

        Example:
            >>> captioner.caption([PIL.Image.open("dog.jpg")])  # doctest: +SKIP
            ['a dog running on the beach']
        """
        self.eval()
        pixels = self.pixel_values(images).to(next(self.net.parameters()).device)
        out = self.net.generate(pixel_values=pixels, max_new_tokens=max_new_tokens or self.max_length,
                                num_beams=num_beams, do_sample=False)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    # -- saving --------------------------------------------------------------------------------
    def save_preprocessing(self, folder: str | Path) -> None:
        self.image_processor.save_pretrained(str(folder))
        self.tokenizer.save_pretrained(str(folder))

    def restore_settings(self, folder: str | Path) -> None:
        """Take the run's caption length (``data.max_length``) from its ``hftl_config.yaml``."""
        import yaml

        path = Path(folder) / "hftl_config.yaml"
        if path.is_file():
            self.max_length = ((yaml.safe_load(path.read_text()) or {}).get("data") or {}).get("max_length") or 32

    def fingerprint(self) -> str:
        h = self.weights_digest()
        h.update(self.image_processor.to_json_string().encode())
        return h.hexdigest()[:24]
