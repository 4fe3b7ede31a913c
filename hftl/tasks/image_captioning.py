"""Image captioning on the one training loop: image-caption data, teacher-forced training, captions out.

Data (``data.id``) with an image column (``data.image_column``) and a caption column
(``data.text_column``), one caption per row (an image with five captions is five rows):

- a CSV or JSON-lines file whose image paths are relative to it (unreadable images are skipped
  and counted);
- a Hub dataset, or a local folder of data files named by split;
- ``builtin:digits``: scikit-learn's digits, each captioned from templates ("a handwritten seven"),
  for a first run with no download.

Without a validation split, a seeded random share (``data.validation_fraction``) is held out.
The loss is the next-token cross-entropy of the caption given the image; the metric is the
held-out perplexity; ``hftl predict <out> image.png`` prints a caption.

Example:
    >>> result = hftl.train("recipes/configs/image_captioning/vit_gpt2_digits.yaml")  # doctest: +SKIP
    >>> hftl.caption(result.output_dir, ["digit.png"])  # doctest: +SKIP
    ['a handwritten seven']
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hftl.config import Config, DataConfig
from hftl.data import LabelledData, check_text_file
from hftl.errors import ConfigError, DataError
from hftl.images import to_rgb
from hftl.tasks.base import Task

logger = logging.getLogger(__name__)

DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_TEMPLATES = ["a handwritten {}", "the digit {}", "the number {} written by hand"]


def _digit_captions():
    from hftl.data import _digits

    images, labels, _ = _digits()
    captions = [DIGIT_TEMPLATES[i % len(DIGIT_TEMPLATES)].format(DIGIT_WORDS[y]) for i, y in enumerate(labels)]
    return images, captions


def _table(path: Path, cfg: DataConfig):
    """(image paths, captions, unreadable count) from a CSV / JSON-lines file of paths and captions."""
    import pandas as pd

    from hftl.images import _verify_image

    if not path.is_file():
        raise DataError(f"Data file '{path}' does not exist. Check data.id.")
    check_text_file(path)
    table = pd.read_csv(path) if path.suffix.lower() == ".csv" else pd.read_json(path, lines=True)
    for column in (cfg.image_column, cfg.text_column):
        if column not in table.columns:
            raise DataError(f"Column '{column}' is not in '{path}'. Its columns are: "
                            f"{', '.join(map(str, table.columns))}. Set data.image_column / data.text_column.")
    paths, captions, bad = [], [], 0
    for file, caption in zip(table[cfg.image_column], table[cfg.text_column]):
        full = (path.parent / str(file)).resolve()
        if not full.is_file() or not _verify_image(full):
            logger.warning("Skipping missing or corrupt image %s", full)
            bad += 1
            continue
        paths.append(str(full))
        captions.append("" if caption is None or (isinstance(caption, float) and np.isnan(caption)) else str(caption))
    if not paths:
        raise DataError(f"'{path}' lists no readable images ({bad} missing or corrupt).")
    return paths, captions, bad


def load_caption_data(cfg: DataConfig, seed: int = 42) -> LabelledData:
    """Train and validation ``datasets`` with ``image`` and ``caption`` columns (see the module docs)."""
    import datasets

    from hftl.data import _hub_dataset, split_names

    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Value("string")})
    skipped, validation = {}, None
    path = Path(cfg.id)
    if cfg.id == "builtin:digits":
        images, captions = _digit_captions()
        full = datasets.Dataset.from_dict({"image": images, "caption": captions}, features=features)
    elif cfg.id.startswith("builtin:"):
        raise DataError(f"Unknown built-in caption set '{cfg.id}'. Built-in: builtin:digits.")
    elif path.suffix.lower() in (".csv", ".jsonl", ".json"):
        paths, captions, bad = _table(path, cfg)
        if bad:
            skipped["corrupt or missing image"] = bad
        full = datasets.Dataset.from_dict({"image": paths, "caption": captions}, features=features)
    else:
        splits = _hub_dataset(cfg)
        val_name = split_names(splits, cfg)
        full = _caption_columns(splits[cfg.train_split], cfg)
        validation = _caption_columns(splits[val_name], cfg) if val_name else None
    if validation is None:
        order = np.random.default_rng(seed).permutation(len(full))
        n_val = min(len(full) - 1, max(1, round(len(full) * cfg.validation_fraction)))
        validation, full = full.select(sorted(order[:n_val].tolist())), full.select(sorted(order[n_val:].tolist()))
    train, validation = _take(full, cfg.max_train_samples, seed), _take(validation, cfg.max_eval_samples, seed)
    if len(train) == 0:
        raise DataError(f"No training examples in '{cfg.id}'.")
    # The fingerprint keys feature caches, which captioning does not use (no linear probe): a plain label.
    return LabelledData(train, validation, [], str(cfg.id), f"captions:{cfg.id}:{len(train)}:{seed}", skipped)


def _take(ds, n: int | None, seed: int):
    """A seeded random subset of ``n`` rows (all when ``n`` is None or larger)."""
    if n is None or n >= len(ds):
        return ds
    return ds.select(sorted(np.random.default_rng(seed).permutation(len(ds))[:n].tolist()))


def _caption_columns(ds, cfg: DataConfig):
    import datasets

    for column in (cfg.image_column, cfg.text_column):
        if column not in ds.column_names:
            raise DataError(f"Column '{column}' is not in data '{cfg.id}'. Its columns are: "
                            f"{', '.join(ds.column_names)}. Set data.image_column / data.text_column.")
    ds = ds.select_columns([cfg.image_column, cfg.text_column])
    ds = ds.rename_columns({cfg.image_column: "image", cfg.text_column: "caption"})
    if not isinstance(ds.features["image"], datasets.Image):
        ds = ds.cast_column("image", datasets.Image())
    if isinstance(ds.features["caption"], (datasets.Sequence, datasets.List, list)):
        # COCO / Flickr layout: several captions per image -> one row per (image, caption)
        def explode(batch):
            pairs = [(img, c) for img, caps in zip(batch["image"], batch["caption"]) for c in (caps or [])]
            return {"image": [p[0] for p in pairs], "caption": [p[1] for p in pairs]}

        ds = ds.cast_column("image", datasets.Image(decode=False)).map(
            explode, batched=True, features=datasets.Features({"image": datasets.Image(decode=False),
                                                               "caption": datasets.Value("string")}))
        ds = ds.cast_column("image", datasets.Image())
    return ds


class CaptionDataset(torch.utils.data.Dataset):
    """Image-caption pairs as model inputs: pixels from the encoder's processor, caption ids for the decoder."""

    def __init__(self, hf_dataset, model):
        self.ds = hf_dataset
        self.model = model

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, index: int) -> dict:
        row = self.ds[int(index)]
        try:
            pixels = self.model.pixel_values([row["image"]])[0]
        except Exception as e:
            raise DataError(f"Example {index} could not be decoded as an image: {e}") from e
        return {"pixel_values": pixels, "caption_ids": self.model.caption_ids(row["caption"])}

    def collate(self, examples: list[dict]) -> dict:
        """Teacher forcing: the decoder reads [start, t1, ..., tn-1] and predicts [t1, ..., tn]; padding scores nothing."""
        config = self.model.inner.config
        longest = max(len(e["caption_ids"]) for e in examples)
        labels = torch.full((len(examples), longest), -100, dtype=torch.long)
        inputs = torch.full((len(examples), longest), config.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(examples), longest), dtype=torch.long)
        for i, e in enumerate(examples):
            ids = torch.tensor(e["caption_ids"], dtype=torch.long)
            labels[i, : len(ids)] = ids
            inputs[i, 0] = config.decoder_start_token_id
            inputs[i, 1: len(ids)] = ids[:-1]
            mask[i, : len(ids)] = 1
        return {"pixel_values": torch.stack([e["pixel_values"] for e in examples]), "decoder_input_ids": inputs,
                "decoder_attention_mask": mask, "labels": labels}


def caption_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy of each caption token (labels are already aligned with the logits; -100 is padding)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)


def caption_datasets(cfg: Config, model, data: LabelledData):
    """(train, validation, collate) for a captioner."""
    model.max_length = cfg.data.max_length
    train = CaptionDataset(data.train, model)
    return train, CaptionDataset(data.validation, model), train.collate


class ImageCaptioning(Task):
    """Strategies: finetune (with layer_decay), partial (``frozen_groups`` counts from the encoder's
    input: freeze the image encoder, train the decoder), lora, scratch."""

    def export_module(self, model) -> tuple:
        # Generation (a decoder loop with a cache) is not one ONNX graph; the image encoder is, and runs once per image.
        return _ImageEncoder(model).eval(), "last_hidden_state"

    def export_inputs(self, model, batch_size: int = 2) -> tuple[dict, dict]:
        from PIL import Image

        size = model.pixel_values([Image.new("RGB", (8, 8))]).shape[1:]  # what the image processor makes: (3, H, W)
        gen = torch.Generator().manual_seed(batch_size)
        return {"pixel_values": torch.randn(batch_size, *size, generator=gen)}, {"pixel_values": {0: "batch"}}

    def create_model(self, ref, label_names, *, pretrained=True, **kwargs):
        from hftl.backbones.hf_captioning import ImageCaptioner

        if ref.library != "transformers":
            raise ConfigError(f"image_captioning joins a transformers vision encoder to a text decoder; "
                              f"'{ref.describe()}' is a {ref.library} model. Use e.g. "
                              "google/vit-base-patch16-224-in21k with model.decoder_id=openai-community/gpt2.")
        return ImageCaptioner.create(ref, pretrained=pretrained, **kwargs)

    def model_kwargs(self, cfg: Config) -> dict:
        extra = super().model_kwargs(cfg)
        if cfg.model.decoder_id:
            extra.update(decoder_id=cfg.model.decoder_id, decoder_revision=cfg.model.decoder_revision)
        return extra

    def load_data(self, cfg: Config, whole: bool = False) -> LabelledData:
        data = load_caption_data(cfg.data, cfg.train.seed)
        logger.info("Captions: %s, %d train / %d validation pairs", data.source, len(data.train), len(data.validation))
        return data

    def datasets(self, cfg: Config, model, data, whole: bool = False):
        return caption_datasets(cfg, model, data)

    def loss(self, cfg: Config):
        return caption_loss

    def card_facts(self, cfg: Config, model, data, train_ds, eval_ds) -> dict:
        return {**super().card_facts(cfg, model, data, train_ds, eval_ds), "num_labels": "no",
                "caption_samples": _sample_captions(model, data.validation)}  # what the trained model writes

    def predict(self, model, inputs: list, top_k: int = 3) -> list:
        raise ConfigError("This is an image captioner: use hftl.caption (the CLI's `hftl predict` prints captions "
                          "for it).")


def _sample_captions(model, validation, n: int = 4) -> list[dict]:
    """A few validation images' reference and generated captions (shown in the model card)."""
    rows = [validation[i] for i in range(min(n, len(validation)))]
    generated = model.caption([r["image"] for r in rows]) if rows else []
    return [{"reference": r["caption"], "generated": g} for r, g in zip(rows, generated)]


def caption(model_or_folder, images: list, max_new_tokens: int | None = None, num_beams: int = 1) -> list[str]:
    """Captions for image files (or PIL images) from a captioner hftl trained.

    Example:
        >>> caption("outputs/vit_gpt2_digits", ["digit.png"])  # doctest: +SKIP
        ['a handwritten seven']
    """
    from PIL import Image

    from hftl.model import load

    model = load(model_or_folder) if isinstance(model_or_folder, (str, Path)) else model_or_folder
    if getattr(model, "kind", None) != "captioner":
        raise ConfigError(f"'{model_or_folder}' is not an image captioner (task image_captioning).")
    loaded = []
    for item in images:
        if isinstance(item, Image.Image):
            loaded.append(item)
            continue
        try:
            with Image.open(item) as img:
                loaded.append(to_rgb(img))
        except FileNotFoundError as e:
            raise DataError(f"Image '{item}' does not exist.") from e
        except Exception as e:
            raise DataError(f"'{item}' could not be read as an image: {e}") from e
    return model.caption(loaded, max_new_tokens=max_new_tokens, num_beams=num_beams)


class _ImageEncoder(torch.nn.Module):
    """A captioner's image encoder alone (what ONNX export covers of it): pixels -> the states the decoder reads."""

    def __init__(self, captioner):
        super().__init__()
        self.encoder = captioner.inner.encoder

    def forward(self, batch: dict) -> torch.Tensor:
        return self.encoder(pixel_values=batch["pixel_values"]).last_hidden_state
